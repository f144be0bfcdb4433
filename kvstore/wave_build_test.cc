// Index builds through the Engine: background builds reach READY and give
// the same answers as synchronous ones; decode updates add a block of new
// clusters every update_tokens tokens, never moving existing ones.
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kvstore/engine.h"
#include "kvstore/same_answer.h"
#include "kvstore/types.h"
#include "kvstore/wave_test_kv.h"

namespace wavekv {
namespace {

constexpr char kTenant[] = "t";

std::unique_ptr<Engine> OpenEngine(uint32_t index_threads) {
  EngineOptions o;
  o.memory_budget_bytes = 1ull << 30;
  o.index_threads = index_threads;
  o.retrieve_threads = 2;
  o.max_inline_kv_bytes = 256ull << 20;
  UseTestBackend(o);
  auto engine = Engine::Open(o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return *std::move(engine);
}

std::string Create(Engine& engine, const ModelShape& shape,
                   const IndexOptions& index = {}) {
  SessionOptions o;
  o.shape = shape;
  o.index = index;
  auto info = engine.CreateSession(kTenant, o);
  EXPECT_TRUE(info.ok()) << info.status();
  return info->session_id;
}

SessionResult Wave(Engine& engine, const std::string& id, uint32_t layer,
                   const std::vector<float>& q, bool include_kv = false) {
  RetrieveOptions o;
  o.layer = layer;
  o.mode = RetrieveMode::kWave;
  o.include_kv = include_kv;
  auto r = engine.Retrieve(kTenant, o, {RetrieveQuery{id, q}});
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::move((*r)[0]) : SessionResult{};
}

// (e) Decode: one token per step. Every update_tokens tokens beyond the
// recent window become one new block of update_tokens / cluster_size
// clusters, appended after the existing ones, which keep their slots.
TEST(WaveBuildTest, DecodeUpdatesAddClustersEveryUpdateTokens) {
  const ModelShape shape{1, 4, 2, 32, DType::kFp32};
  IndexOptions index;
  index.sink_tokens = 4;
  index.recent_tokens = 32;
  index.update_tokens = 64;
  index.cluster_size = 16;
  index.segment_tokens = 256;
  index.retrieval_fraction = 1.0f;  // every cluster: checks the layout
  index.estimation_fraction = 0.0f;
  const uint64_t prefill = 300, total = 700;
  const TestKv kv(shape, total, 21);
  auto engine = OpenEngine(0);
  const std::string id = Create(*engine, shape, index);
  ASSERT_TRUE(kv.Append(*engine, kTenant, id, 0, prefill).ok());

  // The model: the prefill block is [4, 268) in round(264 / 16) = 17
  // clusters; then whenever 64 tokens wait beyond the window, a block of
  // exactly 64 tokens and 4 clusters.
  uint64_t indexed_end = prefill - 32;
  uint64_t clusters = 17;
  uint64_t blocks = 1;
  // cluster id -> (first_slot, num_slots) as first seen.
  std::map<uint32_t, std::pair<uint64_t, uint32_t>> layout;
  for (uint64_t n = prefill; n <= total; ++n) {
    if (n > prefill) {
      ASSERT_TRUE(kv.Append(*engine, kTenant, id, n - 1, n).ok());
    }
    if (n - 32 - indexed_end >= 64) {
      EXPECT_EQ(n - 32 - indexed_end, 64u) << "one token at a time";
      indexed_end = n - 32;
      clusters += 4;
      ++blocks;
    }
    auto info = engine->GetSession(kTenant, id);
    ASSERT_EQ(info->layer_indexed_tokens[0], indexed_end - 4) << "n=" << n;
    if (n % 8 != 0 && n != total) continue;
    const std::vector<float> q = kv.Query(0, n);
    const SessionResult r = Wave(*engine, id, 0, q);
    ASSERT_EQ(r.steady.size(), 2u);
    EXPECT_EQ(r.steady[0].end, 4u);
    EXPECT_EQ(r.steady[1].begin, indexed_end);
    EXPECT_EQ(r.steady[1].end, n);
    EXPECT_EQ(r.indexed_tokens, indexed_end - 4);
    for (const KvHeadResult& head : r.heads) {
      uint64_t slots = 0;
      uint32_t max_id = 0;
      for (const SlotRange& range : head.retrieval) {
        slots += range.num_slots;
        max_id = std::max(max_id, range.cluster_id);
        if (head.kv_head != 0) continue;
        auto [it, fresh] =
            layout.emplace(range.cluster_id,
                           std::make_pair(range.first_slot, range.num_slots));
        EXPECT_EQ(it->second, std::make_pair(range.first_slot, range.num_slots))
            << "cluster " << range.cluster_id << " moved";
      }
      EXPECT_EQ(slots, indexed_end - 4) << "every indexed token once";
      EXPECT_LT(max_id, clusters);
    }
    auto out = ClientOutput(*engine, kTenant, 0, kv, r, q);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_LT(RelativeL2(*out, FullAttentionOutput(kv, 0, n, q)), 2e-6);
  }
  EXPECT_EQ(blocks, 7u);  // prefill + 6 updates of 64 tokens in 400 steps
  EXPECT_EQ(engine->Stats().index_builds, blocks);
  // The newest block's clusters have the highest ids: [clusters - 4, ...).
  EXPECT_GE(layout.rbegin()->first, clusters - 4);
}

// A long prefill is indexed in blocks of at most 8 segments (the build's
// cost grows with the square of a block), the last one taking the rest.
TEST(WaveBuildTest, LongPrefillsAreIndexedInBoundedBlocks) {
  const ModelShape shape{1, 2, 1, 32, DType::kFp16};
  IndexOptions index;
  index.sink_tokens = 4;
  index.recent_tokens = 32;
  index.update_tokens = 64;
  index.cluster_size = 16;
  index.segment_tokens = 64;  // blocks of at most 512 tokens
  const TestKv kv(shape, 2000, 8);
  auto engine = OpenEngine(0);
  const std::string id = Create(*engine, shape, index);
  ASSERT_TRUE(kv.Append(*engine, kTenant, id, 0, 2000).ok());
  // [4, 516), [516, 1028), [1028, 1540), [1540, 1968).
  EXPECT_EQ(engine->Stats().index_builds, 4u);
  auto info = engine->GetSession(kTenant, id);
  EXPECT_EQ(info->layer_indexed_tokens[0], 1964u);
  EXPECT_EQ(info->index_state, IndexState::kReady);
  const std::vector<float> q = kv.Query(0, 3);
  const SessionResult r = Wave(*engine, id, 0, q);
  EXPECT_EQ(r.indexed_tokens, 1964u);
  auto out = ClientOutput(*engine, kTenant, 0, kv, r, q);
  ASSERT_TRUE(out.ok()) << out.status();
}

}  // namespace
}  // namespace wavekv
