#include "index/retrieval.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "index/attention.h"

namespace wavekv {
namespace {

// One kv head's context: K/V in `dtype`, its wave index, and the K/V laid
// out cluster-major the way a store would keep them.
struct Context {
  DType dtype;
  size_t dim;
  size_t tokens;
  std::vector<uint8_t> keys, values;    // token order
  std::vector<float> keys_f, values_f;  // decoded
  WaveIndex index;
  std::vector<uint8_t> slot_keys, slot_values;  // cluster-major

  size_t row_bytes() const { return dim * DTypeBytes(dtype); }
  KvView Tokens(uint64_t begin, uint64_t end) const {
    return KvView{dtype, dim, end - begin, keys.data() + begin * row_bytes(),
                  values.data() + begin * row_bytes()};
  }
  KvView Cluster(ClusterId c) const {
    const uint64_t b = index.cluster_offset(c);
    return KvView{dtype, dim, index.cluster_size(c),
                  slot_keys.data() + b * row_bytes(),
                  slot_values.data() + b * row_bytes()};
  }
};

// Builds the index over everything but the steady zone (default params:
// sinks 4, recent 64) and lays out the slots.
Context Build(DType dtype, size_t dim, std::vector<float> k,
              std::vector<float> v, const WaveIndexParams& params) {
  const size_t n = k.size() / dim;
  Context ctx{dtype, dim, n, {}, {}, {}, {}, WaveIndex(dim), {}, {}};
  const size_t eb = DTypeBytes(dtype);
  ctx.keys.resize(k.size() * eb);
  ctx.values.resize(v.size() * eb);
  EncodeFromFloat(dtype, k.data(), k.size(), ctx.keys.data());
  EncodeFromFloat(dtype, v.data(), v.size(), ctx.values.data());
  ctx.keys_f.resize(k.size());
  ctx.values_f.resize(v.size());
  DecodeToFloat(dtype, ctx.keys.data(), k.size(), ctx.keys_f.data());
  DecodeToFloat(dtype, ctx.values.data(), v.size(), ctx.values_f.data());
  const TokenSpan block = NextIndexBlock(params, n, 0);
  if (!block.empty()) {
    const KvView view = ctx.Tokens(block.begin, block.end);
    auto layout = ctx.index.AddBlock(
        params, block.begin,
        KvRows{dtype, dim, view.num_tokens, view.keys, view.values}, 2);
    EXPECT_TRUE(layout.ok()) << layout.status();
    const size_t rb = ctx.row_bytes();
    ctx.slot_keys.resize(layout->slot_tokens.size() * rb);
    ctx.slot_values.resize(layout->slot_tokens.size() * rb);
    for (size_t s = 0; s < layout->slot_tokens.size(); ++s) {
      const uint64_t t = layout->slot_tokens[s];
      std::memcpy(&ctx.slot_keys[s * rb], &ctx.keys[t * rb], rb);
      std::memcpy(&ctx.slot_values[s * rb], &ctx.values[t * rb], rb);
    }
  }
  return ctx;
}

std::vector<float> Normal(size_t n, float sigma, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> out(n);
  for (auto& x : out) x = normal(rng);
  return out;
}

// Topic-structured context: runs of ~50 tokens near one of 64 key
// directions, with a per-topic mean value.
Context Structured(DType dtype, size_t dim, size_t n, uint64_t seed,
                   const WaveIndexParams& params) {
  std::mt19937_64 rng(seed);
  const size_t topics = 64;
  const auto dirs = Normal(topics * dim, 1.0f, rng);
  const auto vmeans = Normal(topics * dim, 1.0f, rng);
  std::normal_distribution<float> normal;
  std::vector<float> k(n * dim), v(n * dim);
  size_t topic = 0;
  for (size_t t = 0; t < n; ++t) {
    if (t % 50 == 0) topic = rng() % topics;
    for (size_t j = 0; j < dim; ++j) {
      k[t * dim + j] = dirs[topic * dim + j] + 0.5f * normal(rng);
      v[t * dim + j] = vmeans[topic * dim + j] + 0.5f * normal(rng);
    }
  }
  return Build(dtype, dim, std::move(k), std::move(v), params);
}

// Queries for a group: each a random mixture of a few topic directions.
std::vector<float> GroupQueries(const Context& ctx, size_t group,
                                float strength, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> q(group * ctx.dim, 0.0f);
  for (size_t h = 0; h < group; ++h) {
    for (int m = 0; m < 3; ++m) {
      const size_t t = rng() % ctx.tokens;
      for (size_t j = 0; j < ctx.dim; ++j) {
        q[h * ctx.dim + j] += strength * ctx.keys_f[t * ctx.dim + j] / 3;
      }
    }
  }
  return q;
}

// Exact attention of one head over the steady zone and `clusters`.
AttentionPartial ExactPart(const Context& ctx, const float* q,
                           absl::Span<const ClusterId> clusters, float scale) {
  const absl::Span<const float> query(q, ctx.dim);
  AttentionPartial acc = AttentionPartial::Empty(ctx.dim);
  for (const TokenSpan& s : SteadySpans(ctx.tokens, ctx.index.indexed_span())) {
    MergeInto(acc, PartialAttention(query, ctx.Tokens(s.begin, s.end), scale));
  }
  for (ClusterId c : clusters) {
    MergeInto(acc, PartialAttention(query, ctx.Cluster(c), scale));
  }
  return acc;
}

double L2(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t j = 0; j < a.size(); ++j) s += (a[j] - b[j]) * (a[j] - b[j]);
  return std::sqrt(s);
}

class RetrievalTest
    : public ::testing::TestWithParam<std::tuple<DType, size_t>> {};

TEST_P(RetrievalTest, FullRetrievalEqualsExactAttention) {
  const auto [dtype, dim] = GetParam();
  WaveIndexParams params;
  params.retrieval_fraction = 1.0f;
  params.estimation_fraction = 0.0f;
  const Context ctx = Structured(dtype, dim, 3000, 1, params);
  ASSERT_GT(ctx.index.num_clusters(), 100u);
  const size_t g = 4;
  const float scale = DefaultScale(dim);
  const auto q = GroupQueries(ctx, g, 1.0f, 2);
  auto plan = PlanRetrieval(ctx.index, q, g, params, scale);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->retrieval_clusters.size(), ctx.index.num_nonempty_clusters());
  EXPECT_TRUE(plan->estimation_clusters.empty());
  ASSERT_EQ(plan->tail.size(), g);
  for (size_t h = 0; h < g; ++h) {
    EXPECT_TRUE(plan->tail[h].empty());
    AttentionPartial p =
        ExactPart(ctx, &q[h * dim], plan->retrieval_clusters, scale);
    MergeInto(p, plan->tail[h]);
    const auto got = Finalize(p);
    const auto want = FullAttention(absl::Span<const float>(&q[h * dim], dim),
                                    ctx.Tokens(0, ctx.tokens), scale);
    for (size_t j = 0; j < dim; ++j) ASSERT_NEAR(got[j], want[j], 1e-4) << j;
  }
}

TEST_P(RetrievalTest, RankingAndTailMatchDefinition) {
  const auto [dtype, dim] = GetParam();
  const WaveIndexParams params;
  const Context ctx = Structured(dtype, dim, 6000, 3, params);
  const size_t g = 3, k = ctx.index.num_clusters();
  const float scale = DefaultScale(dim);
  const auto q = GroupQueries(ctx, g, 1.0f, 4);
  auto plan = PlanRetrieval(ctx.index, q, g, params, scale);
  ASSERT_TRUE(plan.ok());
  const ZoneBudget budget =
      ComputeZoneBudget(params, ctx.index.num_nonempty_clusters());
  ASSERT_EQ(plan->retrieval_clusters.size(), budget.retrieval_clusters);
  ASSERT_EQ(plan->estimation_clusters.size(), budget.estimation_clusters);
  // Double-precision reference scores.
  std::vector<std::vector<double>> logits(g, std::vector<double>(k));
  std::vector<double> score(k, 0.0);
  for (size_t h = 0; h < g; ++h) {
    double m = -INFINITY, z = 0;
    for (ClusterId c = 0; c < k; ++c) {
      const auto cen = ctx.index.centroid(c);
      double l = 0;
      for (size_t j = 0; j < dim; ++j) l += double(q[h * dim + j]) * cen[j];
      logits[h][c] = l * scale;
      if (ctx.index.cluster_size(c)) m = std::max(m, logits[h][c]);
    }
    for (ClusterId c = 0; c < k; ++c) {
      if (ctx.index.cluster_size(c)) z += std::exp(logits[h][c] - m);
    }
    for (ClusterId c = 0; c < k; ++c) {
      if (ctx.index.cluster_size(c)) score[c] += std::exp(logits[h][c] - m) / z;
    }
  }
  // Zones are ranked: every retrieval score >= every estimation score >=
  // every ignored score (up to float rounding).
  std::set<ClusterId> chosen;
  double min_r = INFINITY, max_e = -INFINITY, min_e = INFINITY;
  for (ClusterId c : plan->retrieval_clusters) {
    min_r = std::min(min_r, score[c]);
    EXPECT_TRUE(chosen.insert(c).second);
  }
  for (ClusterId c : plan->estimation_clusters) {
    max_e = std::max(max_e, score[c]);
    min_e = std::min(min_e, score[c]);
    EXPECT_TRUE(chosen.insert(c).second);
  }
  double max_rest = -INFINITY;
  for (ClusterId c = 0; c < k; ++c) {
    if (!chosen.count(c) && ctx.index.cluster_size(c)) {
      max_rest = std::max(max_rest, score[c]);
    }
  }
  EXPECT_GE(min_r, max_e - 1e-6);
  EXPECT_GE(min_e, max_rest - 1e-6);
  for (size_t i = 1; i < plan->retrieval_clusters.size(); ++i) {
    EXPECT_GE(score[plan->retrieval_clusters[i - 1]],
              score[plan->retrieval_clusters[i]] - 1e-6);
  }
  // Tail statistics: (m, Σ s e^{l-m}, Σ e^{l-m} VS) over the zone.
  for (size_t h = 0; h < g; ++h) {
    double m = -INFINITY;
    for (ClusterId c : plan->estimation_clusters) m = std::max(m, logits[h][c]);
    double den = 0;
    std::vector<double> num(dim, 0.0);
    for (ClusterId c : plan->estimation_clusters) {
      const double w = std::exp(logits[h][c] - m);
      den += ctx.index.cluster_size(c) * w;
      for (size_t j = 0; j < dim; ++j) num[j] += w * ctx.index.value_sum(c)[j];
    }
    const AttentionPartial& t = plan->tail[h];
    EXPECT_NEAR(t.max_logit, m, 1e-4 * (1 + std::fabs(m)));
    EXPECT_NEAR(t.denominator, den, 1e-4 * den);
    for (size_t j = 0; j < dim; ++j) {
      ASSERT_NEAR(t.numerator[j], num[j], 1e-4 * (1 + std::fabs(num[j])));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    DTypesAndDims, RetrievalTest,
    ::testing::Combine(::testing::Values(DType::kFp16, DType::kBf16,
                                         DType::kFp32),
                       ::testing::Values(size_t{64}, size_t{128}, size_t{256})),
    [](const auto& info) {
      return std::string(DTypeName(std::get<0>(info.param))) + "_d" +
             std::to_string(std::get<1>(info.param));
    });

TEST(TripartiteTest, TailMakesTheEstimateCloserToExact) {
  const WaveIndexParams params;  // 1.8% retrieval, 23.2% estimation
  const size_t dim = 128, g = 4;
  const float scale = DefaultScale(dim);
  double err_tail_sum = 0, err_drop_sum = 0;
  int wins = 0, cases = 0;
  for (uint64_t seed = 0; seed < 3; ++seed) {
    const Context ctx = Structured(DType::kFp16, dim, 8192, 10 + seed, params);
    for (uint64_t qs = 0; qs < 2; ++qs) {
      const auto q = GroupQueries(ctx, g, 0.7f, 100 * seed + qs);
      auto plan = PlanRetrieval(ctx.index, q, g, params, scale);
      ASSERT_TRUE(plan.ok());
      ASSERT_FALSE(plan->estimation_clusters.empty());
      for (size_t h = 0; h < g; ++h) {
        const auto exact =
            FullAttention(absl::Span<const float>(&q[h * dim], dim),
                          ctx.Tokens(0, ctx.tokens), scale);
        AttentionPartial part =
            ExactPart(ctx, &q[h * dim], plan->retrieval_clusters, scale);
        const double err_drop = L2(Finalize(part), exact);
        MergeInto(part, plan->tail[h]);
        const double err_tail = L2(Finalize(part), exact);
        err_tail_sum += err_tail;
        err_drop_sum += err_drop;
        wins += err_tail < err_drop;
        ++cases;
      }
    }
  }
  RecordProperty("mean_error_with_tail", std::to_string(err_tail_sum / cases));
  RecordProperty("mean_error_without_tail",
                 std::to_string(err_drop_sum / cases));
  EXPECT_LT(err_tail_sum, 0.7 * err_drop_sum);
  EXPECT_GE(wins, cases * 3 / 4);
}

TEST(TripartiteTest, NeedleIsInTheRetrievalZone) {
  const WaveIndexParams params;
  const size_t dim = 128, n = 16384, g = 4;
  std::mt19937_64 rng(42);
  auto k = Normal(n * dim, 1.0f, rng);
  auto v = Normal(n * dim, 1.0f, rng);
  // The needle: a key pointing along a direction that one query head of the
  // group looks for, far into the middle of the context.
  const auto dir = Normal(dim, 1.0f, rng);
  const size_t needle = 9876;
  for (size_t j = 0; j < dim; ++j) k[needle * dim + j] = 3.0f * dir[j];
  const Context ctx =
      Build(DType::kBf16, dim, std::move(k), std::move(v), params);
  std::vector<float> q = Normal(g * dim, 0.3f, rng);
  for (size_t j = 0; j < dim; ++j) q[2 * dim + j] = 2.0f * dir[j];
  auto plan = PlanRetrieval(ctx.index, q, g, params, DefaultScale(dim));
  ASSERT_TRUE(plan.ok());
  // Find the needle's cluster.
  ClusterId needle_cluster = 0;
  for (ClusterId c = 0; c < ctx.index.num_clusters(); ++c) {
    const uint64_t b = ctx.index.cluster_offset(c);
    for (uint64_t s = b; s < b + ctx.index.cluster_size(c); ++s) {
      if (ctx.index.slot_tokens()[s] == needle) needle_cluster = c;
    }
  }
  const auto& r = plan->retrieval_clusters;
  ASSERT_FALSE(r.empty());
  EXPECT_EQ(r.front(), needle_cluster);
  // And the exact output of that head is dominated by the needle's value.
  AttentionPartial p = ExactPart(ctx, &q[2 * dim], r, DefaultScale(dim));
  MergeInto(p, plan->tail[2]);
  const auto out = Finalize(p);
  double dot = 0, norm_o = 0, norm_v = 0;
  for (size_t j = 0; j < dim; ++j) {
    const float vn = ctx.values_f[needle * dim + j];
    dot += out[j] * vn;
    norm_o += out[j] * out[j];
    norm_v += vn * vn;
  }
  EXPECT_GT(dot / std::sqrt(norm_o * norm_v), 0.9);
}

TEST(RetrievalEdgeTest, EmptyIndexAndEmptyClusters) {
  const WaveIndexParams params;
  WaveIndex empty(64);
  std::vector<float> q(2 * 64, 0.1f);
  auto plan = PlanRetrieval(empty, q, 2, params, DefaultScale(64));
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->retrieval_clusters.empty());
  EXPECT_TRUE(plan->estimation_clusters.empty());
  ASSERT_EQ(plan->tail.size(), 2u);
  EXPECT_TRUE(plan->tail[0].empty());
  EXPECT_EQ(plan->tail[0].numerator.size(), 64u);

  // A context where most clusters end up empty: 1200 tokens drawn from just
  // 3 distinct keys give 3 non-empty clusters out of ~75.
  std::mt19937_64 rng(1);
  const auto base = Normal(3 * 64, 1.0f, rng);
  std::vector<float> k(1200 * 64), v = Normal(1200 * 64, 1.0f, rng);
  for (size_t t = 0; t < 1200; ++t) {
    std::memcpy(&k[t * 64], &base[(t % 3) * 64], 64 * sizeof(float));
  }
  WaveIndexParams all;
  all.retrieval_fraction = 0.5f;
  all.estimation_fraction = 0.5f;
  const Context ctx = Build(DType::kFp32, 64, std::move(k), std::move(v), all);
  ASSERT_GT(ctx.index.num_clusters(), 50u);
  ASSERT_EQ(ctx.index.num_nonempty_clusters(), 3u);
  plan = PlanRetrieval(ctx.index, q, 2, all, DefaultScale(64));
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->retrieval_clusters.size(), 2u);
  EXPECT_EQ(plan->estimation_clusters.size(), 1u);
  for (ClusterId c : plan->retrieval_clusters) {
    EXPECT_GT(ctx.index.cluster_size(c), 0u);
  }
  for (ClusterId c : plan->estimation_clusters) {
    EXPECT_GT(ctx.index.cluster_size(c), 0u);
  }
  for (const auto& t : plan->tail) {
    EXPECT_TRUE(std::isfinite(t.max_logit));
    // One cluster of identical keys: every member's logit is l_c, so the
    // estimate is exact: denominator = s_c e^0.
    EXPECT_EQ(t.denominator,
              float(ctx.index.cluster_size(plan->estimation_clusters[0])));
  }
}

TEST(RetrievalEdgeTest, BadInputs) {
  const WaveIndexParams params;
  WaveIndex index(64);
  std::vector<float> q(4 * 64, 0.0f);
  EXPECT_EQ(PlanRetrieval(index, q, 0, params, 0.125f).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanRetrieval(index, q, 3, params, 0.125f).status().code(),
            absl::StatusCode::kInvalidArgument);
  q[5] = NAN;
  auto s = PlanRetrieval(index, q, 4, params, 0.125f);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("query"), std::string::npos);
  q[5] = 0.0f;
  EXPECT_EQ(PlanRetrieval(index, q, 4, params, INFINITY).status().code(),
            absl::StatusCode::kInvalidArgument);
  WaveIndexParams bad;
  bad.retrieval_fraction = 2.0f;
  EXPECT_EQ(PlanRetrieval(index, q, 4, bad, 0.125f).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace wavekv
