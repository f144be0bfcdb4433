#include "index/eval/workload.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "index/attention.h"
#include "index/eval/eval_math.h"

namespace wavekv {
namespace eval {
namespace {

WorkloadOptions Small(uint64_t tokens = 4096, uint32_t dim = 64) {
  WorkloadOptions o;
  o.num_tokens = tokens;
  o.head_dim = dim;
  return o;
}

// Softmax share of tokens [begin, end) for one query head.
double Share(const Workload& w, const float* q, uint64_t begin, uint64_t end) {
  std::vector<double> l(w.num_tokens());
  Logits(q, w.keys().data(), w.num_tokens(), w.head_dim(),
         DefaultScale(w.head_dim()), l.data());
  const double lse = LogSumExp(l.data(), l.size());
  double s = 0;
  for (uint64_t t = begin; t < end; ++t) s += std::exp(l[t] - lse);
  return s;
}

double Cosine(const float* a, const float* b, size_t n) {
  return Dot(a, b, n) / std::sqrt(Dot(a, a, n) * Dot(b, b, n));
}

TEST(RopeTest, RotationPreservesNormAndDependsOnRelativePosition) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  for (size_t dim : {8, 64, 128, 256}) {
    std::vector<float> x(dim), y(dim);
    for (auto& v : x) v = normal(rng);
    for (auto& v : y) v = normal(rng);
    std::vector<float> x0 = x;
    ApplyRope(x0.data(), dim, 0, 500000.0);
    for (size_t j = 0; j < dim; ++j) EXPECT_EQ(x0[j], x[j]);  // identity
    // <R(a)x, R(b)y> depends on b - a only, at positions up to 1M.
    const uint64_t pairs[][2] = {{5, 17}, {1000005, 1000017}, {70, 82}};
    double dots[3];
    for (int i = 0; i < 3; ++i) {
      std::vector<float> xa = x, yb = y;
      ApplyRope(xa.data(), dim, pairs[i][0], 500000.0);
      ApplyRope(yb.data(), dim, pairs[i][1], 500000.0);
      EXPECT_NEAR(Dot(xa.data(), xa.data(), dim), Dot(x.data(), x.data(), dim),
                  1e-3 * dim);
      dots[i] = Dot(xa.data(), yb.data(), dim);
    }
    EXPECT_NEAR(dots[0], dots[1], 1e-3 * dim);
    EXPECT_NEAR(dots[0], dots[2], 1e-3 * dim);
    // And it does rotate: a different offset gives a different product.
    std::vector<float> y2 = y;
    ApplyRope(y2.data(), dim, 1, 500000.0);
    EXPECT_GT(
        std::fabs(Dot(x.data(), y2.data(), dim) - Dot(x.data(), y.data(), dim)),
        1e-3);
  }
}

TEST(WorkloadOptionsTest, ValidateNamesTheField) {
  EXPECT_TRUE(WorkloadOptions().Validate().ok());
  struct Case {
    void (*mutate)(WorkloadOptions&);
    const char* field;
  } cases[] = {
      {[](WorkloadOptions& o) { o.num_tokens = 100; }, "num_tokens"},
      {[](WorkloadOptions& o) { o.head_dim = 65; }, "head_dim"},
      {[](WorkloadOptions& o) { o.group_size = 0; }, "group_size"},
      {[](WorkloadOptions& o) { o.rope_theta = 1.0; }, "rope_theta"},
      {[](WorkloadOptions& o) { o.sink_mass = 0.95f; }, "sink_mass"},
      {[](WorkloadOptions& o) {
         o.needle_depths = {10, 101};
       },
       "needle_depths[1]"},
      {[](WorkloadOptions& o) { o.multi_needle_depths = {-1}; },
       "multi_needle_depths[0]"},
      {[](WorkloadOptions& o) { o.needle_tokens = 0; }, "needle_tokens"},
      {[](WorkloadOptions& o) { o.needle_mass = 1.0f; }, "needle_mass"},
      {[](WorkloadOptions& o) { o.outlier_channels = 200; },
       "outlier_channels"},
      {[](WorkloadOptions& o) { o.attention_sinks = 0; }, "attention_sinks"},
  };
  for (const Case& c : cases) {
    WorkloadOptions o;
    c.mutate(o);
    const absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(s.message().find(std::string("workload.") + c.field),
              std::string::npos)
        << s.message();
  }
}

TEST(WorkloadTest, OverlappingNeedlesAreRejected) {
  WorkloadOptions o = Small();
  o.needle_depths = {50, 50.1};
  auto w = Workload::Generate(o);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w.status().message().find("overlaps"), std::string::npos);
}

TEST(WorkloadTest, DeterministicForSeedAndThreadCount) {
  WorkloadOptions o = Small(4096, 64);
  auto a = Workload::Generate(o, 1);
  auto b = Workload::Generate(o, 2);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->keys().size(), b->keys().size());
  EXPECT_EQ(0, std::memcmp(a->keys().data(), b->keys().data(),
                           a->keys().size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(a->values().data(), b->values().data(),
                           a->values().size() * sizeof(float)));
  ASSERT_EQ(a->probes().size(), b->probes().size());
  for (size_t p = 0; p < a->probes().size(); ++p) {
    EXPECT_EQ(a->probes()[p].queries, b->probes()[p].queries);
  }
  o.seed = 2;
  auto c = Workload::Generate(o, 2);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(0, std::memcmp(a->keys().data(), c->keys().data(),
                           a->keys().size() * sizeof(float)));
}

TEST(WorkloadTest, KnownAnswersNeedlePositionsAndProbes) {
  WorkloadOptions o = Small(8192, 128);
  auto w = Workload::Generate(o, 2);
  ASSERT_TRUE(w.ok()) << w.status();
  const size_t d = w->head_dim(), g = w->group_size();
  const size_t singles = o.needle_depths.size();
  const size_t multi = o.multi_needle_depths.size();
  ASSERT_EQ(w->needles().size(), singles + multi);
  // Depth 0 starts right after the sinks; depth 100 ends at the last token.
  EXPECT_EQ(w->needles()[0].first_token, o.attention_sinks);
  EXPECT_EQ(w->needles()[singles - 1].first_token + o.needle_tokens,
            o.num_tokens);
  EXPECT_EQ(
      w->needles()[5].first_token,
      NeedleFirstToken(o.attention_sinks, o.num_tokens, o.needle_tokens, 50.0));
  // Every token of a needle carries the needle's value; needles differ.
  for (const Needle& nd : w->needles()) {
    ASSERT_EQ(nd.num_tokens, o.needle_tokens);
    const float* v0 = &w->values()[nd.first_token * d];
    for (uint64_t t = nd.first_token + 1; t < nd.first_token + nd.num_tokens;
         ++t) {
      EXPECT_EQ(0, std::memcmp(v0, &w->values()[t * d], d * sizeof(float)));
    }
  }
  EXPECT_NE(w->values()[w->needles()[0].first_token * d],
            w->values()[w->needles()[1].first_token * d]);

  // Probes: singles, multi-needle, multi-query, background.
  ASSERT_EQ(w->probes().size(), singles + 2 + o.background_probes);
  for (size_t p = 0; p < singles; ++p) {
    const Probe& probe = w->probes()[p];
    EXPECT_EQ(probe.kind, ProbeKind::kSingleNeedle);
    EXPECT_EQ(probe.depth_percent, o.needle_depths[p]);
    ASSERT_EQ(probe.head_targets.size(), g);
    for (const auto& t : probe.head_targets) {
      EXPECT_EQ(t, std::vector<uint32_t>{static_cast<uint32_t>(p)});
    }
  }
  const Probe& mn = w->probes()[singles];
  EXPECT_EQ(mn.kind, ProbeKind::kMultiNeedle);
  EXPECT_EQ(mn.head_targets[0].size(), multi);
  const Probe& mq = w->probes()[singles + 1];
  EXPECT_EQ(mq.kind, ProbeKind::kMultiQuery);
  for (size_t h = 0; h < g; ++h) {
    EXPECT_EQ(
        mq.head_targets[h],
        std::vector<uint32_t>{static_cast<uint32_t>(singles + h % multi)});
  }
  EXPECT_EQ(w->probes().back().kind, ProbeKind::kBackground);
  EXPECT_TRUE(w->probes().back().head_targets[0].empty());
}

TEST(WorkloadTest, CalibratedSinkAndNeedleMass) {
  for (uint32_t dim : {64u, 128u}) {
    WorkloadOptions o = Small(8192, dim);
    auto w = Workload::Generate(o, 2);
    ASSERT_TRUE(w.ok()) << w.status();
    const size_t d = w->head_dim();
    for (const Probe& p : w->probes()) {
      for (size_t h = 0; h < w->group_size(); ++h) {
        const float* q = &p.queries[h * d];
        if (p.kind == ProbeKind::kBackground) {
          // The sinks carry sink_mass of the softmax.
          EXPECT_NEAR(Share(*w, q, 0, o.attention_sinks), o.sink_mass, 0.02)
              << p.name << " head " << h;
        } else if (p.kind == ProbeKind::kSingleNeedle) {
          // The needle carries ~needle_mass against the rest.
          const Needle& nd = w->needles()[p.head_targets[h][0]];
          EXPECT_NEAR(
              Share(*w, q, nd.first_token, nd.first_token + nd.num_tokens),
              o.needle_mass, 0.02)
              << p.name << " head " << h;
        } else {
          // Several targets: each ~1/(k+1) of the softmax.
          const double k = p.head_targets[h].size();
          for (uint32_t i : p.head_targets[h]) {
            const Needle& nd = w->needles()[i];
            EXPECT_NEAR(
                Share(*w, q, nd.first_token, nd.first_token + nd.num_tokens),
                1.0 / (k + 1), 0.02)
                << p.name << " head " << h << " needle " << i;
          }
        }
      }
    }
  }
}

TEST(WorkloadTest, StructureOfRealAttention) {
  WorkloadOptions o = Small(16384, 128);
  auto w = Workload::Generate(o, 2);
  ASSERT_TRUE(w.ok());
  const size_t d = w->head_dim(), n = w->num_tokens();
  // K/V are held exactly in the dtype.
  std::vector<uint8_t> bytes(d * 2);
  std::vector<float> back(d);
  for (uint64_t t : {uint64_t{0}, uint64_t{777}, n - 1}) {
    EncodeFromFloat(DType::kFp16, &w->keys()[t * d], d, bytes.data());
    DecodeToFloat(DType::kFp16, bytes.data(), d, back.data());
    EXPECT_EQ(0, std::memcmp(back.data(), &w->keys()[t * d], d * 4));
  }
  // Outlier channels: the lowest-frequency pair (d/2 - 1, d - 1) has a far
  // larger mean magnitude than a typical channel.
  double outlier = 0, typical = 0;
  for (size_t t = 0; t < n; ++t) {
    const float* k = &w->keys()[t * d];
    outlier += std::hypot(k[d / 2 - 1], k[d - 1]);
    typical += std::hypot(k[0], k[d / 2]);
  }
  EXPECT_GT(outlier, 2.5 * typical);
  // Clustered topics: a key is far more similar to its neighbour (same
  // topic run, nearly the same RoPE angle) than to a random distant key.
  double near = 0, far = 0;
  std::mt19937_64 rng(5);
  for (int i = 0; i < 500; ++i) {
    const size_t t = 100 + rng() % (n - 200);
    const size_t u = 100 + rng() % (n - 200);
    near += Cosine(&w->keys()[t * d], &w->keys()[(t + 1) * d], d);
    far += Cosine(&w->keys()[t * d], &w->keys()[u * d], d);
  }
  EXPECT_GT(near, far + 0.2 * 500);
  // GQA: the query heads of a background probe are correlated.
  const Probe& bg = w->probes().back();
  EXPECT_GT(Cosine(&bg.queries[0], &bg.queries[d], d), 0.5);
}

}  // namespace
}  // namespace eval
}  // namespace wavekv
