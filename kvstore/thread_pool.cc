#include "kvstore/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>

namespace wavekv {

ThreadPool::ThreadPool(int num_threads) {
  workers_.reserve(std::max(0, num_threads));
  for (int i = 0; i < num_threads; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  std::deque<absl::AnyInvocable<void()>> dropped;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    dropped.swap(queue_);
  }
  for (std::thread& t : workers_) t.join();
  // `dropped` is destroyed here, outside the lock.
}

void ThreadPool::Schedule(absl::AnyInvocable<void()> task) {
  if (workers_.empty()) {
    task();
    return;
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  queue_.push_back(std::move(task));
}

size_t ThreadPool::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

void ThreadPool::WorkerLoop() {
  while (true) {
    absl::AnyInvocable<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](ThreadPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
            return p->stopping_ || !p->queue_.empty();
          },
          this));
      if (stopping_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

namespace {

// What the caller and the helpers of one ParallelFor share. Helpers hold it
// by shared_ptr: one that starts after the loop is over touches only this.
struct ParallelForState {
  ParallelForState(size_t n, absl::FunctionRef<void(size_t)> fn)
      : n(n), fn(fn) {}

  // Runs tasks until none is left.
  void Work() {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      fn(i);
      if (done.fetch_add(1) + 1 == n) {
        absl::MutexLock lock(&mu);
        finished = true;
      }
    }
  }

  const size_t n;
  // Called only for i < n, all of which happen before the caller returns.
  const absl::FunctionRef<void(size_t)> fn;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
  absl::Mutex mu;
  bool finished ABSL_GUARDED_BY(mu) = false;
};

}  // namespace

void ThreadPool::ParallelFor(size_t n, absl::FunctionRef<void(size_t)> fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  auto state = std::make_shared<ParallelForState>(n, fn);
  const size_t helpers = std::min(workers_.size(), n - 1);
  for (size_t h = 0; h < helpers; ++h) {
    Schedule([state] { state->Work(); });
  }
  state->Work();
  absl::MutexLock lock(&state->mu);
  state->mu.Await(absl::Condition(&state->finished));
}

}  // namespace wavekv
