#include "data/token_shards.h"

#include <algorithm>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

namespace troupe::data {

namespace {

constexpr char kMagic[8] = {'T', 'R', 'P', 'T', 'O', 'K', 'S', '1'};

template <class T>
T read_le(const unsigned char* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}

template <class T>
void write_le(std::ofstream& out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out.put(static_cast<char>((v >> (8 * i)) & 0xFF));
}

}  // namespace

TokenShard::TokenShard(const std::string& path) : path_(path) {
  auto fail = [&](const std::string& why) { return std::runtime_error("token shard '" + path + "': " + why); };
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw fail(std::string("cannot be opened: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw fail(std::string("cannot be read: ") + std::strerror(err));
  }
  map_bytes_ = static_cast<size_t>(st.st_size);
  if (map_bytes_ < static_cast<size_t>(kShardHeaderBytes)) {
    ::close(fd);
    throw fail("too short to be a shard");
  }
  void* m = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw fail(std::string("cannot be mapped: ") + std::strerror(errno));
  map_ = static_cast<const unsigned char*>(m);
  ::madvise(m, map_bytes_, MADV_SEQUENTIAL);
  width_ = read_le<uint32_t>(map_ + 8);
  vocab_size_ = read_le<uint32_t>(map_ + 12);
  count_ = static_cast<int64_t>(read_le<uint64_t>(map_ + 16));
  std::string problem;
  if (std::memcmp(map_, kMagic, sizeof kMagic) != 0)
    problem = "not a token shard (no TRPTOKS1 header; make one with `troupe data prepare`)";
  else if (width_ != 2 && width_ != 4)
    problem = "unsupported token width " + std::to_string(width_);
  else if (static_cast<uint64_t>(count_) * width_ + kShardHeaderBytes != map_bytes_)
    problem = "holds " + std::to_string(map_bytes_) + " bytes, but its header says " + std::to_string(count_) +
              " tokens (truncated or still being written?)";
  if (!problem.empty()) {
    ::munmap(m, map_bytes_);
    map_ = nullptr;
    throw fail(problem);
  }
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), map_bytes_);
}

void TokenShard::copy(int64_t begin, int64_t n, int64_t* out) const {
  const unsigned char* p = map_ + kShardHeaderBytes + begin * width_;
  int64_t largest = 0;
  if (width_ == 2)
    for (int64_t i = 0; i < n; ++i) largest = std::max(largest, out[i] = read_le<uint16_t>(p + 2 * i));
  else
    for (int64_t i = 0; i < n; ++i) largest = std::max(largest, out[i] = read_le<uint32_t>(p + 4 * i));
  if (largest < vocab_size_) return;
  const auto at = std::find_if(out, out + n, [&](int64_t t) { return t >= vocab_size_; }) - out;
  throw std::runtime_error("token shard '" + path_ + "': token " + std::to_string(out[at]) + " at position " +
                           std::to_string(begin + at) + " is outside its vocabulary of " + std::to_string(vocab_size_) +
                           " (the file is damaged)");
}

TokenShardWriter::TokenShardWriter(const std::string& path, int64_t vocab_size)
    : path_(path), out_(path, std::ios::binary | std::ios::trunc), width_(vocab_size <= 65536 ? 2 : 4), vocab_size_(vocab_size) {
  if (!out_) throw std::runtime_error("token shard '" + path + "' cannot be written");
  out_.write(kMagic, sizeof kMagic);
  write_le<uint32_t>(out_, static_cast<uint32_t>(width_));
  write_le<uint32_t>(out_, static_cast<uint32_t>(vocab_size_));
  write_le<uint64_t>(out_, 0);  // the count, once known
}

void TokenShardWriter::append(const int32_t* tokens, size_t n) {
  std::string bytes(n * width_, '\0');
  for (size_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < width_; ++b) bytes[i * width_ + b] = static_cast<char>((uint32_t(tokens[i]) >> (8 * b)) & 0xFF);
  out_.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  count_ += static_cast<int64_t>(n);
}

void TokenShardWriter::finish() {
  out_.seekp(16);
  write_le<uint64_t>(out_, static_cast<uint64_t>(count_));
  out_.close();
  if (!out_) throw std::runtime_error("token shard '" + path_ + "': write error");
}

}  // namespace troupe::data
