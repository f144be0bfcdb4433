// (g) Appends (prefill chunks and decode steps), background index builds,
// WAVE and EXACT retrieves and fetches, session info polls and closes, all
// racing on one engine. Checks every answer's structure, every fetched byte
// against what was appended for its (session, layer, position, head), that
// the budget is never exceeded, and that once the builds are idle every
// session is fully indexed, every token readable exactly once, and
// accounting returns to 0 after closing.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "index/wave_index_params.h"
#include "kvstore/engine.h"
#include "kvstore/types.h"

namespace wavekv {
namespace {

constexpr char kTenant[] = "t";
constexpr uint32_t kLayers = 2, kQHeads = 4, kKvHeads = 2, kHeadDim = 32;
constexpr size_t kRowBytes = kHeadDim * sizeof(float);
constexpr int kAppenders = 3, kSessionsPerAppender = 2, kRounds = 2000;
constexpr int kReaders = 2, kMinReads = 300;
constexpr uint64_t kBudgetBytes = 256ull << 20;

// Element j of K (v=0) or V (v=1) of token t, kv head h, layer l of the
// session with ordinal `ord`: finite, in [-1, 1).
float Val(uint64_t ord, uint32_t l, uint64_t t, uint32_t h, uint32_t j, int v) {
  uint64_t x = ord * 0x9E3779B97F4A7C15ull ^ (uint64_t{l} << 58) ^ (t << 22) ^
               (uint64_t{h} << 14) ^ (uint64_t{j} << 2) ^ uint64_t(v);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<float>(x >> 40) / static_cast<float>(1 << 23) - 1.0f;
}

IndexOptions SmallIndex() {
  IndexOptions o;
  o.sink_tokens = 4;
  o.recent_tokens = 32;
  o.update_tokens = 64;
  o.cluster_size = 16;
  o.segment_tokens = 256;
  o.retrieval_fraction = 0.2f;
  o.estimation_fraction = 0.3f;
  return o;
}

class WaveConcurrencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EngineOptions o;
    o.memory_budget_bytes = kBudgetBytes;
    o.index_threads = 2;
    o.retrieve_threads = 2;
    o.max_inline_kv_bytes = 64ull << 20;
    o.on_index_build_failure = [this](const IndexBuildFailure& f) {
      Fail(absl::StrCat("index build failed: ", f.status.ToString()));
    };
    auto engine = Engine::Open(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  void Fail(const std::string& what) {
    if (failures_.fetch_add(1) < 20) ADD_FAILURE() << what;
  }

  // Registers a new session; returns its id ("" on failure).
  std::string NewSession() {
    SessionOptions o;
    o.shape = {kLayers, kQHeads, kKvHeads, kHeadDim, DType::kFp32};
    o.index = SmallIndex();
    auto info = engine_->CreateSession(kTenant, o);
    if (!info.ok()) {
      Fail("CreateSession: " + info.status().ToString());
      return "";
    }
    absl::MutexLock lock(&mu_);
    ordinals_[info->session_id] = next_ordinal_++;
    live_.push_back(info->session_id);
    return info->session_id;
  }

  bool Ordinal(const std::string& id, uint64_t* ord) {
    absl::MutexLock lock(&mu_);
    auto it = ordinals_.find(id);
    if (it == ordinals_.end()) return false;
    *ord = it->second;
    return true;
  }

  std::vector<std::string> Live() {
    absl::MutexLock lock(&mu_);
    return live_;
  }

  void Forget(const std::string& id) {
    absl::MutexLock lock(&mu_);
    live_.erase(std::remove(live_.begin(), live_.end(), id), live_.end());
  }

  absl::Status Append(const std::string& id, uint64_t ord, uint64_t start,
                      uint32_t n) {
    std::vector<std::vector<float>> keys(kLayers), values(kLayers);
    std::vector<LayerAppend> req;
    for (uint32_t l = 0; l < kLayers; ++l) {
      keys[l].resize(size_t{n} * kKvHeads * kHeadDim);
      values[l].resize(keys[l].size());
      for (uint32_t t = 0; t < n; ++t) {
        for (uint32_t h = 0; h < kKvHeads; ++h) {
          for (uint32_t j = 0; j < kHeadDim; ++j) {
            const size_t at = (size_t{t} * kKvHeads + h) * kHeadDim + j;
            keys[l][at] = Val(ord, l, start + t, h, j, 0);
            values[l][at] = Val(ord, l, start + t, h, j, 1);
          }
        }
      }
      const size_t bytes = keys[l].size() * sizeof(float);
      req.push_back(
          LayerAppend{l,
                      start,
                      n,
                      {reinterpret_cast<uint8_t*>(keys[l].data()), bytes},
                      {reinterpret_cast<uint8_t*>(values[l].data()), bytes}});
    }
    return engine_->Append(kTenant, id, req).status();
  }

  void Appender(int a) {
    std::mt19937_64 rng(100 + a);
    std::vector<std::string> ids;
    std::vector<uint64_t> ords, lengths;
    for (int s = 0; s < kSessionsPerAppender; ++s) {
      ids.push_back(NewSession());
      uint64_t ord = 0;
      Ordinal(ids.back(), &ord);
      ords.push_back(ord);
      lengths.push_back(0);
    }
    for (int round = 0; round < kRounds; ++round) {
      const size_t k = rng() % ids.size();
      if (rng() % 150 == 0) {  // close and replace
        Forget(ids[k]);
        if (!engine_->CloseSession(kTenant, ids[k]).ok()) Fail("close");
        ids[k] = NewSession();
        Ordinal(ids[k], &ords[k]);
        lengths[k] = 0;
        continue;
      }
      // Prefill-like chunks early, decode-like single tokens later.
      const uint32_t n =
          lengths[k] < 600 ? 1 + rng() % 160 : (rng() % 8 == 0 ? 40 : 1);
      absl::Status s = Append(ids[k], ords[k], lengths[k], n);
      if (!s.ok()) {
        Fail("append: " + s.ToString());
        continue;
      }
      lengths[k] += n;
    }
  }

  // Fetches `ranges` of kv head h; checks every row and position. Returns
  // the positions in order, or nullopt if the fetch failed in an allowed
  // way (session closed, tokens moved into the index since the answer).
  std::optional<std::vector<uint64_t>> FetchAndCheck(
      const std::string& id, uint64_t ord, uint32_t layer, uint64_t epoch,
      uint32_t h, const std::vector<SlotRange>& ranges, uint64_t num_tokens,
      std::string* keys_out) {
    FetchRequest f{id, layer, epoch, {{h, ranges}}, 4096};
    std::vector<uint64_t> positions;
    absl::Status s = engine_->FetchSlots(kTenant, f, [&](SlotChunk&& c) {
      for (uint32_t i = 0; i < c.num_slots; ++i) {
        const uint64_t t = c.positions[i];
        if (t >= num_tokens) {
          Fail(absl::StrCat("position ", t, " >= ", num_tokens));
          return false;
        }
        if (c.first_slot < kClusterSlotBase && t != c.first_slot + i) {
          Fail("token slot does not hold its token");
          return false;
        }
        float k[kHeadDim], v[kHeadDim];
        std::memcpy(k, c.keys.data() + i * kRowBytes, kRowBytes);
        std::memcpy(v, c.values.data() + i * kRowBytes, kRowBytes);
        for (uint32_t j = 0; j < kHeadDim; ++j) {
          if (k[j] != Val(ord, layer, t, h, j, 0) ||
              v[j] != Val(ord, layer, t, h, j, 1)) {
            Fail(absl::StrCat("wrong K/V: layer ", layer, " token ", t,
                              " head ", h));
            return false;
          }
        }
        positions.push_back(t);
      }
      if (keys_out != nullptr) *keys_out += c.keys;
      return true;
    });
    if (s.ok()) return positions;
    if (absl::IsNotFound(s)) return std::nullopt;
    if (absl::IsFailedPrecondition(s) &&
        s.message().find("moved into the wave index") != std::string::npos) {
      return std::nullopt;
    }
    Fail("fetch: " + s.ToString());
    return std::nullopt;
  }

  void CheckAnswer(const SessionResult& r, uint32_t layer) {
    uint64_t ord;
    if (!Ordinal(r.session_id, &ord)) return Fail("unknown session");
    const uint64_t n = r.num_tokens;
    std::vector<bool> steady(n, false);
    uint64_t steady_count = 0;
    for (const TokenRange& t : r.steady) {
      if (t.begin >= t.end || t.end > n) return Fail("steady range");
      for (uint64_t p = t.begin; p < t.end; ++p) {
        if (steady[p]) return Fail("steady twice");
        steady[p] = true;
        ++steady_count;
      }
    }
    if (r.mode == RetrieveMode::kWave && steady_count + r.indexed_tokens != n) {
      return Fail("steady + indexed != num_tokens");
    }
    if (r.mode == RetrieveMode::kExact && !r.steady.empty()) {
      return Fail("EXACT with steady tokens");
    }
    for (const KvHeadResult& head : r.heads) {
      uint64_t slots = 0;
      for (const SlotRange& range : head.retrieval) slots += range.num_slots;
      if (r.mode == RetrieveMode::kExact && slots != n) {
        return Fail("EXACT ranges do not cover every token");
      }
      if (r.mode == RetrieveMode::kWave &&
          (head.tail.size() != kQHeads / kKvHeads ||
           slots > r.indexed_tokens)) {
        return Fail("WAVE head shape");
      }
      if (head.retrieval.empty()) continue;
      std::string fetched_keys;
      auto positions =
          FetchAndCheck(r.session_id, ord, layer, r.layout_epoch, head.kv_head,
                        head.retrieval, n, &fetched_keys);
      if (!positions.has_value()) continue;
      std::vector<uint64_t> sorted = *positions;
      std::sort(sorted.begin(), sorted.end());
      if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
        return Fail("a token retrieved twice");
      }
      for (uint64_t p : sorted) {
        if (steady[p]) return Fail("a steady token retrieved");
      }
      if (r.mode == RetrieveMode::kExact && sorted.size() != n) {
        return Fail("EXACT fetch misses tokens");
      }
      if (!head.keys.empty() && head.keys != fetched_keys) {
        return Fail("inline K differ from fetched K");
      }
    }
  }

  void Reader(int id) {
    std::mt19937_64 rng(500 + id);
    // At least kMinReads calls, and on until the appenders are done.
    for (int reads = 0; reads < kMinReads || !done_.load(); ++reads) {
      std::vector<std::string> live = Live();
      if (live.empty()) continue;
      std::shuffle(live.begin(), live.end(), rng);
      live.resize(std::min<size_t>(live.size(), 1 + rng() % 3));
      RetrieveOptions o;
      o.layer = static_cast<uint32_t>(rng() % kLayers);
      o.mode = rng() % 3 == 0 ? RetrieveMode::kExact : RetrieveMode::kWave;
      o.exact_if_not_ready = rng() % 2 == 0;
      o.include_kv = rng() % 4 == 0;
      std::vector<float> q(kQHeads * kHeadDim);
      for (float& x : q) x = static_cast<float>(rng() % 1000) / 500.0f - 1.0f;
      std::vector<RetrieveQuery> queries;
      for (const std::string& s : live) queries.push_back({s, q});
      auto results = engine_->Retrieve(kTenant, o, queries);
      if (results.ok()) {
        retrieves_.fetch_add(1);
        for (const SessionResult& r : *results) {
          if (r.mode == RetrieveMode::kWave) wave_answers_.fetch_add(1);
          CheckAnswer(r, o.layer);
        }
      } else if (!absl::IsNotFound(results.status()) &&
                 !(absl::IsUnavailable(results.status()) &&
                   !o.exact_if_not_ready)) {
        Fail("retrieve: " + results.status().ToString());
      }
      if (engine_->Stats().memory_bytes > kBudgetBytes) Fail("over budget");
    }
  }

  void Poller() {
    while (!done_.load()) {
      for (const std::string& id : Live()) {
        auto info = engine_->GetSession(kTenant, id);
        if (!info.ok()) continue;  // closed meanwhile
        if (info->index_state == IndexState::kFailed) {
          Fail("FAILED: " + info->index_error);
        }
        for (uint32_t l = 0; l < kLayers; ++l) {
          if (info->layer_indexed_tokens[l] > info->layer_tokens[l]) {
            Fail("more indexed than stored");
          }
        }
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
  }

  std::unique_ptr<Engine> engine_;
  std::atomic<int> failures_{0};
  std::atomic<bool> done_{false};
  std::atomic<uint64_t> retrieves_{0}, wave_answers_{0};
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, uint64_t> ordinals_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> live_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ordinal_ ABSL_GUARDED_BY(mu_) = 1;
};

TEST_F(WaveConcurrencyTest, AppendsBuildsRetrievesAndFetchesRace) {
  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) readers.emplace_back([this, r] { Reader(r); });
  std::thread poller([this] { Poller(); });
  std::vector<std::thread> appenders;
  for (int a = 0; a < kAppenders; ++a) {
    appenders.emplace_back([this, a] { Appender(a); });
  }
  for (std::thread& t : appenders) t.join();
  done_.store(true);
  for (std::thread& t : readers) t.join();
  poller.join();

  // Builds go idle within a bounded wait; then every session is READY (or
  // too short to index), and every token is readable exactly once.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (engine_->Stats().index_pending_layers > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  const EngineStats stats = engine_->Stats();
  EXPECT_EQ(stats.index_pending_layers, 0u);
  EXPECT_GT(stats.index_builds, 0u);
  EXPECT_EQ(stats.index_build_failures, 0u);
  EXPECT_GT(retrieves_.load(), 0u);
  uint64_t memory = 0;
  const WaveIndexParams params = [] {
    WaveIndexParams p;
    const IndexOptions o = SmallIndex();
    p.sink_tokens = o.sink_tokens;
    p.recent_tokens = o.recent_tokens;
    p.update_tokens = o.update_tokens;
    return p;
  }();
  for (const std::string& id : Live()) {
    auto info = engine_->GetSession(kTenant, id);
    ASSERT_TRUE(info.ok());
    memory += info->memory_bytes;
    EXPECT_NE(info->index_state, IndexState::kBuilding);
    for (uint32_t l = 0; l < kLayers; ++l) {
      const uint64_t n = info->layer_tokens[l];
      const uint64_t indexed = info->layer_indexed_tokens[l];
      EXPECT_TRUE(
          NextIndexBlock(params, n, indexed == 0 ? 0 : 4 + indexed).empty())
          << "layer " << l << " caught up";
      std::vector<float> q(kQHeads * kHeadDim, 0.1f);
      for (RetrieveMode mode : {RetrieveMode::kExact, RetrieveMode::kWave}) {
        RetrieveOptions o;
        o.layer = l;
        o.mode = mode;
        auto r = engine_->Retrieve(kTenant, o, {RetrieveQuery{id, q}});
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ((*r)[0].mode, mode);
        EXPECT_EQ((*r)[0].indexed_tokens,
                  mode == RetrieveMode::kWave ? indexed : 0);
        CheckAnswer((*r)[0], l);
      }
    }
  }
  EXPECT_EQ(stats.memory_bytes, memory) << "the budget holds exactly the "
                                           "sessions' bytes";
  for (const std::string& id : Live()) {
    ASSERT_TRUE(engine_->CloseSession(kTenant, id).ok());
  }
  EXPECT_EQ(engine_->Stats().memory_bytes, 0u);
  EXPECT_EQ(engine_->Stats().sessions, 0u);
  EXPECT_EQ(failures_.load(), 0);
  RecordProperty("retrieves", std::to_string(retrieves_.load()));
  RecordProperty("wave_answers", std::to_string(wave_answers_.load()));
  RecordProperty("index_builds", std::to_string(stats.index_builds));
}

}  // namespace
}  // namespace wavekv
