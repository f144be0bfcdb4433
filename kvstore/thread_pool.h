// ThreadPool: a fixed set of worker threads running tasks in FIFO order,
// plus a fork-join ParallelFor that also works on the calling thread. The
// engine keeps one pool for background index builds and one for splitting
// a Retrieve batch across (session, kv head).
//
// Thread-safe. Lock order: mu_ is a leaf (tasks run without it).
//
// Example:
//   ThreadPool pool(4);
//   pool.Schedule([] { ... });               // runs on a worker, later
//   pool.ParallelFor(n, [&](size_t i) { ... });  // returns when all ran
#ifndef WAVEKV_KVSTORE_THREAD_POOL_H_
#define WAVEKV_KVSTORE_THREAD_POOL_H_

#include <cstddef>
#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace wavekv {

class ThreadPool {
 public:
  // Starts `num_threads` workers. With 0, Schedule runs each task inline
  // and ParallelFor runs on the caller alone. REQUIRES: num_threads >= 0.
  explicit ThreadPool(int num_threads);

  // Stops: tasks not started yet are destroyed without running, running
  // ones finish, then the workers are joined.
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues `task` (runs it inline when the pool has no threads).
  void Schedule(absl::AnyInvocable<void()> task);

  // Runs fn(0) .. fn(n - 1), each exactly once, on the calling thread and
  // up to num_threads() workers; returns when all have returned. `fn` must
  // not throw; it may be called concurrently from several threads.
  void ParallelFor(size_t n, absl::FunctionRef<void(size_t)> fn);

  int num_threads() const { return static_cast<int>(workers_.size()); }
  // Tasks queued and not started.
  size_t queued() const;

 private:
  void WorkerLoop();

  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;  // fixed after construction
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_THREAD_POOL_H_
