#include "index/wave_index_params.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace wavekv {
namespace {

void ExpectInvalid(const WaveIndexParams& p, const std::string& field) {
  const absl::Status s = p.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_NE(s.message().find("index_options." + field), std::string::npos)
      << s.message();
}

TEST(WaveIndexParamsTest, DefaultsAreValid) {
  const WaveIndexParams p;
  EXPECT_TRUE(p.Validate().ok());
  EXPECT_EQ(p.sink_tokens, 4u);
  EXPECT_EQ(p.recent_tokens, 64u);
  EXPECT_EQ(p.segment_tokens, 8192u);
  EXPECT_EQ(p.cluster_size, 16u);
  EXPECT_EQ(p.kmeans_iterations, 9u);
  EXPECT_EQ(p.update_tokens, 1024u);
  EXPECT_FLOAT_EQ(p.retrieval_fraction, 0.018f);
  EXPECT_FLOAT_EQ(p.estimation_fraction, 0.232f);
}

TEST(WaveIndexParamsTest, RejectsOutOfRangeNamingTheField) {
  WaveIndexParams p;
  p.sink_tokens = 4097;
  ExpectInvalid(p, "sink_tokens");
  p = {};
  p.recent_tokens = 65537;
  ExpectInvalid(p, "recent_tokens");
  p = {};
  p.segment_tokens = 63;
  ExpectInvalid(p, "segment_tokens");
  p = {};
  p.cluster_size = 0;
  ExpectInvalid(p, "cluster_size");
  p = {};
  p.kmeans_iterations = 0;
  ExpectInvalid(p, "kmeans_iterations");
  p = {};
  p.kmeans_iterations = 101;
  ExpectInvalid(p, "kmeans_iterations");
  p = {};
  p.update_tokens = 8;
  ExpectInvalid(p, "update_tokens");
  p = {};
  p.update_tokens = 1000;  // not a multiple of 16
  ExpectInvalid(p, "update_tokens");
  p = {};
  p.retrieval_fraction = 0.0f;
  ExpectInvalid(p, "retrieval_fraction");
  p.retrieval_fraction = std::numeric_limits<float>::quiet_NaN();
  ExpectInvalid(p, "retrieval_fraction");
  p = {};
  p.estimation_fraction = -0.1f;
  ExpectInvalid(p, "estimation_fraction");
  p.estimation_fraction = std::numeric_limits<float>::quiet_NaN();
  ExpectInvalid(p, "estimation_fraction");
  p = {};
  p.retrieval_fraction = 0.5f;
  p.estimation_fraction = 0.6f;
  ExpectInvalid(p, "estimation_fraction");
  p.estimation_fraction = 0.5f;
  EXPECT_TRUE(p.Validate().ok());
  p = {};
  p.sink_tokens = 0;
  p.recent_tokens = 0;
  p.retrieval_fraction = 1.0f;
  p.estimation_fraction = 0.0f;
  EXPECT_TRUE(p.Validate().ok());
}

TEST(WaveIndexParamsTest, NextIndexBlockFollowsPrefillAndDecodeRule) {
  const WaveIndexParams p;  // sink 4, recent 64, update 1024
  // Too short: 4 + 64 + 1023 tokens.
  EXPECT_TRUE(NextIndexBlock(p, 1091, 0).empty());
  EXPECT_TRUE(NextIndexBlock(p, 0, 0).empty());
  EXPECT_TRUE(NextIndexBlock(p, 3, 0).empty());
  EXPECT_EQ(NextIndexBlock(p, 1092, 0), (TokenSpan{4, 1028}));
  // Prefill of 20000: everything between the sinks and the recent window.
  EXPECT_EQ(NextIndexBlock(p, 20000, 0), (TokenSpan{4, 19936}));
  // Decode: nothing until 1024 tokens wait beyond the recent window.
  EXPECT_TRUE(NextIndexBlock(p, 20000 + 1023, 19936).empty());
  EXPECT_EQ(NextIndexBlock(p, 20000 + 1024, 19936), (TokenSpan{19936, 20960}));
  // A large append after the index: all of it at once.
  EXPECT_EQ(NextIndexBlock(p, 50000, 19936), (TokenSpan{19936, 49936}));
  WaveIndexParams q;
  q.sink_tokens = 0;
  q.recent_tokens = 0;
  q.update_tokens = 16;
  q.cluster_size = 16;
  EXPECT_EQ(NextIndexBlock(q, 16, 0), (TokenSpan{0, 16}));
  EXPECT_TRUE(NextIndexBlock(q, 15, 0).empty());
}

TEST(WaveIndexParamsTest, SteadySpans) {
  EXPECT_TRUE(SteadySpans(0, {}).empty());
  EXPECT_EQ(SteadySpans(100, {}), (std::vector<TokenSpan>{{0, 100}}));
  EXPECT_EQ(SteadySpans(2000, {4, 1028}),
            (std::vector<TokenSpan>{{0, 4}, {1028, 2000}}));
  EXPECT_EQ(SteadySpans(1028, {0, 1028}), (std::vector<TokenSpan>{}));
  EXPECT_EQ(SteadySpans(1100, {0, 1028}),
            (std::vector<TokenSpan>{{1028, 1100}}));
}

TEST(WaveIndexParamsTest, PlanSegments) {
  const WaveIndexParams p;
  EXPECT_TRUE(PlanSegments(p, 0).empty());
  auto one = PlanSegments(p, 1024);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].begin, 0u);
  EXPECT_EQ(one[0].end, 1024u);
  EXPECT_EQ(one[0].num_clusters, 64u);
  auto tiny = PlanSegments(p, 5);
  ASSERT_EQ(tiny.size(), 1u);
  EXPECT_EQ(tiny[0].num_clusters, 1u);
  auto big = PlanSegments(p, 131072);
  ASSERT_EQ(big.size(), 16u);
  uint64_t expect = 0, clusters = 0;
  for (const auto& s : big) {
    EXPECT_EQ(s.begin, expect);
    EXPECT_EQ(s.end - s.begin, 8192u);
    EXPECT_EQ(s.num_clusters, 512u);
    expect = s.end;
    clusters += s.num_clusters;
  }
  EXPECT_EQ(clusters, 8192u);
  // 20000 tokens: round(20000/8192) = 2 segments of 10000, 625 clusters each.
  auto mid = PlanSegments(p, 20000);
  ASSERT_EQ(mid.size(), 2u);
  EXPECT_EQ(mid[0].end, 10000u);
  EXPECT_EQ(mid[1].end, 20000u);
  EXPECT_EQ(mid[0].num_clusters, 625u);
}

TEST(WaveIndexParamsTest, ZoneBudget) {
  const WaveIndexParams p;
  auto b = ComputeZoneBudget(p, 0);
  EXPECT_EQ(b.retrieval_clusters, 0u);
  EXPECT_EQ(b.estimation_clusters, 0u);
  b = ComputeZoneBudget(p, 1);
  EXPECT_EQ(b.retrieval_clusters, 1u);
  EXPECT_EQ(b.estimation_clusters, 0u);
  b = ComputeZoneBudget(p, 64);
  EXPECT_EQ(b.retrieval_clusters, 2u);    // ceil(1.152)
  EXPECT_EQ(b.estimation_clusters, 15u);  // ceil(14.848)
  b = ComputeZoneBudget(p, 1000);
  EXPECT_EQ(b.retrieval_clusters, 18u);  // 0.018f * 1000 = 17.99999...
  EXPECT_EQ(b.estimation_clusters, 232u);
  b = ComputeZoneBudget(p, 8192);
  EXPECT_EQ(b.retrieval_clusters, 148u);
  EXPECT_EQ(b.estimation_clusters, 1901u);
  WaveIndexParams all;
  all.retrieval_fraction = 1.0f;
  all.estimation_fraction = 0.0f;
  b = ComputeZoneBudget(all, 77);
  EXPECT_EQ(b.retrieval_clusters, 77u);
  EXPECT_EQ(b.estimation_clusters, 0u);
  WaveIndexParams half;
  half.retrieval_fraction = 0.5f;
  half.estimation_fraction = 0.5f;
  b = ComputeZoneBudget(half, 3);
  EXPECT_EQ(b.retrieval_clusters, 2u);
  EXPECT_EQ(b.estimation_clusters, 1u);  // capped at n - r
}

}  // namespace
}  // namespace wavekv
