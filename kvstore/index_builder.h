// IndexBuilder: runs the engine's wave-index builds — Session::BuildIndex
// for (session, layer) pairs that Append reported — on a small pool of
// worker threads, or inline in the scheduling call when it has none.
//
// Supervised: every build's outcome and time are counted (EngineStats), a
// failure is reported to the failure hook (or logged), and the session
// records it (index_state FAILED, index_error) until a retry succeeds. No
// build failure ends a worker thread.
//
// Thread-safe. Destruction drops builds not started and waits for running
// ones; destroy it before the sessions' MemoryBudget.
#ifndef WAVEKV_KVSTORE_INDEX_BUILDER_H_
#define WAVEKV_KVSTORE_INDEX_BUILDER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "kvstore/engine.h"
#include "kvstore/gpu/engine_gpu.h"
#include "kvstore/memory_budget.h"
#include "kvstore/session.h"
#include "kvstore/thread_pool.h"

namespace wavekv {

class IndexBuilder {
 public:
  using FailureHook = std::function<void(const IndexBuildFailure&)>;

  // `num_threads` workers (0 = build inline in Schedule). `on_failure` may
  // be empty (failures are then logged to stderr). `gpu`, when set, clusters
  // the blocks (Session::BuildIndex); it outlives the builder.
  IndexBuilder(uint32_t num_threads, MemoryBudget& budget,
               FailureHook on_failure, EngineGpu* gpu = nullptr);

  IndexBuilder(const IndexBuilder&) = delete;
  IndexBuilder& operator=(const IndexBuilder&) = delete;

  // Builds `layer` of `session`, which Append returned in index_layers.
  void Schedule(std::shared_ptr<Session> session, uint32_t layer);

  // Adds the build counters to `stats`.
  void AddStats(EngineStats& stats) const;

 private:
  void Run(Session& session, uint32_t layer);

  MemoryBudget& budget_;
  const FailureHook on_failure_;
  EngineGpu* const gpu_;
  std::atomic<uint64_t> blocks_{0};
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> build_nanos_{0};
  std::atomic<uint64_t> pending_{0};
  ThreadPool pool_;  // last: its workers use the members above
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_INDEX_BUILDER_H_
