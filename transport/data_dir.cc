#include "transport/data_dir.h"

#include <filesystem>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace wavekv {
namespace {

// Named value holding "<server_id> <start_count> <created_unix_ms>".
constexpr char kServerRecordName[] = "server";

std::string NewServerId() {
  absl::BitGen gen;
  return absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(gen),
                         absl::Uniform<uint64_t>(gen));
}

absl::Status Annotate(const std::string& path, const absl::Status& s) {
  if (absl::IsFailedPrecondition(s)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data_dir: '", path, "' is in use by another wavekv-server (",
        s.message(), ")"));
  }
  return absl::Status(s.code(),
                      absl::StrCat("data_dir: '", path, "': ", s.message()));
}

}  // namespace

DataDir::DataDir(std::string path, std::shared_ptr<Storage> storage,
                 ServerRecord record)
    : path_(std::move(path)),
      storage_(std::move(storage)),
      record_(std::move(record)) {}

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
  StorageOptions options;
  options.path = path + "/db";
  absl::StatusOr<std::unique_ptr<Storage>> opened = Storage::Open(options);
  if (!opened.ok()) return Annotate(path, opened.status());
  std::shared_ptr<Storage> storage(*std::move(opened));

  absl::StatusOr<std::optional<std::string>> stored =
      storage->GetNamed(kServerRecordName);
  if (!stored.ok()) return Annotate(path, stored.status());
  ServerRecord record;
  record.server_id = NewServerId();
  record.created_unix_ms = absl::ToUnixMillis(absl::Now());
  if (stored->has_value()) {
    const std::vector<std::string> parts = absl::StrSplit(**stored, ' ');
    uint64_t starts = 0;
    int64_t created = 0;
    if (parts.size() != 3 || parts[0].size() != 32 ||
        !absl::SimpleAtoi(parts[1], &starts) ||
        !absl::SimpleAtoi(parts[2], &created)) {
      return absl::DataLossError(
          absl::StrCat("data_dir: '", path, "': server record '", **stored,
                       "' is not '<id> <start_count> <created_unix_ms>'"));
    }
    record.server_id = parts[0];
    record.start_count = starts;
    record.created_unix_ms = created;
  }
  record.start_count += 1;
  if (absl::Status s = storage->PutNamed(
          kServerRecordName,
          absl::StrCat(record.server_id, " ", record.start_count, " ",
                       record.created_unix_ms),
          /*sync=*/true);
      !s.ok()) {
    return Annotate(path, s);
  }
  return std::unique_ptr<DataDir>(
      new DataDir(path, std::move(storage), std::move(record)));
}

}  // namespace wavekv
