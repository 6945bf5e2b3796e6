#include "runtime/error_text.h"

#include <c10/util/Exception.h>

#include <new>

namespace troupe::runtime {

std::string error_text(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

bool out_of_memory(const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) || dynamic_cast<const std::bad_alloc*>(&e)) return true;
  const std::string text = e.what();
  return text.find("can't allocate memory") != std::string::npos || text.find("out of memory") != std::string::npos;
}

}  // namespace troupe::runtime
