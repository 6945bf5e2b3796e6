#include "runtime/crash_report.h"

#include <execinfo.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <exception>
#include <string>

#include "runtime/exit_codes.h"

namespace troupe::runtime {

namespace {

constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

// Only async-signal-safe calls below (write(2), backtrace_symbols_fd, raise), no allocation.
void say(const char* text) {
  const ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

void say_number(unsigned long long value, int base) {
  char digits[32];
  int n = 0;
  do {
    digits[n++] = "0123456789abcdef"[value % base];
    value /= base;
  } while (value && n < 32);
  char text[34];
  int k = 0;
  if (base == 16) text[k++] = '0', text[k++] = 'x';
  while (n) text[k++] = digits[--n];
  text[k] = 0;
  say(text);
}

// "<tid> (<name>)<end>", then the stack of the calling thread.
void say_thread_and_stack(const char* end) {
  void* frames[64];
  const int depth = backtrace(frames, 64);
  char thread_name[32] = "?";
  pthread_getname_np(pthread_self(), thread_name, sizeof thread_name);
  say_number(static_cast<unsigned long long>(gettid()), 10);
  say(" (");
  say(thread_name);
  say(end);
  backtrace_symbols_fd(frames, depth, STDERR_FILENO);
}

void print_own_stack() {
  say("\nthread ");
  say_thread_and_stack("):\n");
}

// Asks one thread at a time for its stack (a real-time signal of our own), so they do not interleave.
int stack_signal = 0;                // SIGRTMIN + 4, set at install (glibc keeps the first few)
std::atomic<pid_t> answered{0};      // the thread that printed last
std::atomic<bool> dumping{false};    // one dump at a time
std::atomic<bool> dumped_once{false};

extern "C" void on_stack_request(int) {
  const int saved = errno;
  print_own_stack();
  answered.store(gettid());
  errno = saved;
}

void sleep_a_millisecond() {
  const timespec ms{0, 1000000};
  nanosleep(&ms, nullptr);
}

void ask_for_stack(pid_t tid) {
  answered.store(0);
  if (syscall(SYS_tgkill, getpid(), tid, stack_signal) != 0) return;  // it has ended
  for (int i = 0; i < 500 && answered.load() != tid; ++i) sleep_a_millisecond();
  if (answered.load() == tid) return;
  say("\nthread ");
  say_number(static_cast<unsigned long long>(tid), 10);
  say(" did not answer within 0.5 s\n");
}

struct linux_dirent64_record {  // what getdents64 returns, one after another
  ino64_t d_ino;
  off64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

std::atomic<uint64_t> quits{0};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "counted inside a signal handler");

extern "C" void on_quit_signal(int) {
  const int saved = errno;
  quits.fetch_add(1, std::memory_order_relaxed);
  dump_thread_stacks("SIGQUIT");
  errno = saved;
}

extern "C" void on_fatal_signal(int sig, siginfo_t* info, void*) {
  // glibc's backtrace loads libgcc on first use, which is not safe here: it was warmed up at install.
  say("\ntroupe: fatal signal ");
  const char* name = sigabbrev_np(sig);
  say("SIG");
  say(name ? name : "?");
  if (sig != SIGABRT && info) {
    say(" at address ");
    say_number(reinterpret_cast<unsigned long long>(info->si_addr), 16);
  }
  say(" in thread ");
  say_thread_and_stack("); its stack:\n");
  // Die of the same signal, so exit codes and core dumps stay what they would have been.
  signal(sig, SIG_DFL);
  raise(sig);
}

// An exception that leaves a thread Troupe does not own ends the process here, not by abort():
// Gloo's network thread throws when two ranks disagree on a collective's size (ranks started
// with different configs or code), and the job is to end with that said, as a failure.
[[noreturn]] void on_terminate() {
  std::string what = "std::terminate was called without an exception";
  if (const auto thrown = std::current_exception()) {
    try {
      std::rethrow_exception(thrown);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "an exception that is not a std::exception";
    }
  }
  std::replace(what.begin(), what.end(), '\n', ' ');
  const bool size_mismatch = what.find("Received data size doesn't match") != std::string::npos;
  const std::string line =
      size_mismatch ? "troupe: the ranks disagree on the size of a collective, so the job cannot go on (were they "
                      "started with different configs or builds?): " + what + "\n"
                    : "troupe: an exception escaped a thread, ending the process: " + what + "\n";
  say(line.c_str());
  say("troupe: the thread's stack:\n");
  say_thread_and_stack("):\n");
  std::_Exit(exit_code::failed);
}

}  // namespace

void dump_thread_stacks(const char* why, bool once) {
  if (once && dumped_once.exchange(true)) return;
  if (dumping.exchange(true)) return;
  say("\ntroupe: ");
  say(why);
  say(": the stack of every thread follows\n");
  const pid_t self = gettid();
  const int dir = stack_signal ? open("/proc/self/task", O_RDONLY | O_DIRECTORY) : -1;
  if (dir < 0) {
    say("troupe: the other threads cannot be asked (no crash report installed, or no /proc)\n");
    print_own_stack();
  }
  char records[4096];
  long n = 0;
  while (dir >= 0 && (n = syscall(SYS_getdents64, dir, records, sizeof records)) > 0) {
    for (long at = 0; at < n;) {
      const auto* d = reinterpret_cast<const linux_dirent64_record*>(records + at);
      at += d->d_reclen;
      pid_t tid = 0;
      for (const char* c = d->d_name; *c >= '0' && *c <= '9'; ++c) tid = tid * 10 + (*c - '0');
      if (tid == 0) continue;  // "." and ".."
      if (tid == self) print_own_stack();
      else ask_for_stack(tid);
    }
  }
  if (dir >= 0) close(dir);
  say("troupe: end of the stacks\n");
  dumping.store(false);
}

uint64_t quit_signals() { return quits.load(std::memory_order_relaxed); }

void install_crash_report() {
  void* warm[1];
  backtrace(warm, 1);
  struct sigaction sa {};
  sa.sa_sigaction = on_fatal_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (int sig : kFatalSignals) sigaction(sig, &sa, nullptr);
  // Interrupted system calls resume: a stack request must not change what a thread was doing.
  struct sigaction ask {};
  ask.sa_handler = on_stack_request;
  ask.sa_flags = SA_RESTART;
  sigemptyset(&ask.sa_mask);
  stack_signal = SIGRTMIN + 4;
  sigaction(stack_signal, &ask, nullptr);
  struct sigaction quit {};
  quit.sa_handler = on_quit_signal;
  quit.sa_flags = SA_RESTART;
  sigemptyset(&quit.sa_mask);
  sigaction(SIGQUIT, &quit, nullptr);
  std::set_terminate(on_terminate);
}

}  // namespace troupe::runtime
