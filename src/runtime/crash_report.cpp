#include "runtime/crash_report.h"

#include <execinfo.h>
#include <pthread.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

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

extern "C" void on_fatal_signal(int sig, siginfo_t* info, void*) {
  // glibc's backtrace loads libgcc on first use, which is not safe here: it was warmed up at install.
  void* frames[64];
  const int depth = backtrace(frames, 64);
  char thread_name[32] = "?";
  pthread_getname_np(pthread_self(), thread_name, sizeof thread_name);
  say("\ntroupe: fatal signal ");
  const char* name = sigabbrev_np(sig);
  say("SIG");
  say(name ? name : "?");
  if (sig != SIGABRT && info) {
    say(" at address ");
    say_number(reinterpret_cast<unsigned long long>(info->si_addr), 16);
  }
  say(" in thread ");
  say_number(static_cast<unsigned long long>(gettid()), 10);
  say(" (");
  say(thread_name);
  say("); its stack:\n");
  backtrace_symbols_fd(frames, depth, STDERR_FILENO);
  // Die of the same signal, so exit codes and core dumps stay what they would have been.
  signal(sig, SIG_DFL);
  raise(sig);
}

}  // namespace

void install_crash_report() {
  void* warm[1];
  backtrace(warm, 1);
  struct sigaction sa {};
  sa.sa_sigaction = on_fatal_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  for (int sig : kFatalSignals) sigaction(sig, &sa, nullptr);
}

}  // namespace troupe::runtime
