#include "kvstore/index_builder.h"

#include <string>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace wavekv {

IndexBuilder::IndexBuilder(uint32_t num_threads, MemoryBudget& budget,
                           FailureHook on_failure, EngineGpu* gpu)
    : budget_(budget),
      on_failure_(std::move(on_failure)),
      gpu_(gpu),
      pool_(static_cast<int>(num_threads)) {}

void IndexBuilder::Schedule(std::shared_ptr<Session> session, uint32_t layer) {
  pending_.fetch_add(1, std::memory_order_relaxed);
  pool_.Schedule([this, session = std::move(session), layer] {
    Run(*session, layer);
    pending_.fetch_sub(1, std::memory_order_relaxed);
  });
}

void IndexBuilder::Run(Session& session, uint32_t layer) {
  const absl::Time start = absl::Now();
  const Session::BuildReport report =
      session.BuildIndex(layer, budget_, pool_, gpu_);
  build_nanos_.fetch_add(
      static_cast<uint64_t>(absl::ToInt64Nanoseconds(absl::Now() - start)),
      std::memory_order_relaxed);
  blocks_.fetch_add(report.blocks, std::memory_order_relaxed);
  if (report.status.ok()) return;
  failures_.fetch_add(1, std::memory_order_relaxed);
  IndexBuildFailure failure{session.id(), session.tenant(), layer,
                            report.status};
  if (on_failure_) {
    on_failure_(failure);
  } else {
    const std::string message = report.status.ToString();
    ABSL_RAW_LOG(WARNING, "wavekv: index build of session %s layer %u: %s",
                 failure.session_id.c_str(), layer, message.c_str());
  }
}

void IndexBuilder::AddStats(EngineStats& stats) const {
  stats.index_builds += blocks_.load(std::memory_order_relaxed);
  stats.index_build_failures += failures_.load(std::memory_order_relaxed);
  stats.index_build_seconds_total +=
      static_cast<double>(build_nanos_.load(std::memory_order_relaxed)) * 1e-9;
  stats.index_pending_layers += pending_.load(std::memory_order_relaxed);
}

}  // namespace wavekv
