#include "test_support.h"

#include <catch2/catch.hpp>
#include <torch/torch.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <future>
#include <random>
#include <stdexcept>
#include <thread>

#include "runtime/remove_tree.h"

namespace troupe::testing {

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          ("troupe_test_" + std::to_string(rd()) + "_" + std::to_string(counter++));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  try {
    runtime::remove_tree(path_.string());
  } catch (const std::exception&) {
    // A leftover temp dir must not fail the test that made it.
  }
}

std::string TempDir::write(const std::string& name, const std::string& text) const {
  const auto path = file(name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  auto a64 = a.detach().to(torch::kDouble), b64 = b.detach().to(torch::kDouble);
  return (a64 - b64).norm().item<double>() / b64.norm().item<double>();
}

int listen_port(int offset) {
  if (offset < 0 || offset >= 12) throw std::invalid_argument("listen_port: offset must be in [0, 12)");
  return 20000 + static_cast<int>(getpid() % 1000) * 12 + offset;
}

ChildResult run_in_child(const std::function<void()>& body) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  const pid_t child = fork();
  if (child < 0) throw std::runtime_error("fork failed");
  if (child == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    body();
    _exit(0);
  }
  close(fds[1]);
  ChildResult out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.stderr_text.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  if (waitpid(child, &out.wait_status, 0) != child) throw std::runtime_error("waitpid failed");
  return out;
}

int run_command(const std::string& command) {
  const int status = std::system(command.c_str());
  if (status == -1 || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

std::string run_command_output(const std::string& command) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  REQUIRE(pipe);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe.get())) > 0;) out.append(buf, n);
  const int status = pclose(pipe.release());
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  return out;
}

std::string source_dir() { return TROUPE_SOURCE_DIR; }
std::string troupe_binary() { return TROUPE_BINARY; }

config::JobConfig small_job_config(const TempDir& dir) {
  config::JobConfig c;
  c.job.device = "cpu";
  c.job.dump_folder = dir.file("dump");
  c.model.tokenizer_path = source_dir() + "/data/kjv/tokenizer.json";
  c.training.dataset = "text";
  c.training.dataset_path = corpus_slice(dir);
  c.training.local_batch_size = 2;
  c.training.global_batch_size = 4;
  c.training.seq_len = 32;
  c.training.steps = 6;
  c.metrics.log_freq = 2;
  c.lr_scheduler.warmup_steps = 2;
  return c;
}

actors::TrainOutcome run_with_timeout(const config::JobConfig& c, const cli::RunHooks& hooks) {
  auto future = std::async(std::launch::async, [&] { return cli::run_training(c, hooks); });
  // TROUPE_TEST_TIMEOUT_S: longer under valgrind or a sanitizer.
  const char* limit = std::getenv("TROUPE_TEST_TIMEOUT_S");
  const auto seconds = limit ? std::stoi(limit) : 120;
  if (future.wait_for(std::chrono::seconds(seconds)) != std::future_status::ready) {
    FAIL_CHECK("run_training did not finish within " << seconds << " s");
    std::_Exit(1);  // the actors are stuck; nothing else can end this process
  }
  return future.get();
}

std::string corpus_slice(const TempDir& dir) {
  std::ifstream in(source_dir() + "/data/kjv/kjv.txt");
  std::string text(200'000, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  const auto path = dir.file("slice.txt");
  std::ofstream(path) << text;
  return path;
}


ChildProcess::ChildProcess(const std::vector<std::string>& argv) {
  // The arguments are laid out before the fork: the child of a process with other threads may
  // call only async-signal-safe functions until it execs. A malloc there deadlocks whenever
  // another thread held the allocator's lock at the fork (a two-process test hung in CI so).
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  out_fd_ = fds[0];
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
}

bool ChildProcess::wait_for_line(const std::string& needle, std::string& all_output) {
  char buf[4096];
  while (true) {
    const auto n = read(out_fd_, buf, sizeof buf);
    if (n <= 0) return false;
    all_output.append(buf, static_cast<size_t>(n));
    if (all_output.find(needle) != std::string::npos) return true;
  }
}

void ChildProcess::signal(int sig) { kill(pid_, sig); }

int ChildProcess::wait(double seconds, std::string& all_output) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{out_fd_, POLLIN, 0};
    if (poll(&p, 1, 50) > 0) {
      const auto n = read(out_fd_, buf, sizeof buf);
      if (n > 0) all_output.append(buf, static_cast<size_t>(n));
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      ssize_t n;
      while ((n = read(out_fd_, buf, sizeof buf)) > 0) all_output.append(buf, static_cast<size_t>(n));
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
  }
  return -1;
}

}  // namespace troupe::testing

namespace troupe::testing {

void enable_validation(config::JobConfig& c, int64_t freq, int64_t steps) {
  c.validation.enable = true;
  c.validation.dataset = "text";
  c.validation.dataset_path = c.training.dataset_path;
  c.validation.freq = freq;
  c.validation.steps = steps;
}

}  // namespace troupe::testing
