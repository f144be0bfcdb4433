#include "kvstore/storage/storage.h"

#include <sys/statvfs.h>

#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kvstore/storage/record.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "rocksdb/statistics.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace wavekv {
namespace {

// The canonical status for a RocksDB error; `what` says which operation.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": RocksDB: ", s.ToString());
  if (s.IsNoSpace() ||
      s.ToString().find("No space left") != std::string::npos) {
    return absl::ResourceExhaustedError(
        absl::StrCat("storage: no space left on device (", message, ")"));
  }
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": the database is in use by another process (RocksDB: ",
        s.ToString(), ")"));
  }
  if (s.IsIOError() || s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

// Parses "<layer:8>/<first:16>" after the session prefix of a chunk key.
bool ParseChunkSuffix(absl::string_view suffix, uint32_t& layer,
                      uint64_t& first) {
  if (suffix.size() != 8 + 1 + 16 || suffix[8] != '/') return false;
  return absl::SimpleHexAtoi(suffix.substr(0, 8), &layer) &&
         absl::SimpleHexAtoi(suffix.substr(9), &first);
}

// RocksDB's own log, to stderr at WARN and above. Not RocksDB's LOG file:
// that lives on the database's disk, and when the disk is full a failed
// log write followed by another aborts the process in assertion-enabled
// RocksDB builds (Debian's), turning ENOSPC into a crash.
class StderrLogger : public rocksdb::Logger {
 public:
  StderrLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    std::fprintf(stderr, "rocksdb: %s\n", line);
  }
};

absl::string_view ToView(const rocksdb::Slice& s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace

absl::Status StorageOptions::Validate() const {
  if (path.empty()) {
    return absl::InvalidArgumentError("storage.path: must not be empty");
  }
  if (write_buffer_bytes < (64u << 10)) {
    return absl::InvalidArgumentError(
        absl::StrCat("storage.write_buffer_bytes: ", write_buffer_bytes,
                     " is less than 64 KiB"));
  }
  if (max_chunk_bytes < (4u << 10) || max_chunk_bytes > (256u << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("storage.max_chunk_bytes: ", max_chunk_bytes,
                     " is outside 4 KiB..256 MiB"));
  }
  return absl::OkStatus();
}

// --- StorageBatch ---

StorageBatch::StorageBatch(uint64_t max_chunk_bytes)
    : max_chunk_bytes_(max_chunk_bytes),
      batch_(std::make_unique<rocksdb::WriteBatch>()) {}
StorageBatch::~StorageBatch() = default;
StorageBatch::StorageBatch(StorageBatch&&) noexcept = default;
StorageBatch& StorageBatch::operator=(StorageBatch&&) noexcept = default;

void StorageBatch::PutSessionMeta(const SessionMeta& meta) {
  batch_
      ->Put(SessionMetaKey(meta.session_id),
            EncodeRecord(RecordKind::kSessionMeta, EncodeSessionMeta(meta)))
      .PermitUncheckedError();
}

void StorageBatch::PutTokens(absl::string_view session_id, uint32_t layer,
                             uint64_t first_token, uint64_t num_tokens,
                             uint64_t token_bytes, absl::string_view keys,
                             absl::string_view values) {
  const uint64_t per_chunk =
      std::max<uint64_t>(1, max_chunk_bytes_ / (2 * token_bytes));
  for (uint64_t done = 0; done < num_tokens;) {
    const uint64_t n = std::min<uint64_t>(
        {per_chunk, num_tokens - done, uint64_t{UINT32_MAX}});
    KvChunkView chunk;
    chunk.layer = layer;
    chunk.first_token = first_token + done;
    chunk.num_tokens = static_cast<uint32_t>(n);
    chunk.keys = keys.substr(done * token_bytes, n * token_bytes);
    chunk.values = values.substr(done * token_bytes, n * token_bytes);
    batch_
        ->Put(KvChunkKey(session_id, layer, chunk.first_token),
              EncodeRecord(RecordKind::kKvChunk, EncodeKvChunk(chunk)))
        .PermitUncheckedError();
    done += n;
  }
}

void StorageBatch::PutLayerIndex(absl::string_view session_id, uint32_t layer,
                                 const std::vector<const WaveIndex*>& heads) {
  batch_
      ->Put(
          LayerIndexKey(session_id, layer),
          EncodeRecord(RecordKind::kLayerIndex, EncodeLayerIndex(layer, heads)))
      .PermitUncheckedError();
}

void StorageBatch::DeleteSession(absl::string_view session_id) {
  batch_->Delete(SessionMetaKey(session_id)).PermitUncheckedError();
  for (char kind : {'k', 'i'}) {
    batch_
        ->DeleteRange(SessionRangeBegin(kind, session_id),
                      SessionRangeEnd(kind, session_id))
        .PermitUncheckedError();
  }
}

void StorageBatch::DeleteTokenRange(absl::string_view session_id,
                                    uint32_t layer, uint64_t begin,
                                    uint64_t end) {
  batch_
      ->DeleteRange(KvChunkKey(session_id, layer, begin),
                    KvChunkKey(session_id, layer, end))
      .PermitUncheckedError();
}

bool StorageBatch::empty() const { return batch_->Count() == 0; }
uint64_t StorageBatch::bytes() const { return batch_->GetDataSize(); }

// --- Storage ---

Storage::Storage(StorageOptions options, std::unique_ptr<rocksdb::DB> db,
                 std::shared_ptr<rocksdb::Statistics> statistics)
    : options_(std::move(options)),
      statistics_(std::move(statistics)),
      db_(std::move(db)) {}

Storage::~Storage() {
  if (db_ != nullptr) db_->Close().PermitUncheckedError();
}

absl::StatusOr<std::unique_ptr<Storage>> Storage::Open(
    const StorageOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat(
        "storage.path: cannot create '", options.path, "': ", ec.message()));
  }
  rocksdb::Options o;
  o.create_if_missing = true;
  o.max_open_files = 256;
  o.info_log = std::make_shared<StderrLogger>();
  o.write_buffer_size = options.write_buffer_bytes;
  o.max_background_jobs = 2;
  o.statistics = rocksdb::CreateDBStatistics();
  o.statistics->set_stats_level(rocksdb::StatsLevel::kExceptTimers);
  const rocksdb::CompressionType compression =
      options.compress ? rocksdb::kLZ4Compression : rocksdb::kNoCompression;
  o.compression = compression;
  o.enable_blob_files = options.blob_files;
  o.min_blob_size = options.min_blob_bytes;
  o.blob_file_size = 256ull << 20;
  o.blob_compression_type = compression;
  // Deleted sessions' blobs are reclaimed as compactions rewrite the
  // oldest blob files.
  o.enable_blob_garbage_collection = true;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(
      std::max<uint64_t>(options.block_cache_bytes, 1ull << 20));
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));

  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, options.path, &raw);
  if (!s.ok()) {
    return FromRocks(s, absl::StrCat("storage: open '", options.path, "'"));
  }
  return std::unique_ptr<Storage>(
      new Storage(options, std::unique_ptr<rocksdb::DB>(raw), o.statistics));
}

absl::Status Storage::WriteFailed(const absl::Status& status) {
  write_errors_.fetch_add(1, std::memory_order_relaxed);
  if (absl::IsResourceExhausted(status)) {
    no_space_errors_.fetch_add(1, std::memory_order_relaxed);
  }
  absl::MutexLock lock(&resume_mu_);
  needs_resume_ = true;
  last_error_ = status;
  return status;
}

absl::Status Storage::ResumeIfNeeded() {
  absl::MutexLock lock(&resume_mu_);
  if (!needs_resume_) return absl::OkStatus();
  // RocksDB stops writing after a failed write. For a full disk it
  // recovers by itself once space is back (Resume() answers Busy while
  // that runs); other errors need Resume(). Either way nothing touches the
  // failed WAL writer until RocksDB says it is healthy again.
  const rocksdb::Status s = db_->Resume();
  if (!s.ok()) {
    write_errors_.fetch_add(1, std::memory_order_relaxed);
    if (absl::IsResourceExhausted(last_error_)) {
      no_space_errors_.fetch_add(1, std::memory_order_relaxed);
    }
    return absl::Status(
        last_error_.code(),
        absl::StrCat(last_error_.message(),
                     "; writes are refused until the database recovers "
                     "(RocksDB: ",
                     s.ToString(), ")"));
  }
  needs_resume_ = false;
  last_error_ = absl::OkStatus();
  return absl::OkStatus();
}

absl::Status Storage::CheckFreeSpace(uint64_t bytes) {
  const uint64_t reserve = options_.min_free_bytes > 0
                               ? options_.min_free_bytes
                               : options_.write_buffer_bytes + (1u << 20);
  struct statvfs st;
  if (::statvfs(options_.path.c_str(), &st) != 0) return absl::OkStatus();
  const uint64_t free_bytes = uint64_t{st.f_bavail} * st.f_frsize;
  if (free_bytes >= reserve + bytes) return absl::OkStatus();
  write_errors_.fetch_add(1, std::memory_order_relaxed);
  no_space_errors_.fetch_add(1, std::memory_order_relaxed);
  return absl::ResourceExhaustedError(absl::StrCat(
      "storage: no space left on device: ", free_bytes, " bytes free on '",
      options_.path, "', a write of ", bytes, " bytes must leave ", reserve,
      " (storage min_free_bytes: room for RocksDB's WAL and flushes)"));
}

absl::Status Storage::Write(StorageBatch& batch, bool sync) {
  if (batch.empty()) return absl::OkStatus();
  write_ops_.fetch_add(1, std::memory_order_relaxed);
  // Deletes only free space: always let them through (e.g. CloseSession on
  // a full disk).
  if (batch.batch_->HasPut()) {
    if (absl::Status s = CheckFreeSpace(batch.bytes()); !s.ok()) return s;
  }
  if (absl::Status s = ResumeIfNeeded(); !s.ok()) return s;
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  const rocksdb::Status s = db_->Write(wo, batch.batch_.get());
  if (!s.ok()) return WriteFailed(FromRocks(s, "storage: write"));
  bytes_written_.fetch_add(batch.bytes(), std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status Storage::SyncWal() {
  write_ops_.fetch_add(1, std::memory_order_relaxed);
  if (absl::Status s = ResumeIfNeeded(); !s.ok()) return s;
  const rocksdb::Status s = db_->SyncWAL();
  if (!s.ok()) return WriteFailed(FromRocks(s, "storage: sync WAL"));
  return absl::OkStatus();
}

absl::Status Storage::FlushMemtables() {
  if (absl::Status s = ResumeIfNeeded(); !s.ok()) return s;
  rocksdb::FlushOptions fo;
  fo.wait = true;
  const rocksdb::Status s = db_->Flush(fo);
  if (!s.ok()) return FromRocks(s, "storage: flush");
  return absl::OkStatus();
}

uint64_t Storage::wal_syncs() const {
  return statistics_->getTickerCount(rocksdb::WAL_FILE_SYNCED);
}

absl::Status Storage::WriteSession(const SessionSnapshot& snapshot, bool sync) {
  const SessionMeta& meta = snapshot.meta;
  const uint64_t token_bytes = meta.options.shape.TokenLayerBytes();
  StorageBatch batch = NewBatch();
  batch.DeleteSession(meta.session_id);
  batch.PutSessionMeta(meta);
  for (uint32_t l = 0; l < snapshot.layers.size(); ++l) {
    const LayerSnapshot& layer = snapshot.layers[l];
    if (layer.num_tokens > 0) {
      batch.PutTokens(meta.session_id, l, 0, layer.num_tokens, token_bytes,
                      layer.keys, layer.values);
    }
    if (!layer.indexes.empty()) {
      std::vector<const WaveIndex*> heads;
      for (const auto& index : layer.indexes) heads.push_back(index.get());
      batch.PutLayerIndex(meta.session_id, l, heads);
    }
  }
  return Write(batch, sync);
}

absl::Status Storage::DeleteSession(absl::string_view session_id, bool sync) {
  StorageBatch batch = NewBatch();
  batch.DeleteSession(session_id);
  return Write(batch, sync);
}

absl::StatusOr<SessionSnapshot> Storage::LoadSession(const SessionMeta& meta) {
  const std::string& id = meta.session_id;
  const ModelShape& shape = meta.options.shape;
  const uint64_t token_bytes = shape.TokenLayerBytes();
  SessionSnapshot snap;
  snap.meta = meta;
  snap.layers.resize(shape.num_layers);
  const std::string session_where = absl::StrCat("session ", id);

  // K/V chunks, in (layer, first_token) order.
  {
    const std::string begin = SessionRangeBegin('k', id);
    const std::string end = SessionRangeEnd('k', id);
    rocksdb::Slice upper(end);
    rocksdb::ReadOptions ro;
    ro.verify_checksums = true;
    ro.iterate_upper_bound = &upper;
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    std::vector<bool> stopped(shape.num_layers, false);
    uint32_t last_layer = 0;
    for (it->Seek(begin); it->Valid(); it->Next()) {
      const absl::string_view key = ToView(it->key());
      uint32_t layer = 0;
      uint64_t first = 0;
      if (!ParseChunkSuffix(key.substr(begin.size()), layer, first) ||
          layer >= shape.num_layers) {
        return absl::DataLossError(
            absl::StrCat(session_where, ": malformed chunk key '", key, "'"));
      }
      last_layer = layer;
      const std::string where =
          absl::StrCat(session_where, ": layer ", layer, " chunk ", first);
      absl::StatusOr<Record> record =
          DecodeRecordOf(ToView(it->value()), RecordKind::kKvChunk, where);
      if (!record.ok()) return record.status();
      absl::StatusOr<KvChunkView> chunk =
          DecodeKvChunk(record->payload, token_bytes, where);
      if (!chunk.ok()) return chunk.status();
      if (chunk->layer != layer || chunk->first_token != first) {
        return absl::DataLossError(absl::StrCat(where, ": record is of layer ",
                                                chunk->layer, " chunk ",
                                                chunk->first_token));
      }
      LayerSnapshot& out = snap.layers[layer];
      if (stopped[layer]) continue;
      if (first > out.num_tokens) {
        // A gap: later chunks are unreachable (never acknowledged as a
        // contiguous run); the layer ends here.
        stopped[layer] = true;
        continue;
      }
      if (first < out.num_tokens) {
        return absl::DataLossError(
            absl::StrCat(where, ": overlaps the previous chunk (layer has ",
                         out.num_tokens, " tokens)"));
      }
      out.keys.append(chunk->keys.data(), chunk->keys.size());
      out.values.append(chunk->values.data(), chunk->values.size());
      out.num_tokens += chunk->num_tokens;
    }
    if (!it->status().ok()) {
      return absl::DataLossError(
          absl::StrCat(session_where, ": layer ", last_layer, " chunk ",
                       snap.layers[last_layer].num_tokens, ": ",
                       FromRocks(it->status(), "read").message()));
    }
  }

  // Indexes, one record per layer.
  {
    const std::string begin = SessionRangeBegin('i', id);
    const std::string end = SessionRangeEnd('i', id);
    rocksdb::Slice upper(end);
    rocksdb::ReadOptions ro;
    ro.verify_checksums = true;
    ro.iterate_upper_bound = &upper;
    ro.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    for (it->Seek(begin); it->Valid(); it->Next()) {
      const absl::string_view key = ToView(it->key());
      uint32_t layer = 0;
      if (!absl::SimpleHexAtoi(key.substr(begin.size()), &layer) ||
          layer >= shape.num_layers) {
        return absl::DataLossError(
            absl::StrCat(session_where, ": malformed index key '", key, "'"));
      }
      const std::string where =
          absl::StrCat(session_where, ": layer ", layer, " index");
      absl::StatusOr<Record> record =
          DecodeRecordOf(ToView(it->value()), RecordKind::kLayerIndex, where);
      if (!record.ok()) return record.status();
      absl::StatusOr<std::vector<std::shared_ptr<WaveIndex>>> indexes =
          DecodeLayerIndex(record->payload, layer, shape.num_kv_heads,
                           shape.head_dim, where);
      if (!indexes.ok()) return indexes.status();
      // An index over tokens whose K/V did not survive is dropped (the
      // engine rebuilds it).
      if (!indexes->empty() &&
          (*indexes)[0]->end_token() <= snap.layers[layer].num_tokens) {
        snap.layers[layer].indexes = *std::move(indexes);
      }
    }
    if (!it->status().ok()) {
      return absl::DataLossError(
          absl::StrCat(session_where,
                       ": index: ", FromRocks(it->status(), "read").message()));
    }
  }
  return snap;
}

absl::StatusOr<std::vector<Storage::MetaEntry>> Storage::ListSessionMetas() {
  std::vector<MetaEntry> out;
  const std::string begin = "m/";
  const std::string end = "m0";
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->Seek(begin); it->Valid(); it->Next()) {
    MetaEntry entry;
    entry.session_id = std::string(ToView(it->key()).substr(begin.size()));
    const std::string where = absl::StrCat("session ", entry.session_id);
    absl::StatusOr<Record> record =
        DecodeRecordOf(ToView(it->value()), RecordKind::kSessionMeta,
                       absl::StrCat(where, ": meta"));
    if (!record.ok()) {
      entry.meta = record.status();
    } else {
      entry.meta =
          DecodeSessionMeta(record->payload, absl::StrCat(where, ": meta"));
      if (entry.meta.ok() && entry.meta->session_id != entry.session_id) {
        entry.meta = absl::DataLossError(absl::StrCat(
            where, ": meta names session ", entry.meta->session_id));
      }
    }
    out.push_back(std::move(entry));
  }
  if (!it->status().ok()) {
    return FromRocks(it->status(), "storage: listing sessions");
  }
  return out;
}

absl::StatusOr<std::optional<std::string>> Storage::GetNamed(
    absl::string_view name) {
  std::string value;
  const rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), NamedValueKey(name), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, absl::StrCat("storage: read ", name));
  absl::StatusOr<Record> record = DecodeRecordOf(
      value, RecordKind::kNamedValue, absl::StrCat("storage: ", name));
  if (!record.ok()) return record.status();
  return std::optional<std::string>(std::string(record->payload));
}

absl::Status Storage::PutNamed(absl::string_view name, absl::string_view value,
                               bool sync) {
  StorageBatch batch = NewBatch();
  batch.batch_
      ->Put(NamedValueKey(name), EncodeRecord(RecordKind::kNamedValue, value))
      .PermitUncheckedError();
  return Write(batch, sync);
}

}  // namespace wavekv
