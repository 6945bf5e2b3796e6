// Shared helpers of the test binary.
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "config/job_config.h"
#include "cli/run_training.h"

namespace troupe::testing {

// A fresh empty directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  // Writes `text` to file(name) and returns that path.
  std::string write(const std::string& name, const std::string& text) const;

 private:
  std::filesystem::path path_;
};

// ||a - b|| / ||b|| in float64.
double relative_error(const at::Tensor& a, const at::Tensor& b);

// A TCP port for a test to listen on, offset in [0, 12): below Linux's ephemeral range (32768
// up), which outgoing connections (Gloo's pairs, HTTP clients) draw from, and apart per process.
int listen_port(int offset);

// Runs `body` in a forked child, its stderr captured; the child exits 0 if `body` returns.
struct ChildResult {
  int wait_status = 0;  // as waitpid gives it
  std::string stderr_text;
};
ChildResult run_in_child(const std::function<void()>& body);

// Runs a shell command; returns its exit status (or -1 if it could not run).
int run_command(const std::string& command);
// Runs a shell command and returns what it printed on stdout; REQUIREs that it succeeded.
std::string run_command_output(const std::string& command);

// Paths of things the build knows: the repo root and the troupe binary.
std::string source_dir();
std::string troupe_binary();

// The first 200 kB of the bundled corpus in `dir` (its path): start-up (tokenizing) stays short.
std::string corpus_slice(const TempDir& dir);

// A job of seconds on the CPU: debug model, the corpus slice, batch 2 x seq 32, two micro-batches
// per step (exercising the loader's credits), 6 steps, output in dir/dump.
config::JobConfig small_job_config(const TempDir& dir);
// Turns on validation on the training text every `freq` steps, `steps` batches each.
void enable_validation(config::JobConfig& c, int64_t freq, int64_t steps);

// Guards against a hang: a run that does not end within 120 s fails the test and ends the
// process instead of blocking CI.
actors::TrainOutcome run_with_timeout(const config::JobConfig& c, const cli::RunHooks& hooks = {});

}  // namespace troupe::testing

namespace troupe::testing {

// A child process with stdout and stderr on one pipe, for testing the `troupe` binary.
class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;  // owns the pid and the pipe
  ChildProcess& operator=(const ChildProcess&) = delete;
  // Reads output until a line containing `needle` arrives (true) or the output ends (false).
  bool wait_for_line(const std::string& needle, std::string& all_output);
  void signal(int sig);
  // Waits for exit up to `seconds` (kills it and returns -1 on timeout); returns the exit code.
  int wait(double seconds, std::string& all_output);

 private:
  int pid_ = -1;
  int out_fd_ = -1;
};

}  // namespace troupe::testing
