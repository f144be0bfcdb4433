// The retrieval launcher (retrieval.h) against the CPU reference
// PlanRetrieval (index/retrieval.h), several problems per launch.
// Tolerances (centroids representable in the launch's centroid type, so
// both sides score the same values): retrieval zone identical except at
// most 2 ranks (near-ties reordered by fp32 summation order, fast exp and
// the tensor cores' accumulation; exact ties always go to the lower id);
// estimation zone identical up to the same near-ties; tail max logit within
// 1e-4 (1 + |m|), denominator and numerator within 1e-4 relative.
// Validation cases run without a GPU; GPU cases skip (with the reason).
#include "index/cuda/retrieval.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "index/attention.h"
#include "index/cuda/decode_attention.h"
#include "index/dtype.h"
#include "index/retrieval.h"
#include "index/wave_index.h"

namespace wavekv::cuda {
namespace {

DType ToDType(ElemType t) {
  return t == ElemType::kFp16   ? DType::kFp16
         : t == ElemType::kBf16 ? DType::kBf16
                                : DType::kFp32;
}

// Owns device allocations of one test.
class DeviceArena {
 public:
  ~DeviceArena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <typename T>
  T* Alloc(size_t bytes) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, bytes == 0 ? 256 : bytes), cudaSuccess);
    ptrs_.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  T* Copy(const void* host, size_t bytes) {
    T* p = Alloc<T>(bytes);
    if (bytes) cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    return p;
  }

 private:
  std::vector<void*> ptrs_;
};

// Centroid rows drawn from `distinct` random rows (row c = base[c %
// distinct]): equal scores in groups, so zone boundaries fall inside ties.
// distinct == 0: every row independent. Sizes uniform in 0..24 (0: empty)
// unless `min_size` is raised.
WaveIndex MakeIndex(size_t d, size_t k, DType dtype, std::mt19937& rng,
                    size_t distinct = 0, uint32_t min_size = 0) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<uint32_t> size(min_size, 24);
  WaveIndexParts p;
  p.head_dim = d;
  p.centroids.resize(k * d);
  p.value_sums.resize(k * d);
  std::vector<uint8_t> tmp(DTypeBytes(dtype));
  const size_t rows = distinct == 0 ? k : std::min(distinct, k);
  for (size_t i = 0; i < rows * d; ++i) {
    float v = 1.5f * normal(rng);
    EncodeFromFloat(dtype, &v, 1, tmp.data());
    DecodeToFloat(dtype, tmp.data(), 1, &p.centroids[i]);
  }
  for (size_t c = rows; c < k; ++c) {
    std::copy_n(p.centroids.begin() + (c % rows) * d, d,
                p.centroids.begin() + c * d);
  }
  uint64_t t = 0;
  for (size_t c = 0; c < k; ++c) {
    const uint32_t s = size(rng);
    p.sizes.push_back(s);
    for (size_t j = 0; j < d; ++j) p.value_sums[c * d + j] = s * normal(rng);
    for (uint32_t i = 0; i < s; ++i) p.slot_tokens.push_back(t++);
  }
  p.end_token = t;
  auto index = WaveIndex::FromParts(std::move(p));
  EXPECT_TRUE(index.ok()) << index.status();
  return std::move(*index);
}

struct Case {
  ElemType type;
  int head_dim;
  int group;
};

class RetrievalGpuTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    absl::Status s = CheckCudaDevice();
    if (!s.ok()) GTEST_SKIP() << s.message();
  }
};

// One problem of a launch: its index, queries and zone parameters.
struct Spec {
  WaveIndex index;
  std::vector<float> queries;
  WaveIndexParams params;
};

Spec MakeSpec(WaveIndex index, size_t g, std::mt19937& rng,
              WaveIndexParams params = {}) {
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> q(g * index.head_dim());
  for (float& x : q) x = normal(rng);
  return Spec{std::move(index), std::move(q), params};
}

// Compares the first n problems' outputs with PlanRetrieval on the CPU.
void CheckProblems(const std::vector<RetrievalProblem>& ps, int n,
                   const std::vector<Spec>& specs, size_t g, size_t d,
                   float scale);

// Uploads `specs`, launches LaunchRetrieval over the first `subsets[i]`
// problems for each i (twice each, outputs poisoned before each call: a
// call must not depend on state an earlier one left in the workspaces) and
// checks the outputs against the CPU.
void RunAndCheck(const Case& c, const std::vector<Spec>& specs,
                 const std::vector<int>& subsets) {
  const size_t d = c.head_dim, g = c.group;
  const DType dtype = ToDType(c.type);
  const float scale = DefaultScale(d);
  DeviceArena arena;
  std::vector<RetrievalProblem> ps;
  for (const Spec& spec : specs) {
    const WaveIndex& idx = spec.index;
    const size_t k = idx.num_clusters();
    const ZoneBudget b =
        ComputeZoneBudget(spec.params, idx.num_nonempty_clusters());
    std::vector<float> cen(k * d);
    for (size_t j = 0; j < k; ++j) {
      std::vector<float> row = idx.centroid(j);
      std::copy(row.begin(), row.end(), cen.begin() + j * d);
    }
    std::vector<uint8_t> enc(cen.size() * DTypeBytes(dtype));
    EncodeFromFloat(dtype, cen.data(), cen.size(), enc.data());
    RetrievalProblem p;
    p.centroids = arena.Copy<void>(enc.data(), enc.size());
    p.value_sums = arena.Copy<float>(idx.value_sums().data(), k * d * 4);
    p.sizes = arena.Copy<uint32_t>(idx.cluster_sizes().data(), k * 4);
    p.num_clusters = k;
    p.retrieval_clusters = b.retrieval_clusters;
    p.estimation_clusters = b.estimation_clusters;
    p.queries = arena.Copy<float>(spec.queries.data(), g * d * 4);
    p.workspace =
        arena.Alloc<void>(RetrievalWorkspaceBytes(k, c.group, c.head_dim));
    p.out_retrieval = arena.Alloc<uint32_t>(b.retrieval_clusters * 4);
    p.out_counts = arena.Alloc<uint32_t>(8);
    p.out_estimation = arena.Alloc<uint32_t>(b.estimation_clusters * 4);
    p.out_max = arena.Alloc<float>(g * 4);
    p.out_den = arena.Alloc<float>(g * 4);
    p.out_num = arena.Alloc<float>(g * d * 4);
    ps.push_back(p);
  }
  auto* dev_ps = arena.Copy<RetrievalProblem>(
      ps.data(), ps.size() * sizeof(RetrievalProblem));
  RetrievalArgs a;
  a.centroid_type = c.type;
  a.head_dim = c.head_dim;
  a.group_size = c.group;
  a.scale = scale;
  a.problems = ps.data();
  a.device_problems = dev_ps;
  cudaStream_t main_stream = nullptr;
  RetrievalTailFork fork;
  ASSERT_EQ(cudaStreamCreateWithFlags(&main_stream, cudaStreamNonBlocking),
            cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&fork.tail_stream, cudaStreamNonBlocking),
            cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&fork.selected, cudaEventDisableTiming),
            cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&fork.tail_done, cudaEventDisableTiming),
            cudaSuccess);
  absl::Cleanup release = [&] {
    cudaEventDestroy(fork.tail_done);
    cudaEventDestroy(fork.selected);
    cudaStreamDestroy(fork.tail_stream);
    cudaStreamDestroy(main_stream);
  };
  for (int n : subsets) {
    SCOPED_TRACE(testing::Message() << "first " << n << " problems");
    a.num_problems = n;
    for (int call = 0; call < 2; ++call) {
      for (int i = 0; i < n; ++i) {
        cudaMemset(ps[i].out_retrieval, 0x7f, ps[i].retrieval_clusters * 4);
        cudaMemset(ps[i].out_estimation, 0x7f, ps[i].estimation_clusters * 4);
        cudaMemset(ps[i].out_num, 0x7f, g * d * 4);
        cudaMemset(ps[i].out_max, 0x7f, g * 4);
        cudaMemset(ps[i].out_den, 0x7f, g * 4);
        cudaMemset(ps[i].out_counts, 0x7f, 8);
      }
      if (call == 0) {
        ASSERT_TRUE(LaunchRetrieval(a, nullptr).ok());
      } else {  // the second call with the tail on its own stream
        ASSERT_TRUE(LaunchRetrieval(a, main_stream, fork).ok());
        ASSERT_EQ(cudaStreamWaitEvent(main_stream, fork.tail_done),
                  cudaSuccess);
      }
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    CheckProblems(ps, n, specs, g, d, scale);
  }
}

TEST_P(RetrievalGpuTest, MatchesPlanRetrieval) {
  const Case c = GetParam();
  const size_t d = c.head_dim, g = c.group;
  const DType dtype = ToDType(c.type);
  std::mt19937 rng(d * 31 + g * 7 + static_cast<int>(c.type));
  // 0 clusters, a small index, one past 16384 clusters; then all
  // problems, and the first two alone.
  std::vector<Spec> specs;
  for (size_t k : {0, 333, 16385}) {
    specs.push_back(MakeSpec(MakeIndex(d, k, dtype, rng), g, rng));
  }
  RunAndCheck(c, specs, {3, 2});
}

// Zone boundaries inside groups of equal scores (ties to the lower id),
// all scores equal (more candidates than the select kernel keeps in shared
// memory: the exact fallback; below and above the size that takes the
// classify kernel), tiny indexes, an empty estimation budget, an index
// with no non-empty cluster.
TEST_P(RetrievalGpuTest, TiesAndEdgeCases) {
  const Case c = GetParam();
  const size_t d = c.head_dim, g = c.group;
  const DType dtype = ToDType(c.type);
  std::mt19937 rng(d * 17 + g * 3 + static_cast<int>(c.type));
  WaveIndexParams no_estimation;
  no_estimation.estimation_fraction = 0.f;
  WaveIndexParams wide;  // large zones: boundaries deep in the groups
  wide.retrieval_fraction = 0.3f;
  wide.estimation_fraction = 0.5f;
  std::vector<Spec> specs;
  specs.push_back(MakeSpec(MakeIndex(d, 3000, dtype, rng, 40), g, rng));
  specs.push_back(MakeSpec(MakeIndex(d, 3001, dtype, rng, 7), g, rng, wide));
  specs.push_back(MakeSpec(MakeIndex(d, 6000, dtype, rng, 1), g, rng));
  // Over kSingleBlockSelectMax = 16384 clusters: the classify kernel's
  // path, here with every score equal (its exact fallback too).
  specs.push_back(MakeSpec(MakeIndex(d, 20000, dtype, rng, 1), g, rng));
  specs.push_back(MakeSpec(MakeIndex(d, 5, dtype, rng, 1), g, rng));
  specs.push_back(MakeSpec(MakeIndex(d, 1, dtype, rng, 0, 1), g, rng));
  specs.push_back(MakeSpec(MakeIndex(d, 7, dtype, rng), g, rng, wide));
  specs.push_back(
      MakeSpec(MakeIndex(d, 1000, dtype, rng), g, rng, no_estimation));
  {
    WaveIndexParts parts;
    parts.head_dim = d;
    parts.centroids.assign(50 * d, 0.5f);
    parts.value_sums.assign(50 * d, 0.f);
    parts.sizes.assign(50, 0);
    auto idx = WaveIndex::FromParts(std::move(parts));
    ASSERT_TRUE(idx.ok()) << idx.status();
    specs.push_back(MakeSpec(std::move(*idx), g, rng));
  }
  RunAndCheck(c, specs, {static_cast<int>(specs.size())});
}

void CheckProblems(const std::vector<RetrievalProblem>& ps, int n,
                   const std::vector<Spec>& specs, size_t g, size_t d,
                   float scale) {
  for (size_t i = 0; i < static_cast<size_t>(n); ++i) {
    SCOPED_TRACE(testing::Message() << "problem " << i);
    const RetrievalProblem& p = ps[i];
    auto cpu = PlanRetrieval(specs[i].index, specs[i].queries, g,
                             specs[i].params, scale);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    std::vector<uint32_t> counts(2), ret(p.retrieval_clusters),
        est(p.estimation_clusters);
    std::vector<float> mx(g), den(g), num(g * d);
    cudaMemcpy(counts.data(), p.out_counts, 8, cudaMemcpyDeviceToHost);
    cudaMemcpy(ret.data(), p.out_retrieval, ret.size() * 4,
               cudaMemcpyDeviceToHost);
    cudaMemcpy(est.data(), p.out_estimation, est.size() * 4,
               cudaMemcpyDeviceToHost);
    cudaMemcpy(mx.data(), p.out_max, g * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(den.data(), p.out_den, g * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(num.data(), p.out_num, g * d * 4, cudaMemcpyDeviceToHost);
    ASSERT_EQ(counts[0], cpu->retrieval_clusters.size());
    ASSERT_EQ(counts[1], cpu->estimation_clusters.size());
    size_t differ = 0;
    for (size_t j = 0; j < ret.size(); ++j) {
      const uint32_t want =
          j < counts[0] ? cpu->retrieval_clusters[j] : kNoCluster;
      differ += ret[j] != want;
    }
    EXPECT_LE(differ, 2u);
    size_t est_differ = 0;
    for (size_t j = 0; j < est.size(); ++j) {
      const uint32_t want =
          j < counts[1] ? cpu->estimation_clusters[j] : kNoCluster;
      est_differ += est[j] != want;
    }
    for (size_t j = counts[1]; j < est.size(); ++j) {
      EXPECT_EQ(est[j], kNoCluster) << j;
    }
    if (est_differ > 0) {
      // A near-tie at a zone boundary shifts the id-ordered list; accept
      // only a handful of swapped clusters.
      std::vector<uint32_t> a1(est.begin(), est.begin() + counts[1]);
      std::vector<uint32_t> b1(cpu->estimation_clusters.begin(),
                               cpu->estimation_clusters.end());
      std::vector<uint32_t> only;
      std::set_symmetric_difference(a1.begin(), a1.end(), b1.begin(), b1.end(),
                                    std::back_inserter(only));
      EXPECT_LE(only.size(), 4u);
    }
    for (size_t h = 0; h < g; ++h) {
      const AttentionPartial& t = cpu->tail[h];
      if (t.empty()) {
        EXPECT_EQ(mx[h], -INFINITY);
        EXPECT_EQ(den[h], 0.f);
        for (size_t j = 0; j < d; ++j) EXPECT_EQ(num[h * d + j], 0.f);
        continue;
      }
      EXPECT_NEAR(mx[h], t.max_logit, 1e-4 * (1 + std::abs(t.max_logit)));
      EXPECT_NEAR(den[h], t.denominator, 1e-4 * t.denominator);
      double err = 0, norm = 0;
      for (size_t j = 0; j < d; ++j) {
        const double x = num[h * d + j], y = t.numerator[j];
        err += (x - y) * (x - y);
        norm += y * y;
      }
      EXPECT_LE(std::sqrt(err), 1e-4 * std::sqrt(norm) + 1e-6) << "head " << h;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, RetrievalGpuTest,
                         ::testing::Values(Case{ElemType::kFp16, 128, 4},
                                           Case{ElemType::kBf16, 128, 8},
                                           Case{ElemType::kFp32, 64, 1},
                                           Case{ElemType::kFp16, 256, 3},
                                           Case{ElemType::kBf16, 64, 2},
                                           Case{ElemType::kFp32, 256, 8}));

// A 1M-token index (65536 clusters, 1180 retrieval / 15205 estimation
// clusters) beside a small one, fp16 and bf16.
TEST(RetrievalGpuLargeTest, MillionTokenIndex) {
  if (absl::Status s = CheckCudaDevice(); !s.ok()) GTEST_SKIP() << s.message();
  for (ElemType type : {ElemType::kFp16, ElemType::kBf16}) {
    SCOPED_TRACE(testing::Message() << "type " << static_cast<int>(type));
    const Case c{type, 128, 4};
    std::mt19937 rng(99 + static_cast<int>(type));
    std::vector<Spec> specs;
    specs.push_back(
        MakeSpec(MakeIndex(128, 65536, ToDType(type), rng, 0, 1), 4, rng));
    specs.push_back(MakeSpec(MakeIndex(128, 900, ToDType(type), rng), 4, rng));
    RunAndCheck(c, specs, {2});
  }
}

// More problems than take the classify kernel (kClassifyMaxProblems = 8):
// an index over 16384 clusters classified by its one select block.
TEST(RetrievalGpuLargeTest, ManyProblemsWithLargeIndex) {
  if (absl::Status s = CheckCudaDevice(); !s.ok()) GTEST_SKIP() << s.message();
  const Case c{ElemType::kFp16, 64, 2};
  std::mt19937 rng(123);
  std::vector<Spec> specs;
  specs.push_back(MakeSpec(MakeIndex(64, 20000, DType::kFp16, rng), 2, rng));
  for (int i = 0; i < 8; ++i) {
    specs.push_back(
        MakeSpec(MakeIndex(64, 50 + 97 * i, DType::kFp16, rng), 2, rng));
  }
  RunAndCheck(c, specs, {9});
}

// retrieval_clusters == 0: both zones empty (as PlanRetrieval), padding
// written, the empty partial.
TEST(RetrievalGpuEdgeTest, NoRetrievalBudget) {
  if (absl::Status s = CheckCudaDevice(); !s.ok()) GTEST_SKIP() << s.message();
  const size_t d = 64, g = 2, k = 700;
  std::mt19937 rng(5);
  WaveIndex idx = MakeIndex(d, k, DType::kFp16, rng);
  std::vector<float> cen(k * d);
  for (size_t j = 0; j < k; ++j) {
    std::vector<float> row = idx.centroid(j);
    std::copy(row.begin(), row.end(), cen.begin() + j * d);
  }
  std::vector<uint8_t> enc(cen.size() * 2);
  EncodeFromFloat(DType::kFp16, cen.data(), cen.size(), enc.data());
  std::vector<float> q(g * d, 0.25f);
  DeviceArena arena;
  RetrievalProblem p;
  p.centroids = arena.Copy<void>(enc.data(), enc.size());
  p.value_sums = arena.Copy<float>(idx.value_sums().data(), k * d * 4);
  p.sizes = arena.Copy<uint32_t>(idx.cluster_sizes().data(), k * 4);
  p.num_clusters = k;
  p.retrieval_clusters = 0;
  p.estimation_clusters = 100;
  p.queries = arena.Copy<float>(q.data(), q.size() * 4);
  p.workspace = arena.Alloc<void>(RetrievalWorkspaceBytes(k, g, d));
  p.out_counts = arena.Alloc<uint32_t>(8);
  p.out_estimation = arena.Alloc<uint32_t>(100 * 4);
  p.out_max = arena.Alloc<float>(g * 4);
  p.out_den = arena.Alloc<float>(g * 4);
  p.out_num = arena.Alloc<float>(g * d * 4);
  cudaMemset(p.out_estimation, 0x7f, 400);
  cudaMemset(p.out_num, 0x7f, g * d * 4);
  auto* dev = arena.Copy<RetrievalProblem>(&p, sizeof(p));
  RetrievalArgs a;
  a.head_dim = d;
  a.group_size = g;
  a.scale = DefaultScale(d);
  a.num_problems = 1;
  a.problems = &p;
  a.device_problems = dev;
  ASSERT_TRUE(LaunchRetrieval(a, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  uint32_t counts[2];
  std::vector<uint32_t> est(100);
  std::vector<float> mx(g), den(g), num(g * d);
  cudaMemcpy(counts, p.out_counts, 8, cudaMemcpyDeviceToHost);
  cudaMemcpy(est.data(), p.out_estimation, 400, cudaMemcpyDeviceToHost);
  cudaMemcpy(mx.data(), p.out_max, g * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(den.data(), p.out_den, g * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(num.data(), p.out_num, g * d * 4, cudaMemcpyDeviceToHost);
  EXPECT_EQ(counts[0], 0u);
  EXPECT_EQ(counts[1], 0u);
  for (uint32_t x : est) EXPECT_EQ(x, kNoCluster);
  for (size_t h = 0; h < g; ++h) {
    EXPECT_EQ(mx[h], -INFINITY);
    EXPECT_EQ(den[h], 0.f);
  }
  for (float x : num) EXPECT_EQ(x, 0.f);
}

// Validation needs no GPU: bad arguments are refused before any launch.
TEST(RetrievalValidationTest, RejectsBadArguments) {
  alignas(256) static char fake[256];
  RetrievalProblem p;
  p.num_clusters = 0;
  p.queries = reinterpret_cast<const float*>(fake);
  p.workspace = fake;
  p.out_counts = reinterpret_cast<uint32_t*>(fake);
  p.out_max = p.out_den = p.out_num = reinterpret_cast<float*>(fake);
  RetrievalArgs ok;
  ok.scale = 0.1f;
  ok.num_problems = 1;
  ok.problems = &p;
  ok.device_problems = &p;
  auto expect_bad = [](RetrievalArgs a, const char* field) {
    const absl::Status s = LaunchRetrieval(a, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  RetrievalTailFork fork;
  absl::Status s = LaunchRetrieval(ok, nullptr, fork);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("fork.tail_stream"), std::string::npos) << s;
  fork.tail_stream = reinterpret_cast<cudaStream_t>(fake);
  s = LaunchRetrieval(ok, nullptr, fork);
  EXPECT_NE(s.message().find("fork.selected"), std::string::npos) << s;
  RetrievalArgs a = ok;
  a.head_dim = 96;
  expect_bad(a, "head_dim");
  a = ok;
  a.group_size = 9;
  expect_bad(a, "group_size");
  a = ok;
  a.scale = NAN;
  expect_bad(a, "scale");
  a = ok;
  a.device_problems = nullptr;
  expect_bad(a, "device_problems");
  RetrievalProblem q = p;
  q.workspace = fake + 8;
  a = ok;
  a.problems = &q;
  expect_bad(a, "problems[0].workspace");
  q = p;
  q.retrieval_clusters = kMaxRetrievalClusters + 1;
  q.out_retrieval = reinterpret_cast<uint32_t*>(fake);
  a.problems = &q;
  expect_bad(a, "problems[0].retrieval_clusters");
  q = p;
  q.num_clusters = 10;
  a.problems = &q;
  expect_bad(a, "problems[0].centroids");
  q = p;
  q.out_num = nullptr;
  a.problems = &q;
  expect_bad(a, "problems[0].out_num");
  // Nothing to do is fine, GPU or not.
  a = ok;
  a.num_problems = 0;
  EXPECT_TRUE(LaunchRetrieval(a, nullptr).ok());
}

}  // namespace
}  // namespace wavekv::cuda
