// On a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) print which thread died and its
// native stack to stderr before the process dies as it would have: a crash inside a rank's
// compute otherwise leaves nothing but "Segmentation fault" to go on.
#pragma once

namespace troupe::runtime {

// Safe to call more than once; handlers installed later (a test framework's) run first and
// chain here when they re-raise.
void install_crash_report();

}  // namespace troupe::runtime
