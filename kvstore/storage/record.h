// The on-disk record: every value wavekv writes to RocksDB is one record, so
// that any byte that changed on disk is detected before it is used.
//
// Layout (little-endian, 16-byte header, then the payload):
//   u32 magic "WKVR" | u8 format version (1) | u8 kind | u16 reserved (0)
//   | u32 payload length | u32 crc32c | payload
// The crc32c covers the first 12 header bytes and the payload, so a flipped
// kind or length is caught as well as a flipped payload byte.
//
// The payload of each kind is encoded by storage/session_records.h.
//
// Thread-safe: pure functions.
//
// Example:
//   std::string bytes = EncodeRecord(RecordKind::kKvChunk, payload);
//   ASSIGN_OR_RETURN(Record r, DecodeRecord(bytes));  // DataLoss if damaged
#ifndef WAVEKV_KVSTORE_STORAGE_RECORD_H_
#define WAVEKV_KVSTORE_STORAGE_RECORD_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace wavekv {

enum class RecordKind : uint8_t {
  kSessionMeta = 1,  // a session's id, tenant, options (session_records.h)
  kKvChunk = 2,      // K/V of a run of tokens of one layer
  kLayerIndex = 3,   // the wave indexes of one layer, every kv head
  kNamedValue = 4,   // small named metadata (the server record)
};

// "session_meta", "kv_chunk", "layer_index", "named_value", or
// "kind <n>" for an unknown value.
std::string RecordKindName(uint8_t kind);

inline constexpr uint32_t kRecordMagic = 0x52564b57;  // "WKVR" little-endian
inline constexpr uint8_t kRecordVersion = 1;
inline constexpr size_t kRecordHeaderBytes = 16;
// Payloads are at most this long (RocksDB values are bounded far below the
// u32 range, and chunk records are cut much smaller).
inline constexpr uint32_t kMaxRecordPayloadBytes = uint32_t{1} << 31;

struct Record {
  RecordKind kind = RecordKind::kNamedValue;
  uint8_t version = kRecordVersion;
  absl::string_view payload;  // points into the decoded bytes
};

// Header + payload. REQUIRES: payload.size() <= kMaxRecordPayloadBytes.
std::string EncodeRecord(RecordKind kind, absl::string_view payload);

// Parses and verifies a record; the payload points into `bytes`. Any
// malformed input (short, wrong magic, unknown version or kind, reserved
// bits set, length not matching, checksum mismatch) is DataLoss with a
// message naming what failed, e.g. "record: checksum mismatch (kind
// kv_chunk, 4096 payload bytes)". Never crashes, never reads past `bytes`.
absl::StatusOr<Record> DecodeRecord(absl::string_view bytes);

// DecodeRecord, plus the record must be of `expected` kind; every error
// message starts with `where` (e.g. "session S: layer 3 chunk 4096").
absl::StatusOr<Record> DecodeRecordOf(absl::string_view bytes,
                                      RecordKind expected,
                                      absl::string_view where);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_STORAGE_RECORD_H_
