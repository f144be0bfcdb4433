#include "index/parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace wavekv {

void ParallelFor(size_t num_tasks, int num_threads,
                 absl::FunctionRef<void(size_t)> fn) {
  const size_t threads =
      std::min(num_tasks, static_cast<size_t>(std::max(num_threads, 1)));
  if (threads <= 1) {
    for (size_t i = 0; i < num_tasks; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next.fetch_add(1); i < num_tasks; i = next.fetch_add(1)) {
      fn(i);
    }
  };
  std::vector<std::jthread> helpers;
  helpers.reserve(threads - 1);
  for (size_t t = 1; t < threads; ++t) helpers.emplace_back(worker);
  worker();
  // jthread joins on destruction.
}

}  // namespace wavekv
