// Storage: the engine's persistent tier on RocksDB. It owns the database
// (one column family, large K/V values in blob files), writes every value
// as a checksummed record (record.h) under the keys of session_records.h,
// and reads sessions back for recovery and for restoring spilled sessions.
//
// Two ways to write:
//  - StorageBatch + Write(batch, sync): the engine's append path. One
//    batch is applied atomically (all or nothing, also across a crash).
//    sync = true returns after the WAL is fsynced; concurrent sync writers
//    are grouped by RocksDB and share one fsync (group commit).
//  - WriteSession / LoadSession / DeleteSession: a whole session at once
//    (spill to disk, shutdown of DURABILITY_NONE sessions, restore).
//
// Errors (the same for every call): RocksDB's NoSpace is ResourceExhausted
// "storage: no space left on device (...)"; Corruption (a RocksDB block or
// blob checksum) and any record that fails its check are DataLoss naming
// the session, layer and chunk; other I/O errors are Unavailable with
// RocksDB's message. A write that would leave less than
// StorageOptions::min_free_bytes free on the volume is refused up front
// with the same ResourceExhausted, before RocksDB sees it (batches of
// deletes only are always let through). After a failed
// write, every later write (and WAL
// sync) first tries to resume the database (RocksDB Resume(); for a full
// disk RocksDB also recovers by itself once space is back) and fails with
// the first error's code until that succeeds, so writes work again once
// space is freed. A failed write applies nothing.
//
// Thread-safe.
//
// Example (spill and restore; the memory helper's use):
//   ASSIGN_OR_RETURN(std::unique_ptr<Storage> storage,
//                    Storage::Open(StorageOptions{.path = dir + "/db"}));
//   RETURN_IF_ERROR(storage->WriteSession(snapshot, /*sync=*/false));
//   ... free the session's memory ...
//   ASSIGN_OR_RETURN(SessionSnapshot back, storage->LoadSession(meta));
#ifndef WAVEKV_KVSTORE_STORAGE_STORAGE_H_
#define WAVEKV_KVSTORE_STORAGE_STORAGE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "index/wave_index.h"
#include "kvstore/storage/session_records.h"
#include "kvstore/types.h"

namespace rocksdb {
class DB;
class Statistics;
class WriteBatch;
}  // namespace rocksdb

namespace wavekv {

struct StorageOptions {
  // Directory of the RocksDB database (created if missing). Required.
  std::string path;
  // Block cache for SST blocks (metadata, small values), bytes. >= 0.
  uint64_t block_cache_bytes = 32ull << 20;
  // Large values (K/V chunks, indexes) go to blob files instead of the
  // LSM tree: compaction then moves only small keys. See bench/RESULTS.md
  // ("Storage") for the measurement behind the defaults.
  bool blob_files = true;
  // Values of at least this many bytes go to blob files. >= 0.
  uint64_t min_blob_bytes = 4096;
  // LZ4 for blobs and SST blocks. K/V of fp16/bf16 activations barely
  // compresses (measured), so off by default.
  bool compress = false;
  // Memtable size, bytes. >= 64 KiB.
  uint64_t write_buffer_bytes = 64ull << 20;
  // K/V chunk records hold at most this many bytes of K+V (an append or a
  // spilled layer is cut into such records). 4 KiB..256 MiB.
  uint64_t max_chunk_bytes = 4ull << 20;
  // Free space kept on the database's volume: a write that would leave less
  // is refused (ResourceExhausted, nothing written), so RocksDB's own
  // writes (WAL, memtable flushes) do not run out of space. Its recovery
  // from a full disk is fragile: librocksdb 7.8 (Debian) can abort on an
  // assertion when a write races a failed WAL write. 0 = one memtable's
  // flush (write_buffer_bytes) + 1 MiB; the WAL's space is preallocated.
  uint64_t min_free_bytes = 0;

  // InvalidArgument naming the field ("storage.max_chunk_bytes: ...").
  absl::Status Validate() const;
};

// The K/V and index of one layer of a session, in memory.
struct LayerSnapshot {
  uint64_t num_tokens = 0;
  // [num_tokens][num_kv_heads][head_dim] dtype bytes (LayerAppend layout).
  std::string keys;
  std::string values;
  // One per kv head, covering the same tokens, or empty when the layer has
  // no index (yet).
  std::vector<std::shared_ptr<WaveIndex>> indexes;
};

// A whole session: what WriteSession stores and LoadSession returns.
struct SessionSnapshot {
  SessionMeta meta;
  std::vector<LayerSnapshot> layers;  // one per model layer
};

// A batch of record writes, applied atomically by Storage::Write. Not
// thread-safe.
class StorageBatch {
 public:
  explicit StorageBatch(uint64_t max_chunk_bytes = 4ull << 20);
  ~StorageBatch();
  StorageBatch(StorageBatch&&) noexcept;
  StorageBatch& operator=(StorageBatch&&) noexcept;

  void PutSessionMeta(const SessionMeta& meta);
  // Tokens [first_token, first_token + num_tokens) of `layer`, in the
  // LayerAppend layout, cut into chunk records of at most max_chunk_bytes.
  // REQUIRES: keys.size() == values.size() == num_tokens * token_bytes.
  void PutTokens(absl::string_view session_id, uint32_t layer,
                 uint64_t first_token, uint64_t num_tokens,
                 uint64_t token_bytes, absl::string_view keys,
                 absl::string_view values);
  // The layer's indexes (one per kv head), replacing the stored ones.
  void PutLayerIndex(absl::string_view session_id, uint32_t layer,
                     const std::vector<const WaveIndex*>& heads);
  // Every record of the session (meta, chunks, indexes).
  void DeleteSession(absl::string_view session_id);
  // The chunk records of `layer` whose first token is in [begin, end).
  void DeleteTokenRange(absl::string_view session_id, uint32_t layer,
                        uint64_t begin, uint64_t end);

  bool empty() const;
  // Bytes of the batch (for metrics and tests).
  uint64_t bytes() const;

 private:
  friend class Storage;
  uint64_t max_chunk_bytes_;
  std::unique_ptr<rocksdb::WriteBatch> batch_;
};

class Storage {
 public:
  // Opens (creating) the database. FailedPrecondition naming the path if
  // another process holds it; InvalidArgument on bad options; the RocksDB
  // error (as above) otherwise.
  static absl::StatusOr<std::unique_ptr<Storage>> Open(
      const StorageOptions& options);

  ~Storage();  // flushes nothing: the WAL already has every write
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  const StorageOptions& options() const { return options_; }
  StorageBatch NewBatch() const {
    return StorageBatch(options_.max_chunk_bytes);
  }

  // Applies `batch` atomically. sync: return after the WAL is fsynced
  // (concurrent sync writers share an fsync). Errors as above; on error
  // nothing of the batch is applied.
  absl::Status Write(StorageBatch& batch, bool sync);

  // Fsyncs the WAL: every write that returned before this call is durable
  // when it returns OK (the ASYNC flusher's step).
  absl::Status SyncWal();

  // Flushes memtables to SST/blob files and waits (for tests that look at
  // files, and for shutdown).
  absl::Status FlushMemtables();

  // --- Whole sessions ---

  // Replaces every stored record of the session with `snapshot`, in one
  // atomic write.
  absl::Status WriteSession(const SessionSnapshot& snapshot, bool sync);

  // Reads the session described by `meta` back: per layer, the longest
  // run of chunks contiguous from token 0, and the stored index if it
  // covers only tokens within that run (otherwise no index: the caller
  // rebuilds). DataLoss "session S: layer L chunk C: checksum mismatch ..."
  // if any record of the session fails its check (nothing is returned);
  // NotFound if nothing is stored for it.
  absl::StatusOr<SessionSnapshot> LoadSession(const SessionMeta& meta);

  // Deletes every record of the session (a no-op if there are none).
  absl::Status DeleteSession(absl::string_view session_id, bool sync);

  // Every stored session meta, in id order. A meta record that fails its
  // check comes back as an error entry (its id from the key), so the
  // caller can report it and go on.
  struct MetaEntry {
    std::string session_id;
    absl::StatusOr<SessionMeta> meta;
  };
  absl::StatusOr<std::vector<MetaEntry>> ListSessionMetas();

  // --- Small named values (the server record) ---

  // nullopt if absent; DataLoss if the record fails its check.
  absl::StatusOr<std::optional<std::string>> GetNamed(absl::string_view name);
  absl::Status PutNamed(absl::string_view name, absl::string_view value,
                        bool sync);

  // --- Counters ---

  // WAL fsyncs since Open (RocksDB's WAL_FILE_SYNCED ticker).
  uint64_t wal_syncs() const;
  // Writes that failed (any reason) and those that failed for disk space.
  uint64_t write_errors() const { return write_errors_.load(); }
  uint64_t no_space_errors() const { return no_space_errors_.load(); }
  // Write and SyncWal calls (of non-empty batches): the denominator of
  // write_errors. Bytes of the batches written successfully.
  uint64_t write_ops() const { return write_ops_.load(); }
  uint64_t bytes_written() const { return bytes_written_.load(); }

  // The database, for tests that rewrite raw values (corruption tests).
  rocksdb::DB* db_for_test() { return db_.get(); }

 private:
  Storage(StorageOptions options, std::unique_ptr<rocksdb::DB> db,
          std::shared_ptr<rocksdb::Statistics> statistics);

  // Converts a failed write and records it for the next write's Resume().
  absl::Status WriteFailed(const absl::Status& status);
  // Resumes the database after a failed write; OK if nothing failed.
  absl::Status ResumeIfNeeded();
  // ResourceExhausted if writing `bytes` would leave less than the reserve
  // free (OK if the volume cannot be queried).
  absl::Status CheckFreeSpace(uint64_t bytes);

  const StorageOptions options_;
  std::shared_ptr<rocksdb::Statistics> statistics_;
  std::unique_ptr<rocksdb::DB> db_;
  absl::Mutex resume_mu_;
  bool needs_resume_ ABSL_GUARDED_BY(resume_mu_) = false;
  absl::Status last_error_ ABSL_GUARDED_BY(resume_mu_);
  std::atomic<uint64_t> write_errors_{0};
  std::atomic<uint64_t> no_space_errors_{0};
  std::atomic<uint64_t> write_ops_{0};
  std::atomic<uint64_t> bytes_written_{0};
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_STORAGE_STORAGE_H_
