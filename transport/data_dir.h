// The server's data directory: created if missing, holding the server's
// RocksDB at <data_dir>/db, opened through the engine's persistent tier
// (kvstore/storage/) so that the engine's sessions and the server record
// share one database. RocksDB's LOCK file makes the directory exclusive: a
// second server on the same directory fails with FailedPrecondition naming
// it. The database holds a small server record (stable server id, start
// count), rewritten with a synced write at every start, so the directory
// is real and durable before any session data lands there.
//
// Not thread-safe for Open; record() is const after Open.
#ifndef WAVEKV_TRANSPORT_DATA_DIR_H_
#define WAVEKV_TRANSPORT_DATA_DIR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvstore/storage/storage.h"

namespace wavekv {

struct ServerRecord {
  std::string server_id;        // 32 hex digits, fixed at the first start
  uint64_t start_count = 0;     // 1 at the first start
  int64_t created_unix_ms = 0;  // time of the first start
};

class DataDir {
 public:
  // Creates `path` if needed, opens (creating) the database in it, and
  // records this start. FailedPrecondition if another process (or another
  // DataDir in this one) holds the directory; InvalidArgument if `path`
  // is empty or not a directory; DataLoss if the server record fails its
  // check; the storage error otherwise.
  static absl::StatusOr<std::unique_ptr<DataDir>> Open(const std::string& path);

  // Closes the database (once the engine lets go of storage()), releasing
  // the lock.
  ~DataDir() = default;

  DataDir(const DataDir&) = delete;
  DataDir& operator=(const DataDir&) = delete;

  const std::string& path() const { return path_; }
  const ServerRecord& record() const { return record_; }
  // The database, for the engine (EngineOptions::storage).
  const std::shared_ptr<Storage>& storage() const { return storage_; }

 private:
  DataDir(std::string path, std::shared_ptr<Storage> storage,
          ServerRecord record);

  const std::string path_;
  std::shared_ptr<Storage> storage_;
  const ServerRecord record_;
};

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_DATA_DIR_H_
