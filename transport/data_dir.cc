#include "transport/data_dir.h"

#include <filesystem>
#include <system_error>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace wavekv {
namespace {

constexpr char kServerIdKey[] = "server/id";
constexpr char kStartCountKey[] = "server/start_count";
constexpr char kCreatedKey[] = "server/created_unix_ms";

std::string NewServerId() {
  absl::BitGen gen;
  return absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(gen),
                         absl::Uniform<uint64_t>(gen));
}

absl::Status FromRocks(const std::string& path, const rocksdb::Status& s) {
  const std::string what =
      absl::StrCat("data_dir: '", path, "': RocksDB: ", s.ToString());
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data_dir: '", path,
        "' is in use by another wavekv-server (RocksDB: ", s.ToString(), ")"));
  }
  if (s.IsCorruption()) return absl::DataLossError(what);
  return absl::UnavailableError(what);
}

// Reads an integer key; `missing` if absent.
absl::StatusOr<int64_t> GetInt(rocksdb::DB& db, const std::string& path,
                               const char* key, int64_t missing) {
  std::string value;
  const rocksdb::Status s = db.Get(rocksdb::ReadOptions(), key, &value);
  if (s.IsNotFound()) return missing;
  if (!s.ok()) return FromRocks(path, s);
  int64_t n = 0;
  if (!absl::SimpleAtoi(value, &n)) {
    return absl::DataLossError(absl::StrCat("data_dir: '", path, "': key ", key,
                                            " holds '", value,
                                            "', not a number"));
  }
  return n;
}

}  // namespace

DataDir::DataDir(std::string path, std::unique_ptr<rocksdb::DB> db,
                 ServerRecord record)
    : path_(std::move(path)), db_(std::move(db)), record_(std::move(record)) {}

DataDir::~DataDir() {
  if (db_ != nullptr) db_->Close().PermitUncheckedError();
}

absl::StatusOr<std::unique_ptr<DataDir>> DataDir::Open(
    const std::string& path) {
  if (path.empty()) {
    return absl::InvalidArgumentError("data_dir: must not be empty");
  }
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec || !std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("data_dir: cannot create directory '", path,
                     "': ", ec ? ec.message() : "not a directory"));
  }
  rocksdb::Options options;
  options.create_if_missing = true;
  options.max_open_files = 64;
  options.keep_log_file_num = 4;
  rocksdb::DB* raw = nullptr;
  const std::string db_path = path + "/db";
  rocksdb::Status s = rocksdb::DB::Open(options, db_path, &raw);
  if (!s.ok()) return FromRocks(path, s);
  std::unique_ptr<rocksdb::DB> db(raw);

  ServerRecord record;
  {
    std::string id;
    s = db->Get(rocksdb::ReadOptions(), kServerIdKey, &id);
    if (!s.ok() && !s.IsNotFound()) return FromRocks(path, s);
    record.server_id = s.IsNotFound() ? NewServerId() : id;
  }
  absl::StatusOr<int64_t> starts = GetInt(*db, path, kStartCountKey, 0);
  if (!starts.ok()) return starts.status();
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  absl::StatusOr<int64_t> created = GetInt(*db, path, kCreatedKey, now_ms);
  if (!created.ok()) return created.status();
  record.start_count = static_cast<uint64_t>(*starts) + 1;
  record.created_unix_ms = *created;

  rocksdb::WriteBatch batch;
  batch.Put(kServerIdKey, record.server_id);
  batch.Put(kStartCountKey, absl::StrCat(record.start_count));
  batch.Put(kCreatedKey, absl::StrCat(record.created_unix_ms));
  rocksdb::WriteOptions write;
  write.sync = true;
  s = db->Write(write, &batch);
  if (!s.ok()) return FromRocks(path, s);
  return std::unique_ptr<DataDir>(
      new DataDir(path, std::move(db), std::move(record)));
}

}  // namespace wavekv
