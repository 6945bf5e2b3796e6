#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "runtime/crash_report.h"

// Catch reports a crash as the test that died; the crash report adds the stack it died on.
int main(int argc, char** argv) {
  troupe::runtime::install_crash_report();
  return Catch::Session().run(argc, argv);
}
