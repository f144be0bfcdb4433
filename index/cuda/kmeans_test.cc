// GPU segmented k-means (kmeans.h) against the CPU reference
// (index/kmeans.h + the value sums / slot order of WaveIndex::PrepareBlock).
// - Well separated data: assignments, sizes and member order equal the
//   CPU's exactly; centroids and value sums within 1e-5 relative (both are
//   double sums of the same decoded inputs in token order).
// - Random data: every structural invariant holds, and the mean cosine of
//   each centred key to its centred centroid is within 2% (relative) of the
//   CPU's: the GPU scores in fp16, so near-ties may go the other way.
// - Implementation paths: the fused in-segment update (with its early stop)
//   gives the same bits as the global-sort update; the wgmma scorer
//   (sm_90a) agrees with mma.sync; segments too long for the fused update
//   fall back to the global sort.
// GPU cases skip (with the reason) where no GPU exists; validation cases
// run everywhere.
#include "index/cuda/kmeans.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "index/cuda/kmeans_test_util.h"
#include "index/dtype.h"
#include "index/kmeans.h"
#include "index/wave_index_params.h"

namespace wavekv::cuda {
namespace {

using testing::CpuCluster;
using testing::CpuReference;
using testing::DeviceBuffer;

bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!HaveGpu()) GTEST_SKIP() << "no GPU: CUDA device not available"

WaveIndexParams Params(uint32_t segment_tokens) {
  WaveIndexParams p;
  p.segment_tokens = segment_tokens;
  return p;
}

// Relative L2 distance of two float arrays (0 when both are zero).
double RelDiff(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Structural invariants of one problem's result, with centroids and value
// sums recomputed in double from the decoded inputs.
void CheckInvariants(const GpuKMeansResult& r, const std::vector<float>& keys,
                     const std::vector<float>& values, size_t n, size_t d,
                     const std::string& what) {
  SCOPED_TRACE(what);
  const size_t k = r.num_clusters;
  ASSERT_EQ(r.sizes.size(), k);
  ASSERT_EQ(r.slot_tokens.size(), n);
  ASSERT_EQ(r.assignment.size(), n);
  uint64_t total = 0;
  for (uint32_t s : r.sizes) total += s;
  ASSERT_EQ(total, n) << "sizes must sum to the tokens";
  std::vector<bool> seen(n, false);
  size_t slot = 0;
  double worst_c = 0, worst_v = 0;
  for (size_t c = 0; c < k; ++c) {
    std::vector<double> ks(d, 0.0), vs(d, 0.0);
    for (uint32_t i = 0; i < r.sizes[c]; ++i, ++slot) {
      const uint32_t t = r.slot_tokens[slot];
      ASSERT_LT(t, n);
      ASSERT_FALSE(seen[t]) << "token " << t << " listed twice";
      seen[t] = true;
      ASSERT_EQ(r.assignment[t], c) << "member list disagrees with assignment";
      if (i > 0) {
        ASSERT_LT(r.slot_tokens[slot - 1], t) << "not in token order";
      }
      for (size_t j = 0; j < d; ++j) {
        ks[j] += keys[t * d + j];
        vs[j] += values[t * d + j];
      }
    }
    std::vector<float> mean(d), vsum(d);
    for (size_t j = 0; j < d; ++j) {
      mean[j] = r.sizes[c] ? static_cast<float>(ks[j] / r.sizes[c]) : 0.f;
      vsum[j] = static_cast<float>(vs[j]);
    }
    if (r.sizes[c] == 0) {
      for (size_t j = 0; j < d; ++j) {
        ASSERT_EQ(r.centroids[c * d + j], 0.f) << "empty cluster " << c;
        ASSERT_EQ(r.value_sums[c * d + j], 0.f) << "empty cluster " << c;
      }
    }
    worst_c =
        std::max(worst_c, RelDiff(r.centroids.data() + c * d, mean.data(), d));
    worst_v =
        std::max(worst_v, RelDiff(r.value_sums.data() + c * d, vsum.data(), d));
  }
  EXPECT_LE(worst_c, 1e-5) << "centroid is not the member mean";
  EXPECT_LE(worst_v, 1e-5) << "value sum is not sum of member values";
}

// Mean over keys of cos(key - mu, centroid(key) - mu), mu = mean key.
double MeanCosine(const std::vector<float>& keys, size_t n, size_t d,
                  const std::vector<float>& centroids,
                  const std::vector<uint32_t>& assignment) {
  std::vector<double> mu(d, 0.0);
  for (size_t t = 0; t < n; ++t) {
    for (size_t j = 0; j < d; ++j) mu[j] += keys[t * d + j];
  }
  for (double& x : mu) x /= n;
  double sum = 0;
  for (size_t t = 0; t < n; ++t) {
    const float* c = centroids.data() + assignment[t] * d;
    double dot = 0, nk = 0, nc = 0;
    for (size_t j = 0; j < d; ++j) {
      const double a = keys[t * d + j] - mu[j], b = c[j] - mu[j];
      dot += a * b;
      nk += a * a;
      nc += b * b;
    }
    if (nk > 0 && nc > 0) sum += dot / std::sqrt(nk * nc);
  }
  return sum / n;
}

struct Case {
  DType dtype;
  int head_dim;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return std::string(DTypeName(info.param.dtype)) + "_d" +
         std::to_string(info.param.head_dim);
}

class GpuKMeansTest : public ::testing::TestWithParam<Case> {};

// Runs `per_problem` keys/values (each [n][d]) as one batch laid out like a
// layer buffer ([n][P][d]) and returns the decoded inputs and results.
struct Batch {
  std::vector<std::vector<float>> keys, values;  // decoded (what GPU reads)
  std::vector<GpuKMeansResult> results;
  bool used_wgmma = false, used_fused_update = false, used_stationary = false;
};

// Implementation choices of one run (GpuKMeansPlan's defaults unless set).
struct Paths {
  bool fused_update = true;
  KMeansScorer scorer = KMeansScorer::kAuto;
  uint32_t iterations = 9;
};

Batch RunBatch(DType dtype, size_t d, size_t n,
               const std::vector<SegmentPlan>& segments,
               std::vector<std::vector<float>> keys,
               std::vector<std::vector<float>> values, Paths paths = {}) {
  Batch b;
  const size_t p = keys.size();
  for (size_t i = 0; i < p; ++i) {
    b.keys.push_back(testing::RoundTrip(dtype, keys[i]));
    b.values.push_back(testing::RoundTrip(dtype, values[i]));
  }
  const std::vector<uint8_t> kb = testing::Interleave(dtype, keys, n, d);
  const std::vector<uint8_t> vb = testing::Interleave(dtype, values, n, d);
  DeviceBuffer dk(kb.data(), kb.size()), dv(vb.data(), vb.size());
  EXPECT_NE(dk.data(), nullptr);
  EXPECT_NE(dv.data(), nullptr);
  const size_t elem = DTypeBytes(dtype);
  std::vector<KMeansProblem> problems;
  for (size_t i = 0; i < p; ++i) {
    problems.push_back({static_cast<uint8_t*>(dk.data()) + i * d * elem,
                        static_cast<uint8_t*>(dv.data()) + i * d * elem,
                        static_cast<int64_t>(p * d)});
  }
  GpuKMeansPlan plan;
  plan.dtype = static_cast<ElemType>(dtype);
  plan.head_dim = static_cast<int>(d);
  plan.num_tokens = static_cast<uint32_t>(n);
  plan.segments = segments;
  plan.iterations = paths.iterations;
  plan.fused_update = paths.fused_update;
  plan.scorer = paths.scorer;
  GpuSegmentedKMeans km;
  absl::Status s = km.Run(plan, problems, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  absl::StatusOr<std::vector<GpuKMeansResult>> r = km.CopyResults(nullptr);
  EXPECT_TRUE(r.ok()) << r.status();
  if (r.ok()) b.results = std::move(*r);
  b.used_wgmma = km.used_wgmma();
  b.used_fused_update = km.used_fused_update();
  b.used_stationary = km.used_stationary_scorer();
  return b;
}

// Every output of two runs, bit for bit.
void ExpectSameBits(const Batch& a, const Batch& b, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(a.results.size(), b.results.size());
  for (size_t i = 0; i < a.results.size(); ++i) {
    const GpuKMeansResult &x = a.results[i], &y = b.results[i];
    EXPECT_EQ(x.assignment, y.assignment) << "problem " << i;
    EXPECT_EQ(x.sizes, y.sizes) << "problem " << i;
    EXPECT_EQ(x.slot_tokens, y.slot_tokens) << "problem " << i;
    ASSERT_EQ(x.centroids.size(), y.centroids.size());
    EXPECT_EQ(0, std::memcmp(x.centroids.data(), y.centroids.data(),
                             x.centroids.size() * sizeof(float)))
        << "problem " << i;
    EXPECT_EQ(0, std::memcmp(x.value_sums.data(), y.value_sums.data(),
                             x.value_sums.size() * sizeof(float)))
        << "problem " << i;
  }
}

TEST_P(GpuKMeansTest, SeparatedDataMatchesCpuExactly) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const size_t d = c.head_dim, n = 3000, p = 3;
  const std::vector<SegmentPlan> segs = PlanSegments(Params(1024), n);
  ASSERT_EQ(segs.size(), 3u);
  std::vector<std::vector<float>> keys, values;
  for (size_t i = 0; i < p; ++i) {
    keys.push_back(testing::SeparatedKeys(segs, n, d, 100 + i));
    values.push_back(testing::RandomRows(n, d, 200 + i, 0.5f));
  }
  Batch b = RunBatch(c.dtype, d, n, segs, keys, values);
  ASSERT_EQ(b.results.size(), p);
  for (size_t i = 0; i < p; ++i) {
    SCOPED_TRACE("problem " + std::to_string(i));
    const CpuReference ref = CpuCluster(b.keys[i], b.values[i], n, d, segs, 9);
    const GpuKMeansResult& r = b.results[i];
    ASSERT_EQ(r.num_clusters, ref.km.num_clusters);
    EXPECT_EQ(r.assignment, ref.km.assignment);
    EXPECT_EQ(r.sizes, ref.km.sizes);
    EXPECT_EQ(r.slot_tokens, ref.slot_tokens);
    EXPECT_LE(RelDiff(r.centroids.data(), ref.km.centroids.data(),
                      r.centroids.size()),
              1e-5);
    EXPECT_LE(RelDiff(r.value_sums.data(), ref.value_sums.data(),
                      r.value_sums.size()),
              1e-5);
    CheckInvariants(r, b.keys[i], b.values[i], n, d, "separated");
  }
}

TEST_P(GpuKMeansTest, RandomDataQualityAndInvariants) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const size_t d = c.head_dim, n = 5000, p = 2;
  const std::vector<SegmentPlan> segs = PlanSegments(Params(2048), n);
  std::vector<std::vector<float>> keys, values;
  for (size_t i = 0; i < p; ++i) {
    keys.push_back(testing::RandomRows(n, d, 300 + i, 2.0f));
    values.push_back(testing::RandomRows(n, d, 400 + i, 0.5f));
  }
  Batch b = RunBatch(c.dtype, d, n, segs, keys, values);
  ASSERT_EQ(b.results.size(), p);
  for (size_t i = 0; i < p; ++i) {
    const CpuReference ref = CpuCluster(b.keys[i], b.values[i], n, d, segs, 9);
    const GpuKMeansResult& r = b.results[i];
    CheckInvariants(r, b.keys[i], b.values[i], n, d, "random");
    const double q_gpu = MeanCosine(b.keys[i], n, d, r.centroids, r.assignment);
    const double q_cpu =
        MeanCosine(b.keys[i], n, d, ref.km.centroids, ref.km.assignment);
    size_t same = 0;
    for (size_t t = 0; t < n; ++t)
      same += r.assignment[t] == ref.km.assignment[t];
    std::printf(
        "[quality] %s d=%zu problem %zu: mean cosine gpu %.4f cpu %.4f,"
        " same assignment %.1f%%\n",
        std::string(DTypeName(c.dtype)).c_str(), d, i, q_gpu, q_cpu,
        100.0 * same / n);
    EXPECT_GT(q_cpu, 0.0);
    EXPECT_NEAR(q_gpu, q_cpu, 0.02 * q_cpu);
  }
}

// The fused update (per-segment counting sort, early stop) against the
// global radix sort + per-cluster update, same scorer: identical bits, on
// random data (no early stop) and on separated data (converges early).
TEST_P(GpuKMeansTest, FusedUpdateGivesTheSameBitsAsGlobalSort) {
  SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const size_t d = c.head_dim, n = 5000, p = 2;
  const std::vector<SegmentPlan> segs = PlanSegments(Params(2048), n);
  for (int separated = 0; separated < 2; ++separated) {
    std::vector<std::vector<float>> keys, values;
    for (size_t i = 0; i < p; ++i) {
      keys.push_back(separated ? testing::SeparatedKeys(segs, n, d, 500 + i)
                               : testing::RandomRows(n, d, 500 + i, 2.0f));
      values.push_back(testing::RandomRows(n, d, 600 + i, 0.5f));
    }
    Paths sort_paths;
    sort_paths.fused_update = false;
    sort_paths.iterations = 20;
    Paths fused_paths = sort_paths;
    fused_paths.fused_update = true;
    Batch a = RunBatch(c.dtype, d, n, segs, keys, values, sort_paths);
    Batch b = RunBatch(c.dtype, d, n, segs, keys, values, fused_paths);
    EXPECT_FALSE(a.used_fused_update);
    EXPECT_TRUE(b.used_fused_update);
    ExpectSameBits(a, b, separated ? "separated" : "random");
  }
}

// wgmma scorers (where the device runs them; 128-key tiles, and the
// centroid-stationary in-segment kernel) against mma.sync: all accumulate fp16
// products in fp32. Separated data: identical bits, equal to the CPU. Random
// data: at least 99% of the assignments equal (near-ties could in principle
// round differently).
TEST_P(GpuKMeansTest, WgmmaScorerAgreesWithMmaSync) {
  SKIP_WITHOUT_GPU();
  if (!KMeansWgmmaAvailable()) {
    GTEST_SKIP() << "wgmma scorer not available (needs sm_90a on CC 9.0)";
  }
  const Case c = GetParam();
  const size_t d = c.head_dim, n = 3000, p = 2;
  const std::vector<SegmentPlan> segs = PlanSegments(Params(1024), n);
  std::vector<std::vector<float>> keys, values, rkeys, rvalues;
  for (size_t i = 0; i < p; ++i) {
    keys.push_back(testing::SeparatedKeys(segs, n, d, 700 + i));
    values.push_back(testing::RandomRows(n, d, 800 + i, 0.5f));
    rkeys.push_back(testing::RandomRows(n, d, 900 + i, 2.0f));
    rvalues.push_back(testing::RandomRows(n, d, 950 + i, 0.5f));
  }
  Paths mma;
  mma.scorer = KMeansScorer::kMmaSync;
  const Batch b = RunBatch(c.dtype, d, n, segs, keys, values, mma);
  const Batch rb = RunBatch(c.dtype, d, n, segs, rkeys, rvalues, mma);
  EXPECT_FALSE(b.used_wgmma);
  ASSERT_EQ(rb.results.size(), p);
  for (KMeansScorer scorer :
       {KMeansScorer::kWgmma, KMeansScorer::kWgmmaStationary}) {
    const char* name =
        scorer == KMeansScorer::kWgmma ? "wgmma" : "wgmma stationary";
    SCOPED_TRACE(name);
    Paths wg;
    wg.scorer = scorer;
    const Batch a = RunBatch(c.dtype, d, n, segs, keys, values, wg);
    EXPECT_TRUE(a.used_wgmma);
    ExpectSameBits(a, b, "separated");
    for (size_t i = 0; i < p && i < a.results.size(); ++i) {
      const CpuReference ref =
          CpuCluster(a.keys[i], a.values[i], n, d, segs, 9);
      EXPECT_EQ(a.results[i].assignment, ref.km.assignment);
      EXPECT_EQ(a.results[i].slot_tokens, ref.slot_tokens);
    }
    const Batch ra = RunBatch(c.dtype, d, n, segs, rkeys, rvalues, wg);
    ASSERT_EQ(ra.results.size(), p);
    for (size_t i = 0; i < p; ++i) {
      CheckInvariants(ra.results[i], ra.keys[i], ra.values[i], n, d, "wgmma");
      size_t same = 0;
      for (size_t t = 0; t < n; ++t) {
        same += ra.results[i].assignment[t] == rb.results[i].assignment[t];
      }
      std::printf(
          "[scorers] %s d=%zu %s problem %zu: %zu of %zu assignments equal\n",
          std::string(DTypeName(c.dtype)).c_str(), d, name, i, same, n);
      EXPECT_GE(same, n * 99 / 100);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuKMeansTest,
    ::testing::Values(Case{DType::kFp16, 64}, Case{DType::kFp16, 128},
                      Case{DType::kFp16, 256}, Case{DType::kBf16, 64},
                      Case{DType::kBf16, 128}, Case{DType::kBf16, 256},
                      Case{DType::kFp32, 64}, Case{DType::kFp32, 128},
                      Case{DType::kFp32, 256}),
    CaseName);

// The default plan shape (8192-token segments of 512 clusters): several
// centroid tiles per segment and 1024 centroids in the final pass.
TEST(GpuKMeansDefaultShape, SeparatedDataMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const size_t d = 128, n = 16384;
  const std::vector<SegmentPlan> segs = PlanSegments(WaveIndexParams{}, n);
  ASSERT_EQ(segs.size(), 2u);
  ASSERT_EQ(segs[0].num_clusters, 512u);
  std::vector<std::vector<float>> keys = {
      testing::SeparatedKeys(segs, n, d, 7)};
  std::vector<std::vector<float>> values = {testing::RandomRows(n, d, 8, 0.f)};
  Batch b = RunBatch(DType::kFp16, d, n, segs, keys, values);
  ASSERT_EQ(b.results.size(), 1u);
  const CpuReference ref = CpuCluster(b.keys[0], b.values[0], n, d, segs, 9);
  EXPECT_EQ(b.results[0].assignment, ref.km.assignment);
  EXPECT_EQ(b.results[0].slot_tokens, ref.slot_tokens);
  CheckInvariants(b.results[0], b.keys[0], b.values[0], n, d, "default");
}

// A segment whose keys are all one vector: every key picks the same
// cluster, the others stay empty (size 0, zeros, no members), as on the CPU.
TEST(GpuKMeansEmptyClusters, ConstantSegmentLeavesEmptyClusters) {
  SKIP_WITHOUT_GPU();
  const size_t d = 64, n = 2048;
  const std::vector<SegmentPlan> segs = PlanSegments(Params(1024), n);
  ASSERT_EQ(segs.size(), 2u);
  std::vector<std::vector<float>> keys = {
      testing::SeparatedKeys(segs, n, d, 11, /*constant_first_segment=*/true)};
  std::vector<std::vector<float>> values = {testing::RandomRows(n, d, 12, 0.f)};
  Batch b = RunBatch(DType::kFp16, d, n, segs, keys, values);
  ASSERT_EQ(b.results.size(), 1u);
  const GpuKMeansResult& r = b.results[0];
  CheckInvariants(r, b.keys[0], b.values[0], n, d, "constant");
  size_t nonempty0 = 0;
  for (uint32_t c = 0; c < segs[0].num_clusters; ++c)
    nonempty0 += r.sizes[c] > 0;
  EXPECT_EQ(nonempty0, 1u);
  const CpuReference ref = CpuCluster(b.keys[0], b.values[0], n, d, segs, 9);
  size_t cpu_empty = 0, gpu_empty = 0;
  for (size_t c = 0; c < r.num_clusters; ++c) {
    cpu_empty += ref.km.sizes[c] == 0;
    gpu_empty += r.sizes[c] == 0;
  }
  EXPECT_EQ(gpu_empty, cpu_empty);
  // Segment 1 (separated data) agrees token by token.
  for (size_t t = segs[1].begin; t < n; ++t) {
    ASSERT_EQ(r.assignment[t], ref.km.assignment[t]) << "token " << t;
  }
}

// The centroid-stationary in-segment scorer: blocks of 2048 rows (several
// 128-key tiles through the two key stages, a partial last one) against an
// even (4), odd (3) or single centroid tile count. Same bits as mma.sync on
// separated data, >= 99% equal assignments on random data.
TEST(GpuKMeansStationary, MatchesMmaSync) {
  SKIP_WITHOUT_GPU();
  if (!KMeansWgmmaAvailable()) {
    GTEST_SKIP() << "wgmma scorer not available (needs sm_90a on CC 9.0)";
  }
  struct Shape {
    size_t n, p;
    uint32_t segment_tokens;
  };
  for (const Shape& sh :
       {Shape{16384, 8, 8192}, Shape{6000, 4, 6000}, Shape{4096, 16, 1024}}) {
    SCOPED_TRACE("n=" + std::to_string(sh.n) + " p=" + std::to_string(sh.p));
    const size_t d = 128;
    const std::vector<SegmentPlan> segs =
        PlanSegments(Params(sh.segment_tokens), sh.n);
    for (int separated = 0; separated < 2; ++separated) {
      std::vector<std::vector<float>> keys, values;
      for (size_t i = 0; i < sh.p; ++i) {
        keys.push_back(separated
                           ? testing::SeparatedKeys(segs, sh.n, d, 1000 + i)
                           : testing::RandomRows(sh.n, d, 1000 + i, 2.0f));
        values.push_back(testing::RandomRows(sh.n, d, 2000 + i, 0.5f));
      }
      Paths stat, mma;
      stat.scorer = KMeansScorer::kWgmmaStationary;
      mma.scorer = KMeansScorer::kMmaSync;
      const Batch a = RunBatch(DType::kFp16, d, sh.n, segs, keys, values, stat);
      const Batch b = RunBatch(DType::kFp16, d, sh.n, segs, keys, values, mma);
      EXPECT_TRUE(a.used_stationary);
      ASSERT_EQ(a.results.size(), sh.p);
      ASSERT_EQ(b.results.size(), sh.p);
      if (separated) {
        ExpectSameBits(a, b, "separated");
        const CpuReference ref =
            CpuCluster(a.keys[0], a.values[0], sh.n, d, segs, 9);
        EXPECT_EQ(a.results[0].assignment, ref.km.assignment);
        continue;
      }
      size_t same = 0;
      for (size_t i = 0; i < sh.p; ++i) {
        CheckInvariants(a.results[i], a.keys[i], a.values[i], sh.n, d,
                        "stationary");
        for (size_t t = 0; t < sh.n; ++t) {
          same += a.results[i].assignment[t] == b.results[i].assignment[t];
        }
      }
      std::printf("[stationary] n=%zu p=%zu: %zu of %zu assignments equal\n",
                  sh.n, sh.p, same, sh.n * sh.p);
      EXPECT_GE(same, sh.n * sh.p * 99 / 100);
    }
  }
}

// A segment longer than kFusedMaxSegmentRows takes the global-sort update
// and still equals the CPU.
TEST(GpuKMeansLongSegment, FallsBackToGlobalSort) {
  SKIP_WITHOUT_GPU();
  const size_t d = 64, n = kFusedMaxSegmentRows + 1000;
  const std::vector<SegmentPlan> segs = {{0, n, 48}};
  std::vector<std::vector<float>> keys = {
      testing::SeparatedKeys(segs, n, d, 41)};
  std::vector<std::vector<float>> values = {testing::RandomRows(n, d, 42, 0.f)};
  Batch b = RunBatch(DType::kFp16, d, n, segs, keys, values);
  ASSERT_EQ(b.results.size(), 1u);
  EXPECT_FALSE(b.used_fused_update);
  const CpuReference ref = CpuCluster(b.keys[0], b.values[0], n, d, segs, 9);
  EXPECT_EQ(b.results[0].assignment, ref.km.assignment);
  EXPECT_EQ(b.results[0].slot_tokens, ref.slot_tokens);
}

TEST(GpuKMeansDeterminism, SameInputSameBits) {
  SKIP_WITHOUT_GPU();
  const size_t d = 128, n = 4096;
  const std::vector<SegmentPlan> segs = PlanSegments(Params(1024), n);
  std::vector<std::vector<float>> keys = {testing::RandomRows(n, d, 21, 1.f),
                                          testing::RandomRows(n, d, 22, 1.f)};
  std::vector<std::vector<float>> values = {testing::RandomRows(n, d, 23, 0.f),
                                            testing::RandomRows(n, d, 24, 0.f)};
  Batch a = RunBatch(DType::kBf16, d, n, segs, keys, values);
  Batch b = RunBatch(DType::kBf16, d, n, segs, keys, values);
  ASSERT_EQ(a.results.size(), 2u);
  ASSERT_EQ(b.results.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(a.results[i].assignment, b.results[i].assignment);
    EXPECT_EQ(a.results[i].slot_tokens, b.results[i].slot_tokens);
    EXPECT_EQ(0, std::memcmp(a.results[i].centroids.data(),
                             b.results[i].centroids.data(),
                             a.results[i].centroids.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(a.results[i].value_sums.data(),
                             b.results[i].value_sums.data(),
                             a.results[i].value_sums.size() * sizeof(float)));
  }
}

TEST(GpuKMeansErrors, NonFiniteInputsAreRejected) {
  SKIP_WITHOUT_GPU();
  const size_t d = 64, n = 512;
  const std::vector<SegmentPlan> segs = PlanSegments(Params(512), n);
  for (int which = 0; which < 2; ++which) {
    std::vector<float> k = testing::RandomRows(n, d, 31, 0.f);
    std::vector<float> v = testing::RandomRows(n, d, 32, 0.f);
    (which == 0 ? k : v)[100 * d + 5] = std::nanf("");
    DeviceBuffer dk(k.data(), k.size() * 4), dv(v.data(), v.size() * 4);
    const KMeansProblem prob{dk.data(), dv.data(), static_cast<int64_t>(d)};
    GpuKMeansPlan plan;
    plan.dtype = ElemType::kFp32;
    plan.head_dim = d;
    plan.num_tokens = n;
    plan.segments = segs;
    GpuSegmentedKMeans km;
    ASSERT_TRUE(km.Run(plan, {&prob, 1}, nullptr).ok());
    absl::StatusOr<std::vector<GpuKMeansResult>> r = km.CopyResults(nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(which == 0 ? "keys" : "values"),
              std::string::npos)
        << r.status();
  }
}

// Validation needs no GPU: these run everywhere.
TEST(GpuKMeansValidation, RejectsBadPlansAndProblems) {
  int dummy = 0;
  const KMeansProblem ok{&dummy, &dummy, 128};
  GpuKMeansPlan plan;
  plan.head_dim = 128;
  plan.num_tokens = 100;
  plan.segments = {{0, 100, 4}};
  EXPECT_TRUE(GpuSegmentedKMeans::Validate(plan, {&ok, 1}).ok());

  auto expect_invalid = [&](const GpuKMeansPlan& p,
                            absl::Span<const KMeansProblem> probs,
                            const char* field) {
    absl::Status s = GpuSegmentedKMeans::Validate(p, probs);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
    GpuSegmentedKMeans km;  // Run validates before touching the GPU
    EXPECT_EQ(km.Run(p, probs, nullptr).code(),
              absl::StatusCode::kInvalidArgument);
  };
  GpuKMeansPlan bad = plan;
  bad.head_dim = 96;
  expect_invalid(bad, {&ok, 1}, "head_dim");
  bad = plan;
  bad.iterations = 0;
  expect_invalid(bad, {&ok, 1}, "iterations");
  bad = plan;
  bad.scorer = static_cast<KMeansScorer>(7);
  expect_invalid(bad, {&ok, 1}, "scorer");
  bad = plan;
  bad.num_tokens = 0;
  expect_invalid(bad, {&ok, 1}, "num_tokens");
  bad = plan;
  bad.segments = {{0, 50, 2}, {60, 100, 2}};
  expect_invalid(bad, {&ok, 1}, "segments[1]");
  bad = plan;
  bad.segments = {{0, 50, 2}};
  expect_invalid(bad, {&ok, 1}, "segments");
  bad = plan;
  bad.segments = {{0, 100, 0}};
  expect_invalid(bad, {&ok, 1}, "segments[0]");
  expect_invalid(plan, {}, "problems");
  const KMeansProblem null_keys{nullptr, &dummy, 128};
  expect_invalid(plan, {&null_keys, 1}, "problems[0].keys");
  const KMeansProblem short_rows{&dummy, &dummy, 64};
  expect_invalid(plan, {&short_rows, 1}, "problems[0].row_stride");
  GpuSegmentedKMeans km;
  EXPECT_EQ(km.CopyResults(nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace wavekv::cuda
