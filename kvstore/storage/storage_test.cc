#include "kvstore/storage/storage.h"

#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "index/wave_index.h"
#include "kvstore/storage/record.h"
#include "rocksdb/db.h"

namespace wavekv {
namespace {

std::string TestDir(const std::string& name) {
  const std::string dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/storage_test_", name);
  std::filesystem::remove_all(dir);
  return dir;
}

SessionMeta Meta(const std::string& id) {
  SessionMeta m;
  m.session_id = id;
  m.tenant = "tenant-a";
  m.options.shape = {2, 4, 2, 16, DType::kFp16};
  m.options.durability = Durability::kSync;
  m.options.label = "label";
  m.max_tokens = 1000;
  m.created_unix_ms = 1700000000000;
  return m;
}

std::string Bytes(uint64_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// A snapshot of `meta`'s shape with `tokens` per layer; layer 0 indexed.
SessionSnapshot Snapshot(const SessionMeta& meta, uint64_t tokens) {
  SessionSnapshot snap;
  snap.meta = meta;
  const uint64_t tb = meta.options.shape.TokenLayerBytes();
  for (uint32_t l = 0; l < meta.options.shape.num_layers; ++l) {
    LayerSnapshot layer;
    layer.num_tokens = tokens;
    layer.keys = Bytes(tokens * tb, 1 + l);
    layer.values = Bytes(tokens * tb, 100 + l);
    snap.layers.push_back(std::move(layer));
  }
  // A real index over tokens [4, 68) of layer 0, from fp32 rows.
  const size_t d = meta.options.shape.head_dim;
  std::vector<float> rows(64 * d);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = 0.01f * ((i * 7) % 97);
  WaveIndexParams params;
  params.segment_tokens = 64;
  for (uint32_t h = 0; h < meta.options.shape.num_kv_heads; ++h) {
    auto index = std::make_shared<WaveIndex>(d);
    const KvRows kv{DType::kFp32,
                    d,
                    64,
                    reinterpret_cast<const uint8_t*>(rows.data()),
                    reinterpret_cast<const uint8_t*>(rows.data()),
                    d * sizeof(float)};
    EXPECT_TRUE(index->AddBlock(params, 4, kv).ok());
    snap.layers[0].indexes.push_back(std::move(index));
  }
  return snap;
}

TEST(StorageTest, WriteSessionLoadSessionRoundTrip) {
  StorageOptions o;
  o.path = TestDir("roundtrip");
  o.max_chunk_bytes = 4096;  // several chunks per layer
  const SessionMeta meta = Meta(std::string(32, 'a'));
  const SessionSnapshot snap = Snapshot(meta, 100);
  {
    auto storage = Storage::Open(o);
    ASSERT_TRUE(storage.ok()) << storage.status();
    ASSERT_TRUE((*storage)->WriteSession(snap, /*sync=*/true).ok());
  }
  auto storage = Storage::Open(o);  // reopened: from the WAL
  ASSERT_TRUE(storage.ok()) << storage.status();
  auto metas = (*storage)->ListSessionMetas();
  ASSERT_TRUE(metas.ok()) << metas.status();
  ASSERT_EQ(metas->size(), 1u);
  ASSERT_TRUE((*metas)[0].meta.ok());
  const SessionMeta& m = *(*metas)[0].meta;
  EXPECT_EQ(m.session_id, meta.session_id);
  EXPECT_EQ(m.tenant, "tenant-a");
  EXPECT_EQ(m.options.shape.head_dim, 16u);
  EXPECT_EQ(m.options.durability, Durability::kSync);
  EXPECT_EQ(m.max_tokens, 1000u);
  EXPECT_EQ(m.created_unix_ms, 1700000000000);
  auto back = (*storage)->LoadSession(m);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->layers.size(), 2u);
  for (uint32_t l = 0; l < 2; ++l) {
    EXPECT_EQ(back->layers[l].num_tokens, 100u);
    EXPECT_EQ(back->layers[l].keys, snap.layers[l].keys);
    EXPECT_EQ(back->layers[l].values, snap.layers[l].values);
  }
  ASSERT_EQ(back->layers[0].indexes.size(), 2u);
  EXPECT_EQ(back->layers[0].indexes[1]->slot_tokens(),
            snap.layers[0].indexes[1]->slot_tokens());
  EXPECT_EQ(back->layers[0].indexes[1]->value_sums(),
            snap.layers[0].indexes[1]->value_sums());
  EXPECT_TRUE(back->layers[1].indexes.empty());

  ASSERT_TRUE((*storage)->DeleteSession(meta.session_id, true).ok());
  metas = (*storage)->ListSessionMetas();
  ASSERT_TRUE(metas.ok());
  EXPECT_TRUE(metas->empty());
}

TEST(StorageTest, AppendedChunksLoadAsOneRunAndAGapEndsTheLayer) {
  StorageOptions o;
  o.path = TestDir("chunks");
  auto storage = Storage::Open(o);
  ASSERT_TRUE(storage.ok()) << storage.status();
  const SessionMeta meta = Meta(std::string(32, 'b'));
  const uint64_t tb = meta.options.shape.TokenLayerBytes();
  const std::string k = Bytes(30 * tb, 7), v = Bytes(30 * tb, 8);
  StorageBatch batch = (*storage)->NewBatch();
  batch.PutSessionMeta(meta);
  batch.PutTokens(meta.session_id, 0, 0, 10, tb,
                  absl::string_view(k).substr(0, 10 * tb),
                  absl::string_view(v).substr(0, 10 * tb));
  batch.PutTokens(meta.session_id, 0, 10, 20, tb,
                  absl::string_view(k).substr(10 * tb),
                  absl::string_view(v).substr(10 * tb));
  // Layer 1: tokens 0..5, then a gap, then 10..15 (unreachable).
  batch.PutTokens(meta.session_id, 1, 0, 5, tb,
                  absl::string_view(k).substr(0, 5 * tb),
                  absl::string_view(v).substr(0, 5 * tb));
  batch.PutTokens(meta.session_id, 1, 10, 5, tb,
                  absl::string_view(k).substr(0, 5 * tb),
                  absl::string_view(v).substr(0, 5 * tb));
  ASSERT_TRUE((*storage)->Write(batch, false).ok());
  auto back = (*storage)->LoadSession(meta);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->layers[0].num_tokens, 30u);
  EXPECT_EQ(back->layers[0].keys, k);
  EXPECT_EQ(back->layers[0].values, v);
  EXPECT_EQ(back->layers[1].num_tokens, 5u);
}

TEST(StorageTest, ABadChecksumIsDataLossNamingSessionLayerAndChunk) {
  StorageOptions o;
  o.path = TestDir("corrupt");
  auto storage = Storage::Open(o);
  ASSERT_TRUE(storage.ok()) << storage.status();
  const SessionMeta meta = Meta(std::string(32, 'c'));
  ASSERT_TRUE((*storage)->WriteSession(Snapshot(meta, 50), false).ok());
  rocksdb::DB* db = (*storage)->db_for_test();
  const std::string key = KvChunkKey(meta.session_id, 1, 0);
  std::string value;
  ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), key, &value).ok());
  value[kRecordHeaderBytes + 40] ^= 0x10;
  ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, value).ok());
  auto back = (*storage)->LoadSession(meta);
  ASSERT_FALSE(back.ok());
  EXPECT_EQ(back.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(
      back.status().message().find(absl::StrCat("session ", meta.session_id,
                                                ": layer 1 chunk 0: checksum "
                                                "mismatch")),
      std::string::npos)
      << back.status();
  // A damaged meta comes back as an error entry, the listing goes on.
  ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), SessionMetaKey(meta.session_id),
                      "garbage")
                  .ok());
  ASSERT_TRUE((*storage)
                  ->WriteSession(Snapshot(Meta(std::string(32, 'd')), 5), false)
                  .ok());
  auto metas = (*storage)->ListSessionMetas();
  ASSERT_TRUE(metas.ok());
  ASSERT_EQ(metas->size(), 2u);
  EXPECT_EQ((*metas)[0].meta.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE((*metas)[1].meta.ok());
}

TEST(StorageTest, NamedValuesRoundTrip) {
  StorageOptions o;
  o.path = TestDir("named");
  auto storage = Storage::Open(o);
  ASSERT_TRUE(storage.ok()) << storage.status();
  auto missing = (*storage)->GetNamed("server");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE((*storage)->PutNamed("server", "record", true).ok());
  auto got = (*storage)->GetNamed("server");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->value_or(""), "record");
  // A second Storage on the same directory is refused while this is open.
  auto second = Storage::Open(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition)
      << second.status();
}

TEST(StorageTest, ConcurrentSyncWritesShareFsyncs) {
  StorageOptions o;
  o.path = TestDir("group_commit");
  auto storage = Storage::Open(o);
  ASSERT_TRUE(storage.ok()) << storage.status();
  constexpr int kThreads = 16;
  constexpr int kWritesPerThread = 8;
  const uint64_t before = (*storage)->wal_syncs();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const SessionMeta meta = Meta(absl::StrCat(t, std::string(31, 'e')));
      const std::string kv = Bytes(8 * meta.options.shape.TokenLayerBytes(), t);
      for (int i = 0; i < kWritesPerThread; ++i) {
        StorageBatch batch = (*storage)->NewBatch();
        batch.PutTokens(meta.session_id, 0, 8 * i, 8,
                        meta.options.shape.TokenLayerBytes(), kv, kv);
        EXPECT_TRUE((*storage)->Write(batch, /*sync=*/true).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  const uint64_t syncs = (*storage)->wal_syncs() - before;
  EXPECT_GE(syncs, 1u);
  EXPECT_LT(syncs, uint64_t{kThreads * kWritesPerThread})
      << "every sync write paid its own fsync";
}

}  // namespace
}  // namespace wavekv
