#include "index/eval/methods.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "index/eval/eval_math.h"

namespace wavekv {
namespace eval {
namespace {

class MethodsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    WorkloadOptions o;
    o.num_tokens = 8192;
    o.head_dim = 64;
    auto w = Workload::Generate(o, 2);
    ASSERT_TRUE(w.ok()) << w.status();
    workload_ = new Workload(std::move(*w));
    MethodsOptions mo;
    mo.num_threads = 2;
    auto suite = MethodSuite::Build(*workload_, mo);
    ASSERT_TRUE(suite.ok()) << suite.status();
    suite_ = new MethodSuite(std::move(*suite));
  }
  static void TearDownTestSuite() {
    delete suite_;
    delete workload_;
  }

  static bool Sorted(const std::vector<uint64_t>& t) {
    return std::adjacent_find(t.begin(), t.end(), std::greater_equal<>()) ==
           t.end();
  }
  static bool Contains(const std::vector<uint64_t>& sorted, uint64_t t) {
    return std::binary_search(sorted.begin(), sorted.end(), t);
  }

  static Workload* workload_;
  static MethodSuite* suite_;
};
Workload* MethodsTest::workload_ = nullptr;
MethodSuite* MethodsTest::suite_ = nullptr;

TEST(MethodNamesTest, RoundTripAndUnknown) {
  for (Method m : kAllMethods) {
    auto parsed = ParseMethod(MethodName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  auto bad = ParseMethod("h2o");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("h2o"), std::string::npos);
  MethodsOptions o;
  o.quest_page_tokens = 0;
  EXPECT_NE(o.Validate().message().find("quest_page_tokens"),
            std::string::npos);
  o = MethodsOptions();
  o.index.cluster_size = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(MethodsTest, SteadyZoneIsSinksAndRecentWindow) {
  const WaveIndexParams p;
  const uint64_t n = workload_->num_tokens();
  const auto& steady = suite_->steady_tokens();
  ASSERT_EQ(steady.size(), p.sink_tokens + p.recent_tokens);
  for (uint64_t t = 0; t < p.sink_tokens; ++t) EXPECT_EQ(steady[t], t);
  EXPECT_EQ(steady.back(), n - 1);
  EXPECT_EQ(steady[p.sink_tokens], n - p.recent_tokens);
  EXPECT_GT(suite_->index().num_clusters(), 400u);
}

TEST_F(MethodsTest, WaveAttendsSteadyAndRetrievalZoneWithTail) {
  const Probe& probe = workload_->probes()[3];
  auto with = suite_->Wave(probe.queries, true);
  auto without = suite_->Wave(probe.queries, false);
  ASSERT_TRUE(with.ok() && without.ok());
  EXPECT_EQ(with->tokens, without->tokens);
  EXPECT_TRUE(without->tail.empty());
  ASSERT_EQ(with->tail.size(), workload_->group_size());
  EXPECT_FALSE(with->tail[0].empty());
  EXPECT_TRUE(Sorted(with->tokens));
  for (uint64_t t : suite_->steady_tokens()) {
    EXPECT_TRUE(Contains(with->tokens, t));
  }
  // Exactly the steady zone plus whole retrieval clusters:
  // ceil(0.018 * non-empty clusters) of them.
  const ZoneBudget budget = ComputeZoneBudget(
      WaveIndexParams(), suite_->index().num_nonempty_clusters());
  std::set<ClusterId> clusters;
  const auto slots = suite_->index().slot_tokens();
  for (ClusterId c = 0; c < suite_->index().num_clusters(); ++c) {
    const uint64_t b = suite_->index().cluster_offset(c);
    for (uint64_t s = b; s < b + suite_->index().cluster_size(c); ++s) {
      if (Contains(with->tokens, slots[s])) clusters.insert(c);
    }
  }
  EXPECT_EQ(clusters.size(), budget.retrieval_clusters);
  uint64_t tokens = suite_->steady_tokens().size();
  for (ClusterId c : clusters) {
    tokens += suite_->index().cluster_size(c);
  }
  EXPECT_EQ(with->tokens.size(), tokens);
}

TEST_F(MethodsTest, StreamingKeepsSinksAndTheMostRecentTokens) {
  const uint64_t n = workload_->num_tokens();
  const Selection s = suite_->StreamingLlm(300);
  ASSERT_EQ(s.tokens.size(), 300u);
  for (uint64_t t = 0; t < 4; ++t) EXPECT_EQ(s.tokens[t], t);
  EXPECT_EQ(s.tokens[4], n - 296);
  EXPECT_EQ(s.tokens.back(), n - 1);
  EXPECT_TRUE(s.tail.empty());
  EXPECT_EQ(suite_->StreamingLlm(n + 5).tokens.size(), n);
}

TEST_F(MethodsTest, QuestBoundIsAnUpperBoundOfEveryPageLogit) {
  const size_t d = workload_->head_dim();
  const double scale = 1.0 / std::sqrt(double(d));
  const uint64_t n = workload_->num_tokens();
  ASSERT_EQ(suite_->num_pages(), n / 16);
  for (const Probe& probe : workload_->probes()) {
    const float* q = probe.queries.data();
    for (size_t p = 0; p < suite_->num_pages(); p += 7) {
      double max_logit = -INFINITY;
      for (uint64_t t = p * 16; t < p * 16 + 16; ++t) {
        max_logit =
            std::max(max_logit, scale * Dot(q, &workload_->keys()[t * d], d));
      }
      ASSERT_GE(suite_->QuestUpperBound(q, p), max_logit - 1e-3) << p;
    }
  }
}

TEST_F(MethodsTest, QuestTakesWholePagesToTheBudgetAndFindsANeedle) {
  const Probe& probe = workload_->probes()[5];  // needle@50%
  const Needle& needle = workload_->needles()[probe.head_targets[0][0]];
  const uint64_t budget = 400;
  const Selection s = suite_->Quest(probe.queries, budget);
  EXPECT_TRUE(Sorted(s.tokens));
  EXPECT_GE(s.tokens.size(), budget);
  EXPECT_LT(s.tokens.size(), budget + 16);
  for (uint64_t t : suite_->steady_tokens()) {
    EXPECT_TRUE(Contains(s.tokens, t));
  }
  // Whole pages outside the steady zone.
  std::set<uint64_t> steady(suite_->steady_tokens().begin(),
                            suite_->steady_tokens().end());
  for (uint64_t t : s.tokens) {
    if (steady.count(t)) continue;
    for (uint64_t u = t / 16 * 16; u < t / 16 * 16 + 16; ++u) {
      ASSERT_TRUE(Contains(s.tokens, u)) << u;
    }
  }
  for (uint64_t t = needle.first_token;
       t < needle.first_token + needle.num_tokens; ++t) {
    EXPECT_TRUE(Contains(s.tokens, t)) << t;
  }
}

TEST_F(MethodsTest, RandomClustersAreSeededWholeClustersToTheBudget) {
  const uint64_t budget = 500;
  const Selection a = suite_->RandomClusters(budget, 1);
  const Selection b = suite_->RandomClusters(budget, 1);
  const Selection c = suite_->RandomClusters(budget, 2);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NE(a.tokens, c.tokens);
  EXPECT_TRUE(Sorted(a.tokens));
  uint32_t largest = 0;
  for (uint32_t s : suite_->index().cluster_sizes()) {
    largest = std::max(largest, s);
  }
  EXPECT_GE(a.tokens.size(), budget);
  EXPECT_LT(a.tokens.size(), budget + largest);
  for (uint64_t t : suite_->steady_tokens()) {
    EXPECT_TRUE(Contains(a.tokens, t));
  }
}

TEST(MethodSuiteTest, PrefillInBoundedBlocks) {
  WorkloadOptions o;
  o.num_tokens = 20480;
  o.head_dim = 64;
  o.needle_depths = {50};
  auto w = Workload::Generate(o, 2);
  ASSERT_TRUE(w.ok()) << w.status();
  MethodsOptions one, bounded;
  bounded.max_block_segments = 1;
  auto a = MethodSuite::Build(*w, one);
  auto b = MethodSuite::Build(*w, bounded);
  ASSERT_TRUE(a.ok() && b.ok());
  // Same indexed span: [sinks, n - recent).
  EXPECT_EQ(a->index().indexed_span(), b->index().indexed_span());
  EXPECT_EQ(b->index().indexed_span().end, o.num_tokens - 64);
  // Blocks of one 8192-token segment: every cluster lies inside its block.
  const auto slots = b->index().slot_tokens();
  for (ClusterId c = 0; c < b->index().num_clusters(); ++c) {
    const uint64_t begin = b->index().cluster_offset(c);
    for (uint64_t s = begin; s < begin + b->index().cluster_size(c); ++s) {
      ASSERT_EQ((slots[s] - 4) / 8192, (slots[begin] - 4) / 8192) << c;
    }
  }
  // With one block, some clusters take keys from several segments (the
  // final pass assigns every key against all centroids).
  const TokenSpan span = a->index().indexed_span();
  const std::vector<SegmentPlan> segs =
      PlanSegments(WaveIndexParams(), span.num_tokens());
  ASSERT_EQ(segs.size(), 2u);
  auto segment_of = [&](uint64_t t) { return t - span.begin < segs[0].end; };
  const auto slots_a = a->index().slot_tokens();
  bool crosses = false;
  for (ClusterId c = 0; c < a->index().num_clusters(); ++c) {
    const uint64_t begin = a->index().cluster_offset(c);
    for (uint64_t s = begin; s < begin + a->index().cluster_size(c); ++s) {
      crosses = crosses || segment_of(slots_a[s]) != segment_of(slots_a[begin]);
    }
  }
  EXPECT_TRUE(crosses);
  bounded.max_block_segments = 2000;
  EXPECT_NE(bounded.Validate().message().find("max_block_segments"),
            std::string::npos);
}

TEST(TopTokensTest, PicksTheHighestScoresTiesToLowerPositions) {
  const std::vector<double> scores = {0.1, 0.5, 0.5, 0.9, 0.0, 0.5};
  EXPECT_EQ(MethodSuite::TopTokens(scores, 3).tokens,
            (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(MethodSuite::TopTokens(scores, 1).tokens,
            (std::vector<uint64_t>{3}));
  EXPECT_EQ(MethodSuite::TopTokens(scores, 10).tokens.size(), 6u);
}

}  // namespace
}  // namespace eval
}  // namespace wavekv
