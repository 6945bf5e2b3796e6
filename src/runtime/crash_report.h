// On a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) print which thread died and its
// native stack to stderr before the process dies as it would have: a crash inside a rank's
// compute otherwise leaves nothing but "Segmentation fault" to go on.
//
// On SIGQUIT (`kill -QUIT <pid>`, `timeout -s QUIT`) print every thread's native stack and go on:
// where each rank's thread, actor and watchdog is when a job hangs. One process drives several
// GPUs, so a rank stuck in a CUDA call can hold up another's collective; the stacks show which.
//
// An uncaught exception (std::terminate) prints what it was and the thread's stack, and ends the
// process with exit code 1 rather than SIGABRT: a collective whose ranks disagree on its size
// throws on Gloo's own network thread, out of every caller's reach.
#pragma once
#include <cstdint>

namespace troupe::runtime {

// Safe to call more than once; handlers installed later (a test framework's) run first and
// chain here when they re-raise.
void install_crash_report();

// Every thread's stack to stderr under a header naming `why` (what install_crash_report's SIGQUIT
// does). Async-signal-safe; a thread that does not answer within half a second is named as such.
// Of the calls with `once`, only the first prints (several communicators timing out together
// print the stacks once).
void dump_thread_stacks(const char* why, bool once = false);

// How many SIGQUITs the process has had: a node supervisor that sees the count move writes its
// ranks' collectives (comm/flight_recorder.h) as well, which a signal handler cannot.
uint64_t quit_signals();

}  // namespace troupe::runtime
