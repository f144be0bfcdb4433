// The engine with a persistent tier (real RocksDB in $TEST_TMPDIR):
// durability levels, group commit, close-and-reopen recovery with
// bit-identical Retrieve answers, corruption detection (a rewritten record,
// flipped bytes in a blob file), and a full disk on a private tmpfs.
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kvstore/engine.h"
#include "kvstore/private_mounts.h"
#include "kvstore/storage/record.h"
#include "kvstore/storage/session_records.h"
#include "kvstore/storage/storage.h"
#include "rocksdb/db.h"

namespace wavekv {
namespace {

using ::absl::StatusCode;

constexpr uint32_t kLayers = 2;
constexpr uint32_t kQHeads = 4;
constexpr uint32_t kKvHeads = 2;
constexpr uint32_t kHeadDim = 16;
constexpr size_t kTokenBytes = kKvHeads * kHeadDim * sizeof(float);
const TenantId kTenant = "tenant-a";

std::string FreshDir(const std::string& name) {
  const std::string dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/engine_persist_", name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

EngineOptions Options(const std::string& dir) {
  EngineOptions o;
  o.memory_budget_bytes = 64ull << 20;
  o.index_threads = 0;  // builds inside Append: deterministic blocks
  o.retrieve_threads = 0;
  o.storage_dir = dir;
  o.async_flush_interval_ms = 5;
  o.on_recovery_log = [](const std::string&) {};
  return o;
}

SessionOptions Indexed(Durability durability) {
  SessionOptions o;
  o.shape = {kLayers, kQHeads, kKvHeads, kHeadDim, DType::kFp32};
  o.index.sink_tokens = 4;
  o.index.recent_tokens = 16;
  o.index.segment_tokens = 64;
  o.index.cluster_size = 8;
  o.index.update_tokens = 32;
  o.durability = durability;
  o.label = "persist";
  return o;
}

// Finite K/V of tokens [start, start + n) of `layer`, seeded per session.
struct LayerData {
  LayerData(uint32_t seed, uint32_t layer, uint64_t start, uint32_t n)
      : keys(n * kTokenBytes), values(n * kTokenBytes) {
    std::mt19937 gen(seed * 7919 + layer * 104729 + start);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    auto* k = reinterpret_cast<float*>(keys.data());
    auto* v = reinterpret_cast<float*>(values.data());
    for (size_t i = 0; i < n * kKvHeads * kHeadDim; ++i) {
      k[i] = dist(gen);
      v[i] = dist(gen);
    }
    append = {layer, start, n, keys, values};
  }
  std::vector<uint8_t> keys, values;
  LayerAppend append;
};

// Appends `n` tokens to every layer in one call.
absl::StatusOr<AppendResult> AppendAll(Engine& engine, const std::string& id,
                                       uint32_t seed, uint64_t start,
                                       uint32_t n,
                                       std::optional<Durability> d = {}) {
  std::vector<LayerData> data;
  data.reserve(kLayers);
  std::vector<LayerAppend> appends;
  for (uint32_t l = 0; l < kLayers; ++l) {
    data.emplace_back(seed, l, start, n);
    appends.push_back(data.back().append);
  }
  return engine.Append(kTenant, id, appends, d);
}

std::vector<float> Query(uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> q(kQHeads * kHeadDim);
  for (float& x : q) x = dist(gen);
  return q;
}

// Every field of a Retrieve answer, as bytes, for bit-exact comparison.
std::string Serialize(const SessionResult& r) {
  std::string out =
      absl::StrCat(r.session_id, "|", r.num_tokens, "|", r.indexed_tokens, "|",
                   r.layout_epoch, "|", static_cast<int>(r.mode), "|");
  for (const TokenRange& s : r.steady)
    absl::StrAppend(&out, s.begin, "-", s.end, ",");
  for (const KvHeadResult& h : r.heads) {
    absl::StrAppend(&out, "h", h.kv_head, ":");
    for (const SlotRange& s : h.retrieval) {
      absl::StrAppend(&out, s.cluster_id, "@", s.first_slot, "+", s.num_slots,
                      ",");
    }
    for (const TailStats& t : h.tail) {
      out.append(reinterpret_cast<const char*>(&t.max_logit), sizeof(float));
      out.append(reinterpret_cast<const char*>(&t.denominator), sizeof(float));
      out.append(reinterpret_cast<const char*>(t.numerator.data()),
                 t.numerator.size() * sizeof(float));
    }
    out += h.keys;
    out += h.values;
  }
  return out;
}

// WAVE and EXACT answers (with K/V inline) of every layer of `id`.
std::vector<std::string> Answers(Engine& engine, const std::string& id) {
  std::vector<std::string> out;
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    for (RetrieveMode mode : {RetrieveMode::kWave, RetrieveMode::kExact}) {
      for (uint32_t q = 0; q < 3; ++q) {
        const std::vector<float> query = Query(q * 31 + layer);
        RetrieveOptions ro;
        ro.layer = layer;
        ro.mode = mode;
        ro.include_kv = true;
        RetrieveQuery rq{id, query};
        auto r = engine.Retrieve(kTenant, ro, {&rq, 1});
        EXPECT_TRUE(r.ok()) << r.status();
        if (!r.ok()) return out;
        out.push_back(Serialize((*r)[0]));
      }
    }
  }
  return out;
}

TEST(EnginePersistTest, DurabilityNeedsStorageAndReportsWatermarks) {
  const std::string dir = FreshDir("levels");
  auto engine = Engine::Open(Options(dir));
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto sync = (*engine)->CreateSession(kTenant, Indexed(Durability::kSync));
  ASSERT_TRUE(sync.ok()) << sync.status();
  auto r = AppendAll(**engine, sync->session_id, 1, 0, 40);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->num_tokens, 40u);
  EXPECT_EQ(r->durable_tokens, 40u);

  auto async = (*engine)->CreateSession(kTenant, Indexed(Durability::kAsync));
  ASSERT_TRUE(async.ok()) << async.status();
  r = AppendAll(**engine, async->session_id, 2, 0, 40);
  ASSERT_TRUE(r.ok()) << r.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  uint64_t durable = 0;
  while (absl::Now() < deadline) {
    auto info = (*engine)->GetSession(kTenant, async->session_id);
    ASSERT_TRUE(info.ok());
    durable = info->durable_tokens;
    if (durable == 40) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(durable, 40u) << "the ASYNC flusher never caught up";

  auto none = (*engine)->CreateSession(kTenant, Indexed(Durability::kNone));
  ASSERT_TRUE(none.ok());
  r = AppendAll(**engine, none->session_id, 3, 0, 40);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->durable_tokens, 0u);
  // A SYNC append to the NONE session writes its earlier tokens too.
  r = AppendAll(**engine, none->session_id, 3, 40, 8, Durability::kSync);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->durable_tokens, 48u);

  // Without a persistent tier ASYNC/SYNC stay FailedPrecondition.
  EngineOptions memory_only = Options("");
  auto plain = Engine::Open(memory_only);
  ASSERT_TRUE(plain.ok());
  auto refused = (*plain)->CreateSession(kTenant, Indexed(Durability::kSync));
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
}

TEST(EnginePersistTest, ConcurrentSyncAppendsShareFsyncs) {
  const std::string dir = FreshDir("group_commit");
  auto engine = Engine::Open(Options(dir));
  ASSERT_TRUE(engine.ok()) << engine.status();
  constexpr int kThreads = 8;
  constexpr int kAppends = 16;
  std::vector<std::string> ids;
  for (int t = 0; t < kThreads; ++t) {
    auto s = (*engine)->CreateSession(kTenant, Indexed(Durability::kSync));
    ASSERT_TRUE(s.ok()) << s.status();
    ids.push_back(s->session_id);
  }
  const uint64_t before = (*engine)->Stats().storage_wal_syncs;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  // All threads start appending together: without this the first threads
  // could finish before the last ones exist, leaving nothing to group.
  std::atomic<bool> go{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kAppends; ++i) {
        auto r = AppendAll(**engine, ids[t], t, i, 1);
        if (!r.ok() || r->durable_tokens != uint64_t(i + 1)) ++failures;
      }
    });
  }
  go.store(true);
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  const uint64_t syncs = (*engine)->Stats().storage_wal_syncs - before;
  // Every append is acknowledged only after an fsync; grouped writers
  // share one, so there are fewer fsyncs than appends.
  EXPECT_GE(syncs, 1u);
  EXPECT_LT(syncs, uint64_t{kThreads * kAppends});
  std::printf("%d concurrent SYNC appends: %lu WAL fsyncs\n",
              kThreads * kAppends, static_cast<unsigned long>(syncs));
}

struct Fixture {
  std::string sync_id, none_id, async_id;
  std::vector<std::string> sync_answers, none_answers, async_answers;
};

// Three sessions (SYNC, NONE, ASYNC), 300 tokens each in uneven appends,
// indexed (the index is built inside Append), answers recorded.
Fixture Populate(Engine& engine) {
  Fixture f;
  auto make = [&](Durability d, uint32_t seed, std::string& id) {
    auto s = engine.CreateSession(kTenant, Indexed(d));
    EXPECT_TRUE(s.ok()) << s.status();
    id = s->session_id;
    uint64_t at = 0;
    for (uint32_t n : {100u, 57u, 1u, 1u, 90u, 51u}) {
      auto r = AppendAll(engine, id, seed, at, n);
      EXPECT_TRUE(r.ok()) << r.status();
      at += n;
    }
  };
  make(Durability::kSync, 11, f.sync_id);
  make(Durability::kNone, 12, f.none_id);
  make(Durability::kAsync, 13, f.async_id);
  f.sync_answers = Answers(engine, f.sync_id);
  f.none_answers = Answers(engine, f.none_id);
  f.async_answers = Answers(engine, f.async_id);
  return f;
}

TEST(EnginePersistTest, ClosingADurableSessionSyncsItsDeletion) {
  const std::string dir = FreshDir("close_sync");
  {
    auto engine = Engine::Open(Options(dir));
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto s = (*engine)->CreateSession(kTenant, Indexed(Durability::kSync));
    ASSERT_TRUE(s.ok()) << s.status();
    auto r = AppendAll(**engine, s->session_id, 1, 0, 8);
    ASSERT_TRUE(r.ok()) << r.status();
    const uint64_t before = (*engine)->Stats().storage_wal_syncs;
    ASSERT_TRUE((*engine)->CloseSession(kTenant, s->session_id).ok());
    // The deletion is acknowledged only after its WAL record is fsynced.
    EXPECT_GT((*engine)->Stats().storage_wal_syncs, before);
  }
  auto engine = Engine::Open(Options(dir));
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->Stats().sessions, 0u);
}

TEST(EnginePersistTest, ReopenRecoversEverySessionWithIdenticalAnswers) {
  const std::string dir = FreshDir("reopen");
  Fixture f;
  std::vector<SessionInfo> before;
  {
    auto engine = Engine::Open(Options(dir));
    ASSERT_TRUE(engine.ok()) << engine.status();
    f = Populate(**engine);
    for (const std::string& id : {f.sync_id, f.none_id, f.async_id}) {
      auto info = (*engine)->GetSession(kTenant, id);
      ASSERT_TRUE(info.ok());
      EXPECT_GT(info->layer_indexed_tokens[0], 0u) << "nothing indexed";
      before.push_back(*info);
    }
  }
  std::vector<std::string> log;
  EngineOptions o = Options(dir);
  o.on_recovery_log = [&](const std::string& line) { log.push_back(line); };
  auto engine = Engine::Open(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->Stats().sessions_recovered, 3u);
  ASSERT_FALSE(log.empty());
  EXPECT_TRUE(absl::StrContains(log.front(), "3 stored sessions"))
      << log.front();
  size_t i = 0;
  for (const std::string& id : {f.sync_id, f.none_id, f.async_id}) {
    auto info = (*engine)->GetSession(kTenant, id);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->tenant, kTenant);
    EXPECT_EQ(info->durability, before[i].durability);
    EXPECT_EQ(info->label, "persist");
    EXPECT_EQ(info->layer_tokens, before[i].layer_tokens);
    EXPECT_EQ(info->layer_indexed_tokens, before[i].layer_indexed_tokens);
    EXPECT_EQ(info->created_unix_ms, before[i].created_unix_ms);
    EXPECT_EQ(info->durable_tokens, info->num_tokens);
    EXPECT_EQ(info->index_state, before[i].index_state);
    ++i;
  }
  EXPECT_EQ(Answers(**engine, f.sync_id), f.sync_answers);
  EXPECT_EQ(Answers(**engine, f.none_id), f.none_answers);
  EXPECT_EQ(Answers(**engine, f.async_id), f.async_answers);
  // Another tenant still sees nothing.
  auto other = (*engine)->GetSession("tenant-b", f.sync_id);
  EXPECT_EQ(other.status().code(), StatusCode::kNotFound);
  // Appends continue where they stopped, and a closed session stays gone.
  auto r = AppendAll(**engine, f.sync_id, 11, 300, 4);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->num_tokens, 304u);
  ASSERT_TRUE((*engine)->CloseSession(kTenant, f.async_id).ok());
  engine->reset();
  engine = Engine::Open(Options(dir));
  ASSERT_TRUE(engine.ok());
  auto page = (*engine)->ListSessions(kTenant, 0, "");
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->sessions.size(), 2u);
  auto again = (*engine)->GetSession(kTenant, f.sync_id);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->num_tokens, 304u);
}

// Checks that `bad` is listed as FAILED and answers DataLoss naming it,
// and that `good` answers exactly as recorded.
void ExpectOnlyOneLost(Engine& engine, const std::string& bad,
                       const std::string& good,
                       const std::vector<std::string>& good_answers,
                       const std::string& detail) {
  auto page = engine.ListSessions(kTenant, 0, "");
  ASSERT_TRUE(page.ok());
  bool listed = false;
  for (const SessionInfo& s : page->sessions) {
    if (s.session_id != bad) continue;
    listed = true;
    EXPECT_EQ(s.index_state, IndexState::kFailed);
    EXPECT_TRUE(absl::StrContains(s.index_error, detail)) << s.index_error;
  }
  EXPECT_TRUE(listed);
  auto info = engine.GetSession(kTenant, bad);
  EXPECT_EQ(info.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(info.status().message(),
                                absl::StrCat("session ", bad, ": layer ")))
      << info.status();
  EXPECT_TRUE(absl::StrContains(info.status().message(), detail))
      << info.status();
  auto r = AppendAll(engine, bad, 1, 300, 1);
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  const std::vector<float> q = Query(1);
  RetrieveQuery rq{bad, q};
  auto rr = engine.Retrieve(kTenant, RetrieveOptions{}, {&rq, 1});
  EXPECT_EQ(rr.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(Answers(engine, good), good_answers);
  // Closing it removes it (and its records).
  EXPECT_TRUE(engine.CloseSession(kTenant, bad).ok());
}

TEST(EnginePersistTest, ARecordWithABadChecksumLosesOnlyItsSession) {
  const std::string dir = FreshDir("bad_record");
  Fixture f;
  {
    auto engine = Engine::Open(Options(dir));
    ASSERT_TRUE(engine.ok()) << engine.status();
    f = Populate(**engine);
  }
  {
    StorageOptions so;
    so.path = dir;
    auto storage = Storage::Open(so);
    ASSERT_TRUE(storage.ok()) << storage.status();
    rocksdb::DB* db = (*storage)->db_for_test();
    const std::string key = KvChunkKey(f.sync_id, 1, 157);
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), key, &value).ok());
    value[value.size() - 3] ^= 0x01;
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, value).ok());
  }
  auto engine = Engine::Open(Options(dir));
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->Stats().sessions_unusable, 1u);
  ExpectOnlyOneLost(**engine, f.sync_id, f.none_id, f.none_answers,
                    "layer 1 chunk 157: checksum mismatch");
}

TEST(EnginePersistTest, FlippedBytesInABlobFileLoseOnlyTheirSession) {
  const std::string dir = FreshDir("bad_blob");
  Fixture f;
  {
    auto engine = Engine::Open(Options(dir));
    ASSERT_TRUE(engine.ok()) << engine.status();
    f = Populate(**engine);
  }  // shutdown flushes the memtables: the K/V now sits in blob files
  // Session none_id's layer 0 keys of its first append start with these
  // bytes (fp32, not compressed).
  const LayerData first(12, 0, 0, 100);
  const std::string needle(reinterpret_cast<const char*>(first.keys.data()),
                           64);
  bool flipped = false;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".blob") continue;
    std::fstream file(entry.path(),
                      std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(file)),
                      std::istreambuf_iterator<char>());
    const size_t at = bytes.find(needle);
    if (at == std::string::npos) continue;
    file.seekp(static_cast<std::streamoff>(at + 100));
    const char flipped_byte = static_cast<char>(bytes[at + 100] ^ 0x40);
    file.write(&flipped_byte, 1);
    flipped = true;
  }
  ASSERT_TRUE(flipped) << "the session's K/V was not found in a blob file";
  auto engine = Engine::Open(Options(dir));
  ASSERT_TRUE(engine.ok()) << engine.status();
  ExpectOnlyOneLost(**engine, f.none_id, f.sync_id, f.sync_answers,
                    "layer 0 chunk 0");
}

// Before main, while the process has one thread (every later thread, RocksDB's
// included, must see the tmpfs).
const std::string kPrivateMountsError = EnterPrivateMountNamespace();

// A tmpfs of `bytes` mounted at `dir` for the test's lifetime, in the
// process's private mount namespace.
class Tmpfs {
 public:
  Tmpfs(const std::string& dir, uint64_t bytes) : dir_(dir) {
    if (!kPrivateMountsError.empty()) {
      error_ = kPrivateMountsError;
      return;
    }
    mounted_ = ::mount("tmpfs", dir.c_str(), "tmpfs", 0,
                       absl::StrCat("size=", bytes).c_str()) == 0;
    error_ = mounted_ ? "" : std::strerror(errno);
  }
  ~Tmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

TEST(EnginePersistTest, AFullDiskRefusesAppendsCleanlyUntilSpaceIsFreed) {
  const std::string dir = FreshDir("full_disk");
  Tmpfs tmpfs(dir, 8ull << 20);
  if (!tmpfs.mounted()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << tmpfs.error()
                 << "); needs root / CAP_SYS_ADMIN";
  }
  // A filler file that is deleted later to give the space back.
  {
    std::ofstream filler(dir + "/filler", std::ios::binary);
    std::string mb(1 << 20, 'x');
    for (int i = 0; i < 3; ++i) filler.write(mb.data(), mb.size());
  }
  // Small memtables: RocksDB resumes by itself once the free space
  // exceeds one memtable (64 MiB by default, more than this tmpfs).
  StorageOptions so;
  so.path = dir + "/db";
  so.write_buffer_bytes = 512 << 10;
  so.min_free_bytes = 256 << 10;  // the default reserve is most of this disk
  EngineOptions o = Options("");
  {
    auto storage = Storage::Open(so);
    ASSERT_TRUE(storage.ok()) << storage.status();
    o.storage = std::shared_ptr<Storage>(*std::move(storage));
  }
  auto engine = Engine::Open(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto s = (*engine)->CreateSession(kTenant, Indexed(Durability::kSync));
  ASSERT_TRUE(s.ok()) << s.status();
  SessionOptions plain = Indexed(Durability::kSync);
  plain.index.recent_tokens = 65536;  // no index: pure K/V writes
  s = (*engine)->CreateSession(kTenant, plain);
  ASSERT_TRUE(s.ok()) << s.status();
  uint64_t at = 0;
  absl::Status failure;
  for (int i = 0; i < 200 && failure.ok(); ++i) {
    auto r = AppendAll(**engine, s->session_id, 5, at, 512);  // 256 KiB
    if (r.ok()) {
      at += 512;
    } else {
      failure = r.status();
    }
  }
  ASSERT_FALSE(failure.ok()) << "the disk never filled";
  EXPECT_TRUE(failure.code() == StatusCode::kResourceExhausted ||
              failure.code() == StatusCode::kUnavailable)
      << failure;
  EXPECT_TRUE(absl::StrContains(failure.message(), "no space") ||
              absl::StrContains(failure.message(), "No space"))
      << failure;
  // Nothing half applied; reads go on.
  auto info = (*engine)->GetSession(kTenant, s->session_id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_tokens, at);
  EXPECT_EQ(info->durable_tokens, at);
  EXPECT_FALSE(Answers(**engine, s->session_id).empty());
  EXPECT_GE((*engine)->Stats().storage_no_space_errors, 1u);
  // Space back: writes work again.
  std::filesystem::remove(dir + "/filler");
  // RocksDB notices the space on its own schedule: retry for a while, each
  // refusal still clean.
  absl::StatusOr<AppendResult> r = failure;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!r.ok() && absl::Now() < deadline) {
    r = AppendAll(**engine, s->session_id, 5, at, 16);
    if (!r.ok()) {
      auto still = (*engine)->GetSession(kTenant, s->session_id);
      ASSERT_TRUE(still.ok());
      ASSERT_EQ(still->num_tokens, at) << r.status();
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->num_tokens, at + 16);
  EXPECT_EQ(r->durable_tokens, at + 16);
  engine->reset();
  o.storage.reset();  // closes the database
  // Everything acknowledged is there after a restart.
  {
    auto storage = Storage::Open(so);
    ASSERT_TRUE(storage.ok()) << storage.status();
    o.storage = std::shared_ptr<Storage>(*std::move(storage));
  }
  engine = Engine::Open(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  info = (*engine)->GetSession(kTenant, s->session_id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_tokens, at + 16);
  engine->reset();
  o.storage.reset();
}

}  // namespace
}  // namespace wavekv
