// Payloads of the records a session is stored as (record.h wraps each in a
// checksummed header), and the keys they live under.
//
// Keys (one RocksDB column family; ids are 32 hex digits, numbers are
// fixed-width lowercase hex so that byte order is numeric order):
//   m/<session_id>                          kSessionMeta
//   k/<session_id>/<layer:8>/<first:16>     kKvChunk, tokens [first, first+n)
//   i/<session_id>/<layer:8>                kLayerIndex, every kv head
//   x/<name>                                kNamedValue (server record)
//
// Thread-safe: pure functions.
#ifndef WAVEKV_KVSTORE_STORAGE_SESSION_RECORDS_H_
#define WAVEKV_KVSTORE_STORAGE_SESSION_RECORDS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "index/wave_index.h"
#include "kvstore/types.h"

namespace wavekv {

// What a session is, apart from its K/V and index.
struct SessionMeta {
  std::string session_id;
  TenantId tenant;
  SessionOptions options;   // durability is the session's default level
  uint64_t max_tokens = 0;  // resolved (never 0)
  int64_t created_unix_ms = 0;
};

// K/V of tokens [first_token, first_token + num_tokens) of one layer, in
// the LayerAppend layout: [num_tokens][num_kv_heads][head_dim] dtype bytes.
struct KvChunkView {
  uint32_t layer = 0;
  uint64_t first_token = 0;
  uint32_t num_tokens = 0;
  absl::string_view keys;
  absl::string_view values;
};

std::string SessionMetaKey(absl::string_view session_id);
std::string KvChunkKey(absl::string_view session_id, uint32_t layer,
                       uint64_t first_token);
std::string LayerIndexKey(absl::string_view session_id, uint32_t layer);
std::string NamedValueKey(absl::string_view name);
// [begin, end) of every key of `kind_prefix` ("k", "i") of the session,
// optionally of one layer.
std::string SessionRangeBegin(char kind_prefix, absl::string_view session_id);
std::string SessionRangeEnd(char kind_prefix, absl::string_view session_id);

// Payload codecs. Decoders return DataLoss naming `where` and the field on
// any inconsistency (they run on checksummed bytes, so this means a bug or
// a format change, never silently wrong data).
std::string EncodeSessionMeta(const SessionMeta& meta);
absl::StatusOr<SessionMeta> DecodeSessionMeta(absl::string_view payload,
                                              absl::string_view where);

// `token_bytes` is ModelShape::TokenLayerBytes().
// REQUIRES: keys.size() == values.size() == num_tokens * token_bytes.
std::string EncodeKvChunk(const KvChunkView& chunk);
// The views point into `payload`. DataLoss unless the chunk's sizes match
// `token_bytes`.
absl::StatusOr<KvChunkView> DecodeKvChunk(absl::string_view payload,
                                          uint64_t token_bytes,
                                          absl::string_view where);

// One WaveIndex per kv head (index/wave_index_codec.h inside).
std::string EncodeLayerIndex(uint32_t layer,
                             const std::vector<const WaveIndex*>& heads);
absl::StatusOr<std::vector<std::shared_ptr<WaveIndex>>> DecodeLayerIndex(
    absl::string_view payload, uint32_t expected_layer, uint32_t expected_heads,
    uint32_t head_dim, absl::string_view where);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_STORAGE_SESSION_RECORDS_H_
