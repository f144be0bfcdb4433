// Spill and restore against a real RocksDB in $TEST_TMPDIR: a memory budget
// smaller than the working set of several sessions, every session reads
// back bit-exact (EXACT K/V and WAVE answers) after it was spilled and
// restored, and the memory in use never exceeds the budget.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kvstore/engine.h"
#include "kvstore/same_answer.h"

namespace wavekv {
namespace {

constexpr uint32_t kLayers = 2;
constexpr uint32_t kQHeads = 4;
constexpr uint32_t kKvHeads = 2;
constexpr uint32_t kHeadDim = 16;
constexpr size_t kTokenFloats = kKvHeads * kHeadDim;
constexpr uint64_t kBudget = 1ull << 20;  // the engine's minimum
constexpr uint32_t kTokens = 400;         // ~0.3-0.45 MiB per session

std::string TestDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return std::string(tmp != nullptr ? tmp : "/tmp") + "/" + name;
}

EngineOptions SpillOptions(const std::string& dir) {
  EngineOptions o;
  o.memory_budget_bytes = kBudget;
  o.index_threads = 0;  // builds inside Append: deterministic
  o.retrieve_threads = 0;
  o.storage_dir = dir;
  return o;
}

SessionOptions IndexedFp32() {
  SessionOptions o;
  o.shape = {kLayers, kQHeads, kKvHeads, kHeadDim, DType::kFp32};
  // Small blocks so that most tokens are indexed (cluster store + index).
  o.index.segment_tokens = 256;
  o.index.update_tokens = 128;
  o.index.recent_tokens = 64;
  return o;
}

// Finite K/V of (session seed, layer, tokens [start, start + n)).
struct LayerData {
  LayerData(uint32_t seed, uint32_t layer, uint64_t start, uint32_t n)
      : keys(n * kTokenFloats), values(n * kTokenFloats) {
    std::mt19937 rng(seed * 7919 + layer * 104729 +
                     static_cast<uint32_t>(start));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& k : keys) k = normal(rng);
    for (float& v : values) v = normal(rng);
    append.layer = layer;
    append.start_token = start;
    append.num_tokens = n;
    append.keys = absl::MakeConstSpan(
        reinterpret_cast<const uint8_t*>(keys.data()), keys.size() * 4);
    append.values = absl::MakeConstSpan(
        reinterpret_cast<const uint8_t*>(values.data()), values.size() * 4);
  }
  std::vector<float> keys, values;
  LayerAppend append;
};

class SpillTest : public ::testing::Test {
 protected:
  void OpenEngine(const std::string& name) {
    auto engine = Engine::Open(SpillOptions(TestDir(name)));
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  // Appends kTokens to every layer in chunks of 100, checking the budget
  // after each call.
  std::string NewFilledSession(const TenantId& tenant, uint32_t seed) {
    auto info = engine_->CreateSession(tenant, IndexedFp32());
    EXPECT_TRUE(info.ok()) << info.status();
    for (uint64_t start = 0; start < kTokens; start += 100) {
      std::vector<LayerData> data;
      std::vector<LayerAppend> appends;
      for (uint32_t l = 0; l < kLayers; ++l)
        data.emplace_back(seed, l, start, 100);
      for (const LayerData& d : data) appends.push_back(d.append);
      auto r = engine_->Append(tenant, info->session_id, appends);
      EXPECT_TRUE(r.ok()) << r.status();
      ExpectWithinBudget();
    }
    return info->session_id;
  }

  void ExpectWithinBudget() {
    const EngineStats s = engine_->Stats();
    EXPECT_LE(s.memory_bytes, kBudget);
    max_memory_ = std::max(max_memory_, s.memory_bytes);
  }

  std::vector<SessionResult> Answer(const TenantId& tenant,
                                    const std::string& id, uint32_t layer,
                                    RetrieveMode mode) {
    std::vector<float> query(kQHeads * kHeadDim);
    std::mt19937 rng(layer + 17);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& q : query) q = normal(rng);
    RetrieveOptions o;
    o.layer = layer;
    o.mode = mode;
    o.include_kv = true;
    RetrieveQuery q{id, query};
    auto r = engine_->Retrieve(tenant, o, {q});
    EXPECT_TRUE(r.ok()) << r.status();
    ExpectWithinBudget();
    return r.ok() ? *r : std::vector<SessionResult>{};
  }

  std::unique_ptr<Engine> engine_;
  uint64_t max_memory_ = 0;
};

TEST_F(SpillTest, RestartWithMoreOnDiskThanTheBudgetRestoresOnAccess) {
  // Six sessions of ~0.45 MiB against a 1 MiB budget, persisted at
  // shutdown; the restarted engine cannot hold them all.
  struct Held {
    TenantId tenant;
    std::string id;
    std::vector<SessionResult> exact, wave;  // per layer, before the restart
  };
  std::vector<Held> sessions;
  OpenEngine("restart_over_budget");
  for (uint32_t i = 0; i < 6; ++i) {
    Held s;
    s.tenant = i % 2 == 0 ? "t-even" : "t-odd";
    s.id = NewFilledSession(s.tenant, i);
    for (uint32_t l = 0; l < kLayers; ++l) {
      s.exact.push_back(Answer(s.tenant, s.id, l, RetrieveMode::kExact)[0]);
      s.wave.push_back(Answer(s.tenant, s.id, l, RetrieveMode::kWave)[0]);
    }
    sessions.push_back(std::move(s));
  }
  engine_.reset();  // shutdown persists every session

  // Shared: the engine (a member) logs at shutdown, after this scope.
  auto log = std::make_shared<std::vector<std::string>>();
  EngineOptions o = SpillOptions(TestDir("restart_over_budget"));
  o.on_recovery_log = [log](const std::string& line) { log->push_back(line); };
  auto engine = Engine::Open(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  engine_ = *std::move(engine);
  EngineStats stats = engine_->Stats();
  EXPECT_EQ(stats.sessions, 6u);
  EXPECT_EQ(stats.sessions_recovered, 6u);
  EXPECT_EQ(stats.sessions_recovered_spilled, stats.spilled_sessions);
  EXPECT_EQ(stats.sessions_unusable, 0u);
  EXPECT_GT(stats.spilled_sessions, 0u);
  EXPECT_LT(stats.spilled_sessions, 6u);
  EXPECT_LE(stats.memory_bytes, kBudget);
  bool logged = false;
  for (const std::string& line : *log) {
    logged |= line.find("left on disk") != std::string::npos;
  }
  EXPECT_TRUE(logged);

  // Spilled ones are listed with their tokens (GetSession is no access).
  for (const Held& s : sessions) {
    auto info = engine_->GetSession(s.tenant, s.id);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->num_tokens, kTokens);
    EXPECT_EQ(info->durable_tokens, kTokens);
  }
  // Every session answers bit-exactly as before the restart (its index
  // from the stored record), twice over, within the budget throughout.
  for (int pass = 0; pass < 2; ++pass) {
    for (const Held& s : sessions) {
      for (uint32_t l = 0; l < kLayers; ++l) {
        std::vector<SessionResult> exact =
            Answer(s.tenant, s.id, l, RetrieveMode::kExact);
        ASSERT_EQ(exact.size(), 1u);
        ExpectSameAnswer(exact[0], s.exact[l]);
        EXPECT_EQ(exact[0].layout_epoch, s.exact[l].layout_epoch);
        std::vector<SessionResult> wave =
            Answer(s.tenant, s.id, l, RetrieveMode::kWave);
        ASSERT_EQ(wave.size(), 1u);
        ExpectSameAnswer(wave[0], s.wave[l]);
        EXPECT_EQ(wave[0].layout_epoch, s.wave[l].layout_epoch);
      }
    }
  }
  EXPECT_GT(engine_->Stats().restores, 0u);
  EXPECT_EQ(engine_->Stats().restore_failures, 0u);
  EXPECT_LE(max_memory_, kBudget);

  // A session recovered spilled takes appends after its restore.
  const Held& last = sessions.back();
  std::vector<LayerData> data;
  std::vector<LayerAppend> appends;
  for (uint32_t l = 0; l < kLayers; ++l) data.emplace_back(5, l, kTokens, 10);
  for (const LayerData& d : data) appends.push_back(d.append);
  auto r = engine_->Append(last.tenant, last.id, appends);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->num_tokens, kTokens + 10);
  ExpectWithinBudget();
}

TEST_F(SpillTest, NothingToSpillIsResourceExhaustedNamingTheBudget) {
  OpenEngine("nothing_to_spill");
  auto info = engine_->CreateSession("t", IndexedFp32());
  ASSERT_TRUE(info.ok());
  // One append larger than the whole budget: no other session to spill.
  std::vector<LayerData> data;
  std::vector<LayerAppend> appends;
  for (uint32_t l = 0; l < kLayers; ++l) data.emplace_back(1, l, 0, 5000);
  for (const LayerData& d : data) appends.push_back(d.append);
  auto r = engine_->Append("t", info->session_id, appends);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("memory_budget_bytes"), std::string::npos)
      << r.status();
  EXPECT_EQ(engine_->Stats().memory_bytes, 0u);
  EXPECT_EQ(engine_->Stats().spills, 0u);
}

TEST(SpillWithoutStorageTest, NoStorageMeansNoSpill) {
  EngineOptions o;
  o.memory_budget_bytes = kBudget;
  o.index_threads = 0;
  auto engine = Engine::Open(o);
  ASSERT_TRUE(engine.ok());
  std::vector<std::string> ids;
  absl::Status last;
  for (uint32_t i = 0; i < 6 && last.ok(); ++i) {
    auto info = (*engine)->CreateSession("t", IndexedFp32());
    ASSERT_TRUE(info.ok());
    std::vector<LayerData> data;
    std::vector<LayerAppend> appends;
    for (uint32_t l = 0; l < kLayers; ++l) data.emplace_back(i, l, 0, kTokens);
    for (const LayerData& d : data) appends.push_back(d.append);
    last = (*engine)->Append("t", info->session_id, appends).status();
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
  EXPECT_EQ((*engine)->Stats().spills, 0u);
  EXPECT_LE((*engine)->Stats().memory_bytes, kBudget);
}

}  // namespace
}  // namespace wavekv
