// What ends an actor that throws: CAF's default prints "*** unhandled exception" and leaves the
// job waiting for an answer that never comes. With this handler the actor ends with an error
// naming it and the exception's message; the node supervisor, which monitors every actor of
// the job, then ends the job with that message (exit 1).
#pragma once
#include <caf/all.hpp>

#include <exception>
#include <string>

#include "runtime/error_text.h"

namespace troupe::actors {

template <class Self>
void end_on_exception(Self* self, std::string name) {
  self->set_exception_handler([name](caf::scheduled_actor*, std::exception_ptr& thrown) -> caf::error {
    try {
      std::rethrow_exception(thrown);
    } catch (const std::exception& e) {
      return caf::make_error(caf::sec::runtime_error, name + ": " + runtime::error_text(e));
    } catch (...) {
      return caf::make_error(caf::sec::runtime_error, name + ": an exception that is not a std::exception");
    }
  });
}

// The message an error of end_on_exception (or any error with a text) carries, else CAF's name for it.
inline std::string failure_text(const caf::error& e) {
  const auto& context = e.context();
  if (context.size() == 1 && context.match_element<std::string>(0)) return context.get_as<std::string>(0);
  return to_string(e);
}

}  // namespace troupe::actors
