// EngineGpu and the engine's gpu_device option: option handling in every
// build (CPU-only builds reject a device number, auto falls back), and on a
// GPU: blocks clustered on the device commit like CPU ones, plans match the
// CPU backend on the same index, replaced indexes never reuse stale device
// copies, and an engine opened on the GPU counts its GPU work.
#include "kvstore/gpu/engine_gpu.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "index/dtype.h"
#include "index/retrieval_backend.h"
#include "index/wave_index.h"
#include "kvstore/engine.h"

namespace wavekv {
namespace {

bool HaveGpu() { return EngineBuiltWithCuda() && ResolveGpuDevice(0).ok(); }

TEST(GpuOptionTest, OffAutoAndDeviceNumbers) {
  EngineOptions o;
  o.gpu_device = -3;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(o);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine.status().message(),
            "gpu_device: -3 is not a device number, -1 (off) or -2 (auto)");

  o.gpu_device = kGpuOff;
  engine = Engine::Open(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->Stats().gpu_device, -1);

  o.gpu_device = kGpuAuto;
  engine = Engine::Open(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->Stats().gpu_device, HaveGpu() ? 0 : -1);

  o.gpu_device = 0;
  engine = Engine::Open(o);
  if (!EngineBuiltWithCuda()) {
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(engine.status().message().find(
                  "gpu_device: 0 asks for a GPU, but this build has no CUDA"),
              std::string::npos)
        << engine.status();
  } else if (!HaveGpu()) {
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition)
        << engine.status();
  } else {
    ASSERT_TRUE(engine.ok()) << engine.status();
    EXPECT_EQ((*engine)->Stats().gpu_device, 0);
  }
  o.gpu_device = 4096;
  EXPECT_FALSE(Engine::Open(o).ok());
}

// Keys in topic clusters (so k-means has structure), fp16 rows.
std::vector<uint8_t> TopicRows(size_t n, size_t d, uint32_t seed,
                               std::vector<float>* floats) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<std::vector<float>> topics(32, std::vector<float>(d));
  for (auto& t : topics) {
    for (float& x : t) x = normal(rng);
  }
  floats->resize(n * d);
  for (size_t i = 0; i < n; ++i) {
    const auto& t = topics[(i / 40) % topics.size()];
    for (size_t e = 0; e < d; ++e) {
      (*floats)[i * d + e] = t[e] + 0.3f * normal(rng);
    }
  }
  std::vector<uint8_t> bytes(n * d * 2);
  EncodeFromFloat(DType::kFp16, floats->data(), floats->size(), bytes.data());
  DecodeToFloat(DType::kFp16, bytes.data(), floats->size(), floats->data());
  return bytes;
}

class EngineGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no usable GPU in this build or machine";
    absl::StatusOr<std::unique_ptr<EngineGpu>> gpu = EngineGpu::Open(0);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = *std::move(gpu);
    ASSERT_NE(gpu_, nullptr);
  }
  std::unique_ptr<EngineGpu> gpu_;
};

// Two heads' blocks clustered on the GPU commit into indexes, and plans of
// the GPU backend equal the CPU's on those indexes; more blocks (decode
// updates) reach the device copies; an index replaced by another object
// (even at the same address) is planned from its own centroids.
TEST_F(EngineGpuTest, BuildCommitPlanAndReplace) {
  const size_t d = 128, n = 4096, g = 4;
  WaveIndexParams params;
  std::vector<std::vector<uint8_t>> keys(2), values(2);
  std::vector<float> f;
  for (int h = 0; h < 2; ++h) {
    keys[h] = TopicRows(n + 1024, d, 10 + h, &f);
    values[h] = TopicRows(n + 1024, d, 20 + h, &f);
  }
  std::vector<std::shared_ptr<WaveIndex>> indexes = {
      std::make_shared<WaveIndex>(d), std::make_shared<WaveIndex>(d)};
  auto build = [&](uint64_t first, uint64_t count) {
    std::vector<KvRows> rows;
    for (int h = 0; h < 2; ++h) {
      rows.push_back({DType::kFp16, d, count, keys[h].data() + first * d * 2,
                      values[h].data() + first * d * 2, d * 2});
    }
    absl::StatusOr<std::vector<PreparedBlock>> blocks =
        gpu_->PrepareBlocks(params, 4 + first, rows, indexes, "test block");
    ASSERT_TRUE(blocks.ok()) << blocks.status();
    ASSERT_EQ(blocks->size(), 2u);
    for (int h = 0; h < 2; ++h) {
      uint64_t members = 0;
      for (uint32_t s : (*blocks)[h].sizes) members += s;
      EXPECT_EQ(members, count);
      ASSERT_TRUE(indexes[h]->CommitBlock(std::move((*blocks)[h])).ok());
    }
  };
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> q(g * d);
  CpuRetrievalBackend cpu;
  auto compare = [&]() {
    for (float& x : q) x = 0.1f * normal(rng);
    std::vector<EngineGpu::PlanRequest> reqs;
    std::vector<RetrievalRequest> cpu_reqs;
    for (int h = 0; h < 2; ++h) {
      reqs.push_back({&indexes[h], q, DType::kFp16});
      cpu_reqs.push_back({0, indexes[h].get(), q, DType::kFp16});
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    auto plans = gpu_->Plan(reqs, g, params, scale);
    auto want = cpu.Plan(cpu_reqs, g, params, scale);
    ASSERT_TRUE(plans.ok()) << plans.status();
    ASSERT_TRUE(want.ok()) << want.status();
    // fp16 centroids on the device: zones may differ on near-ties only (a
    // stale device copy would differ in most clusters).
    auto differ = [](const std::vector<ClusterId>& a,
                     const std::vector<ClusterId>& b) {
      const std::set<ClusterId> sb(b.begin(), b.end());
      size_t n = 0;
      for (ClusterId c : a) n += sb.count(c) == 0 ? 1 : 0;
      return n;
    };
    for (int h = 0; h < 2; ++h) {
      const RetrievalPlan& got = (*plans)[h];
      const RetrievalPlan& ref = (*want)[h];
      ASSERT_EQ(got.retrieval_clusters.size(), ref.retrieval_clusters.size());
      ASSERT_GE(ref.retrieval_clusters.size(), 4u);
      EXPECT_LE(differ(got.retrieval_clusters, ref.retrieval_clusters), 1u);
      EXPECT_LE(differ(got.estimation_clusters, ref.estimation_clusters), 3u);
      for (size_t k = 0; k < g; ++k) {
        const AttentionPartial& a = got.tail[k];
        const AttentionPartial& b = ref.tail[k];
        EXPECT_NEAR(a.max_logit, b.max_logit,
                    2e-2 * (1 + std::abs(b.max_logit)));
        EXPECT_NEAR(a.denominator, b.denominator, 2e-2 * b.denominator);
      }
    }
  };
  build(0, n);
  compare();
  build(n, 1024);  // a decode update: 64 more clusters per head
  compare();
  // Replace head 0's index by a fresh one built from other keys.
  keys[0] = TopicRows(n + 1024, d, 99, &f);
  indexes[0] = std::make_shared<WaveIndex>(d);
  indexes[1] = std::make_shared<WaveIndex>(d);
  build(0, n);
  compare();
  EngineStats stats;
  gpu_->AddStats(stats);
  EXPECT_EQ(stats.gpu_device, 0);
  EXPECT_EQ(stats.gpu_index_blocks, 6u);
  EXPECT_EQ(stats.gpu_retrieve_calls, 3u);
  EXPECT_EQ(stats.gpu_build_fallbacks, 0u);
  EXPECT_EQ(stats.gpu_retrieve_fallbacks, 0u);
}

// What the GPU cannot do is an error the engine redoes on the CPU, counted.
TEST_F(EngineGpuTest, UnsupportedShapesAreCountedFallbacks) {
  const size_t d = 32, n = 512;
  std::vector<float> f;
  std::vector<uint8_t> k = TopicRows(n, d, 1, &f), v = TopicRows(n, d, 2, &f);
  std::vector<std::shared_ptr<WaveIndex>> indexes = {
      std::make_shared<WaveIndex>(d)};
  std::vector<KvRows> rows = {{DType::kFp16, d, n, k.data(), v.data(), d * 2}};
  auto blocks =
      gpu_->PrepareBlocks(WaveIndexParams{}, 4, rows, indexes, "d32 block");
  EXPECT_FALSE(blocks.ok());
  EngineStats stats;
  gpu_->AddStats(stats);
  EXPECT_EQ(stats.gpu_build_fallbacks, 1u);
  EXPECT_EQ(stats.gpu_index_blocks, 0u);
}

}  // namespace
}  // namespace wavekv
