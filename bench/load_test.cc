// wavekv-load's run against a real server for a couple of seconds: every op
// kind is exercised, nothing fails, memory is sampled.
#include <sstream>

#include "bench/load_driver.h"
#include "gtest/gtest.h"
#include "tests/kv_pattern.h"

namespace wavekv::bench {
namespace {

TEST(LoadTest, ShortMixedRunAgainstARealServer) {
  LoadOptions o;
  o.sessions = 4;
  o.threads = 2;
  o.duration = absl::Seconds(2);
  o.prefill_tokens = 512;
  o.chunk_tokens = 128;
  o.prefill_fraction = 0.2;
  o.shape = testing::MakeShape(2, 4, 2, 64, v1::DTYPE_FP16);
  o.sample_interval = absl::Milliseconds(100);
  auto report = RunLoad(o);
  ASSERT_TRUE(report.ok()) << report.status();
  std::ostringstream text;
  PrintLoadReport(*report, /*markdown=*/false, 5, text);
  std::cerr << text.str();
  ASSERT_GE(report->rows.size(), 5u) << text.str();
  for (const OpRow& row : report->rows) {
    EXPECT_GT(row.ok, 0u) << row.op;
    EXPECT_EQ(row.errors, 0u) << row.op;
    EXPECT_LE(row.p50, row.p99) << row.op;
  }
  EXPECT_GT(report->max_rss_bytes, 0u);
  EXPECT_GE(report->max_rss_bytes, report->idle_rss_bytes);
  EXPECT_EQ(report->stored_bytes % (2 * 2 * 2 * 64 * 2), 0u);
  EXPECT_GE(report->stored_bytes, 4u * 512 * 2 * (2 * 2 * 64 * 2));
  EXPECT_GT(report->memory_budget_bytes, 0u);
  std::ostringstream md;
  PrintLoadReport(*report, /*markdown=*/true, 5, md);
  EXPECT_NE(md.str().find("| op | ok |"), std::string::npos) << md.str();
}

TEST(LoadTest, RefusesNonLoopbackTargets) {
  LoadOptions o;
  o.target = "10.0.0.1:7070";
  EXPECT_EQ(RunLoad(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.target = "";
  o.duration = absl::Hours(2);
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace wavekv::bench
