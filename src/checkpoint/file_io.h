// File primitives for checkpoints: every system call checked, errors naming the path, fsync
// before anything may depend on the bytes, so that a crash or a full disk never passes silently.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace troupe::checkpoint {

// A new file written front to back; nothing is durable before sync_and_close().
class OutputFile {
 public:
  explicit OutputFile(std::string path);  // creates or truncates
  ~OutputFile();                          // closes without syncing if still open
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(const void* data, size_t size);
  void sync_and_close();
  uint64_t size() const { return written_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t written_ = 0;
};

// A file read at given offsets (pread): a checkpoint shard is read tensor by tensor.
class InputFile {
 public:
  explicit InputFile(std::string path);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  uint64_t size() const { return size_; }
  // Exactly `size` bytes at `offset`; a short read (truncated file) throws naming `what`.
  void read_at(uint64_t offset, void* out, size_t size, const std::string& what) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The whole file as bytes.
std::string read_file(const std::string& path);
// Writes `bytes` to `path` and fsyncs it.
void write_file_durably(const std::string& path, std::string_view bytes);
// Makes the directory's entries (created, renamed files) durable.
void sync_directory(const std::string& path);

uint64_t xxh3_64(const void* data, size_t size);
std::string to_hex(uint64_t value);  // 16 lowercase digits

}  // namespace troupe::checkpoint
