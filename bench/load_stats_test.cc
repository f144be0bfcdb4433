#include "bench/load_stats.h"

#include <unistd.h>

#include "gtest/gtest.h"

namespace wavekv::bench {
namespace {

TEST(OpStatsTest, PercentilesAreNearestRank) {
  OpStats stats;
  for (int i = 100; i >= 1; --i) stats.RecordOk(absl::Microseconds(i), 10);
  EXPECT_EQ(stats.ok(), 100u);
  EXPECT_EQ(stats.bytes(), 1000u);
  EXPECT_EQ(stats.Percentile(50), absl::Microseconds(50));
  EXPECT_EQ(stats.Percentile(99), absl::Microseconds(99));
  EXPECT_EQ(stats.Percentile(100), absl::Microseconds(100));
  EXPECT_EQ(stats.Percentile(0), absl::Microseconds(1));
  EXPECT_EQ(stats.Mean(), absl::Microseconds(50.5));
}

TEST(OpStatsTest, MergesSamplesAndErrorCodes) {
  OpStats a, b;
  a.RecordOk(absl::Milliseconds(1), 1);
  a.RecordError("UNAVAILABLE");
  b.RecordOk(absl::Milliseconds(3), 2);
  b.RecordError("UNAVAILABLE");
  b.RecordError("RESOURCE_EXHAUSTED");
  a.Merge(b);
  EXPECT_EQ(a.ok(), 2u);
  EXPECT_EQ(a.errors(), 3u);
  EXPECT_EQ(a.errors_by_code().at("UNAVAILABLE"), 2u);
  EXPECT_EQ(a.Percentile(100), absl::Milliseconds(3));
  OpStats empty;
  EXPECT_EQ(empty.Percentile(50), absl::ZeroDuration());
}

TEST(ProcStatusTest, ParsesRssAndPeak) {
  auto m = ParseProcStatus(
      "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->rss_bytes, 1024u * 1024);
  EXPECT_EQ(m->peak_bytes, 2048u * 1024);
  EXPECT_FALSE(ParseProcStatus("Name:\tx\n").ok());
  EXPECT_FALSE(ParseProcStatus("VmRSS: x kB\nVmHWM: 1 kB\n").ok());
}

TEST(ProcStatusTest, ReadsThisProcess) {
  auto m = ReadProcMemory(::getpid());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_GT(m->rss_bytes, 0u);
  EXPECT_GE(m->peak_bytes, m->rss_bytes);
}

}  // namespace
}  // namespace wavekv::bench
