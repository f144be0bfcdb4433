// The server's data directory: created if missing, holding the server's
// RocksDB at <data_dir>/db. RocksDB's LOCK file makes the directory
// exclusive: a second server on the same directory fails with
// FailedPrecondition naming it. The database holds a small server record
// (stable server id, start count), rewritten with a synced write at every
// start, so the directory is real and durable before any session data
// lands there.
//
// Not thread-safe for Open; record() is const after Open.
#ifndef WAVEKV_TRANSPORT_DATA_DIR_H_
#define WAVEKV_TRANSPORT_DATA_DIR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "rocksdb/db.h"

namespace wavekv {

struct ServerRecord {
  std::string server_id;        // 32 hex digits, fixed at the first start
  uint64_t start_count = 0;     // 1 at the first start
  int64_t created_unix_ms = 0;  // time of the first start
};

class DataDir {
 public:
  // Creates `path` if needed, opens (creating) the RocksDB in it, and
  // records this start. FailedPrecondition if another process (or another
  // DataDir in this one) holds the directory; InvalidArgument if `path`
  // is empty or not a directory; the RocksDB error otherwise.
  static absl::StatusOr<std::unique_ptr<DataDir>> Open(const std::string& path);

  ~DataDir();  // closes the database, releasing the lock

  DataDir(const DataDir&) = delete;
  DataDir& operator=(const DataDir&) = delete;

  const std::string& path() const { return path_; }
  const ServerRecord& record() const { return record_; }
  // For persistence layers that share the server's database.
  rocksdb::DB* db() const { return db_.get(); }

 private:
  DataDir(std::string path, std::unique_ptr<rocksdb::DB> db,
          ServerRecord record);

  const std::string path_;
  std::unique_ptr<rocksdb::DB> db_;
  const ServerRecord record_;
};

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_DATA_DIR_H_
