#define CATCH_CONFIG_RUNNER
// Catch's own fatal-signal handler names the test but not where it died, and buffered output can
// be lost with it: the crash report's handler (the faulting thread's stack, written unbuffered)
// stays in place instead.
#define CATCH_CONFIG_NO_POSIX_SIGNALS
#include <catch2/catch.hpp>

#include "runtime/crash_report.h"

int main(int argc, char** argv) {
  troupe::runtime::install_crash_report();
  return Catch::Session().run(argc, argv);
}
