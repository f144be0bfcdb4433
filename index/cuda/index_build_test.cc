// GPU-prepared wave-index blocks (index_build.h) committed into WaveIndex,
// against WaveIndex::AddBlock on the CPU: on well separated data the two
// indexes have the same sizes and slot order, centroids and value sums
// within 1e-5 relative; a decode update (1024 tokens -> 64 clusters) is
// appended the same way; every index survives ToParts/FromParts.
// GPU cases skip (with the reason) where no GPU exists.
#include "index/cuda/index_build.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "index/cuda/kmeans_test_util.h"
#include "index/wave_index.h"

namespace wavekv::cuda {
namespace {

using testing::DeviceBuffer;

bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return a.size() != b.size() ? 1e9 : std::sqrt(num / std::max(den, 1e-30));
}

// One layer of `heads` kv heads: separated keys per head, random values,
// as [n][heads][d] bytes plus the decoded per-head rows.
struct Layer {
  std::vector<uint8_t> keys, values;
};

Layer MakeLayer(DType dtype, const WaveIndexParams& params, size_t n,
                size_t heads, size_t d, uint32_t seed) {
  const std::vector<SegmentPlan> segs = PlanSegments(params, n);
  std::vector<std::vector<float>> k, v;
  for (size_t h = 0; h < heads; ++h) {
    k.push_back(testing::SeparatedKeys(segs, n, d, seed + h));
    v.push_back(testing::RandomRows(n, d, seed + 100 + h, 0.3f));
  }
  return {testing::Interleave(dtype, k, n, d),
          testing::Interleave(dtype, v, n, d)};
}

void ExpectSameIndex(const WaveIndex& gpu, const WaveIndex& cpu,
                     const std::string& what) {
  SCOPED_TRACE(what);
  const WaveIndexParts g = gpu.ToParts(), c = cpu.ToParts();
  EXPECT_EQ(g.begin_token, c.begin_token);
  EXPECT_EQ(g.end_token, c.end_token);
  EXPECT_EQ(g.sizes, c.sizes);
  EXPECT_EQ(g.slot_tokens, c.slot_tokens);
  EXPECT_LE(RelDiff(g.centroids, c.centroids), 1e-5);
  EXPECT_LE(RelDiff(g.value_sums, c.value_sums), 1e-5);
  EXPECT_EQ(gpu.num_nonempty_clusters(), cpu.num_nonempty_clusters());
  EXPECT_TRUE(WaveIndex::FromParts(gpu.ToParts()).ok());
}

TEST(GpuIndexBuild, PrefillAndDecodeUpdateMatchCpu) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU: CUDA device not available";
  const DType dtype = DType::kFp16;
  const size_t heads = 4, d = 128, elem = 2;
  WaveIndexParams params;
  params.segment_tokens = 4096;
  const uint64_t first = params.sink_tokens;
  const size_t n = 10000;  // 2 segments of 5000 tokens, 313 clusters each
  const Layer prefill = MakeLayer(dtype, params, n, heads, d, 40);
  // Decode update: update_tokens new tokens form one segment of 64 clusters.
  const size_t m = params.update_tokens;
  const Layer update = MakeLayer(dtype, params, m, heads, d, 80);

  std::vector<WaveIndex> gpu, cpu;
  for (size_t h = 0; h < heads; ++h) {
    gpu.emplace_back(d);
    cpu.emplace_back(d);
  }
  GpuSegmentedKMeans km;
  auto add = [&](const Layer& layer, uint64_t first_token, size_t tokens,
                 const char* what) {
    DeviceBuffer dk(layer.keys.data(), layer.keys.size());
    DeviceBuffer dv(layer.values.data(), layer.values.size());
    const std::vector<KMeansProblem> problems =
        LayerHeadProblems(dk.data(), dv.data(), dtype, heads, d);
    std::vector<const WaveIndex*> ptrs;
    for (const WaveIndex& w : gpu) ptrs.push_back(&w);
    absl::StatusOr<std::vector<PreparedBlock>> blocks = PrepareBlocksOnGpu(
        km, params, dtype, d, first_token, tokens, problems, ptrs, nullptr);
    ASSERT_TRUE(blocks.ok()) << blocks.status();
    ASSERT_EQ(blocks->size(), heads);
    for (size_t h = 0; h < heads; ++h) {
      ASSERT_TRUE(gpu[h].CommitBlock(std::move((*blocks)[h])).ok());
      KvRows rows;
      rows.dtype = dtype;
      rows.head_dim = d;
      rows.num_tokens = tokens;
      rows.keys = layer.keys.data() + h * d * elem;
      rows.values = layer.values.data() + h * d * elem;
      rows.row_stride_bytes = heads * d * elem;
      ASSERT_TRUE(cpu[h].AddBlock(params, first_token, rows, 4).ok());
      ExpectSameIndex(gpu[h], cpu[h],
                      std::string(what) + " head " + std::to_string(h));
    }
  };
  add(prefill, first, n, "prefill");
  EXPECT_EQ(gpu[0].num_clusters(), 626u);
  add(update, first + n, m, "decode update");
  EXPECT_EQ(gpu[0].num_clusters(), 626u + 64u);
  EXPECT_EQ(gpu[0].end_token(), first + n + m);
}

TEST(GpuIndexBuild, RejectsMismatchesWithoutChangingAnything) {
  // No GPU needed: every check runs before the GPU is used.
  WaveIndexParams params;
  int dummy = 0;
  const std::vector<KMeansProblem> one = {{&dummy, &dummy, 128}};
  WaveIndex index(128);
  const WaveIndex* ptr = &index;
  GpuSegmentedKMeans km;
  WaveIndex other(64);
  const WaveIndex* other_ptr = &other;
  EXPECT_EQ(PrepareBlocksOnGpu(km, params, DType::kFp16, 128, 4, 2048, one,
                               {&other_ptr, 1}, nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PrepareBlocksOnGpu(km, params, DType::kFp16, 128, 4, 2048, one, {},
                               nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  WaveIndexParams bad = params;
  bad.cluster_size = 0;
  EXPECT_EQ(PrepareBlocksOnGpu(km, bad, DType::kFp16, 128, 4, 2048, one,
                               {&ptr, 1}, nullptr)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // An empty block is fine and touches nothing.
  absl::StatusOr<std::vector<PreparedBlock>> empty = PrepareBlocksOnGpu(
      km, params, DType::kFp16, 128, 4, 0, one, {&ptr, 1}, nullptr);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ((*empty)[0].num_clusters(), 0u);
}

TEST(GpuIndexBuild, BlockMustContinueTheIndex) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU: CUDA device not available";
  WaveIndexParams params;
  const size_t d = 64, n = 1024;
  const Layer layer = MakeLayer(DType::kBf16, params, n, 1, d, 5);
  DeviceBuffer dk(layer.keys.data(), layer.keys.size());
  DeviceBuffer dv(layer.values.data(), layer.values.size());
  const std::vector<KMeansProblem> problems =
      LayerHeadProblems(dk.data(), dv.data(), DType::kBf16, 1, d);
  WaveIndex index(d);
  const WaveIndex* ptr = &index;
  GpuSegmentedKMeans km;
  absl::StatusOr<std::vector<PreparedBlock>> b = PrepareBlocksOnGpu(
      km, params, DType::kBf16, d, 4, n, problems, {&ptr, 1}, nullptr);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(index.CommitBlock(std::move((*b)[0])).ok());
  absl::StatusOr<std::vector<PreparedBlock>> gap = PrepareBlocksOnGpu(
      km, params, DType::kBf16, d, 4 + n + 1, n, problems, {&ptr, 1}, nullptr);
  EXPECT_EQ(gap.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace wavekv::cuda
