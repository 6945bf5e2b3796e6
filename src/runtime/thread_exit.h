// Waiting for threads that nobody can join (CAF's detached actors' threads) to be gone.
#pragma once
#include <chrono>
#include <vector>

namespace troupe::runtime {

// Returns once none of the kernel thread ids `tids` is a thread of this process any more (the
// caller's own id is skipped), or after `limit`. True: all gone.
bool await_threads_gone(const std::vector<int>& tids, std::chrono::milliseconds limit);

}  // namespace troupe::runtime
