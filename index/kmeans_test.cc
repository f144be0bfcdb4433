#include "index/kmeans.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace wavekv {
namespace {

// Keys drawn around `num_planted` random directions (norm ~8, noise 0.4 per
// element), in shuffled order; labels[i] is key i's planted cluster.
struct Planted {
  std::vector<float> keys;
  std::vector<int> labels;
};

Planted MakePlanted(size_t num_planted, size_t per_cluster, size_t dim,
                    uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> centres(num_planted * dim);
  for (auto& x : centres) x = normal(rng);
  for (size_t c = 0; c < num_planted; ++c) {
    float norm = 0;
    for (size_t j = 0; j < dim; ++j)
      norm += centres[c * dim + j] * centres[c * dim + j];
    norm = std::sqrt(norm);
    for (size_t j = 0; j < dim; ++j) centres[c * dim + j] *= 8.0f / norm;
  }
  Planted p;
  for (size_t c = 0; c < num_planted; ++c) {
    for (size_t i = 0; i < per_cluster; ++i) p.labels.push_back(int(c));
  }
  std::shuffle(p.labels.begin(), p.labels.end(), rng);
  p.keys.resize(p.labels.size() * dim);
  for (size_t i = 0; i < p.labels.size(); ++i) {
    for (size_t j = 0; j < dim; ++j) {
      p.keys[i * dim + j] = centres[p.labels[i] * dim + j] + 0.4f * normal(rng);
    }
  }
  return p;
}

std::vector<SegmentPlan> OneSegment(size_t n, uint32_t k) {
  return {SegmentPlan{0, n, k}};
}

// Checks the structural invariants every result must satisfy.
void ExpectConsistent(const KMeansResult& r, const float* keys, size_t n,
                      size_t dim) {
  ASSERT_EQ(r.assignment.size(), n);
  ASSERT_EQ(r.sizes.size(), r.num_clusters);
  ASSERT_EQ(r.centroids.size(), r.num_clusters * dim);
  std::vector<uint32_t> counts(r.num_clusters, 0);
  std::vector<double> sums(r.num_clusters * dim, 0.0);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_LT(r.assignment[i], r.num_clusters);
    ++counts[r.assignment[i]];
    for (size_t j = 0; j < dim; ++j)
      sums[r.assignment[i] * dim + j] += keys[i * dim + j];
  }
  for (size_t c = 0; c < r.num_clusters; ++c) {
    ASSERT_EQ(counts[c], r.sizes[c]) << c;
    for (size_t j = 0; j < dim; ++j) {
      const float got = r.centroids[c * dim + j];
      ASSERT_TRUE(std::isfinite(got));
      // Centroid = exact (unnormalised) member mean; zeros when empty.
      const double want = counts[c] ? sums[c * dim + j] / counts[c] : 0.0;
      ASSERT_NEAR(got, want, 1e-4 * (1 + std::fabs(want))) << c << "," << j;
    }
  }
}

// Fraction of keys that share a found cluster with the majority of their
// planted cluster (1.0 = planted clusters recovered exactly).
double Purity(const KMeansResult& r, const std::vector<int>& labels) {
  std::map<uint32_t, std::map<int, int>> votes;
  for (size_t i = 0; i < labels.size(); ++i)
    votes[r.assignment[i]][labels[i]]++;
  size_t agree = 0;
  for (auto& [c, m] : votes) {
    int best = 0;
    for (auto& [l, v] : m) best = std::max(best, v);
    agree += best;
  }
  return double(agree) / labels.size();
}

class KMeansDimTest : public ::testing::TestWithParam<size_t> {};

TEST_P(KMeansDimTest, RecoversPlantedClustersWithLocality) {
  // Planted clusters in contiguous runs of tokens (the coarse locality of
  // post-RoPE keys that evenly spaced initialisation relies on): with one
  // cluster per planted cluster, recovery is exact.
  const size_t dim = GetParam();
  const size_t planted = 32, per = 16, n = planted * per;
  Planted p = MakePlanted(planted, per, dim, 7);
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return p.labels[a] < p.labels[b];
  });
  Planted sorted;
  for (size_t i : order) {
    sorted.labels.push_back(p.labels[i]);
    sorted.keys.insert(sorted.keys.end(), p.keys.begin() + i * dim,
                       p.keys.begin() + (i + 1) * dim);
  }
  auto r = SegmentedSphericalKMeans(sorted.keys.data(), n, dim,
                                    OneSegment(n, planted), 9, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectConsistent(*r, sorted.keys.data(), n, dim);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(r->assignment[i], static_cast<uint32_t>(sorted.labels[i])) << i;
  }
}

TEST_P(KMeansDimTest, RecoversShuffledPlantedClusters) {
  // No locality: evenly spaced picks miss some planted clusters, so
  // over-cluster (4 clusters per planted one); found clusters must still be
  // nearly pure (random assignment would score ~0.25).
  const size_t dim = GetParam();
  const size_t planted = 32, per = 32, n = planted * per;
  const Planted p = MakePlanted(planted, per, dim, 7);
  auto r = SegmentedSphericalKMeans(p.keys.data(), n, dim,
                                    OneSegment(n, 4 * planted), 9, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectConsistent(*r, p.keys.data(), n, dim);
  EXPECT_GE(Purity(*r, p.labels), 0.95);
}

TEST_P(KMeansDimTest, SegmentedRecoveryAndDeterminism) {
  const size_t dim = GetParam();
  // Each segment has its own planted clusters (coarse locality).
  const size_t planted = 16, per = 32, n_seg = planted * per;
  std::vector<float> keys;
  std::vector<int> labels;
  for (int s = 0; s < 3; ++s) {
    const Planted p = MakePlanted(planted, per, dim, 100 + s);
    keys.insert(keys.end(), p.keys.begin(), p.keys.end());
    for (int l : p.labels) labels.push_back(l + 100 * s);
  }
  const size_t n = 3 * n_seg;
  std::vector<SegmentPlan> plan;
  for (size_t s = 0; s < 3; ++s)
    plan.push_back({s * n_seg, (s + 1) * n_seg, 2 * planted});
  auto r1 = SegmentedSphericalKMeans(keys.data(), n, dim, plan, 9, 1);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->num_clusters, 6 * planted);
  ExpectConsistent(*r1, keys.data(), n, dim);
  EXPECT_GE(Purity(*r1, labels), 0.99);
  for (int threads : {2, 3, 8}) {
    auto r2 = SegmentedSphericalKMeans(keys.data(), n, dim, plan, 9, threads);
    ASSERT_TRUE(r2.ok());
    EXPECT_EQ(r1->assignment, r2->assignment) << threads;
    EXPECT_EQ(r1->sizes, r2->sizes);
    EXPECT_EQ(0, std::memcmp(r1->centroids.data(), r2->centroids.data(),
                             r1->centroids.size() * sizeof(float)));
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, KMeansDimTest,
                         ::testing::Values(size_t{64}, size_t{128},
                                           size_t{256}));

TEST(KMeansTest, MoreClustersThanKeysLeavesEmptyClustersSafe) {
  const size_t dim = 64, n = 5;
  const Planted p = MakePlanted(5, 1, dim, 3);
  auto r =
      SegmentedSphericalKMeans(p.keys.data(), n, dim, OneSegment(n, 12), 9, 2);
  ASSERT_TRUE(r.ok());
  ExpectConsistent(*r, p.keys.data(), n, dim);
  size_t empty = 0;
  for (uint32_t s : r->sizes) empty += s == 0;
  EXPECT_GE(empty, 7u);
}

TEST(KMeansTest, IdenticalKeysGoToOneClusterWithoutNaN) {
  // Centred keys are all zero vectors: no direction to normalise.
  const size_t dim = 128, n = 300;
  std::vector<float> keys(n * dim);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < dim; ++j) keys[i * dim + j] = 0.25f * j;
  }
  auto r =
      SegmentedSphericalKMeans(keys.data(), n, dim, OneSegment(n, 19), 9, 1);
  ASSERT_TRUE(r.ok());
  ExpectConsistent(*r, keys.data(), n, dim);
  EXPECT_EQ(r->sizes[0], n);  // ties go to the lowest cluster
  for (size_t c = 1; c < 19; ++c) EXPECT_EQ(r->sizes[c], 0u);
}

TEST(KMeansTest, GlobalPassMovesKeysAcrossSegments) {
  // The same two directions in both segments, but segment 1 got only one
  // cluster: its keys of the second direction must end up in segment 0's
  // matching cluster after the global assignment.
  const size_t dim = 64;
  std::vector<float> a(dim, 0.0f), b(dim, 0.0f);
  a[0] = 10.0f;
  b[1] = 10.0f;
  std::vector<float> keys;
  std::vector<int> dir;
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0.0f, 0.1f);
  for (int i = 0; i < 64; ++i) {
    const auto& src = (i % 2) ? b : a;
    for (size_t j = 0; j < dim; ++j) keys.push_back(src[j] + noise(rng));
    dir.push_back(i % 2);
  }
  const std::vector<SegmentPlan> plan = {{0, 32, 2}, {32, 64, 1}};
  auto r = SegmentedSphericalKMeans(keys.data(), 64, dim, plan, 9, 1);
  ASSERT_TRUE(r.ok());
  ExpectConsistent(*r, keys.data(), 64, dim);
  EXPECT_GE(Purity(*r, dir), 0.999);
}

TEST(KMeansTest, EmptyInputAndBadPlans) {
  auto r = SegmentedSphericalKMeans(nullptr, 0, 64, {}, 9, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->num_clusters, 0u);
  std::vector<float> keys(10 * 8, 1.0f);
  EXPECT_EQ(
      SegmentedSphericalKMeans(keys.data(), 10, 0, OneSegment(10, 1), 9, 1)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      SegmentedSphericalKMeans(keys.data(), 10, 8, OneSegment(10, 1), 0, 1)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SegmentedSphericalKMeans(keys.data(), 10, 8, OneSegment(9, 1), 9, 1)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      SegmentedSphericalKMeans(keys.data(), 10, 8, OneSegment(10, 0), 9, 1)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  const std::vector<SegmentPlan> gap = {{0, 4, 1}, {5, 10, 1}};
  EXPECT_EQ(
      SegmentedSphericalKMeans(keys.data(), 10, 8, gap, 9, 1).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace wavekv
