#include "transport/metrics.h"

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
                            "planning on a GPU (--gpu), 0 on the CPU.")) {
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
  absl::MutexLock lock(&engine_counters_mu_);
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
