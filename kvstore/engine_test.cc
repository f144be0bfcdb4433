// Engine API tests: every error code, and that a failing call changes
// nothing (GetSession and Stats compared before/after).
#include "kvstore/engine.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "kvstore/host_arena.h"
#include "kvstore/types.h"

namespace wavekv {
namespace {

using ::absl::StatusCode;

constexpr uint32_t kLayers = 4;
constexpr uint32_t kQHeads = 4;
constexpr uint32_t kKvHeads = 2;
constexpr uint32_t kHeadDim = 16;
constexpr size_t kRowBytes = kHeadDim * 4;  // fp32
constexpr size_t kTokenBytes = kKvHeads * kRowBytes;

EngineOptions SmallEngineOptions() {
  EngineOptions o;
  o.memory_budget_bytes = 4ull << 20;
  o.max_sessions = 6;
  o.max_sessions_per_tenant = 4;
  o.max_tokens_per_session = 8192;
  o.max_inline_kv_bytes = 64 << 10;
  o.max_batch_sessions = 4;
  o.index_threads = 0;
  return o;
}

SessionOptions Fp32Options() {
  SessionOptions o;
  o.shape = {kLayers, kQHeads, kKvHeads, kHeadDim, DType::kFp32};
  o.label = "test";
  // These tests cover the token-order store: no wave index (the recent
  // window holds every token; the bytes are not meant as finite floats).
  // wave_*_test cover indexing.
  o.index.recent_tokens = 65536;
  return o;
}

// Deterministic byte of K (v=0) or V (v=1) of (layer, token, head, byte).
// The top byte of each fp32 has bit 6 clear: every value is finite.
uint8_t KvByte(uint32_t layer, uint64_t token, uint32_t head, size_t b, int v) {
  const auto x = static_cast<uint8_t>(layer * 37 + token * 11 + head * 101 +
                                      b * 3 + v * 59);
  return b % 4 == 3 ? (x & 0xBF) : x;
}

// K/V of tokens [start, start + n) of one layer in the request layout
// [n][kv_heads][row]; owns the bytes LayerAppend points at.
struct LayerData {
  LayerData(uint32_t layer, uint64_t start, uint32_t n)
      : keys(n * kTokenBytes), values(n * kTokenBytes) {
    for (uint32_t t = 0; t < n; ++t) {
      for (uint32_t h = 0; h < kKvHeads; ++h) {
        for (size_t b = 0; b < kRowBytes; ++b) {
          const size_t at = (t * kKvHeads + h) * kRowBytes + b;
          keys[at] = KvByte(layer, start + t, h, b, 0);
          values[at] = KvByte(layer, start + t, h, b, 1);
        }
      }
    }
    append.layer = layer;
    append.start_token = start;
    append.num_tokens = n;
    append.keys = keys;
    append.values = values;
  }
  std::vector<uint8_t> keys, values;
  LayerAppend append;
};

// Bytes a SlotStore of the default geometry (16, 32, ..., 1024, then 1024
// per chunk) holds for n slots of kRowBytes: one arena block per chunk.
uint64_t StoreBytes(uint64_t n) {
  uint64_t capacity = 0;
  uint64_t bytes = 0;
  uint64_t chunk = 16;
  while (capacity < n) {
    capacity += chunk;
    bytes += HostArena::BlockBytes(chunk * (2 * kRowBytes + 8));
    chunk = std::min<uint64_t>(chunk * 2, 1024);
  }
  return bytes;
}

void ExpectSameInfo(const SessionInfo& a, const SessionInfo& b) {
  EXPECT_EQ(a.session_id, b.session_id);
  EXPECT_EQ(a.tenant, b.tenant);
  EXPECT_EQ(a.layer_tokens, b.layer_tokens);
  EXPECT_EQ(a.num_tokens, b.num_tokens);
  EXPECT_EQ(a.durable_tokens, b.durable_tokens);
  EXPECT_EQ(a.memory_bytes, b.memory_bytes);
  EXPECT_EQ(a.max_tokens, b.max_tokens);
  EXPECT_EQ(a.label, b.label);
  EXPECT_EQ(a.created_unix_ms, b.created_unix_ms);
  EXPECT_EQ(a.last_access_unix_ms, b.last_access_unix_ms);
}

void ExpectSameStats(const EngineStats& a, const EngineStats& b) {
  EXPECT_EQ(a.sessions, b.sessions);
  EXPECT_EQ(a.memory_bytes, b.memory_bytes);
  EXPECT_EQ(a.tokens, b.tokens);
}

void ExpectError(const absl::Status& s, StatusCode code,
                 const std::string& message) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_EQ(s.message(), message) << s;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto engine = Engine::Open(SmallEngineOptions());
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  std::string NewSession(const std::string& tenant = "t1") {
    auto info = engine_->CreateSession(tenant, Fp32Options());
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->session_id : "";
  }

  void AppendAll(const std::string& tenant, const std::string& id,
                 uint64_t start, uint32_t n) {
    std::vector<LayerData> data;
    std::vector<LayerAppend> appends;
    for (uint32_t l = 0; l < kLayers; ++l) data.emplace_back(l, start, n);
    for (const LayerData& d : data) appends.push_back(d.append);
    auto r = engine_->Append(tenant, id, appends);
    ASSERT_TRUE(r.ok()) << r.status();
  }

  SessionInfo Info(const std::string& id, const std::string& tenant = "t1") {
    auto info = engine_->GetSession(tenant, id);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *info : SessionInfo{};
  }

  // Runs `call`, which must fail with `code`, and checks that the session
  // and the engine's gauges are as before.
  template <typename Call>
  absl::Status FailsWithoutChange(const std::string& id, StatusCode code,
                                  Call call) {
    const SessionInfo before = Info(id);
    const EngineStats stats_before = engine_->Stats();
    absl::Status s = call();
    EXPECT_EQ(s.code(), code) << s;
    ExpectSameInfo(Info(id), before);
    ExpectSameStats(engine_->Stats(), stats_before);
    return s;
  }

  std::unique_ptr<Engine> engine_;
};

TEST(EngineOpenTest, RejectsBadOptions) {
  EngineOptions o;
  o.max_sessions = 0;
  auto engine = Engine::Open(o);
  ExpectError(engine.status(), StatusCode::kInvalidArgument,
              "max_sessions: 0 is less than 1");
}

TEST_F(EngineTest, CreateSessionReturnsFreshInfo) {
  auto info = engine_->CreateSession("t1", Fp32Options());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->session_id.size(), 32u);
  EXPECT_EQ(info->session_id.find_first_not_of("0123456789abcdef"),
            std::string::npos);
  EXPECT_EQ(info->tenant, "t1");
  EXPECT_EQ(info->shape.head_dim, kHeadDim);
  EXPECT_EQ(info->index.cluster_size, 16u);
  EXPECT_EQ(info->durability, Durability::kNone);
  EXPECT_EQ(info->max_tokens, 8192u);  // the engine's default
  EXPECT_EQ(info->label, "test");
  EXPECT_EQ(info->layer_tokens, std::vector<uint64_t>(kLayers, 0));
  EXPECT_EQ(info->num_tokens, 0u);
  EXPECT_EQ(info->memory_bytes, 0u);
  EXPECT_GT(info->created_unix_ms, 0);
  EXPECT_EQ(info->last_access_unix_ms, info->created_unix_ms);

  SessionOptions o = Fp32Options();
  o.max_tokens = 100;
  auto limited = engine_->CreateSession("t1", o);
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(limited->max_tokens, 100u);
  EXPECT_NE(limited->session_id, info->session_id);
}

TEST_F(EngineTest, CreateSessionErrors) {
  SessionOptions o = Fp32Options();
  o.shape.head_dim = 100;
  ExpectError(engine_->CreateSession("t1", o).status(),
              StatusCode::kInvalidArgument,
              "shape.head_dim: 100 is not a multiple of 8");
  o = Fp32Options();
  o.index.retrieval_fraction = 2.0f;
  ExpectError(engine_->CreateSession("t1", o).status(),
              StatusCode::kInvalidArgument,
              "index_options.retrieval_fraction: 2 is outside (0, 1]");
  o = Fp32Options();
  o.max_tokens = 8193;
  ExpectError(engine_->CreateSession("t1", o).status(),
              StatusCode::kInvalidArgument,
              "max_tokens: 8193 is more than the engine's per-session limit "
              "of 8192");
  o = Fp32Options();
  o.durability = Durability::kSync;
  ExpectError(engine_->CreateSession("t1", o).status(),
              StatusCode::kFailedPrecondition,
              "durability: SYNC requires the persistent tier, which is not "
              "enabled in this engine");
  o.durability = Durability::kAsync;
  ExpectError(engine_->CreateSession("t1", o).status(),
              StatusCode::kFailedPrecondition,
              "durability: ASYNC requires the persistent tier, which is not "
              "enabled in this engine");
  EXPECT_EQ(engine_->Stats().sessions, 0u);
}

TEST_F(EngineTest, SessionLimits) {
  std::vector<std::string> t1;
  for (int i = 0; i < 4; ++i) t1.push_back(NewSession("t1"));
  ExpectError(engine_->CreateSession("t1", Fp32Options()).status(),
              StatusCode::kResourceExhausted,
              "max_sessions_per_tenant: the tenant already holds 4 sessions, "
              "its limit");
  NewSession("t2");
  NewSession("t2");
  ExpectError(engine_->CreateSession("t3", Fp32Options()).status(),
              StatusCode::kResourceExhausted,
              "max_sessions: the engine already holds 6 sessions, its limit");
  EXPECT_EQ(engine_->Stats().sessions, 6u);
  // Closing frees a place.
  ASSERT_TRUE(engine_->CloseSession("t1", t1[0]).ok());
  EXPECT_TRUE(engine_->CreateSession("t3", Fp32Options()).ok());
}

TEST_F(EngineTest, AppendPrefillAndDecodeWithExactAccounting) {
  const std::string id = NewSession();
  AppendAll("t1", id, 0, 100);
  SessionInfo info = Info(id);
  EXPECT_EQ(info.layer_tokens, std::vector<uint64_t>(kLayers, 100));
  EXPECT_EQ(info.num_tokens, 100u);
  EXPECT_EQ(info.durable_tokens, 0u);
  EXPECT_EQ(info.memory_bytes, kLayers * kKvHeads * StoreBytes(100));
  EXPECT_EQ(engine_->Stats().memory_bytes, info.memory_bytes);

  // Decode: one token per layer per step; layers may briefly differ.
  for (uint64_t t = 100; t < 140; ++t) {
    for (uint32_t l = 0; l < kLayers; ++l) {
      LayerData d(l, t, 1);
      auto r = engine_->Append("t1", id, {d.append});
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->layer_tokens[l], t + 1);
      EXPECT_EQ(r->num_tokens, l + 1 == kLayers ? t + 1 : t);
    }
  }
  info = Info(id);
  EXPECT_EQ(info.num_tokens, 140u);
  EXPECT_EQ(info.memory_bytes, kLayers * kKvHeads * StoreBytes(140));
  const EngineStats stats = engine_->Stats();
  EXPECT_EQ(stats.sessions, 1u);
  EXPECT_EQ(stats.memory_bytes, info.memory_bytes);
  EXPECT_EQ(stats.memory_budget_bytes, 4ull << 20);
  EXPECT_EQ(stats.tokens, 140u * kLayers);
}

TEST_F(EngineTest, AppendUpdatesLastAccessOnlyOnSuccess) {
  const std::string id = NewSession();
  const SessionInfo created = Info(id);
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  AppendAll("t1", id, 0, 1);
  EXPECT_GT(Info(id).last_access_unix_ms, created.last_access_unix_ms);
  EXPECT_EQ(Info(id).created_unix_ms, created.created_unix_ms);
}

TEST_F(EngineTest, AppendInvalidArgumentsChangeNothing) {
  const std::string id = NewSession();
  AppendAll("t1", id, 0, 5);
  LayerData ok0(0, 5, 2), ok1(1, 5, 2);

  absl::Status s = FailsWithoutChange(id, StatusCode::kInvalidArgument, [&] {
    return engine_->Append("t1", id, {}).status();
  });
  EXPECT_EQ(s.message(), "layers: at least one layer is required");

  LayerAppend bad = ok1.append;
  bad.layer = kLayers;
  s = FailsWithoutChange(id, StatusCode::kInvalidArgument, [&] {
    return engine_->Append("t1", id, {ok0.append, bad}).status();
  });
  EXPECT_EQ(s.message(), "layers[1].layer: 4 is out of range 0..3");

  s = FailsWithoutChange(id, StatusCode::kInvalidArgument, [&] {
    return engine_->Append("t1", id, {ok0.append, ok1.append, ok0.append})
        .status();
  });
  EXPECT_EQ(s.message(), "layers[2].layer: 0 appears twice (also layers[0])");

  bad = ok1.append;
  bad.num_tokens = 0;
  bad.keys = {};
  bad.values = {};
  s = FailsWithoutChange(id, StatusCode::kInvalidArgument, [&] {
    return engine_->Append("t1", id, {ok0.append, bad}).status();
  });
  EXPECT_EQ(s.message(), "layers[1].num_tokens: 0 is less than 1");

  bad = ok1.append;
  bad.keys = bad.keys.subspan(0, 10);
  s = FailsWithoutChange(id, StatusCode::kInvalidArgument, [&] {
    return engine_->Append("t1", id, {ok0.append, bad}).status();
  });
  EXPECT_EQ(s.message(), "layers[1].keys: expected 256 bytes, got 10");

  bad = ok1.append;
  bad.values = bad.values.subspan(0, 255);
  s = FailsWithoutChange(id, StatusCode::kInvalidArgument, [&] {
    return engine_->Append("t1", id, {ok0.append, bad}).status();
  });
  EXPECT_EQ(s.message(), "layers[1].values: expected 256 bytes, got 255");

  s = FailsWithoutChange(id, StatusCode::kInvalidArgument, [&] {
    return engine_->Append("t1", id, {ok0.append}, static_cast<Durability>(7))
        .status();
  });
  EXPECT_EQ(s.message(),
            "durability: 7 is not NONE (1), ASYNC (2) or SYNC (3)");

  s = FailsWithoutChange(id, StatusCode::kInvalidArgument, [&] {
    return engine_->Append("t1", "", {ok0.append}).status();
  });
  EXPECT_EQ(s.message(), "session_id: must not be empty");
}

TEST_F(EngineTest, AppendStateErrorsAreAllOrNothing) {
  const std::string id = NewSession();
  AppendAll("t1", id, 0, 5);
  LayerData ok0(0, 5, 2);
  LayerData stale1(1, 3, 2);  // layer 1 holds 5 tokens, not 3

  absl::Status s = FailsWithoutChange(id, StatusCode::kFailedPrecondition, [&] {
    return engine_->Append("t1", id, {ok0.append, stale1.append}).status();
  });
  EXPECT_EQ(s.message(),
            "layers[1].start_token: 3 is not the length of layer 1 (5 "
            "tokens)");

  // A retried append (same start_token) is refused, never applied twice.
  LayerData first(0, 0, 5);
  s = FailsWithoutChange(id, StatusCode::kFailedPrecondition, [&] {
    return engine_->Append("t1", id, {first.append}).status();
  });

  s = FailsWithoutChange(id, StatusCode::kFailedPrecondition, [&] {
    return engine_->Append("t1", id, {ok0.append}, Durability::kSync).status();
  });
  EXPECT_EQ(s.message(),
            "durability: SYNC requires the persistent tier, which is not "
            "enabled in this engine");
  // An explicit NONE override is fine.
  EXPECT_TRUE(engine_->Append("t1", id, {ok0.append}, Durability::kNone).ok());
}

TEST_F(EngineTest, AppendPastMaxTokensIsResourceExhausted) {
  SessionOptions o = Fp32Options();
  o.max_tokens = 10;
  auto info = engine_->CreateSession("t1", o);
  ASSERT_TRUE(info.ok());
  const std::string id = info->session_id;
  AppendAll("t1", id, 0, 8);
  LayerData ok0(0, 8, 2), over1(1, 8, 3);
  absl::Status s = FailsWithoutChange(id, StatusCode::kResourceExhausted, [&] {
    return engine_->Append("t1", id, {ok0.append, over1.append}).status();
  });
  EXPECT_EQ(s.message(),
            "layers[1].num_tokens: 3 more tokens after 8 would exceed the "
            "session's max_tokens (10)");
  // Exactly up to the limit works.
  LayerData fill1(1, 8, 2);
  EXPECT_TRUE(engine_->Append("t1", id, {ok0.append, fill1.append}).ok());
}

TEST_F(EngineTest, AppendOverMemoryBudgetIsResourceExhausted) {
  // 4 MiB budget; per (layer, head) store 136 bytes per slot.
  const std::string a = NewSession();
  const std::string b = NewSession();
  AppendAll("t1", a, 0, 3000);  // 4 layers * 2 heads * 3056 slots * 136
  const uint64_t used = engine_->Stats().memory_bytes;
  EXPECT_EQ(used, kLayers * kKvHeads * StoreBytes(3000));

  std::vector<LayerData> data;
  for (uint32_t l = 0; l < kLayers; ++l) data.emplace_back(l, 0, 1000);
  std::vector<LayerAppend> appends;
  for (const LayerData& d : data) appends.push_back(d.append);
  const uint64_t need = kLayers * kKvHeads * StoreBytes(1000);
  ASSERT_GT(used + need, 4ull << 20);
  absl::Status s = FailsWithoutChange(b, StatusCode::kResourceExhausted, [&] {
    return engine_->Append("t1", b, appends).status();
  });
  EXPECT_EQ(s.message(),
            "memory_budget_bytes: this request needs " + std::to_string(need) +
                " more bytes of host memory, but " + std::to_string(used) +
                " of the engine's budget of 4194304 bytes are in use");
  // A smaller append still fits, and closing frees room.
  AppendAll("t1", b, 0, 10);
  ASSERT_TRUE(engine_->CloseSession("t1", a).ok());
  std::vector<LayerData> more;
  for (uint32_t l = 0; l < kLayers; ++l) more.emplace_back(l, 10, 1000);
  std::vector<LayerAppend> more_appends;
  for (const LayerData& d : more) more_appends.push_back(d.append);
  EXPECT_TRUE(engine_->Append("t1", b, more_appends).ok());
}

TEST_F(EngineTest, OtherTenantsSessionIsIndistinguishableFromUnknown) {
  const std::string id = NewSession("t1");
  AppendAll("t1", id, 0, 4);
  const std::string unknown = "0123456789abcdef0123456789abcdef";
  const std::string want_other = "session_id: session \"" + id + "\" not found";
  const std::string want_unknown =
      "session_id: session \"" + unknown + "\" not found";

  ExpectError(engine_->GetSession("t2", id).status(), StatusCode::kNotFound,
              want_other);
  ExpectError(engine_->GetSession("t2", unknown).status(),
              StatusCode::kNotFound, want_unknown);
  LayerData d(0, 4, 1);
  ExpectError(engine_->Append("t2", id, {d.append}).status(),
              StatusCode::kNotFound, want_other);
  ExpectError(engine_->Append("t1", unknown, {d.append}).status(),
              StatusCode::kNotFound, want_unknown);
  ExpectError(engine_->CloseSession("t2", id).status(), StatusCode::kNotFound,
              want_other);
  FetchRequest f;
  f.session_id = id;
  f.heads = {HeadSlots{0, {SlotRange{0, 0, 1}}}};
  ExpectError(engine_->FetchSlots("t2", f, [](SlotChunk&&) { return true; }),
              StatusCode::kNotFound, want_other);
  std::vector<float> q(kQHeads * kHeadDim, 0.5f);
  ExpectError(engine_->Retrieve("t2", {}, {RetrieveQuery{id, q}}).status(),
              StatusCode::kNotFound,
              "queries[0].session_id: session \"" + id + "\" not found");
  auto page = engine_->ListSessions("t2", 0, "");
  ASSERT_TRUE(page.ok());
  EXPECT_TRUE(page->sessions.empty());
  // t1 still has it, untouched.
  EXPECT_EQ(Info(id).num_tokens, 4u);
}

TEST_F(EngineTest, RetrieveExactCoversEveryTokenPerKvHead) {
  const std::string a = NewSession();
  const std::string b = NewSession();
  const std::string empty = NewSession();
  AppendAll("t1", a, 0, 40);
  AppendAll("t1", b, 0, 7);
  std::vector<float> q(kQHeads * kHeadDim, 0.25f);
  RetrieveOptions opts;
  opts.layer = 2;
  opts.include_kv = true;
  auto results = engine_->Retrieve(
      "t1", opts,
      {RetrieveQuery{b, q}, RetrieveQuery{a, q}, RetrieveQuery{empty, q}});
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 3u);
  const uint64_t tokens[] = {7, 40, 0};
  const std::string ids[] = {b, a, empty};
  for (size_t i = 0; i < 3; ++i) {
    const SessionResult& r = (*results)[i];
    EXPECT_EQ(r.session_id, ids[i]);
    EXPECT_EQ(r.num_tokens, tokens[i]);
    EXPECT_EQ(r.indexed_tokens, 0u);
    EXPECT_TRUE(r.steady.empty());
    EXPECT_EQ(r.layout_epoch, 1u);
    ASSERT_EQ(r.heads.size(), kKvHeads);
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      const KvHeadResult& head = r.heads[h];
      EXPECT_EQ(head.kv_head, h);
      EXPECT_TRUE(head.tail.empty());
      if (tokens[i] == 0) {
        EXPECT_TRUE(head.retrieval.empty());
        EXPECT_TRUE(head.keys.empty());
        continue;
      }
      ASSERT_EQ(head.retrieval.size(), 1u);
      EXPECT_EQ(head.retrieval[0].cluster_id, 0u);
      EXPECT_EQ(head.retrieval[0].first_slot, 0u);
      EXPECT_EQ(head.retrieval[0].num_slots, tokens[i]);
      ASSERT_EQ(head.keys.size(), tokens[i] * kRowBytes);
      ASSERT_EQ(head.values.size(), tokens[i] * kRowBytes);
      for (uint64_t t = 0; t < tokens[i]; ++t) {
        for (size_t by = 0; by < kRowBytes; ++by) {
          ASSERT_EQ(static_cast<uint8_t>(head.keys[t * kRowBytes + by]),
                    KvByte(2, t, h, by, 0));
          ASSERT_EQ(static_cast<uint8_t>(head.values[t * kRowBytes + by]),
                    KvByte(2, t, h, by, 1));
        }
      }
    }
  }
  // Without include_kv: ranges only.
  opts.include_kv = false;
  results = engine_->Retrieve("t1", opts, {RetrieveQuery{a, q}});
  ASSERT_TRUE(results.ok());
  EXPECT_TRUE((*results)[0].heads[0].keys.empty());
  EXPECT_EQ((*results)[0].heads[1].retrieval[0].num_slots, 40u);
}

TEST_F(EngineTest, RetrieveErrorsFailTheWholeCallAndChangeNothing) {
  const std::string a = NewSession();
  const std::string b = NewSession();
  AppendAll("t1", a, 0, 40);
  AppendAll("t1", b, 0, 40);
  std::vector<float> q(kQHeads * kHeadDim, 0.25f);
  std::vector<float> short_q(kQHeads * kHeadDim - 1, 0.25f);
  std::vector<float> nan_q = q;
  nan_q[17] = std::numeric_limits<float>::quiet_NaN();
  RetrieveOptions opts;

  auto check = [&](const RetrieveOptions& o, std::vector<RetrieveQuery> queries,
                   StatusCode code, const std::string& message) {
    const SessionInfo before_a = Info(a), before_b = Info(b);
    absl::Status s = engine_->Retrieve("t1", o, queries).status();
    ExpectError(s, code, message);
    ExpectSameInfo(Info(a), before_a);
    ExpectSameInfo(Info(b), before_b);
  };

  RetrieveOptions bad_mode;
  bad_mode.mode = static_cast<RetrieveMode>(0);
  check(bad_mode, {RetrieveQuery{a, q}}, StatusCode::kInvalidArgument,
        "mode: 0 is not EXACT (1) or WAVE (2)");
  check(opts, {}, StatusCode::kInvalidArgument,
        "queries: at least one query is required");
  // The batch limit is checked before anything else about the queries.
  check(opts,
        {RetrieveQuery{a, q}, RetrieveQuery{b, q}, RetrieveQuery{a, q},
         RetrieveQuery{b, q}, RetrieveQuery{"x", q}},
        StatusCode::kInvalidArgument,
        "queries: 5 sessions, more than the batch limit of 4");
  check(opts, {RetrieveQuery{a, q}, RetrieveQuery{b, q}, RetrieveQuery{a, q}},
        StatusCode::kInvalidArgument,
        "queries[2].session_id: session \"" + a +
            "\" appears twice (also queries[0])");
  check(opts, {RetrieveQuery{a, q}, RetrieveQuery{"feed", q}},
        StatusCode::kNotFound,
        "queries[1].session_id: session \"feed\" not found");
  check(opts, {RetrieveQuery{a, q}, RetrieveQuery{"", q}},
        StatusCode::kInvalidArgument,
        "queries[1].session_id: must not be empty");
  RetrieveOptions bad_layer;
  bad_layer.layer = kLayers;
  check(bad_layer, {RetrieveQuery{a, q}}, StatusCode::kInvalidArgument,
        "layer: 4 is out of range 0..3 of session \"" + a + "\" (queries[0])");
  check(opts, {RetrieveQuery{a, q}, RetrieveQuery{b, short_q}},
        StatusCode::kInvalidArgument,
        "queries[1].query: expected 64 floats ([num_q_heads=4][head_dim=16]), "
        "got 63");
  check(opts, {RetrieveQuery{a, nan_q}}, StatusCode::kInvalidArgument,
        "queries[0].query: element 17 is not finite");

  // include_kv over the 64 KiB inline limit: 2 sessions * 2 heads * 2 (K+V)
  // * 40 slots * 64 bytes = 20480 fits; grow a to 300 tokens.
  AppendAll("t1", a, 40, 260);
  RetrieveOptions with_kv;
  with_kv.include_kv = true;
  check(with_kv, {RetrieveQuery{b, q}, RetrieveQuery{a, q}},
        StatusCode::kResourceExhausted,
        "include_kv: the answer's K/V takes 87040 bytes, more than the inline "
        "limit of 65536 bytes (max_inline_kv_bytes); fetch it with "
        "FetchClusters instead");

  RetrieveOptions wave;
  wave.mode = RetrieveMode::kWave;
  // WAVE validates first: a bad query is InvalidArgument before readiness
  // is looked at (wave_retrieve_test covers Unavailable).
  check(wave, {RetrieveQuery{a, short_q}}, StatusCode::kInvalidArgument,
        "queries[0].query: expected 64 floats ([num_q_heads=4][head_dim=16]), "
        "got 63");
}

TEST_F(EngineTest, RetrieveTouchesSessionsOnSuccess) {
  const std::string a = NewSession();
  const int64_t before = Info(a).last_access_unix_ms;
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  std::vector<float> q(kQHeads * kHeadDim, 0.25f);
  ASSERT_TRUE(engine_->Retrieve("t1", {}, {RetrieveQuery{a, q}}).ok());
  EXPECT_GT(Info(a).last_access_unix_ms, before);
}

// Collects chunks; optionally stops after `stop_after`.
struct ChunkSink {
  std::vector<SlotChunk> chunks;
  size_t stop_after = SIZE_MAX;
  std::function<bool(SlotChunk&&)> fn() {
    return [this](SlotChunk&& c) {
      chunks.push_back(std::move(c));
      return chunks.size() < stop_after;
    };
  }
};

TEST_F(EngineTest, FetchSlotsStreamsBoundedChunksInRequestOrder) {
  const std::string id = NewSession();
  AppendAll("t1", id, 0, 300);
  FetchRequest f;
  f.session_id = id;
  f.layer = 3;
  f.layout_epoch = 1;
  f.max_chunk_bytes = 4096;  // 32 slots of K+V (2 * 64 bytes each)
  f.heads = {HeadSlots{1, {SlotRange{7, 10, 100}, SlotRange{8, 250, 50}}},
             HeadSlots{0, {SlotRange{9, 0, 1}}}};
  ChunkSink sink;
  ASSERT_TRUE(engine_->FetchSlots("t1", f, sink.fn()).ok());
  // 100 -> 32+32+32+4, 50 -> 32+18, 1 -> 1.
  const uint32_t want_sizes[] = {32, 32, 32, 4, 32, 18, 1};
  ASSERT_EQ(sink.chunks.size(), 7u);
  uint64_t expect_first[] = {10, 42, 74, 106, 250, 282, 0};
  uint32_t expect_head[] = {1, 1, 1, 1, 1, 1, 0};
  uint32_t expect_cluster[] = {7, 7, 7, 7, 8, 8, 9};
  for (size_t c = 0; c < sink.chunks.size(); ++c) {
    const SlotChunk& chunk = sink.chunks[c];
    EXPECT_EQ(chunk.num_slots, want_sizes[c]);
    EXPECT_EQ(chunk.first_slot, expect_first[c]);
    EXPECT_EQ(chunk.kv_head, expect_head[c]);
    EXPECT_EQ(chunk.cluster_id, expect_cluster[c]);
    EXPECT_LE(chunk.keys.size() + chunk.values.size(), 4096u);
    ASSERT_EQ(chunk.keys.size(), chunk.num_slots * kRowBytes);
    ASSERT_EQ(chunk.positions.size(), chunk.num_slots);
    for (uint32_t s = 0; s < chunk.num_slots; ++s) {
      const uint64_t token = chunk.first_slot + s;
      EXPECT_EQ(chunk.positions[s], token);
      for (size_t by = 0; by < kRowBytes; ++by) {
        ASSERT_EQ(static_cast<uint8_t>(chunk.keys[s * kRowBytes + by]),
                  KvByte(3, token, chunk.kv_head, by, 0));
        ASSERT_EQ(static_cast<uint8_t>(chunk.values[s * kRowBytes + by]),
                  KvByte(3, token, chunk.kv_head, by, 1));
      }
    }
  }
  // Default chunk size (1 MiB) and epoch 0 (unchecked): one chunk per range.
  f.max_chunk_bytes = 0;
  f.layout_epoch = 0;
  ChunkSink all;
  ASSERT_TRUE(engine_->FetchSlots("t1", f, all.fn()).ok());
  EXPECT_EQ(all.chunks.size(), 3u);
}

TEST_F(EngineTest, FetchSlotsValidatesEverythingBeforeTheFirstChunk) {
  const std::string id = NewSession();
  AppendAll("t1", id, 0, 50);
  FetchRequest good;
  good.session_id = id;
  good.layer = 1;
  good.heads = {HeadSlots{0, {SlotRange{0, 0, 10}}}};

  auto check = [&](const FetchRequest& f, StatusCode code,
                   const std::string& message) {
    const SessionInfo before = Info(id);
    ChunkSink sink;
    absl::Status s = engine_->FetchSlots("t1", f, sink.fn());
    ExpectError(s, code, message);
    EXPECT_TRUE(sink.chunks.empty());
    ExpectSameInfo(Info(id), before);
  };

  FetchRequest f = good;
  f.session_id = "";
  check(f, StatusCode::kInvalidArgument, "session_id: must not be empty");
  f = good;
  f.layer = 9;
  check(f, StatusCode::kInvalidArgument, "layer: 9 is out of range 0..3");
  f = good;
  f.max_chunk_bytes = 100;
  check(f, StatusCode::kInvalidArgument,
        "max_chunk_bytes: 100 is outside 4096..4194304 (0 means 1048576)");
  f.max_chunk_bytes = (4u << 20) + 1;
  check(f, StatusCode::kInvalidArgument,
        "max_chunk_bytes: 4194305 is outside 4096..4194304 (0 means "
        "1048576)");
  f = good;
  f.heads.clear();
  check(f, StatusCode::kInvalidArgument,
        "heads: at least one entry is required");
  f = good;
  f.heads.push_back(HeadSlots{2, {SlotRange{0, 0, 1}}});
  check(f, StatusCode::kInvalidArgument,
        "heads[1].kv_head: 2 is out of range 0..1");
  f = good;
  f.heads.push_back(HeadSlots{1, {}});
  check(f, StatusCode::kInvalidArgument,
        "heads[1].ranges: at least one range is required");
  f = good;
  f.heads[0].ranges.push_back(SlotRange{0, 5, 0});
  check(f, StatusCode::kInvalidArgument,
        "heads[0].ranges[1].num_slots: 0 is less than 1");
  // The first range is fine; the second reaches past the store: nothing is
  // streamed.
  f = good;
  f.heads[0].ranges.push_back(SlotRange{0, 45, 6});
  check(f, StatusCode::kFailedPrecondition,
        "heads[0].ranges[1]: first_slot 45 + num_slots 6 reaches past the 50 "
        "slots of kv head 0 of layer 1");
  f = good;
  f.heads[0].ranges[0].first_slot = std::numeric_limits<uint64_t>::max();
  EXPECT_EQ(
      engine_->FetchSlots("t1", f, [](SlotChunk&&) { return true; }).code(),
      StatusCode::kFailedPrecondition);
  f = good;
  f.layout_epoch = 2;
  check(f, StatusCode::kFailedPrecondition,
        "layout_epoch: 2 is not the current layout epoch of layer 1 (1); "
        "retrieve again");
}

TEST_F(EngineTest, FetchSlotsSinkCanStopTheFetch) {
  const std::string id = NewSession();
  AppendAll("t1", id, 0, 100);
  FetchRequest f;
  f.session_id = id;
  f.max_chunk_bytes = 4096;
  f.heads = {HeadSlots{0, {SlotRange{0, 0, 100}}}};
  ChunkSink sink;
  sink.stop_after = 2;
  ExpectError(engine_->FetchSlots("t1", f, sink.fn()), StatusCode::kCancelled,
              "FetchSlots: the receiver stopped the fetch at chunk 2");
  EXPECT_EQ(sink.chunks.size(), 2u);
}

TEST_F(EngineTest, FetchSlotsSinkRunsWithoutLocks) {
  // The sink appends to the same layer and reads the session: with a lock
  // held across the sink, this would deadlock.
  const std::string id = NewSession();
  AppendAll("t1", id, 0, 64);
  FetchRequest f;
  f.session_id = id;
  f.layer = 0;
  f.max_chunk_bytes = 4096;
  f.heads = {HeadSlots{0, {SlotRange{0, 0, 64}}}};
  uint64_t next = 64;
  std::vector<LayerData> keep;
  size_t chunks = 0;
  absl::Status s = engine_->FetchSlots("t1", f, [&](SlotChunk&& c) {
    ++chunks;
    keep.emplace_back(0, next, 1);
    auto r = engine_->Append("t1", id, {keep.back().append});
    EXPECT_TRUE(r.ok()) << r.status();
    ++next;
    EXPECT_EQ(Info(id).layer_tokens[0], next);
    return c.num_slots > 0;
  });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(chunks, 2u);
  EXPECT_EQ(Info(id).layer_tokens[0], 66u);
}

TEST_F(EngineTest, ListSessionsPagesByIdPerTenant) {
  std::set<std::string> t1_ids;
  for (int i = 0; i < 4; ++i) t1_ids.insert(NewSession("t1"));
  const std::string other = NewSession("t2");
  std::vector<std::string> listed;
  std::string token;
  int pages = 0;
  do {
    auto page = engine_->ListSessions("t1", 3, token);
    ASSERT_TRUE(page.ok()) << page.status();
    ++pages;
    for (const SessionInfo& s : page->sessions) {
      EXPECT_EQ(s.tenant, "t1");
      listed.push_back(s.session_id);
    }
    token = page->next_page_token;
  } while (!token.empty());
  EXPECT_EQ(pages, 2);
  EXPECT_EQ(listed, std::vector<std::string>(t1_ids.begin(), t1_ids.end()));

  auto all = engine_->ListSessions("t1", 0, "");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->sessions.size(), 4u);
  EXPECT_TRUE(all->next_page_token.empty());
  auto t2 = engine_->ListSessions("t2", 1000, "");
  ASSERT_TRUE(t2.ok());
  ASSERT_EQ(t2->sessions.size(), 1u);
  EXPECT_EQ(t2->sessions[0].session_id, other);
  auto none = engine_->ListSessions("nobody", 10, "");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->sessions.empty());

  ExpectError(engine_->ListSessions("t1", 1001, "").status(),
              StatusCode::kInvalidArgument,
              "page_size: 1001 is more than the maximum of 1000");
  ExpectError(engine_->ListSessions("t1", 10, "garbage").status(),
              StatusCode::kInvalidArgument,
              "page_token: not a token returned by ListSessions");
}

TEST_F(EngineTest, CloseSessionFreesExactlyItsBytes) {
  const std::string a = NewSession();
  const std::string b = NewSession();
  AppendAll("t1", a, 0, 500);
  AppendAll("t1", b, 0, 20);
  const uint64_t a_bytes = Info(a).memory_bytes;
  const uint64_t b_bytes = Info(b).memory_bytes;
  EXPECT_EQ(engine_->Stats().memory_bytes, a_bytes + b_bytes);

  auto freed = engine_->CloseSession("t1", a);
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, a_bytes);
  EXPECT_EQ(engine_->Stats().memory_bytes, b_bytes);
  EXPECT_EQ(engine_->Stats().sessions, 1u);
  EXPECT_EQ(engine_->Stats().tokens, 20u * kLayers);
  const std::string gone = "session_id: session \"" + a + "\" not found";
  ExpectError(engine_->CloseSession("t1", a).status(), StatusCode::kNotFound,
              gone);
  ExpectError(engine_->GetSession("t1", a).status(), StatusCode::kNotFound,
              gone);
  ExpectError(engine_->CloseSession("t1", "").status(),
              StatusCode::kInvalidArgument, "session_id: must not be empty");

  freed = engine_->CloseSession("t1", b);
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, b_bytes);
  EXPECT_EQ(engine_->Stats().memory_bytes, 0u);
  EXPECT_EQ(engine_->Stats().sessions, 0u);
}

TEST_F(EngineTest, NonFiniteKvIsRefusedNamingWhereAndChangesNothing) {
  for (DType dtype : {DType::kFp16, DType::kBf16, DType::kFp32}) {
    SessionOptions o;
    o.shape = {1, 2, 2, 64, dtype};
    auto info = engine_->CreateSession("t9", o);
    ASSERT_TRUE(info.ok());
    const size_t width = DTypeBytes(dtype);
    // 3 tokens x 2 kv heads x 64 elements, all 1.0 except one.
    std::vector<uint8_t> keys(3 * 2 * 64 * width, 0), values;
    for (size_t e = 0; e < keys.size() / width; ++e) {
      uint8_t* at = keys.data() + e * width;
      if (dtype == DType::kFp16) at[1] = 0x3C;  // 1.0
      if (dtype == DType::kBf16) at[0] = 0x80, at[1] = 0x3F;
      if (dtype == DType::kFp32) at[2] = 0x80, at[3] = 0x3F;
    }
    values = keys;
    // Token 2, kv head 1, element 5 of the values: +infinity.
    uint8_t* bad = values.data() + ((2 * 2 + 1) * 64 + 5) * width;
    std::fill(bad, bad + width, 0);
    if (dtype == DType::kFp16) bad[1] = 0x7C;
    if (dtype == DType::kBf16) bad[0] = 0x80, bad[1] = 0x7F;
    if (dtype == DType::kFp32) bad[2] = 0x80, bad[3] = 0x7F;
    LayerAppend la{0, 0, 3, keys, values};
    auto refused = engine_->Append("t9", info->session_id, {la});
    ASSERT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(refused.status().message(),
              "layers[0].values: non-finite value (NaN or infinity) at token "
              "2, kv head 1, element 5");
    EXPECT_EQ(engine_->GetSession("t9", info->session_id)->layer_tokens[0], 0u);
    bad[width - 1] &= 0xBF;  // now finite: accepted
    ASSERT_TRUE(engine_->Append("t9", info->session_id, {la}).ok());
    ASSERT_TRUE(engine_->CloseSession("t9", info->session_id).ok());
  }
}

TEST_F(EngineTest, Fp16AndBf16SessionsStoreTheirBytes) {
  for (DType dtype : {DType::kFp16, DType::kBf16}) {
    SessionOptions o;
    o.shape = {2, 8, 1, 64, dtype};
    auto info = engine_->CreateSession("t9", o);
    ASSERT_TRUE(info.ok());
    std::vector<uint8_t> keys(3 * 64 * 2), values(3 * 64 * 2);
    for (size_t i = 0; i < keys.size(); ++i) {
      // High bytes with bit 6 clear: finite fp16 and bf16 values.
      const uint8_t mask = i % 2 == 1 ? 0xBF : 0xFF;
      keys[i] = static_cast<uint8_t>(i) & mask;
      values[i] = static_cast<uint8_t>(255 - i) & mask;
    }
    LayerAppend la{1, 0, 3, keys, values};
    ASSERT_TRUE(engine_->Append("t9", info->session_id, {la}).ok());
    FetchRequest f;
    f.session_id = info->session_id;
    f.layer = 1;
    f.heads = {HeadSlots{0, {SlotRange{0, 0, 3}}}};
    ChunkSink sink;
    ASSERT_TRUE(engine_->FetchSlots("t9", f, sink.fn()).ok());
    ASSERT_EQ(sink.chunks.size(), 1u);
    EXPECT_EQ(sink.chunks[0].keys, std::string(keys.begin(), keys.end()));
    EXPECT_EQ(sink.chunks[0].values, std::string(values.begin(), values.end()));
    ASSERT_TRUE(engine_->CloseSession("t9", info->session_id).ok());
  }
}

}  // namespace
}  // namespace wavekv
