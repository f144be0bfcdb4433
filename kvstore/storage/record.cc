#include "kvstore/storage/record.h"

#include <cstring>

#include "absl/base/internal/endian.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kvstore/storage/crc32c.h"

namespace wavekv {
namespace {

bool IsKnownKind(uint8_t kind) {
  return kind >= static_cast<uint8_t>(RecordKind::kSessionMeta) &&
         kind <= static_cast<uint8_t>(RecordKind::kNamedValue);
}

uint32_t Load32(const char* p) { return absl::little_endian::Load32(p); }

}  // namespace

std::string RecordKindName(uint8_t kind) {
  switch (kind) {
    case static_cast<uint8_t>(RecordKind::kSessionMeta):
      return "session_meta";
    case static_cast<uint8_t>(RecordKind::kKvChunk):
      return "kv_chunk";
    case static_cast<uint8_t>(RecordKind::kLayerIndex):
      return "layer_index";
    case static_cast<uint8_t>(RecordKind::kNamedValue):
      return "named_value";
  }
  return absl::StrCat("kind ", kind);
}

std::string EncodeRecord(RecordKind kind, absl::string_view payload) {
  std::string out(kRecordHeaderBytes + payload.size(), '\0');
  char* p = out.data();
  absl::little_endian::Store32(p, kRecordMagic);
  p[4] = static_cast<char>(kRecordVersion);
  p[5] = static_cast<char>(kind);
  absl::little_endian::Store16(p + 6, 0);
  absl::little_endian::Store32(p + 8, static_cast<uint32_t>(payload.size()));
  if (!payload.empty()) {
    std::memcpy(p + kRecordHeaderBytes, payload.data(), payload.size());
  }
  uint32_t crc = Crc32c(0, absl::string_view(p, 12));
  crc = Crc32c(crc, payload);
  absl::little_endian::Store32(p + 12, crc);
  return out;
}

absl::StatusOr<Record> DecodeRecord(absl::string_view bytes) {
  if (bytes.size() < kRecordHeaderBytes) {
    return absl::DataLossError(
        absl::StrCat("record: ", bytes.size(), " bytes, shorter than the ",
                     kRecordHeaderBytes, "-byte header"));
  }
  const char* p = bytes.data();
  if (Load32(p) != kRecordMagic) {
    return absl::DataLossError("record: bad magic (not a wavekv record)");
  }
  const uint8_t version = static_cast<uint8_t>(p[4]);
  const uint8_t kind = static_cast<uint8_t>(p[5]);
  if (version != kRecordVersion) {
    return absl::DataLossError(absl::StrCat("record: format version ", version,
                                            " is not ", kRecordVersion));
  }
  if (!IsKnownKind(kind)) {
    return absl::DataLossError(
        absl::StrCat("record: unknown ", RecordKindName(kind)));
  }
  if (absl::little_endian::Load16(p + 6) != 0) {
    return absl::DataLossError(absl::StrCat("record: reserved bits set (kind ",
                                            RecordKindName(kind), ")"));
  }
  const uint32_t length = Load32(p + 8);
  if (length != bytes.size() - kRecordHeaderBytes) {
    return absl::DataLossError(
        absl::StrCat("record: payload length ", length, " does not match the ",
                     bytes.size() - kRecordHeaderBytes, " bytes present (kind ",
                     RecordKindName(kind), ")"));
  }
  const absl::string_view payload = bytes.substr(kRecordHeaderBytes);
  uint32_t crc = Crc32c(0, bytes.substr(0, 12));
  crc = Crc32c(crc, payload);
  if (crc != Load32(p + 12)) {
    return absl::DataLossError(absl::StrCat("record: checksum mismatch (kind ",
                                            RecordKindName(kind), ", ", length,
                                            " payload bytes)"));
  }
  Record record;
  record.kind = static_cast<RecordKind>(kind);
  record.version = version;
  record.payload = payload;
  return record;
}

absl::StatusOr<Record> DecodeRecordOf(absl::string_view bytes,
                                      RecordKind expected,
                                      absl::string_view where) {
  absl::StatusOr<Record> record = DecodeRecord(bytes);
  if (!record.ok()) {
    absl::string_view message = record.status().message();
    if (absl::StartsWith(message, "record: ")) message.remove_prefix(8);
    return absl::DataLossError(absl::StrCat(where, ": ", message));
  }
  if (record->kind != expected) {
    return absl::DataLossError(absl::StrCat(
        where, ": record of kind ",
        RecordKindName(static_cast<uint8_t>(record->kind)), " where ",
        RecordKindName(static_cast<uint8_t>(expected)), " was expected"));
  }
  return record;
}

}  // namespace wavekv
