// WAVE retrieval end to end through the Engine: index builds on append,
// the client-side merge against full attention, every head_dim and dtype,
// short contexts, readiness and failures, stale token ranges.
// (Background builds and decode updates: wave_build_test.cc; concurrency:
// wave_concurrency_test.cc.)
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kvstore/engine.h"
#include "kvstore/types.h"
#include "kvstore/wave_test_kv.h"

namespace wavekv {
namespace {

using ::absl::StatusCode;

constexpr char kTenant[] = "t";

std::unique_ptr<Engine> OpenEngine(
    uint32_t index_threads, uint64_t budget_bytes = 1ull << 30,
    std::function<void(const IndexBuildFailure&)> on_failure = {},
    bool check_finite_kv = true) {
  EngineOptions o;
  o.check_finite_kv = check_finite_kv;
  o.memory_budget_bytes = budget_bytes;
  o.index_threads = index_threads;
  o.retrieve_threads = 2;
  o.max_inline_kv_bytes = 256ull << 20;
  o.on_index_build_failure = std::move(on_failure);
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

absl::StatusOr<SessionResult> RetrieveOne(Engine& engine, const std::string& id,
                                          uint32_t layer,
                                          const std::vector<float>& query,
                                          RetrieveMode mode,
                                          bool exact_if_not_ready = false,
                                          bool include_kv = false) {
  RetrieveOptions o;
  o.layer = layer;
  o.mode = mode;
  o.exact_if_not_ready = exact_if_not_ready;
  o.include_kv = include_kv;
  auto results = engine.Retrieve(kTenant, o, {RetrieveQuery{id, query}});
  if (!results.ok()) return results.status();
  return std::move((*results)[0]);
}

uint64_t Slots(const std::vector<SlotRange>& ranges) {
  uint64_t n = 0;
  for (const SlotRange& r : ranges) n += r.num_slots;
  return n;
}

// (a) + every head_dim / dtype: with retrieval_fraction 1 and no
// estimation, WAVE's retrieved clusters + steady zone are every token, so
// the client's merge equals full attention; EXACT too, before and after the
// index moved tokens into clusters.
class FullRetrievalTest
    : public ::testing::TestWithParam<std::tuple<uint32_t, DType>> {};

TEST_P(FullRetrievalTest, ClientMergeEqualsFullAttention) {
  const auto [head_dim, dtype] = GetParam();
  const ModelShape shape{2, 4, 2, head_dim, dtype};
  const uint64_t n = 1500;
  const TestKv kv(shape, n, /*seed=*/head_dim);
  auto engine = OpenEngine(/*index_threads=*/0);
  IndexOptions index;
  index.retrieval_fraction = 1.0f;
  index.estimation_fraction = 0.0f;
  const std::string id = Create(*engine, shape, index);
  ASSERT_TRUE(kv.Append(*engine, kTenant, id, 0, n).ok());

  auto info = engine->GetSession(kTenant, id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->index_state, IndexState::kReady);
  // Block [4, 1436): everything but 4 sinks and 64 recent tokens.
  EXPECT_EQ(info->layer_indexed_tokens, std::vector<uint64_t>({1432, 1432}));
  EXPECT_EQ(info->index_error, "");

  for (uint32_t layer = 0; layer < 2; ++layer) {
    const std::vector<float> q = kv.Query(layer, 7 + layer);
    const std::vector<float> full = FullAttentionOutput(kv, layer, n, q);
    auto wave = RetrieveOne(*engine, id, layer, q, RetrieveMode::kWave);
    ASSERT_TRUE(wave.ok()) << wave.status();
    EXPECT_EQ(wave->mode, RetrieveMode::kWave);
    EXPECT_EQ(wave->num_tokens, n);
    EXPECT_EQ(wave->indexed_tokens, 1432u);
    ASSERT_EQ(wave->steady.size(), 2u);
    EXPECT_EQ(wave->steady[0].begin, 0u);
    EXPECT_EQ(wave->steady[0].end, 4u);
    EXPECT_EQ(wave->steady[1].begin, 1436u);
    EXPECT_EQ(wave->steady[1].end, n);
    for (const KvHeadResult& head : wave->heads) {
      EXPECT_EQ(Slots(head.retrieval), 1432u) << "every non-empty cluster";
      for (const SlotRange& r : head.retrieval) {
        EXPECT_GE(r.first_slot, kClusterSlotBase);
      }
      ASSERT_EQ(head.tail.size(), 2u) << "one per q head of the group";
      for (const TailStats& t : head.tail) EXPECT_EQ(t.denominator, 0.0f);
    }
    auto out = ClientOutput(*engine, kTenant, layer, kv, *wave, q);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_LT(RelativeL2(*out, full), 2e-6);

    auto exact = RetrieveOne(*engine, id, layer, q, RetrieveMode::kExact, false,
                             /*include_kv=*/true);
    ASSERT_TRUE(exact.ok()) << exact.status();
    EXPECT_EQ(exact->mode, RetrieveMode::kExact);
    EXPECT_TRUE(exact->steady.empty());
    EXPECT_EQ(exact->indexed_tokens, 0u);
    for (const KvHeadResult& head : exact->heads) {
      ASSERT_EQ(head.retrieval.size(), 3u) << "sinks, clusters, tail";
      EXPECT_EQ(head.retrieval[0].first_slot, 0u);
      EXPECT_EQ(head.retrieval[0].num_slots, 4u);
      EXPECT_EQ(head.retrieval[1].first_slot, kClusterSlotBase);
      EXPECT_EQ(head.retrieval[1].num_slots, 1432u);
      EXPECT_EQ(head.retrieval[2].first_slot, 1436u);
      EXPECT_EQ(head.retrieval[2].num_slots, 64u);
      EXPECT_EQ(head.keys.size(), n * head_dim * DTypeBytes(dtype));
    }
    out = ClientOutput(*engine, kTenant, layer, kv, *exact, q);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_LT(RelativeL2(*out, full), 2e-6);

    // include_kv in WAVE mode returns the bytes FetchSlots streams.
    auto inline_wave = RetrieveOne(*engine, id, layer, q, RetrieveMode::kWave,
                                   false, /*include_kv=*/true);
    ASSERT_TRUE(inline_wave.ok());
    const KvHeadResult& h1 = inline_wave->heads[1];
    FetchRequest fetch{
        id, layer, inline_wave->layout_epoch, {{1, h1.retrieval}}};
    std::string keys, values;
    ASSERT_TRUE(engine
                    ->FetchSlots(kTenant, fetch,
                                 [&](SlotChunk&& c) {
                                   keys += c.keys;
                                   values += c.values;
                                   return true;
                                 })
                    .ok());
    EXPECT_EQ(h1.keys, keys);
    EXPECT_EQ(h1.values, values);
  }

  // Memory accounting: the engine holds exactly the session's bytes, and
  // closing returns all of them.
  info = engine->GetSession(kTenant, id);
  EXPECT_EQ(engine->Stats().memory_bytes, info->memory_bytes);
  auto freed = engine->CloseSession(kTenant, id);
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, info->memory_bytes);
  EXPECT_EQ(engine->Stats().memory_bytes, 0u);
}

INSTANTIATE_TEST_SUITE_P(HeadDims, FullRetrievalTest,
                         ::testing::Values(std::make_tuple(64u, DType::kFp16),
                                           std::make_tuple(128u, DType::kBf16),
                                           std::make_tuple(256u, DType::kFp32)),
                         [](const auto& info) {
                           return "d" +
                                  std::to_string(std::get<0>(info.param)) +
                                  "_" +
                                  std::string(
                                      DTypeName(std::get<1>(info.param)));
                         });

// (b) Default parameters on clustered keys with a planted needle: the
// needle's cluster is retrieved, the WAVE output is close to full attention
// when attention is peaked (queries of strength 1.5: mostly on a few
// topics), and the tail estimate beats dropping it, by far, also when
// attention is broad (strength 0.7).
TEST(WaveAccuracyTest, DefaultParamsFindTheNeedleAndTheTailHelps) {
  const ModelShape shape{1, 8, 2, 128, DType::kFp16};
  const uint64_t n = 6000, needle = 3001;
  const TestKv kv(shape, n, /*seed=*/5, needle);
  auto engine = OpenEngine(/*index_threads=*/0);
  const std::string id = Create(*engine, shape);
  ASSERT_TRUE(kv.Append(*engine, kTenant, id, 0, n).ok());
  for (const float strength : {1.5f, 0.7f}) {
    double err_wave = 0, err_drop = 0;
    int cases = 0;
    for (uint64_t seed = 0; seed < 4; ++seed) {
      const std::vector<float> q = kv.Query(0, seed, strength);
      const std::vector<float> full = FullAttentionOutput(kv, 0, n, q);
      auto wave = RetrieveOne(*engine, id, 0, q, RetrieveMode::kWave);
      ASSERT_TRUE(wave.ok()) << wave.status();
      EXPECT_EQ(wave->indexed_tokens, n - 4 - 64);
      for (const KvHeadResult& head : wave->heads) {
        // Up to 371 non-empty clusters: 1.8% of them retrieved.
        EXPECT_GE(head.retrieval.size(), 6u);
        EXPECT_LE(head.retrieval.size(), 7u);
        // The needle's cluster is among them.
        FetchRequest fetch{
            id, 0, wave->layout_epoch, {{head.kv_head, head.retrieval}}};
        bool found = false;
        ASSERT_TRUE(engine
                        ->FetchSlots(kTenant, fetch,
                                     [&](SlotChunk&& c) {
                                       for (uint64_t p : c.positions) {
                                         found = found || p == needle;
                                       }
                                       return true;
                                     })
                        .ok());
        EXPECT_TRUE(found) << "kv head " << head.kv_head;
      }
      auto with_tail = ClientOutput(*engine, kTenant, 0, kv, *wave, q, true);
      auto no_tail = ClientOutput(*engine, kTenant, 0, kv, *wave, q, false);
      ASSERT_TRUE(with_tail.ok()) << with_tail.status();
      ASSERT_TRUE(no_tail.ok()) << no_tail.status();
      const size_t d = shape.head_dim;
      for (uint32_t qh = 0; qh < shape.num_q_heads; ++qh) {
        const absl::Span<const float> ref(full.data() + qh * d, d);
        err_wave += RelativeL2({with_tail->data() + qh * d, d}, ref);
        err_drop += RelativeL2({no_tail->data() + qh * d, d}, ref);
        ++cases;
      }
    }
    err_wave /= cases;
    err_drop /= cases;
    const std::string tag = strength > 1.0f ? "peaked" : "broad";
    ::testing::Test::RecordProperty("mean_rel_error_wave_" + tag,
                                    std::to_string(err_wave));
    ::testing::Test::RecordProperty("mean_rel_error_drop_tail_" + tag,
                                    std::to_string(err_drop));
    if (strength > 1.0f) {
      EXPECT_LT(err_wave, 0.1);
      EXPECT_LT(err_wave, 0.3 * err_drop);
    } else {
      EXPECT_LT(err_wave, 0.5 * err_drop);
    }
  }
}

// (f) Short contexts: nothing to index yet, so WAVE is ready with every
// token steady, no clusters and empty tails; the state stays EMPTY.
TEST(WaveShortContextTest, EverythingSteadyNoClusters) {
  for (uint32_t head_dim : {64u, 128u, 256u}) {
    const ModelShape shape{1, 4, 1, head_dim, DType::kFp16};
    auto engine = OpenEngine(/*index_threads=*/0);
    const TestKv kv(shape, 1091, head_dim);
    const std::string id = Create(*engine, shape);
    uint64_t at = 0;
    for (uint64_t n : {0u, 10u, 68u, 500u, 1091u}) {
      if (n > at) {
        ASSERT_TRUE(kv.Append(*engine, kTenant, id, at, n).ok());
      }
      at = n;
      const std::vector<float> q = kv.Query(0, n);
      auto wave = RetrieveOne(*engine, id, 0, q, RetrieveMode::kWave);
      ASSERT_TRUE(wave.ok()) << wave.status();
      EXPECT_EQ(wave->mode, RetrieveMode::kWave);
      EXPECT_EQ(wave->indexed_tokens, 0u);
      ASSERT_EQ(wave->steady.size(), n == 0 ? 0u : 1u);
      ASSERT_EQ(wave->heads.size(), 1u);
      EXPECT_TRUE(wave->heads[0].retrieval.empty());
      ASSERT_EQ(wave->heads[0].tail.size(), 4u);
      for (const TailStats& t : wave->heads[0].tail) {
        EXPECT_EQ(t.denominator, 0.0f);
        EXPECT_EQ(t.numerator.size(), head_dim);
      }
      if (n == 0) continue;
      EXPECT_EQ(wave->steady[0].end, n);
      auto out = ClientOutput(*engine, kTenant, 0, kv, *wave, q);
      ASSERT_TRUE(out.ok()) << out.status();
      const std::vector<float> full = FullAttentionOutput(kv, 0, n, q);
      EXPECT_LT(RelativeL2(*out, full), 1e-6)
          << "head_dim " << head_dim << " n " << n << " out[0] " << (*out)[0]
          << " full[0] " << full[0] << " tail0 "
          << wave->heads[0].tail[0].max_logit << " "
          << wave->heads[0].tail[0].numerator[0];
    }
    auto info = engine->GetSession(kTenant, id);
    EXPECT_EQ(info->index_state, IndexState::kEmpty);
    EXPECT_EQ(info->layer_indexed_tokens, std::vector<uint64_t>({0}));
  }
}

// (c) A layer whose first build has not finished answers UNAVAILABLE, or
// EXACT with exact_if_not_ready; a failed build answers
// FAILED_PRECONDITION. The single build thread is held deterministically
// inside the failure hook of a session whose K/V is not finite (Append's
// finiteness check is off for this engine).
TEST(WaveReadinessTest, NotReadyIsUnavailableAndExactOnRequest) {
  absl::Notification in_hook, release;
  auto engine = OpenEngine(
      /*index_threads=*/1, 1ull << 30,
      [&](const IndexBuildFailure&) {
        in_hook.Notify();
        release.WaitForNotification();
      },
      /*check_finite_kv=*/false);
  const ModelShape shape{1, 4, 2, 64, DType::kFp32};
  const uint64_t n = 1200;
  const TestKv kv(shape, n, 3);
  // A session whose build fails: a NaN key.
  const std::string bad = Create(*engine, shape);
  {
    std::vector<float> k(n * 2 * 64, 0.5f), v(n * 2 * 64, 0.25f);
    k[500 * 128 + 3] = std::nanf("");
    LayerAppend a{0,
                  0,
                  static_cast<uint32_t>(n),
                  {reinterpret_cast<const uint8_t*>(k.data()), k.size() * 4},
                  {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4}};
    ASSERT_TRUE(engine->Append(kTenant, bad, {a}).ok());
  }
  in_hook.WaitForNotification();  // the only build thread is now held
  const std::string good = Create(*engine, shape);
  ASSERT_TRUE(kv.Append(*engine, kTenant, good, 0, n).ok());

  auto info = engine->GetSession(kTenant, good);
  EXPECT_EQ(info->index_state, IndexState::kBuilding);
  EXPECT_EQ(engine->Stats().index_pending_layers, 2u);
  const std::vector<float> q = kv.Query(0, 1);
  auto wave = RetrieveOne(*engine, good, 0, q, RetrieveMode::kWave);
  EXPECT_EQ(wave.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(wave.status().message(),
            "mode: WAVE retrieval on layer 0 of session \"" + good +
                "\": index not ready (BUILDING: 0 of 1200 tokens indexed, the "
                "first block is being clustered); retry, or set "
                "exact_if_not_ready for an EXACT answer (queries[0])");
  auto exact = RetrieveOne(*engine, good, 0, q, RetrieveMode::kWave, true);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ(exact->mode, RetrieveMode::kExact);
  EXPECT_TRUE(exact->steady.empty());
  EXPECT_EQ(Slots(exact->heads[0].retrieval), n);
  auto out = ClientOutput(*engine, kTenant, 0, kv, *exact, q);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT(RelativeL2(*out, FullAttentionOutput(kv, 0, n, q)), 1e-6);

  // The failed session: FAILED with the reason, FAILED_PRECONDITION in WAVE
  // mode, EXACT on request; a batch with both fails as a whole unless
  // exact_if_not_ready.
  info = engine->GetSession(kTenant, bad);
  EXPECT_EQ(info->index_state, IndexState::kFailed);
  EXPECT_NE(info->index_error.find("layer 0: index build of layer 0, tokens "
                                   "[4, 1136), kv head 0: keys: non-finite"),
            std::string::npos)
      << info->index_error;
  auto failed = RetrieveOne(*engine, bad, 0, q, RetrieveMode::kWave);
  EXPECT_EQ(failed.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(failed.status().message().find("the index build failed (FAILED: "),
            std::string::npos)
      << failed.status();
  RetrieveOptions both;
  both.mode = RetrieveMode::kWave;
  auto batch = engine->Retrieve(
      kTenant, both, {RetrieveQuery{good, q}, RetrieveQuery{bad, q}});
  EXPECT_FALSE(batch.ok());

  release.Notify();
  // The good session's build now runs: READY within a bounded wait.
  for (int i = 0; i < 3000; ++i) {
    info = engine->GetSession(kTenant, good);
    if (info->index_state != IndexState::kBuilding) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(info->index_state, IndexState::kReady);
  both.exact_if_not_ready = true;
  batch = engine->Retrieve(kTenant, both,
                           {RetrieveQuery{good, q}, RetrieveQuery{bad, q}});
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ((*batch)[0].mode, RetrieveMode::kWave);
  EXPECT_EQ((*batch)[1].mode, RetrieveMode::kExact);
  const EngineStats stats = engine->Stats();
  EXPECT_EQ(stats.index_build_failures, 1u);
  EXPECT_EQ(stats.index_builds, 1u);
  EXPECT_EQ(stats.index_pending_layers, 0u);
  EXPECT_GT(stats.index_build_seconds_total, 0.0);
  // A data failure is not retried: more tokens leave it FAILED.
  std::vector<float> k(64 * 2 * 64, 0.5f);
  LayerAppend more{0,
                   n,
                   64,
                   {reinterpret_cast<const uint8_t*>(k.data()), k.size() * 4},
                   {reinterpret_cast<const uint8_t*>(k.data()), k.size() * 4}};
  ASSERT_TRUE(engine->Append(kTenant, bad, {more}).ok());
  EXPECT_EQ(engine->GetSession(kTenant, bad)->index_state, IndexState::kFailed);
  EXPECT_EQ(engine->Stats().index_build_failures, 1u);
}

// A build that does not fit the memory budget fails with the budget's
// message, changes nothing, and succeeds at the next append once memory is
// free; accounting is exact throughout.
TEST(WaveMemoryTest, BuildsRespectTheBudgetAndRetry) {
  const ModelShape shape{1, 2, 1, 64, DType::kFp32};
  auto engine = OpenEngine(/*index_threads=*/0, /*budget_bytes=*/4u << 20);
  const TestKv big(shape, 4000, 1);
  // A session that is never indexed (its recent window covers everything)
  // holds half the budget.
  IndexOptions no_index;
  no_index.recent_tokens = 65536;
  const std::string filler = Create(*engine, shape, no_index);
  ASSERT_TRUE(big.Append(*engine, kTenant, filler, 0, 4000).ok());
  const TestKv kv(shape, 3000, 2);
  const std::string id = Create(*engine, shape);
  ASSERT_TRUE(kv.Append(*engine, kTenant, id, 0, 2999).ok());
  auto info = engine->GetSession(kTenant, id);
  EXPECT_EQ(info->index_state, IndexState::kFailed);
  EXPECT_NE(info->index_error.find("memory_budget_bytes"), std::string::npos)
      << info->index_error;
  EXPECT_EQ(info->layer_indexed_tokens[0], 0u);
  const uint64_t before = info->memory_bytes;
  EXPECT_EQ(engine->Stats().memory_bytes,
            before + engine->GetSession(kTenant, filler)->memory_bytes);

  ASSERT_TRUE(engine->CloseSession(kTenant, filler).ok());
  ASSERT_TRUE(kv.Append(*engine, kTenant, id, 2999, 3000).ok());
  info = engine->GetSession(kTenant, id);
  EXPECT_EQ(info->index_state, IndexState::kReady);
  EXPECT_EQ(info->layer_indexed_tokens[0], 3000u - 4 - 64);
  EXPECT_EQ(engine->Stats().memory_bytes, info->memory_bytes);
  const std::vector<float> q = kv.Query(0, 9);
  auto wave = RetrieveOne(*engine, id, 0, q, RetrieveMode::kWave);
  ASSERT_TRUE(wave.ok()) << wave.status();
  ASSERT_TRUE(ClientOutput(*engine, kTenant, 0, kv, *wave, q).ok());
  auto freed = engine->CloseSession(kTenant, id);
  EXPECT_EQ(*freed, info->memory_bytes);
  EXPECT_EQ(engine->Stats().memory_bytes, 0u);
}

// EXACT ranges over tokens that the index has since moved are refused by
// FetchSlots ("retrieve again"); the steady tokens stay readable.
TEST(WaveSlotsTest, StaleTokenRangesFailAfterIndexing) {
  const ModelShape shape{1, 2, 1, 32, DType::kFp16};
  auto engine = OpenEngine(/*index_threads=*/0);
  const TestKv kv(shape, 1300, 4);
  const std::string id = Create(*engine, shape);
  ASSERT_TRUE(kv.Append(*engine, kTenant, id, 0, 1000).ok());
  const std::vector<float> q = kv.Query(0, 1);
  auto exact = RetrieveOne(*engine, id, 0, q, RetrieveMode::kExact);
  ASSERT_TRUE(exact.ok());
  ASSERT_EQ(exact->heads[0].retrieval.size(), 1u);
  EXPECT_EQ(exact->heads[0].retrieval[0].num_slots, 1000u);
  ASSERT_TRUE(kv.Append(*engine, kTenant, id, 1000, 1300).ok());
  FetchRequest stale{
      id, 0, exact->layout_epoch, {{0, exact->heads[0].retrieval}}};
  absl::Status s =
      engine->FetchSlots(kTenant, stale, [](SlotChunk&&) { return true; });
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            "heads[0].ranges[0]: slots [0, 1000) of kv head 0 of layer 0 hold "
            "tokens that moved into the wave index (tokens [4, 1236) are "
            "clustered now); retrieve again");
  FetchRequest sinks{id, 0, exact->layout_epoch, {{0, {{0, 0, 4}}}}};
  EXPECT_TRUE(
      engine->FetchSlots(kTenant, sinks, [](SlotChunk&&) { return true; })
          .ok());
  FetchRequest past{id, 0, 0, {{0, {{0, kClusterSlotBase + 1000, 300}}}}};
  s = engine->FetchSlots(kTenant, past, [](SlotChunk&&) { return true; });
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("reaches past the 1232 cluster slots"),
            std::string::npos)
      << s;
}

}  // namespace
}  // namespace wavekv
