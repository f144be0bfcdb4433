#include "transport/metrics.h"

#include <thread>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n');
}

TEST(MetricsTest, RendersRpcCountersHistogramsAndBytes) {
  auto registry = std::make_shared<prometheus::Registry>();
  ServerMetrics metrics(*registry);
  metrics.RecordRpc(RpcMethod::kAppend, absl::StatusCode::kOk,
                    absl::Microseconds(70), 1000, 20);
  metrics.RecordRpc(RpcMethod::kAppend, absl::StatusCode::kOk,
                    absl::Milliseconds(3), 500, 20);
  metrics.RecordRpc(RpcMethod::kAppend, absl::StatusCode::kInvalidArgument,
                    absl::Seconds(20), 7, 0);
  const std::string text = RenderMetricsText(*registry);
  const std::vector<std::string> lines = Lines(text);

  EXPECT_THAT(lines, Contains("# TYPE wavekv_rpc_requests_total counter"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_requests_total{code=\"OK\","
                              "method=\"Append\"} 2"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_requests_total{code="
                              "\"INVALID_ARGUMENT\",method=\"Append\"} 1"));
  // Every method has its OK series from the start.
  EXPECT_THAT(lines, Contains("wavekv_rpc_requests_total{code=\"OK\","
                              "method=\"CloseSession\"} 0"));
  EXPECT_THAT(text, Not(HasSubstr("code=\"NOT_FOUND\"")));

  EXPECT_THAT(lines, Contains("# TYPE wavekv_rpc_latency_seconds histogram"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_latency_seconds_bucket{method="
                              "\"Append\",le=\"5e-05\"} 0"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_latency_seconds_bucket{method="
                              "\"Append\",le=\"0.0001\"} 1"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_latency_seconds_bucket{method="
                              "\"Append\",le=\"0.005\"} 2"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_latency_seconds_bucket{method="
                              "\"Append\",le=\"10\"} 2"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_latency_seconds_bucket{method="
                              "\"Append\",le=\"+Inf\"} 3"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_latency_seconds_count{method="
                              "\"Append\"} 3"));

  EXPECT_THAT(lines, Contains("wavekv_rpc_received_bytes_total{method="
                              "\"Append\"} 1507"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_sent_bytes_total{method="
                              "\"Append\"} 40"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_sent_bytes_total{method="
                              "\"Retrieve\"} 0"));
  EXPECT_THAT(lines, Contains("# HELP wavekv_up 1 while the server accepts "
                              "RPCs, 0 while draining."));
}

TEST(MetricsTest, RefreshingCollectableCopiesEngineStatsAtScrape) {
  auto registry = std::make_shared<prometheus::Registry>();
  ServerMetrics metrics(*registry);
  metrics.SetUp(true);
  uint64_t scrapes = 0;
  RefreshingCollectable exposed(registry, [&] {
    ++scrapes;
    EngineStats stats;
    stats.sessions = 3;
    stats.memory_bytes = 1 << 20;
    stats.memory_budget_bytes = 8ull << 30;
    stats.tokens = 4096 * scrapes;
    stats.indexed_tokens = 1000 * scrapes;
    stats.index_pending_layers = 2;
    stats.index_builds = 5 * scrapes;
    stats.index_build_failures = 1;
    stats.index_build_seconds_total = 0.5 * scrapes;
    metrics.SetEngineStats(stats);
  });
  std::vector<std::string> lines = Lines(RenderMetricsText(exposed));
  EXPECT_THAT(lines, Contains("# TYPE wavekv_sessions gauge"));
  EXPECT_THAT(lines, Contains("wavekv_sessions 3"));
  EXPECT_THAT(lines, Contains("wavekv_memory_bytes 1048576"));
  EXPECT_THAT(lines, Contains("wavekv_memory_budget_bytes 8589934592"));
  EXPECT_THAT(lines, Contains("wavekv_tokens 4096"));
  EXPECT_THAT(lines, Contains("wavekv_up 1"));
  EXPECT_THAT(lines, Contains("wavekv_indexed_tokens 1000"));
  EXPECT_THAT(lines, Contains("wavekv_index_pending_layers 2"));
  EXPECT_THAT(lines, Contains("# TYPE wavekv_index_builds_total counter"));
  EXPECT_THAT(lines, Contains("wavekv_index_builds_total 5"));
  EXPECT_THAT(lines, Contains("wavekv_index_build_failures_total 1"));
  EXPECT_THAT(lines, Contains("wavekv_index_build_seconds_total 0.5"));
  lines = Lines(RenderMetricsText(exposed));
  EXPECT_THAT(lines, Contains("wavekv_tokens 8192"));
  // Counters follow the engine's totals.
  EXPECT_THAT(lines, Contains("wavekv_index_builds_total 10"));
  EXPECT_THAT(lines, Contains("wavekv_index_build_failures_total 1"));
  EXPECT_THAT(lines, Contains("wavekv_index_build_seconds_total 1"));
  metrics.SetUp(false);
  EXPECT_THAT(Lines(RenderMetricsText(exposed)), Contains("wavekv_up 0"));
}

TEST(MetricsTest, TierStorageAndGpuStatsWithTheirDenominators) {
  auto registry = std::make_shared<prometheus::Registry>();
  ServerMetrics metrics(*registry);
  EngineStats stats;
  stats.sessions = 10;
  stats.spilled_sessions = 4;
  stats.spilled_bytes = 4096;
  stats.spills = 7;
  stats.spill_failures = 1;
  stats.spilled_bytes_total = 9000;
  stats.restores = 3;
  stats.restore_failures = 2;
  stats.storage_write_ops = 100;
  stats.storage_write_errors = 5;
  stats.storage_no_space_errors = 3;
  stats.storage_bytes_written = 123456;
  stats.storage_wal_syncs = 40;
  stats.durable_lag_tokens = 17;
  stats.sessions_recovered = 6;
  stats.sessions_recovered_spilled = 2;
  stats.sessions_unusable = 1;
  stats.gpu_index_blocks = 11;
  stats.gpu_build_fallbacks = 1;
  stats.gpu_retrieve_calls = 20;
  stats.gpu_retrieve_fallbacks = 2;
  stats.arena_reserved_bytes = 1 << 26;
  metrics.SetEngineStats(stats);
  std::vector<std::string> lines = Lines(RenderMetricsText(*registry));
  EXPECT_THAT(lines, Contains("wavekv_sessions_by_tier{tier=\"memory\"} 6"));
  EXPECT_THAT(lines, Contains("wavekv_sessions_by_tier{tier=\"disk\"} 4"));
  EXPECT_THAT(lines, Contains("wavekv_spilled_bytes 4096"));
  EXPECT_THAT(lines, Contains("# TYPE wavekv_spills_total counter"));
  EXPECT_THAT(lines, Contains("wavekv_spills_total 7"));
  EXPECT_THAT(lines, Contains("wavekv_spill_failures_total 1"));
  EXPECT_THAT(lines, Contains("wavekv_spilled_bytes_total 9000"));
  EXPECT_THAT(lines, Contains("wavekv_restores_total 3"));
  EXPECT_THAT(lines, Contains("wavekv_restore_failures_total 2"));
  EXPECT_THAT(lines, Contains("wavekv_storage_write_ops_total 100"));
  EXPECT_THAT(lines, Contains("wavekv_storage_write_errors_total{kind="
                              "\"no_space\"} 3"));
  EXPECT_THAT(lines, Contains("wavekv_storage_write_errors_total{kind="
                              "\"other\"} 2"));
  EXPECT_THAT(lines, Contains("wavekv_storage_bytes_written_total 123456"));
  EXPECT_THAT(lines, Contains("wavekv_storage_wal_syncs_total 40"));
  EXPECT_THAT(lines, Contains("wavekv_durable_lag_tokens 17"));
  EXPECT_THAT(lines, Contains("wavekv_recovered_sessions{state=\"memory\"} 4"));
  EXPECT_THAT(lines, Contains("wavekv_recovered_sessions{state=\"disk\"} 2"));
  EXPECT_THAT(lines,
              Contains("wavekv_recovered_sessions{state=\"unusable\"} 1"));
  EXPECT_THAT(lines, Contains("wavekv_arena_reserved_bytes 67108864"));
  EXPECT_THAT(lines, Contains("wavekv_gpu_index_blocks_total 11"));
  EXPECT_THAT(lines, Contains("wavekv_gpu_build_fallbacks_total 1"));
  EXPECT_THAT(lines, Contains("wavekv_gpu_retrieve_calls_total 20"));
  EXPECT_THAT(lines, Contains("wavekv_gpu_retrieve_fallbacks_total 2"));

  // Counters follow the engine's totals; gauges follow its state.
  stats.spills = 9;
  stats.storage_write_errors = 6;  // one more "other"
  stats.spilled_sessions = 0;
  metrics.SetEngineStats(stats);
  lines = Lines(RenderMetricsText(*registry));
  EXPECT_THAT(lines, Contains("wavekv_spills_total 9"));
  EXPECT_THAT(lines, Contains("wavekv_storage_write_errors_total{kind="
                              "\"other\"} 3"));
  EXPECT_THAT(lines, Contains("wavekv_sessions_by_tier{tier=\"memory\"} 10"));
  EXPECT_THAT(lines, Contains("wavekv_sessions_by_tier{tier=\"disk\"} 0"));
}

TEST(MetricsTest, ConcurrentRecordingCountsEveryCall) {
  auto registry = std::make_shared<prometheus::Registry>();
  ServerMetrics metrics(*registry);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&metrics] {
      for (int i = 0; i < 500; ++i) {
        metrics.RecordRpc(RpcMethod::kRetrieve, absl::StatusCode::kNotFound,
                          absl::Microseconds(i), 10, 1);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  const std::vector<std::string> lines = Lines(RenderMetricsText(*registry));
  EXPECT_THAT(lines, Contains("wavekv_rpc_requests_total{code=\"NOT_FOUND\","
                              "method=\"Retrieve\"} 2000"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_received_bytes_total{method="
                              "\"Retrieve\"} 20000"));
}

TEST(MetricsTest, NamesAreStable) {
  EXPECT_EQ(RpcMethodName(RpcMethod::kFetchClusters), "FetchClusters");
  EXPECT_EQ(RpcMethodName(RpcMethod::kGetTransportInfo), "GetTransportInfo");
  const std::vector<double>& b = RpcLatencyBuckets();
  EXPECT_DOUBLE_EQ(b.front(), 50e-6);
  EXPECT_DOUBLE_EQ(b.back(), 10.0);
  EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
}

}  // namespace
}  // namespace wavekv
