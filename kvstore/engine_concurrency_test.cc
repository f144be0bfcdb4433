// Many threads on one engine: appends (single- and multi-layer) racing
// retrieves, fetches, closes and listings across tenants. Checks that every
// byte read back is the byte appended for that (session, layer, token,
// head), that the memory budget is never exceeded, and that accounting
// returns to exactly 0 once every session is closed.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "kvstore/engine.h"
#include "kvstore/types.h"

namespace wavekv {
namespace {

constexpr uint32_t kLayers = 4;
constexpr uint32_t kQHeads = 4;
constexpr uint32_t kKvHeads = 2;
constexpr uint32_t kHeadDim = 16;
constexpr size_t kRowBytes = kHeadDim * 2;  // fp16
constexpr size_t kTokenBytes = kKvHeads * kRowBytes;
constexpr int kTenants = 3;
constexpr int kAppenders = 4;
constexpr int kSlotsPerAppender = 4;
constexpr int kAppendRounds = 12000;
constexpr uint64_t kBudgetBytes = 8ull << 20;
constexpr uint64_t kMaxTokens = 3000;

// Byte b of K (v=0) or V (v=1) of token t, head h, layer l of the session
// with ordinal `ord` (ordinals are unique per created session).
uint8_t KvByte(uint64_t ord, uint32_t l, uint64_t t, uint32_t h, size_t b,
               int v) {
  uint64_t x = ord * 0x9E3779B97F4A7C15ull ^ (uint64_t{l} << 56) ^ (t << 20) ^
               (uint64_t{h} << 12) ^ (b << 1) ^ uint64_t(v);
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  // fp16: the high byte of each element has bit 6 clear (finite values).
  return static_cast<uint8_t>(b % 2 == 1 ? (x & 0xBF) : x);
}

std::string TenantOf(int slot) {
  return "tenant-" + std::to_string(slot % kTenants);
}

// What the test knows about sessions it created: id -> ordinal, and the
// session each appender slot currently uses.
class Registry {
 public:
  void Add(const std::string& id, uint64_t ord, int slot) {
    absl::MutexLock lock(&mu_);
    ordinal_[id] = ord;
    current_[slot] = id;
  }
  bool Ordinal(const std::string& id, uint64_t* ord) const {
    absl::ReaderMutexLock lock(&mu_);
    auto it = ordinal_.find(id);
    if (it == ordinal_.end()) return false;
    *ord = it->second;
    return true;
  }
  // The session of `slot` now (maybe closed meanwhile, but not known to be
  // closed), or "".
  std::string Current(int slot) const {
    absl::ReaderMutexLock lock(&mu_);
    auto it = current_.find(slot);
    if (it == current_.end() || closed_.contains(it->second)) return "";
    return it->second;
  }
  void MarkClosed(const std::string& id) {
    absl::MutexLock lock(&mu_);
    closed_.insert(id);
  }

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, uint64_t> ordinal_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int, std::string> current_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> closed_ ABSL_GUARDED_BY(mu_);
};

struct Counters {
  std::atomic<uint64_t> appends{0}, append_not_found{0}, append_exhausted{0};
  std::atomic<uint64_t> retrieves{0}, fetches{0}, fetched_slots{0};
  std::atomic<uint64_t> read_not_found{0}, closes{0}, failures{0};
};

class ConcurrencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EngineOptions o;
    o.memory_budget_bytes = kBudgetBytes;
    o.max_sessions = 64;
    o.max_sessions_per_tenant = 32;
    o.max_tokens_per_session = kMaxTokens;
    o.max_inline_kv_bytes = 64ull << 20;
    o.max_batch_sessions = 16;
    auto engine = Engine::Open(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  void Fail(const std::string& what) {
    if (counters_.failures.fetch_add(1) < 20) ADD_FAILURE() << what;
  }

  std::string CreateFor(int slot) {
    SessionOptions o;
    o.shape = {kLayers, kQHeads, kKvHeads, kHeadDim, DType::kFp16};
    // No wave index here (the bytes are arbitrary, not finite fp16): the
    // recent window covers every token. wave_concurrency_test races index
    // builds.
    o.index.recent_tokens = 65536;
    auto info = engine_->CreateSession(TenantOf(slot), o);
    if (!info.ok()) {
      Fail("CreateSession: " + info.status().ToString());
      return "";
    }
    registry_.Add(info->session_id, next_ordinal_.fetch_add(1), slot);
    return info->session_id;
  }

  // Checks rows of [n][row] bytes against the expected K or V of tokens
  // first_token.. of (id, layer, head).
  void CheckRows(const std::string& id, uint32_t layer, uint32_t head,
                 uint64_t first_token, uint64_t n, const std::string& bytes,
                 int v) {
    uint64_t ord;
    if (!registry_.Ordinal(id, &ord)) return Fail("unknown id " + id);
    if (bytes.size() != n * kRowBytes) return Fail("row bytes size");
    for (uint64_t t = 0; t < n; ++t) {
      for (size_t b = 0; b < kRowBytes; ++b) {
        if (static_cast<uint8_t>(bytes[t * kRowBytes + b]) !=
            KvByte(ord, layer, first_token + t, head, b, v)) {
          return Fail("wrong byte: session " + id + " layer " +
                      std::to_string(layer) + " token " +
                      std::to_string(first_token + t));
        }
      }
    }
  }

  void Appender(int a) {
    std::mt19937_64 rng(1000 + a);
    std::vector<int> slots;
    for (int s = 0; s < kSlotsPerAppender; ++s) {
      slots.push_back(a * kSlotsPerAppender + s);
    }
    std::vector<std::vector<uint64_t>> lengths(
        slots.size(), std::vector<uint64_t>(kLayers, 0));
    std::vector<std::string> ids;
    for (int slot : slots) ids.push_back(CreateFor(slot));

    for (int round = 0; round < kAppendRounds; ++round) {
      const size_t k = rng() % slots.size();
      uint64_t ord;
      if (ids[k].empty() || !registry_.Ordinal(ids[k], &ord)) return;
      // Either every layer (prefill-like, 1..64 tokens) or one layer
      // (decode-like, 1 token).
      const bool all_layers = rng() % 2 == 0;
      const uint32_t n = all_layers ? 1 + rng() % 64 : 1;
      std::vector<uint32_t> layers;
      if (all_layers) {
        for (uint32_t l = 0; l < kLayers; ++l) layers.push_back(l);
      } else {
        layers.push_back(static_cast<uint32_t>(rng() % kLayers));
      }
      std::vector<std::vector<uint8_t>> keys(layers.size()),
          values(layers.size());
      std::vector<LayerAppend> req;
      for (size_t i = 0; i < layers.size(); ++i) {
        const uint32_t l = layers[i];
        const uint64_t start = lengths[k][l];
        keys[i].resize(n * kTokenBytes);
        values[i].resize(n * kTokenBytes);
        for (uint32_t t = 0; t < n; ++t) {
          for (uint32_t h = 0; h < kKvHeads; ++h) {
            for (size_t b = 0; b < kRowBytes; ++b) {
              const size_t at = (t * kKvHeads + h) * kRowBytes + b;
              keys[i][at] = KvByte(ord, l, start + t, h, b, 0);
              values[i][at] = KvByte(ord, l, start + t, h, b, 1);
            }
          }
        }
        req.push_back(LayerAppend{l, start, n, keys[i], values[i]});
      }
      auto r = engine_->Append(TenantOf(slots[k]), ids[k], req);
      if (r.ok()) {
        counters_.appends.fetch_add(1);
        for (uint32_t l : layers) {
          lengths[k][l] += n;
          if (r->layer_tokens[l] != lengths[k][l]) Fail("layer_tokens");
        }
        continue;
      }
      // Closed by the closer, or out of budget / max_tokens: replace the
      // session (closing it ourselves in the second case).
      if (r.status().code() == absl::StatusCode::kNotFound) {
        counters_.append_not_found.fetch_add(1);
      } else if (r.status().code() == absl::StatusCode::kResourceExhausted) {
        counters_.append_exhausted.fetch_add(1);
        // The refused append changed nothing.
        auto info = engine_->GetSession(TenantOf(slots[k]), ids[k]);
        if (info.ok() && info->layer_tokens != lengths[k]) {
          Fail("a refused append changed layer_tokens");
        }
        auto closed = engine_->CloseSession(TenantOf(slots[k]), ids[k]);
        if (!closed.ok() &&
            closed.status().code() != absl::StatusCode::kNotFound) {
          Fail("CloseSession: " + closed.status().ToString());
        }
      } else {
        Fail("Append: " + r.status().ToString());
      }
      ids[k] = CreateFor(slots[k]);
      lengths[k].assign(kLayers, 0);
    }
  }

  void Retriever(int r) {
    std::mt19937_64 rng(2000 + r);
    std::vector<float> q(kQHeads * kHeadDim, 0.5f);
    while (!appenders_done_.load()) {
      // A batch of up to 3 distinct slots of one tenant.
      const int tenant = static_cast<int>(rng() % kTenants);
      std::vector<std::string> ids;
      for (int slot = tenant; slot < kAppenders * kSlotsPerAppender;
           slot += kTenants) {
        if (rng() % 2 == 0 && ids.size() < 3) {
          std::string id = registry_.Current(slot);
          if (!id.empty()) ids.push_back(id);
        }
      }
      if (ids.empty()) continue;
      std::vector<RetrieveQuery> queries;
      for (const std::string& id : ids) queries.push_back({id, q});
      RetrieveOptions opts;
      opts.layer = static_cast<uint32_t>(rng() % kLayers);
      opts.include_kv = true;
      auto results = engine_->Retrieve(TenantOf(tenant), opts, queries);
      if (!results.ok()) {
        if (results.status().code() == absl::StatusCode::kNotFound) {
          counters_.read_not_found.fetch_add(1);
        } else {
          Fail("Retrieve: " + results.status().ToString());
        }
        continue;
      }
      counters_.retrieves.fetch_add(1);
      for (size_t i = 0; i < ids.size(); ++i) {
        const SessionResult& res = (*results)[i];
        if (res.session_id != ids[i]) Fail("result order");
        for (uint32_t h = 0; h < kKvHeads; ++h) {
          const KvHeadResult& head = res.heads[h];
          const uint64_t n = res.num_tokens;
          if (n > 0 && (head.retrieval.size() != 1 ||
                        head.retrieval[0].num_slots != n)) {
            Fail("exact ranges");
          }
          CheckRows(ids[i], opts.layer, h, 0, n, head.keys, 0);
          CheckRows(ids[i], opts.layer, h, 0, n, head.values, 1);
        }
      }
    }
  }

  void Fetcher(int f) {
    std::mt19937_64 rng(3000 + f);
    while (!appenders_done_.load()) {
      const int slot =
          static_cast<int>(rng() % (kAppenders * kSlotsPerAppender));
      const std::string id = registry_.Current(slot);
      if (id.empty()) continue;
      auto info = engine_->GetSession(TenantOf(slot), id);
      if (!info.ok()) {
        if (info.status().code() != absl::StatusCode::kNotFound) {
          Fail("GetSession: " + info.status().ToString());
        }
        counters_.read_not_found.fetch_add(1);
        continue;
      }
      const uint32_t layer = static_cast<uint32_t>(rng() % kLayers);
      const uint64_t n = info->layer_tokens[layer];
      if (n == 0) continue;
      FetchRequest req;
      req.session_id = id;
      req.layer = layer;
      req.layout_epoch = 1;
      req.max_chunk_bytes = 4096;
      const uint64_t first = rng() % n;
      const uint32_t len = static_cast<uint32_t>(1 + rng() % (n - first));
      const uint32_t head = static_cast<uint32_t>(rng() % kKvHeads);
      req.heads = {HeadSlots{head, {SlotRange{5, first, len}}}};
      uint64_t expect_next = first;
      absl::Status s =
          engine_->FetchSlots(TenantOf(slot), req, [&](SlotChunk&& c) {
            if (c.first_slot != expect_next || c.kv_head != head ||
                c.cluster_id != 5 || c.keys.size() + c.values.size() > 4096) {
              Fail("chunk framing");
            }
            for (uint32_t i = 0; i < c.num_slots; ++i) {
              if (c.positions[i] != c.first_slot + i) Fail("position");
            }
            CheckRows(id, layer, head, c.first_slot, c.num_slots, c.keys, 0);
            CheckRows(id, layer, head, c.first_slot, c.num_slots, c.values, 1);
            expect_next += c.num_slots;
            counters_.fetched_slots.fetch_add(c.num_slots);
            return true;
          });
      if (s.ok()) {
        counters_.fetches.fetch_add(1);
        if (expect_next != first + len) Fail("fetch incomplete");
      } else if (s.code() == absl::StatusCode::kNotFound) {
        counters_.read_not_found.fetch_add(1);
      } else {
        Fail("FetchSlots: " + s.ToString());
      }
    }
  }

  void Closer() {
    std::mt19937_64 rng(4000);
    while (!appenders_done_.load()) {
      const int slot =
          static_cast<int>(rng() % (kAppenders * kSlotsPerAppender));
      const std::string id = registry_.Current(slot);
      if (!id.empty()) {
        auto freed = engine_->CloseSession(TenantOf(slot), id);
        if (freed.ok()) {
          counters_.closes.fetch_add(1);
          registry_.MarkClosed(id);
        } else if (freed.status().code() != absl::StatusCode::kNotFound) {
          Fail("CloseSession: " + freed.status().ToString());
        }
      }
      // Gauges stay within the budget at every moment.
      const EngineStats stats = engine_->Stats();
      if (stats.memory_bytes > kBudgetBytes) Fail("over budget");
      for (int t = 0; t < kTenants; ++t) {
        auto page = engine_->ListSessions(TenantOf(t), 1000, "");
        if (!page.ok()) Fail("ListSessions: " + page.status().ToString());
        for (const SessionInfo& s : page->sessions) {
          if (s.tenant != TenantOf(t)) Fail("listing crossed tenants");
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  std::unique_ptr<Engine> engine_;
  Registry registry_;
  Counters counters_;
  std::atomic<uint64_t> next_ordinal_{1};
  std::atomic<bool> appenders_done_{false};
};

TEST_F(ConcurrencyTest, AppendsRetrievesFetchesAndClosesRace) {
  std::vector<std::thread> appenders, others;
  for (int a = 0; a < kAppenders; ++a) {
    appenders.emplace_back([this, a] { Appender(a); });
  }
  for (int r = 0; r < 2; ++r) others.emplace_back([this, r] { Retriever(r); });
  for (int f = 0; f < 2; ++f) others.emplace_back([this, f] { Fetcher(f); });
  others.emplace_back([this] { Closer(); });
  for (std::thread& t : appenders) t.join();
  appenders_done_.store(true);
  for (std::thread& t : others) t.join();

  EXPECT_EQ(counters_.failures.load(), 0u);
  // The race was real: work of every kind happened.
  EXPECT_GT(counters_.appends.load(), kAppenders * kAppendRounds / 2);
  EXPECT_GT(counters_.retrieves.load(), 0u);
  EXPECT_GT(counters_.fetches.load(), 0u);
  EXPECT_GT(counters_.closes.load(), 0u);
  std::printf(
      "appends %lu (not found %lu, exhausted %lu), retrieves %lu, fetches %lu "
      "(%lu slots), reads of closed sessions %lu, closes %lu\n",
      counters_.appends.load(), counters_.append_not_found.load(),
      counters_.append_exhausted.load(), counters_.retrieves.load(),
      counters_.fetches.load(), counters_.fetched_slots.load(),
      counters_.read_not_found.load(), counters_.closes.load());

  // Quiescent: the engine's bytes are exactly the sessions' bytes; every
  // surviving session reads back intact; closing all returns to 0.
  uint64_t sum_bytes = 0;
  uint64_t freed_total = 0;
  const uint64_t held = engine_->Stats().memory_bytes;
  for (int t = 0; t < kTenants; ++t) {
    auto page = engine_->ListSessions(TenantOf(t), 1000, "");
    ASSERT_TRUE(page.ok());
    for (const SessionInfo& s : page->sessions) {
      sum_bytes += s.memory_bytes;
      std::vector<float> q(kQHeads * kHeadDim, 1.0f);
      for (uint32_t l = 0; l < kLayers; ++l) {
        RetrieveOptions opts;
        opts.layer = l;
        opts.include_kv = true;
        auto res = engine_->Retrieve(TenantOf(t), opts, {{s.session_id, q}});
        ASSERT_TRUE(res.ok()) << res.status();
        ASSERT_EQ((*res)[0].num_tokens, s.layer_tokens[l]);
        for (uint32_t h = 0; h < kKvHeads; ++h) {
          CheckRows(s.session_id, l, h, 0, s.layer_tokens[l],
                    (*res)[0].heads[h].keys, 0);
          CheckRows(s.session_id, l, h, 0, s.layer_tokens[l],
                    (*res)[0].heads[h].values, 1);
        }
      }
      auto freed = engine_->CloseSession(TenantOf(t), s.session_id);
      ASSERT_TRUE(freed.ok()) << freed.status();
      EXPECT_EQ(*freed, s.memory_bytes);
      freed_total += *freed;
    }
  }
  EXPECT_EQ(sum_bytes, held);
  EXPECT_EQ(freed_total, held);
  EXPECT_EQ(counters_.failures.load(), 0u);
  const EngineStats stats = engine_->Stats();
  EXPECT_EQ(stats.sessions, 0u);
  EXPECT_EQ(stats.memory_bytes, 0u);
  EXPECT_EQ(stats.tokens, 0u);
}

// Several threads append to the SAME session, each naming random subsets of
// layers in random order (so requests overlap and would deadlock without a
// fixed lock order), using lengths that may be stale (FailedPrecondition,
// which must change nothing). Every layer must end as the concatenation of
// the successful appends, byte for byte.
TEST(SameSessionContentionTest, OverlappingMultiLayerAppends) {
  EngineOptions o;
  o.memory_budget_bytes = 64ull << 20;
  o.max_tokens_per_session = 1u << 20;
  auto engine_or = Engine::Open(o);
  ASSERT_TRUE(engine_or.ok());
  std::unique_ptr<Engine> engine = *std::move(engine_or);
  SessionOptions so;
  so.shape = {kLayers, kQHeads, kKvHeads, kHeadDim, DType::kFp16};
  so.index.recent_tokens = 65536;  // arbitrary bytes: no wave index
  auto info = engine->CreateSession("t", so);
  ASSERT_TRUE(info.ok());
  const std::string id = info->session_id;
  constexpr uint64_t kOrd = 7;

  std::atomic<uint64_t> ok{0}, stale{0}, failures{0};
  std::vector<std::atomic<uint64_t>> appended(kLayers);
  auto worker = [&](int w) {
    std::mt19937_64 rng(5000 + w);
    for (int round = 0; round < 3000; ++round) {
      auto now = engine->GetSession("t", id);
      if (!now.ok()) {
        failures.fetch_add(1);
        return;
      }
      std::vector<uint32_t> layers = {0, 1, 2, 3};
      std::shuffle(layers.begin(), layers.end(), rng);
      layers.resize(1 + rng() % kLayers);
      const uint32_t n = 1 + rng() % 4;
      std::vector<std::vector<uint8_t>> keys(layers.size()),
          values(layers.size());
      std::vector<LayerAppend> req;
      for (size_t i = 0; i < layers.size(); ++i) {
        const uint32_t l = layers[i];
        const uint64_t start = now->layer_tokens[l];
        keys[i].resize(n * kTokenBytes);
        values[i].resize(n * kTokenBytes);
        for (uint32_t t = 0; t < n; ++t) {
          for (uint32_t h = 0; h < kKvHeads; ++h) {
            for (size_t b = 0; b < kRowBytes; ++b) {
              const size_t at = (t * kKvHeads + h) * kRowBytes + b;
              keys[i][at] = KvByte(kOrd, l, start + t, h, b, 0);
              values[i][at] = KvByte(kOrd, l, start + t, h, b, 1);
            }
          }
        }
        req.push_back(LayerAppend{l, start, n, keys[i], values[i]});
      }
      auto r = engine->Append("t", id, req);
      if (r.ok()) {
        ok.fetch_add(1);
        for (uint32_t l : layers) appended[l].fetch_add(n);
      } else if (r.status().code() == absl::StatusCode::kFailedPrecondition) {
        stale.fetch_add(1);
      } else {
        failures.fetch_add(1);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) threads.emplace_back(worker, w);
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_GT(ok.load(), 0u);
  EXPECT_GT(stale.load(), 0u);  // the threads really collided
  std::printf("same session: %lu appends applied, %lu refused as stale\n",
              ok.load(), stale.load());

  auto final_info = engine->GetSession("t", id);
  ASSERT_TRUE(final_info.ok());
  for (uint32_t l = 0; l < kLayers; ++l) {
    const uint64_t n = appended[l].load();
    ASSERT_EQ(final_info->layer_tokens[l], n);
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      FetchRequest f;
      f.session_id = id;
      f.layer = l;
      f.heads = {HeadSlots{h, {SlotRange{0, 0, static_cast<uint32_t>(n)}}}};
      std::string keys, values;
      ASSERT_TRUE(engine
                      ->FetchSlots("t", f,
                                   [&](SlotChunk&& c) {
                                     keys += c.keys;
                                     values += c.values;
                                     return true;
                                   })
                      .ok());
      ASSERT_EQ(keys.size(), n * kRowBytes);
      for (uint64_t t = 0; t < n; ++t) {
        for (size_t b = 0; b < kRowBytes; ++b) {
          ASSERT_EQ(static_cast<uint8_t>(keys[t * kRowBytes + b]),
                    KvByte(kOrd, l, t, h, b, 0));
          ASSERT_EQ(static_cast<uint8_t>(values[t * kRowBytes + b]),
                    KvByte(kOrd, l, t, h, b, 1));
        }
      }
    }
  }
  auto freed = engine->CloseSession("t", id);
  ASSERT_TRUE(freed.ok());
  EXPECT_EQ(*freed, final_info->memory_bytes);
  EXPECT_EQ(engine->Stats().memory_bytes, 0u);
}

}  // namespace
}  // namespace wavekv
