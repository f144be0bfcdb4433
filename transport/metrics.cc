#include "transport/metrics.h"

#include <algorithm>
#include <sstream>
#include <string>

#include "prometheus/text_serializer.h"
#include "transport/status.h"

namespace wavekv {
namespace {

prometheus::Gauge& AddGauge(prometheus::Registry& registry,
                            const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add(
      {});
}

prometheus::Counter& AddCounter(prometheus::Registry& registry,
                                const std::string& name,
                                const std::string& help) {
  return prometheus::BuildCounter()
      .Name(name)
      .Help(help)
      .Register(registry)
      .Add({});
}

// Raises `counter` to the engine's running `total` (never lowers it).
void FollowTotal(prometheus::Counter& counter, double total) {
  const double delta = total - counter.Value();
  if (delta > 0) counter.Increment(delta);
}

// One labelled series of a gauge family registered once per name.
prometheus::Family<prometheus::Gauge>& GaugeFamily(
    prometheus::Registry& registry, const std::string& name,
    const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Counter>& CounterFamily(
    prometheus::Registry& registry, const std::string& name,
    const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

std::string MethodLabel(size_t i) {
  return std::string(RpcMethodName(static_cast<RpcMethod>(i)));
}

}  // namespace

absl::string_view RpcMethodName(RpcMethod method) {
  switch (method) {
    case RpcMethod::kCreateSession:
      return "CreateSession";
    case RpcMethod::kAppend:
      return "Append";
    case RpcMethod::kRetrieve:
      return "Retrieve";
    case RpcMethod::kFetchClusters:
      return "FetchClusters";
    case RpcMethod::kGetTransportInfo:
      return "GetTransportInfo";
    case RpcMethod::kGetSession:
      return "GetSession";
    case RpcMethod::kListSessions:
      return "ListSessions";
    case RpcMethod::kCloseSession:
      return "CloseSession";
  }
  return "unknown";
}

const std::vector<double>& RpcLatencyBuckets() {
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
      50e-3, 100e-3, 250e-3, 500e-3, 1.0,  2.5,    5.0,  10.0};
  return *kBuckets;
}

ServerMetrics::ServerMetrics(prometheus::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name("wavekv_rpc_requests_total")
                    .Help("wavekv.v1.WaveKv RPCs finished, by method and "
                          "status code.")
                    .Register(registry)),
      sessions_(AddGauge(registry, "wavekv_sessions", "Open sessions.")),
      memory_bytes_(AddGauge(registry, "wavekv_memory_bytes",
                             "Host memory held by session K/V, in bytes.")),
      memory_budget_bytes_(
          AddGauge(registry, "wavekv_memory_budget_bytes",
                   "Host memory budget for session K/V, in bytes.")),
      tokens_(AddGauge(registry, "wavekv_tokens",
                       "Tokens stored: sum over sessions of tokens times "
                       "layers.")),
      indexed_tokens_(AddGauge(registry, "wavekv_indexed_tokens",
                               "Tokens covered by wave indexes: sum over "
                               "sessions and layers.")),
      index_pending_layers_(
          AddGauge(registry, "wavekv_index_pending_layers",
                   "(session, layer) index builds queued or running.")),
      index_builds_(AddCounter(registry, "wavekv_index_builds_total",
                               "Wave-index blocks clustered and installed.")),
      index_build_failures_(AddCounter(registry,
                                       "wavekv_index_build_failures_total",
                                       "Wave-index builds that failed.")),
      index_build_seconds_(AddCounter(registry,
                                      "wavekv_index_build_seconds_total",
                                      "Seconds spent building wave indexes.")),
      up_(AddGauge(registry, "wavekv_up",
                   "1 while the server accepts RPCs, 0 while draining.")),
      gpu_enabled_(AddGauge(registry, "wavekv_gpu_enabled",
                            "1 when the engine runs index builds and WAVE "
                            "planning on a GPU (--gpu), 0 on the CPU.")),
      sessions_by_tier_(GaugeFamily(
          registry, "wavekv_sessions_by_tier",
          "Open sessions by where their K/V is: memory (host arena) or disk "
          "(spilled to the persistent tier).")),
      recovered_sessions_(GaugeFamily(
          registry, "wavekv_recovered_sessions",
          "Sessions found on disk at the last start: restored to memory, "
          "left on disk (memory budget full; restored on access), or "
          "unusable (records failed their check).")),
      storage_write_errors_(CounterFamily(
          registry, "wavekv_storage_write_errors_total",
          "Persistent-tier writes and WAL syncs that failed, by kind: "
          "no_space (disk full) or other.")),
      sessions_in_memory_(sessions_by_tier_.Add({{"tier", "memory"}})),
      sessions_on_disk_(sessions_by_tier_.Add({{"tier", "disk"}})),
      spilled_bytes_(AddGauge(registry, "wavekv_spilled_bytes",
                              "Host memory the spilled sessions held when "
                              "they were spilled, in bytes.")),
      durable_lag_tokens_(AddGauge(
          registry, "wavekv_durable_lag_tokens",
          "Tokens appended to ASYNC/SYNC sessions that are not durable yet "
          "(sum over sessions of num_tokens - durable_tokens).")),
      recovered_memory_(recovered_sessions_.Add({{"state", "memory"}})),
      recovered_disk_(recovered_sessions_.Add({{"state", "disk"}})),
      recovered_unusable_(recovered_sessions_.Add({{"state", "unusable"}})),
      arena_reserved_bytes_(AddGauge(registry, "wavekv_arena_reserved_bytes",
                                     "Bytes mapped by the pinned host "
                                     "arena's slabs.")),
      arena_locked_bytes_(AddGauge(registry, "wavekv_arena_locked_bytes",
                                   "Bytes of the host arena locked in RAM "
                                   "(mlock).")),
      arena_fragmentation_(AddGauge(registry, "wavekv_arena_fragmentation",
                                    "Host arena fragmentation: 1 - largest "
                                    "free run / free pages.")),
      spills_(AddCounter(registry, "wavekv_spills_total",
                         "Sessions spilled to disk to make room in the "
                         "memory budget.")),
      spill_failures_(AddCounter(registry, "wavekv_spill_failures_total",
                                 "Spills the disk refused (attempts = "
                                 "spills + spill failures).")),
      spilled_bytes_total_(AddCounter(registry, "wavekv_spilled_bytes_total",
                                      "Host memory freed by spills, in "
                                      "bytes.")),
      restores_(AddCounter(registry, "wavekv_restores_total",
                           "Spilled sessions restored to memory on access.")),
      restore_failures_(AddCounter(registry, "wavekv_restore_failures_total",
                                   "Restores that failed (attempts = "
                                   "restores + restore failures).")),
      storage_write_ops_(AddCounter(
          registry, "wavekv_storage_write_ops_total",
          "Persistent-tier writes and WAL syncs attempted (the denominator "
          "of wavekv_storage_write_errors_total).")),
      storage_no_space_errors_(
          storage_write_errors_.Add({{"kind", "no_space"}})),
      storage_other_errors_(storage_write_errors_.Add({{"kind", "other"}})),
      storage_bytes_written_(AddCounter(
          registry, "wavekv_storage_bytes_written_total",
          "Bytes of record batches written to the persistent tier.")),
      storage_wal_syncs_(AddCounter(registry, "wavekv_storage_wal_syncs_total",
                                    "WAL fsyncs of the persistent tier "
                                    "(SYNC appends share them).")),
      gpu_index_blocks_(AddCounter(registry, "wavekv_gpu_index_blocks_total",
                                   "Index blocks clustered on the GPU.")),
      gpu_build_fallbacks_(AddCounter(
          registry, "wavekv_gpu_build_fallbacks_total",
          "GPU clustering batches (one block of a layer's kv heads) that "
          "failed and were redone on the CPU.")),
      gpu_retrieve_calls_(AddCounter(registry,
                                     "wavekv_gpu_retrieve_calls_total",
                                     "Retrieve calls planned on the GPU.")),
      gpu_retrieve_fallbacks_(AddCounter(
          registry, "wavekv_gpu_retrieve_fallbacks_total",
          "Retrieve calls whose GPU planning failed and was redone on the "
          "CPU (attempts = GPU calls + retrieve fallbacks).")) {
  auto& latency = prometheus::BuildHistogram()
                      .Name("wavekv_rpc_latency_seconds")
                      .Help(
                          "wavekv.v1.WaveKv RPC latency in seconds, by "
                          "method (server side, to the final status).")
                      .Register(registry);
  auto& received = prometheus::BuildCounter()
                       .Name("wavekv_rpc_received_bytes_total")
                       .Help(
                           "Serialized bytes of request messages, by "
                           "method.")
                       .Register(registry);
  auto& sent = prometheus::BuildCounter()
                   .Name("wavekv_rpc_sent_bytes_total")
                   .Help(
                       "Serialized bytes of response messages (all "
                       "streamed messages included), by method.")
                   .Register(registry);
  for (size_t i = 0; i < kNumRpcMethods; ++i) {
    const prometheus::Labels labels = {{"method", MethodLabel(i)}};
    latency_[i] = &latency.Add(labels, RpcLatencyBuckets());
    received_bytes_[i] = &received.Add(labels);
    sent_bytes_[i] = &sent.Add(labels);
    // Successful calls show up as 0 before the first one; error codes
    // appear when they first happen.
    RequestCounter(static_cast<RpcMethod>(i), absl::StatusCode::kOk);
  }
}

prometheus::Counter& ServerMetrics::RequestCounter(RpcMethod method,
                                                   absl::StatusCode code) {
  size_t c = static_cast<size_t>(code);
  if (c >= kNumCodes) c = static_cast<size_t>(absl::StatusCode::kUnknown);
  std::atomic<prometheus::Counter*>& slot =
      request_counters_[static_cast<size_t>(method)][c];
  prometheus::Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    counter = &requests_.Add(
        {{"method", std::string(RpcMethodName(method))},
         {"code",
          std::string(StatusCodeName(static_cast<absl::StatusCode>(c)))}});
    slot.store(counter, std::memory_order_release);
  }
  return *counter;
}

void ServerMetrics::RecordRpc(RpcMethod method, absl::StatusCode code,
                              absl::Duration latency, uint64_t received_bytes,
                              uint64_t sent_bytes) {
  const size_t m = static_cast<size_t>(method);
  RequestCounter(method, code).Increment();
  latency_[m]->Observe(absl::ToDoubleSeconds(latency));
  received_bytes_[m]->Increment(static_cast<double>(received_bytes));
  sent_bytes_[m]->Increment(static_cast<double>(sent_bytes));
}

void ServerMetrics::SetEngineStats(const EngineStats& stats) {
  sessions_.Set(static_cast<double>(stats.sessions));
  memory_bytes_.Set(static_cast<double>(stats.memory_bytes));
  memory_budget_bytes_.Set(static_cast<double>(stats.memory_budget_bytes));
  tokens_.Set(static_cast<double>(stats.tokens));
  indexed_tokens_.Set(static_cast<double>(stats.indexed_tokens));
  index_pending_layers_.Set(static_cast<double>(stats.index_pending_layers));
  gpu_enabled_.Set(stats.gpu_device >= 0 ? 1.0 : 0.0);
  const uint64_t on_disk = std::min(stats.spilled_sessions, stats.sessions);
  sessions_in_memory_.Set(static_cast<double>(stats.sessions - on_disk));
  sessions_on_disk_.Set(static_cast<double>(on_disk));
  spilled_bytes_.Set(static_cast<double>(stats.spilled_bytes));
  durable_lag_tokens_.Set(static_cast<double>(stats.durable_lag_tokens));
  const uint64_t recovered_disk =
      std::min(stats.sessions_recovered_spilled, stats.sessions_recovered);
  recovered_memory_.Set(
      static_cast<double>(stats.sessions_recovered - recovered_disk));
  recovered_disk_.Set(static_cast<double>(recovered_disk));
  recovered_unusable_.Set(static_cast<double>(stats.sessions_unusable));
  arena_reserved_bytes_.Set(static_cast<double>(stats.arena_reserved_bytes));
  arena_locked_bytes_.Set(static_cast<double>(stats.arena_locked_bytes));
  arena_fragmentation_.Set(stats.arena_fragmentation);
  absl::MutexLock lock(&engine_counters_mu_);
  FollowTotal(spills_, static_cast<double>(stats.spills));
  FollowTotal(spill_failures_, static_cast<double>(stats.spill_failures));
  FollowTotal(spilled_bytes_total_,
              static_cast<double>(stats.spilled_bytes_total));
  FollowTotal(restores_, static_cast<double>(stats.restores));
  FollowTotal(restore_failures_, static_cast<double>(stats.restore_failures));
  FollowTotal(storage_write_ops_, static_cast<double>(stats.storage_write_ops));
  const uint64_t no_space =
      std::min(stats.storage_no_space_errors, stats.storage_write_errors);
  FollowTotal(storage_no_space_errors_, static_cast<double>(no_space));
  FollowTotal(storage_other_errors_,
              static_cast<double>(stats.storage_write_errors - no_space));
  FollowTotal(storage_bytes_written_,
              static_cast<double>(stats.storage_bytes_written));
  FollowTotal(storage_wal_syncs_, static_cast<double>(stats.storage_wal_syncs));
  FollowTotal(gpu_index_blocks_, static_cast<double>(stats.gpu_index_blocks));
  FollowTotal(gpu_build_fallbacks_,
              static_cast<double>(stats.gpu_build_fallbacks));
  FollowTotal(gpu_retrieve_calls_,
              static_cast<double>(stats.gpu_retrieve_calls));
  FollowTotal(gpu_retrieve_fallbacks_,
              static_cast<double>(stats.gpu_retrieve_fallbacks));
  FollowTotal(index_builds_, static_cast<double>(stats.index_builds));
  FollowTotal(index_build_failures_,
              static_cast<double>(stats.index_build_failures));
  FollowTotal(index_build_seconds_, stats.index_build_seconds_total);
}

void ServerMetrics::SetUp(bool up) { up_.Set(up ? 1.0 : 0.0); }

std::vector<prometheus::MetricFamily> RefreshingCollectable::Collect() const {
  if (refresh_) refresh_();
  return registry_->Collect();
}

std::string RenderMetricsText(const prometheus::Collectable& collectable) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, collectable.Collect());
  return out.str();
}

}  // namespace wavekv
