// Prometheus metrics of the gRPC service. The registry is passed in
// explicitly (no global registry); labels are bounded: RPC method names and
// status code names only, never session ids or tenants.
//
//   wavekv_rpc_requests_total{method,code}      counter
//   wavekv_rpc_latency_seconds{method}          histogram, 50us .. 10s
//   wavekv_rpc_received_bytes_total{method}     counter (request messages)
//   wavekv_rpc_sent_bytes_total{method}         counter (response messages)
//   wavekv_sessions, wavekv_memory_bytes, wavekv_memory_budget_bytes,
//   wavekv_tokens, wavekv_indexed_tokens,
//   wavekv_index_pending_layers                 gauges from Engine::Stats()
//   wavekv_index_builds_total, wavekv_index_build_failures_total,
//   wavekv_index_build_seconds_total            counters from Engine::Stats()
//   wavekv_up                                   gauge, 1 while serving
//   wavekv_gpu_enabled                          gauge, 1 on the GPU backend
// Memory tiers and the persistent tier (EngineStats; counters follow the
// engine's totals, each with its denominator so ratios can be computed):
//   wavekv_sessions_by_tier{tier="memory|disk"} gauge
//   wavekv_spilled_bytes                        gauge (held by spilled ones)
//   wavekv_spills_total, wavekv_spill_failures_total (attempts = sum),
//   wavekv_spilled_bytes_total,
//   wavekv_restores_total, wavekv_restore_failures_total (attempts = sum)
//   wavekv_storage_write_ops_total              counter (writes + WAL syncs)
//   wavekv_storage_write_errors_total{kind="no_space|other"}  counter
//   wavekv_storage_bytes_written_total, wavekv_storage_wal_syncs_total
//   wavekv_durable_lag_tokens                   gauge (ASYNC not yet durable)
//   wavekv_recovered_sessions{state="memory|disk|unusable"}  gauge (at Open)
//   wavekv_arena_reserved_bytes, wavekv_arena_locked_bytes,
//   wavekv_arena_fragmentation                  gauges
//   wavekv_gpu_index_blocks_total, wavekv_gpu_build_fallbacks_total,
//   wavekv_gpu_retrieve_calls_total, wavekv_gpu_retrieve_fallbacks_total
//
// Engine gauges are refreshed at scrape time: expose a
// RefreshingCollectable (which calls SetEngineStats before collecting)
// instead of the bare registry.
//
// Thread-safe: every method may be called concurrently.
#ifndef WAVEKV_TRANSPORT_METRICS_H_
#define WAVEKV_TRANSPORT_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvstore/engine.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace wavekv {

// The RPCs of wavekv.v1.WaveKv, as metric label values.
enum class RpcMethod : uint8_t {
  kCreateSession,
  kAppend,
  kRetrieve,
  kFetchClusters,
  kGetTransportInfo,
  kGetSession,
  kListSessions,
  kCloseSession,
};
inline constexpr size_t kNumRpcMethods = 8;

// "CreateSession", "Append", ... (the proto's method names).
absl::string_view RpcMethodName(RpcMethod method);

// Latency histogram bucket bounds in seconds: 50us .. 10s.
const std::vector<double>& RpcLatencyBuckets();

class ServerMetrics {
 public:
  // Registers the families in `registry`, which must outlive this object.
  explicit ServerMetrics(prometheus::Registry& registry);

  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Records one finished RPC: its final code, wall time, and the bytes of
  // the request and response messages (serialized sizes).
  void RecordRpc(RpcMethod method, absl::StatusCode code,
                 absl::Duration latency, uint64_t received_bytes,
                 uint64_t sent_bytes);

  void SetEngineStats(const EngineStats& stats);
  void SetUp(bool up);

 private:
  static constexpr size_t kNumCodes = 17;

  prometheus::Counter& RequestCounter(RpcMethod method, absl::StatusCode code);

  prometheus::Family<prometheus::Counter>& requests_;
  // Lazily added {method, code} series; Family::Add returns the same
  // object for the same labels, so a racing double-Add is harmless.
  std::array<std::array<std::atomic<prometheus::Counter*>, kNumCodes>,
             kNumRpcMethods>
      request_counters_{};
  std::array<prometheus::Histogram*, kNumRpcMethods> latency_{};
  std::array<prometheus::Counter*, kNumRpcMethods> received_bytes_{};
  std::array<prometheus::Counter*, kNumRpcMethods> sent_bytes_{};
  prometheus::Gauge& sessions_;
  prometheus::Gauge& memory_bytes_;
  prometheus::Gauge& memory_budget_bytes_;
  prometheus::Gauge& tokens_;
  prometheus::Gauge& indexed_tokens_;
  prometheus::Gauge& index_pending_layers_;
  // Follow the engine's totals (incremented by the difference).
  absl::Mutex engine_counters_mu_;
  prometheus::Counter& index_builds_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& index_build_failures_
      ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& index_build_seconds_
      ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Gauge& up_;
  prometheus::Gauge& gpu_enabled_;

  // Tiers, storage and GPU (see the list above). Families with labels
  // first: their series below are initialised from them.
  prometheus::Family<prometheus::Gauge>& sessions_by_tier_;
  prometheus::Family<prometheus::Gauge>& recovered_sessions_;
  prometheus::Family<prometheus::Counter>& storage_write_errors_;
  prometheus::Gauge& sessions_in_memory_;
  prometheus::Gauge& sessions_on_disk_;
  prometheus::Gauge& spilled_bytes_;
  prometheus::Gauge& durable_lag_tokens_;
  prometheus::Gauge& recovered_memory_;
  prometheus::Gauge& recovered_disk_;
  prometheus::Gauge& recovered_unusable_;
  prometheus::Gauge& arena_reserved_bytes_;
  prometheus::Gauge& arena_locked_bytes_;
  prometheus::Gauge& arena_fragmentation_;
  prometheus::Counter& spills_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& spill_failures_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& spilled_bytes_total_
      ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& restores_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& restore_failures_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& storage_write_ops_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& storage_no_space_errors_
      ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& storage_other_errors_
      ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& storage_bytes_written_
      ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& storage_wal_syncs_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& gpu_index_blocks_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& gpu_build_fallbacks_
      ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& gpu_retrieve_calls_ ABSL_GUARDED_BY(engine_counters_mu_);
  prometheus::Counter& gpu_retrieve_fallbacks_
      ABSL_GUARDED_BY(engine_counters_mu_);
};

// A Collectable that runs `refresh` (e.g. copying Engine::Stats() into the
// gauges) and then collects `registry`. Register this with the Exposer.
// Thread-safe if `refresh` is.
class RefreshingCollectable : public prometheus::Collectable {
 public:
  RefreshingCollectable(std::shared_ptr<prometheus::Registry> registry,
                        std::function<void()> refresh)
      : registry_(std::move(registry)), refresh_(std::move(refresh)) {}

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::shared_ptr<prometheus::Registry> registry_;
  const std::function<void()> refresh_;
};

// The text exposition format of `collectable` (what /metrics serves).
std::string RenderMetricsText(const prometheus::Collectable& collectable);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_METRICS_H_
