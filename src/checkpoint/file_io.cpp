#include "checkpoint/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace troupe::checkpoint {

namespace {

[[noreturn]] void fail(const std::string& path, const char* what) {
  throw std::runtime_error(path + ": " + what + ": " + std::strerror(errno));
}

int open_or_fail(const std::string& path, int flags, const char* what) {
  int fd;
  do fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) fail(path, what);
  return fd;
}

}  // namespace

OutputFile::OutputFile(std::string path) : path_(std::move(path)) {
  fd_ = open_or_fail(path_, O_WRONLY | O_CREAT | O_TRUNC, "cannot create");
}

OutputFile::~OutputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void OutputFile::write(const void* data, size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux moves at most about 2 GiB per call.
    const ssize_t n = ::write(fd_, p, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path_, "write failed");  // ENOSPC reads "No space left on device"
    }
    p += n;
    size -= static_cast<size_t>(n);
    written_ += static_cast<uint64_t>(n);
  }
}

void OutputFile::sync_and_close() {
  if (::fsync(fd_) != 0) fail(path_, "fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(path_, "close failed");
}

InputFile::InputFile(std::string path) : path_(std::move(path)) {
  fd_ = open_or_fail(path_, O_RDONLY, "cannot open");
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    ::close(fd_);
    fail(path_, "cannot stat");
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void InputFile::read_at(uint64_t offset, void* out, size_t size, const std::string& what) const {
  auto* p = static_cast<char*>(out);
  while (size > 0) {
    const ssize_t n = ::pread(fd_, p, std::min<size_t>(size, size_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path_, ("read failed (" + what + ")").c_str());
    }
    if (n == 0) throw std::runtime_error(path_ + ": ends early at byte " + std::to_string(offset) + " (" + what + ")");
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

std::string read_file(const std::string& path) {
  InputFile in(path);
  std::string bytes(in.size(), '\0');
  in.read_at(0, bytes.data(), bytes.size(), "whole file");
  return bytes;
}

void write_file_durably(const std::string& path, std::string_view bytes) {
  OutputFile out(path);
  out.write(bytes.data(), bytes.size());
  out.sync_and_close();
}

void sync_directory(const std::string& path) {
  const int fd = open_or_fail(path, O_RDONLY | O_DIRECTORY, "cannot open directory");
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) fail(path, "fsync of directory failed");
}

uint64_t xxh3_64(const void* data, size_t size) { return XXH3_64bits(data, size); }

std::string to_hex(uint64_t value) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(value));
  return buf;
}

}  // namespace troupe::checkpoint
