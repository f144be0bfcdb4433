// The accuracy claims of the wave index, checked on small synthetic
// contexts (4K-32K tokens, head_dim 64 and 128, two kv heads each):
//   - planted needles are found at every depth (8K and up; at 4K the
//     retrieval zone is only 5 clusters and a needle can lose its place to
//     the recent-topic clusters: >= 90% there);
//   - at equal budget, WAVE's output error is below every baseline's;
//   - the estimated tail makes it better than the same exact set without;
//   - random clusters are clearly worse (ranking matters).
#include "index/eval/harness.h"

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace wavekv {
namespace eval {
namespace {

constexpr uint64_t kContexts[] = {4096, 8192, 16384, 32768};

// One run per head_dim, shared by the tests.
const EvalReport& ReportFor(uint32_t head_dim) {
  static std::map<uint32_t, std::unique_ptr<EvalReport>> cache;
  auto& slot = cache[head_dim];
  if (!slot) {
    HarnessOptions o;
    o.contexts.assign(std::begin(kContexts), std::end(kContexts));
    o.workload.head_dim = head_dim;
    o.kv_heads = 2;
    o.seed = 1;
    o.num_threads = 2;
    auto report = RunEval(o, nullptr);
    EXPECT_TRUE(report.ok()) << report.status();
    slot = std::make_unique<EvalReport>(std::move(*report));
  }
  return *slot;
}

size_t IndexOf(const EvalReport& r, Method m) {
  return std::find(r.methods.begin(), r.methods.end(), m) - r.methods.begin();
}

const MethodSummary& Summary(const ContextSummary& c, Method m) {
  for (const MethodSummary& s : c.methods) {
    if (s.method == m) return s;
  }
  ADD_FAILURE() << "no summary for " << MethodName(m);
  return c.methods.front();
}

class AccuracyTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(AccuracyTest, NeedlesAreFoundAtEveryDepth) {
  const EvalReport& r = ReportFor(GetParam());
  const size_t wave = IndexOf(r, Method::kWave);
  std::map<uint64_t, std::pair<uint32_t, uint32_t>> single;  // hits, targets
  std::map<double, int> depths_seen;
  for (const ProbeResult& p : r.probes) {
    if (p.kind == ProbeKind::kBackground) continue;
    const MethodScore& s = p.scores[wave];
    ASSERT_GT(s.needle_targets, 0u);
    if (p.kind == ProbeKind::kSingleNeedle) {
      single[p.context_tokens].first += s.needle_hits;
      single[p.context_tokens].second += s.needle_targets;
      ++depths_seen[p.depth_percent];
    }
    if (p.context_tokens >= 8192) {
      EXPECT_EQ(s.needle_hits, s.needle_targets)
          << p.probe << " at " << p.context_tokens << " tokens, kv head "
          << p.kv_head;
    }
  }
  // Depths 0, 10, ..., 100 in every context and kv head.
  ASSERT_EQ(depths_seen.size(), 11u);
  for (const auto& [depth, count] : depths_seen) {
    EXPECT_EQ(count, 2 * 4) << depth;
  }
  const auto [hits, targets] = single[4096];
  EXPECT_GE(hits, 0.9 * targets) << hits << "/" << targets;
}

TEST_P(AccuracyTest, WaveErrorIsBelowEveryBaselineAtEqualBudget) {
  const EvalReport& r = ReportFor(GetParam());
  ASSERT_EQ(r.contexts.size(), std::size(kContexts));
  for (const ContextSummary& c : r.contexts) {
    const MethodSummary& wave = Summary(c, Method::kWave);
    for (Method m :
         {Method::kStreamingLlm, Method::kQuest, Method::kRandomClusters}) {
      const MethodSummary& b = Summary(c, m);
      EXPECT_LT(wave.rel_l2_error, b.rel_l2_error)
          << MethodName(m) << " at " << c.context_tokens;
      EXPECT_LT(wave.rel_l2_error_needle, b.rel_l2_error_needle)
          << MethodName(m) << " at " << c.context_tokens;
      EXPECT_LT(wave.rel_l2_error_background, b.rel_l2_error_background)
          << MethodName(m) << " at " << c.context_tokens;
    }
    // Quest, the strongest baseline, by a clear margin.
    EXPECT_LT(1.5 * wave.rel_l2_error, Summary(c, Method::kQuest).rel_l2_error)
        << c.context_tokens;
  }
}

TEST_P(AccuracyTest, EstimatedTailBeatsDroppingIt) {
  const EvalReport& r = ReportFor(GetParam());
  for (const ContextSummary& c : r.contexts) {
    const MethodSummary& wave = Summary(c, Method::kWave);
    const MethodSummary& no_tail = Summary(c, Method::kWaveNoTail);
    EXPECT_EQ(wave.mean_exact_tokens, no_tail.mean_exact_tokens);
    EXPECT_EQ(wave.mass_covered, no_tail.mass_covered);
    EXPECT_LT(1.3 * wave.rel_l2_error, no_tail.rel_l2_error)
        << c.context_tokens;
    EXPECT_LT(1.3 * wave.rel_l2_error_background,
              no_tail.rel_l2_error_background)
        << c.context_tokens;
  }
  // Probe by probe, the tail almost always helps.
  const size_t w = IndexOf(r, Method::kWave);
  const size_t nt = IndexOf(r, Method::kWaveNoTail);
  size_t better = 0;
  for (const ProbeResult& p : r.probes) {
    better += p.scores[w].rel_l2_error < p.scores[nt].rel_l2_error;
  }
  EXPECT_GE(better, 0.9 * r.probes.size());
}

TEST_P(AccuracyTest, RandomClustersAreClearlyWorse) {
  const EvalReport& r = ReportFor(GetParam());
  for (const ContextSummary& c : r.contexts) {
    const MethodSummary& wave = Summary(c, Method::kWave);
    const MethodSummary& random = Summary(c, Method::kRandomClusters);
    EXPECT_GT(random.rel_l2_error, 3.0 * wave.rel_l2_error);
    EXPECT_LT(random.mass_covered, wave.mass_covered - 0.2);
    EXPECT_LT(random.needle_hits, 0.3 * random.needle_targets);
  }
}

TEST_P(AccuracyTest, BudgetsAreEqual) {
  const EvalReport& r = ReportFor(GetParam());
  const size_t wave = IndexOf(r, Method::kWave);
  for (const ProbeResult& p : r.probes) {
    const uint64_t budget = p.scores[wave].exact_tokens;
    EXPECT_GT(budget, 68u);  // steady zone + a retrieval zone
    EXPECT_LT(budget, p.context_tokens / 20);
    for (size_t m = 0; m < r.methods.size(); ++m) {
      const uint64_t got = p.scores[m].exact_tokens;
      switch (r.methods[m]) {
        case Method::kWave:
        case Method::kWaveNoTail:
        case Method::kStreamingLlm:
        case Method::kOracleTopK:
          EXPECT_EQ(got, budget) << MethodName(r.methods[m]);
          break;
        case Method::kQuest:
          EXPECT_GE(got, budget);
          EXPECT_LT(got, budget + 16);
          break;
        case Method::kRandomClusters:
          EXPECT_GE(got, budget);
          EXPECT_LT(got, budget + 100);
          break;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, AccuracyTest, ::testing::Values(64u, 128u),
                         [](const auto& info) {
                           return "d" + std::to_string(info.param);
                         });

TEST(HarnessTest, DeterministicAndReportsProgress) {
  HarnessOptions o;
  o.contexts = {4096};
  o.workload.head_dim = 64;
  o.num_threads = 2;
  std::vector<std::string> stages;
  auto a = RunEval(o, [&](const EvalProgress& p) {
    if (stages.empty() || stages.back() != p.stage) {
      stages.emplace_back(p.stage);
    }
    EXPECT_LE(p.done, p.total);
  });
  o.num_threads = 1;
  auto b = RunEval(o, nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(stages,
            (std::vector<std::string>{"generate", "index", "probes", "done"}));
  ASSERT_EQ(a->probes.size(), b->probes.size());
  for (size_t i = 0; i < a->probes.size(); ++i) {
    for (size_t m = 0; m < a->methods.size(); ++m) {
      EXPECT_EQ(a->probes[i].scores[m].rel_l2_error,
                b->probes[i].scores[m].rel_l2_error);
      EXPECT_EQ(a->probes[i].scores[m].exact_tokens,
                b->probes[i].scores[m].exact_tokens);
    }
  }
}

TEST(HarnessTest, MethodSubsetKeepsOrder) {
  HarnessOptions o;
  o.contexts = {4096};
  o.workload.head_dim = 64;
  o.method_list = {Method::kQuest, Method::kWave};
  auto r = RunEval(o, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->methods.size(), 2u);
  EXPECT_EQ(r->contexts[0].methods[0].method, Method::kQuest);
  // Quest got wave's budget although it is listed first.
  for (const ProbeResult& p : r->probes) {
    EXPECT_GE(p.scores[0].exact_tokens, p.scores[1].exact_tokens);
  }
}

TEST(HarnessTest, BadOptions) {
  HarnessOptions o;
  o.method_list = {Method::kQuest};
  EXPECT_NE(o.Validate().message().find("must include wave"),
            std::string::npos);
  o = HarnessOptions();
  o.contexts = {};
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.contexts = {4096, 100};
  EXPECT_NE(o.Validate().message().find("eval.contexts[1]"), std::string::npos);
  o = HarnessOptions();
  o.kv_heads = 0;
  EXPECT_NE(o.Validate().message().find("kv_heads"), std::string::npos);
  o = HarnessOptions();
  o.method_list = {Method::kWave, Method::kWave};
  EXPECT_NE(o.Validate().message().find("twice"), std::string::npos);
  EXPECT_EQ(RunEval(o, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace eval
}  // namespace wavekv
