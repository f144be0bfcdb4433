// One suite, every RetrievalBackend: the CPU backend always, the CUDA
// backend in --config=cuda builds where a GPU exists (skipped with the
// reason elsewhere).
//
// Each plan is checked against a float64 evaluation of the definition
// (retrieval.h) over the centroids the backend holds (the CUDA backend
// stores them in the session dtype, so its reference rounds them first):
//  - zones: exact sizes from ComputeZoneBudget, non-empty, disjoint, the
//    retrieval zone best first and the estimation zone in id order; a
//    cluster may differ from the float64 ranking only at a near-tie (its
//    score within kScoreTol, relative, of the zone boundary's);
//  - exact ties (identical centroids) are broken to the lower id, exactly;
//  - tail per query head over the backend's own estimation zone: max logit
//    within 1e-4 (1 + |m|), denominator within 1e-4 relative, numerator
//    within 1e-4 relative L2.
// The CUDA backend's plans also equal the CPU backend's (up to near-ties)
// when the centroids are representable in the session dtype.
#include "index/retrieval_backend.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "index/attention.h"

#ifdef WAVEKV_WITH_CUDA
#include "index/cuda/retrieval_backend_cuda.h"
#endif

namespace wavekv {
namespace {

constexpr double kScoreTol = 1e-4;
constexpr double kTailTol = 1e-4;

struct CpuKind {
  static absl::StatusOr<std::unique_ptr<RetrievalBackend>> Make() {
    return std::unique_ptr<RetrievalBackend>(new CpuRetrievalBackend());
  }
  static constexpr bool kStoresDType = false;
};

#ifdef WAVEKV_WITH_CUDA
struct CudaKind {
  static absl::StatusOr<std::unique_ptr<RetrievalBackend>> Make() {
    return cuda::MakeCudaRetrievalBackend();
  }
  static constexpr bool kStoresDType = true;
};
using Kinds = ::testing::Types<CpuKind, CudaKind>;
#else
using Kinds = ::testing::Types<CpuKind>;
#endif

float RoundTo(DType dtype, float x) {
  switch (dtype) {
    case DType::kFp16:
      return HalfToFloat(FloatToHalf(x));
    case DType::kBf16:
      return Bf16ToFloat(FloatToBf16(x));
    case DType::kFp32:
      return x;
  }
  return x;
}

// Random index parts: `k` clusters, each empty with probability
// `empty_share`, centroids representable in `dtype`.
WaveIndexParts RandomParts(size_t d, size_t k, double empty_share, DType dtype,
                           uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::uniform_int_distribution<uint32_t> size(1, 40);
  WaveIndexParts p;
  p.head_dim = d;
  p.begin_token = 4;
  p.centroids.resize(k * d);
  p.value_sums.resize(k * d);
  for (float& x : p.centroids) x = RoundTo(dtype, 1.5f * normal(rng));
  uint64_t t = p.begin_token;
  for (size_t c = 0; c < k; ++c) {
    const uint32_t s = uni(rng) < empty_share ? 0 : size(rng);
    p.sizes.push_back(s);
    for (size_t j = 0; j < d; ++j) {
      p.value_sums[c * d + j] = s == 0 ? 0.f : s * normal(rng);
    }
    for (uint32_t i = 0; i < s; ++i) p.slot_tokens.push_back(t++);
  }
  p.end_token = t;
  if (t == p.begin_token) p.begin_token = p.end_token = 0;
  return p;
}

WaveIndex FromPartsOrDie(WaveIndexParts parts) {
  absl::StatusOr<WaveIndex> index = WaveIndex::FromParts(std::move(parts));
  EXPECT_TRUE(index.ok()) << index.status();
  return std::move(*index);
}

std::vector<float> RandomQueries(size_t g, size_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> q(g * d);
  for (float& x : q) x = normal(rng);
  return q;
}

template <typename Kind>
class RetrievalBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RetrievalBackend>> b = Kind::Make();
    if (!b.ok()) GTEST_SKIP() << b.status();
    backend_ = std::move(*b);
  }

  // Checks `plan` against the float64 definition over `index` as the
  // backend holds it.
  void Check(const WaveIndex& index, DType dtype, const std::vector<float>& q,
             size_t g, const WaveIndexParams& params, float scale,
             const RetrievalPlan& plan, bool exact_ties = false) {
    const size_t d = index.head_dim(), k = index.num_clusters();
    std::vector<double> l(g * k, -INFINITY), score(k, 0.0);
    for (size_t c = 0; c < k; ++c) {
      if (index.cluster_size(c) == 0) continue;
      std::vector<float> cen = index.centroid(c);
      for (size_t h = 0; h < g; ++h) {
        double s = 0;
        for (size_t j = 0; j < d; ++j) {
          const float cj = Kind::kStoresDType ? RoundTo(dtype, cen[j]) : cen[j];
          s += static_cast<double>(q[h * d + j]) * cj;
        }
        l[h * k + c] = s * scale;
      }
    }
    for (size_t h = 0; h < g; ++h) {
      double m = -INFINITY, sum = 0;
      for (size_t c = 0; c < k; ++c) m = std::max(m, l[h * k + c]);
      for (size_t c = 0; c < k; ++c) {
        if (index.cluster_size(c)) sum += std::exp(l[h * k + c] - m);
      }
      for (size_t c = 0; c < k; ++c) {
        if (index.cluster_size(c)) {
          score[c] += std::exp(l[h * k + c] - m) / sum;
        }
      }
    }
    std::vector<ClusterId> order;
    for (size_t c = 0; c < k; ++c) {
      if (index.cluster_size(c)) order.push_back(c);
    }
    std::sort(order.begin(), order.end(), [&](ClusterId a, ClusterId b) {
      return score[a] > score[b] || (score[a] == score[b] && a < b);
    });
    const ZoneBudget b = ComputeZoneBudget(params, order.size());
    const size_t r = b.retrieval_clusters, e = b.estimation_clusters;
    ASSERT_EQ(plan.retrieval_clusters.size(), r);
    ASSERT_EQ(plan.estimation_clusters.size(), e);
    ASSERT_EQ(plan.tail.size(), g);
    std::set<ClusterId> seen;
    for (ClusterId c : plan.retrieval_clusters) {
      ASSERT_LT(c, k);
      EXPECT_GT(index.cluster_size(c), 0u) << "empty cluster " << c;
      EXPECT_TRUE(seen.insert(c).second) << "repeated cluster " << c;
    }
    for (size_t i = 0; i < e; ++i) {
      const ClusterId c = plan.estimation_clusters[i];
      ASSERT_LT(c, k);
      EXPECT_GT(index.cluster_size(c), 0u) << "empty cluster " << c;
      EXPECT_TRUE(seen.insert(c).second) << "repeated cluster " << c;
      if (i > 0) {
        EXPECT_LT(plan.estimation_clusters[i - 1], c);
      }
    }
    // Zones against the float64 ranking, up to near-ties at the boundary.
    auto near = [&](ClusterId c, size_t boundary) {
      const double t = score[order[boundary]];
      return std::abs(score[c] - t) <=
             kScoreTol * std::max(score[c], t) + 1e-30;
    };
    if (r > 0) {
      const std::set<ClusterId> ref_r(order.begin(), order.begin() + r);
      for (size_t i = 0; i < r; ++i) {
        const ClusterId c = plan.retrieval_clusters[i];
        if (exact_ties) {
          EXPECT_EQ(c, order[i]) << "rank " << i;
        } else if (!ref_r.count(c)) {
          EXPECT_TRUE(near(c, r - 1)) << "cluster " << c << " not in top " << r;
        }
        if (i > 0) {
          const ClusterId p = plan.retrieval_clusters[i - 1];
          EXPECT_GE(score[p], score[c] * (1 - kScoreTol)) << "rank " << i;
        }
      }
      const std::set<ClusterId> ref_z(order.begin(), order.begin() + r + e);
      for (ClusterId c : seen) {
        if (!ref_z.count(c)) {
          EXPECT_TRUE(near(c, r + e - 1)) << "cluster " << c << " not in zones";
        }
      }
      if (exact_ties) {
        std::vector<ClusterId> ref_e(order.begin() + r, order.begin() + r + e);
        std::sort(ref_e.begin(), ref_e.end());
        EXPECT_EQ(plan.estimation_clusters, ref_e);
      }
    }
    // Tail over the plan's own estimation zone.
    for (size_t h = 0; h < g; ++h) {
      const AttentionPartial& t = plan.tail[h];
      ASSERT_EQ(t.numerator.size(), d);
      if (e == 0) {
        EXPECT_EQ(t.max_logit, -INFINITY);
        EXPECT_EQ(t.denominator, 0.f);
        for (float x : t.numerator) EXPECT_EQ(x, 0.f);
        continue;
      }
      double m = -INFINITY;
      for (ClusterId c : plan.estimation_clusters)
        m = std::max(m, l[h * k + c]);
      double den = 0, norm = 0, err = 0;
      std::vector<double> num(d, 0.0);
      for (ClusterId c : plan.estimation_clusters) {
        const double w = std::exp(l[h * k + c] - m);
        den += w * index.cluster_size(c);
        for (size_t j = 0; j < d; ++j) num[j] += w * index.value_sum(c)[j];
      }
      for (size_t j = 0; j < d; ++j) {
        norm += num[j] * num[j];
        err += (t.numerator[j] - num[j]) * (t.numerator[j] - num[j]);
      }
      EXPECT_NEAR(t.max_logit, m, kTailTol * (1 + std::abs(m))) << "head " << h;
      EXPECT_NEAR(t.denominator, den, kTailTol * den) << "head " << h;
      EXPECT_LE(std::sqrt(err), kTailTol * std::sqrt(norm) + 1e-6)
          << "head " << h;
    }
  }

  RetrievalPlan PlanOne(IndexKey key, const WaveIndex& index, DType dtype,
                        const std::vector<float>& q, size_t g,
                        const WaveIndexParams& params, float scale) {
    const RetrievalRequest req{key, &index, q, dtype};
    absl::StatusOr<std::vector<RetrievalPlan>> plans =
        backend_->Plan({&req, 1}, g, params, scale);
    EXPECT_TRUE(plans.ok()) << plans.status();
    if (!plans.ok() || plans->size() != 1) return {};
    return std::move((*plans)[0]);
  }

  std::unique_ptr<RetrievalBackend> backend_;
};

TYPED_TEST_SUITE(RetrievalBackendTest, Kinds);

TYPED_TEST(RetrievalBackendTest, ShapesAndDTypes) {
  const WaveIndexParams params;
  IndexKey key = 0;
  for (DType dtype : {DType::kFp16, DType::kBf16, DType::kFp32}) {
    for (size_t d : {64, 128, 256}) {
      for (size_t g : {1, 4, 8}) {
        SCOPED_TRACE(testing::Message()
                     << DTypeName(dtype) << " d=" << d << " g=" << g);
        const uint32_t seed = 100 * d + 10 * g + static_cast<int>(dtype);
        WaveIndex index =
            FromPartsOrDie(RandomParts(d, 1500, 0.1, dtype, seed));
        const std::vector<float> q = RandomQueries(g, d, seed + 1);
        const float scale = DefaultScale(d);
        const RetrievalPlan plan =
            this->PlanOne(++key, index, dtype, q, g, params, scale);
        this->Check(index, dtype, q, g, params, scale, plan);
        // Same clusters and tails as the CPU reference.
        absl::StatusOr<RetrievalPlan> cpu =
            PlanRetrieval(index, q, g, params, scale);
        ASSERT_TRUE(cpu.ok());
        this->Check(index, dtype, q, g, params, scale, *cpu);
        size_t differ = 0;
        for (size_t i = 0; i < plan.retrieval_clusters.size(); ++i) {
          differ += plan.retrieval_clusters[i] != cpu->retrieval_clusters[i];
        }
        EXPECT_LE(differ, 2u) << "retrieval zones differ beyond near-ties";
      }
    }
  }
}

TYPED_TEST(RetrievalBackendTest, LargerBudgetsAndManyClusters) {
  WaveIndexParams params;
  params.retrieval_fraction = 0.05f;
  params.estimation_fraction = 0.5f;
  const size_t d = 128, g = 4;
  WaveIndex index =
      FromPartsOrDie(RandomParts(d, 40000, 0.05, DType::kBf16, 7));
  const std::vector<float> q = RandomQueries(g, d, 8);
  const float scale = DefaultScale(d);
  this->Check(index, DType::kBf16, q, g, params, scale,
              this->PlanOne(1, index, DType::kBf16, q, g, params, scale));
}

TYPED_TEST(RetrievalBackendTest, ExactTiesGoToTheLowerId) {
  // 300 clusters sharing 6 distinct centroids: scores tie exactly within a
  // group; the zones must be the lowest ids of each group, in rank order.
  const size_t d = 64, g = 4, k = 300;
  WaveIndexParts p = RandomParts(d, k, 0.0, DType::kFp16, 11);
  for (size_t c = 6; c < k; ++c) {
    std::copy_n(p.centroids.begin() + (c % 6) * d, d,
                p.centroids.begin() + c * d);
  }
  WaveIndex index = FromPartsOrDie(std::move(p));
  WaveIndexParams params;
  params.retrieval_fraction = 0.1f;   // 30 clusters: splits a tie group
  params.estimation_fraction = 0.2f;  // 60 more
  const std::vector<float> q = RandomQueries(g, d, 12);
  const float scale = DefaultScale(d);
  this->Check(index, DType::kFp16, q, g, params, scale,
              this->PlanOne(1, index, DType::kFp16, q, g, params, scale),
              /*exact_ties=*/true);
}

TYPED_TEST(RetrievalBackendTest, TinyAndEmptyIndexes) {
  const WaveIndexParams params;
  const size_t d = 128, g = 8;
  const std::vector<float> q = RandomQueries(g, d, 3);
  const float scale = DefaultScale(d);
  IndexKey key = 50;
  // No clusters at all; one cluster; three; all empty; one non-empty among
  // empties.
  std::vector<WaveIndex> indexes;
  indexes.push_back(WaveIndex(d));
  indexes.push_back(FromPartsOrDie(RandomParts(d, 1, 0.0, DType::kFp16, 1)));
  indexes.push_back(FromPartsOrDie(RandomParts(d, 3, 0.0, DType::kFp16, 2)));
  indexes.push_back(FromPartsOrDie(RandomParts(d, 9, 1.0, DType::kFp16, 3)));
  WaveIndexParts one = RandomParts(d, 50, 1.0, DType::kFp16, 4);
  one.sizes[17] = 3;
  one.slot_tokens = {0, 1, 2};
  one.begin_token = 0;
  one.end_token = 3;
  indexes.push_back(FromPartsOrDie(std::move(one)));
  for (size_t i = 0; i < indexes.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "index " << i);
    const RetrievalPlan plan =
        this->PlanOne(++key, indexes[i], DType::kFp16, q, g, params, scale);
    this->Check(indexes[i], DType::kFp16, q, g, params, scale, plan);
  }
  EXPECT_EQ(this->PlanOne(++key, indexes[4], DType::kFp16, q, g, params, scale)
                .retrieval_clusters,
            std::vector<ClusterId>{17});
}

TYPED_TEST(RetrievalBackendTest, GrowingIndexAndForget) {
  // The wave index grows by appended clusters (decode updates): plans on
  // one key after each growth see the new clusters; Forget then a
  // different index under the same key sees the new index.
  const WaveIndexParams params;
  const size_t d = 128, g = 4;
  const std::vector<float> q = RandomQueries(g, d, 21);
  const float scale = DefaultScale(d);
  WaveIndexParts full = RandomParts(d, 2000, 0.05, DType::kBf16, 22);
  for (size_t k : {300, 301, 1200, 2000}) {
    SCOPED_TRACE(testing::Message() << k << " clusters");
    WaveIndexParts p = full;
    p.sizes.resize(k);
    p.centroids.resize(k * d);
    p.value_sums.resize(k * d);
    const uint64_t tokens =
        std::accumulate(p.sizes.begin(), p.sizes.end(), uint64_t{0});
    p.slot_tokens.resize(tokens);
    p.end_token = p.begin_token + tokens;
    WaveIndex index = FromPartsOrDie(std::move(p));
    this->Check(index, DType::kBf16, q, g, params, scale,
                this->PlanOne(7, index, DType::kBf16, q, g, params, scale));
  }
  this->backend_->Forget(7);
  WaveIndex other = FromPartsOrDie(RandomParts(d, 900, 0.05, DType::kBf16, 23));
  this->Check(other, DType::kBf16, q, g, params, scale,
              this->PlanOne(7, other, DType::kBf16, q, g, params, scale));
}

TYPED_TEST(RetrievalBackendTest, KMeansIndexWithDecodeUpdates) {
  // A real index: the prefill block, then two decode-update blocks.
  WaveIndexParams params;
  params.segment_tokens = 1024;
  params.update_tokens = 256;
  const size_t d = 64, g = 4, tokens = 3000 + 2 * 256;
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> keys(tokens * d), values(tokens * d);
  for (float& x : keys) x = normal(rng);
  for (float& x : values) x = normal(rng);
  const std::vector<float> q = RandomQueries(g, d, 32);
  const float scale = DefaultScale(d);
  WaveIndex index(d);
  uint64_t stored = 3000;
  for (int step = 0; step < 3; ++step) {
    const TokenSpan next = NextIndexBlock(params, stored, index.end_token());
    ASSERT_FALSE(next.empty());
    KvRows rows{
        DType::kFp32, d, next.num_tokens(),
        reinterpret_cast<const uint8_t*>(keys.data() + next.begin * d),
        reinterpret_cast<const uint8_t*>(values.data() + next.begin * d)};
    ASSERT_TRUE(index.AddBlock(params, next.begin, rows).ok());
    for (DType dtype : {DType::kBf16, DType::kFp32}) {
      const IndexKey key = dtype == DType::kBf16 ? 1 : 2;
      this->Check(index, dtype, q, g, params, scale,
                  this->PlanOne(key, index, dtype, q, g, params, scale));
    }
    stored += 256;
  }
}

TYPED_TEST(RetrievalBackendTest, BatchOfMixedShapes) {
  const WaveIndexParams params;
  const size_t g = 2;
  std::vector<WaveIndex> indexes;
  std::vector<std::vector<float>> queries;
  std::vector<RetrievalRequest> reqs;
  const DType dtypes[] = {DType::kFp16, DType::kBf16, DType::kFp32,
                          DType::kFp16, DType::kFp16};
  const size_t dims[] = {128, 64, 256, 128, 128};
  for (int i = 0; i < 5; ++i) {
    indexes.push_back(FromPartsOrDie(
        RandomParts(dims[i], 200 + 300 * i, 0.2, dtypes[i], 40 + i)));
    queries.push_back(RandomQueries(g, dims[i], 50 + i));
  }
  for (int i = 0; i < 5; ++i) {
    reqs.push_back(
        {static_cast<IndexKey>(100 + i), &indexes[i], queries[i], dtypes[i]});
  }
  const float scale = 0.1f;
  absl::StatusOr<std::vector<RetrievalPlan>> plans =
      this->backend_->Plan(reqs, g, params, scale);
  ASSERT_TRUE(plans.ok()) << plans.status();
  ASSERT_EQ(plans->size(), 5u);
  for (int i = 0; i < 5; ++i) {
    SCOPED_TRACE(testing::Message() << "request " << i);
    this->Check(indexes[i], dtypes[i], queries[i], g, params, scale,
                (*plans)[i]);
  }
}

TYPED_TEST(RetrievalBackendTest, BadRequests) {
  const WaveIndexParams params;
  const size_t d = 64, g = 2;
  WaveIndex index = FromPartsOrDie(RandomParts(d, 20, 0.0, DType::kFp32, 1));
  std::vector<float> q = RandomQueries(g, d, 2);
  auto plan = [&](const RetrievalRequest& r, const WaveIndexParams& p,
                  float scale, size_t group) {
    return this->backend_->Plan({&r, 1}, group, p, scale).status();
  };
  EXPECT_EQ(plan({1, nullptr, q, DType::kFp32}, params, 1.f, g).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plan({1, &index, q, DType::kFp32}, params, 1.f, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plan({1, &index, q, DType::kFp32}, params, 1.f, 3).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(plan({1, &index, q, DType::kFp32}, params, NAN, g).code(),
            absl::StatusCode::kInvalidArgument);
  WaveIndexParams bad;
  bad.retrieval_fraction = 0.f;
  EXPECT_EQ(plan({1, &index, q, DType::kFp32}, bad, 1.f, g).code(),
            absl::StatusCode::kInvalidArgument);
  q[5] = NAN;
  const absl::Status s = plan({1, &index, q, DType::kFp32}, params, 1.f, g);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("queries"), std::string::npos) << s;
}

}  // namespace
}  // namespace wavekv
