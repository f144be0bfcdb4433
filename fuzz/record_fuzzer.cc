// Fuzz target: the on-disk record decoders (kvstore/storage/record.h and the
// payload codecs of kvstore/storage/session_records.h).
//
// Random bytes almost never carry a valid crc32c, so the first byte picks
// what the rest is:
//   mode 0: a whole record as read from RocksDB -> DecodeRecord;
//   mode 1..3: a payload, wrapped in a valid record of its kind (so the
//     checksum passes) and decoded as RocksDB reads would be:
//     1 session meta, 2 K/V chunk, 3 layer index. Bytes 1..3 give the
//     decoders' expectations (token bytes; layer, kv heads, head_dim).
// Checks, besides "never crash, leak or hang": every rejection is DATA_LOSS
// with a message; an accepted record re-encodes to the same bytes; a decoded
// payload re-encodes to a payload that decodes and re-encodes to itself.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kvstore/storage/record.h"
#include "kvstore/storage/session_records.h"

namespace wavekv {
namespace {

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "record_fuzzer: %s\n", what);
  std::abort();
}

template <typename T>
void CheckRejection(const absl::StatusOr<T>& result) {
  if (result.ok()) return;
  if (result.status().code() != absl::StatusCode::kDataLoss) {
    std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
    Fail("rejection is not DATA_LOSS");
  }
  if (result.status().message().empty()) Fail("rejection without a message");
}

void RawRecord(absl::string_view bytes) {
  absl::StatusOr<Record> record = DecodeRecord(bytes);
  CheckRejection(record);
  if (!record.ok()) return;
  if (EncodeRecord(record->kind, record->payload) != bytes) {
    Fail("an accepted record re-encodes to different bytes");
  }
}

// Wraps `payload` in a valid record and decodes it back, as a read would.
absl::string_view Unwrap(RecordKind kind, absl::string_view payload,
                         std::string* storage) {
  *storage = EncodeRecord(kind, payload);
  absl::StatusOr<Record> record = DecodeRecordOf(*storage, kind, "fuzz record");
  if (!record.ok() || record->payload != payload) {
    Fail("a freshly encoded record does not decode to its payload");
  }
  return record->payload;
}

void SessionMetaPayload(absl::string_view payload) {
  std::string storage;
  absl::StatusOr<SessionMeta> meta = DecodeSessionMeta(
      Unwrap(RecordKind::kSessionMeta, payload, &storage), "fuzz");
  CheckRejection(meta);
  if (!meta.ok()) return;
  const std::string once = EncodeSessionMeta(*meta);
  absl::StatusOr<SessionMeta> again = DecodeSessionMeta(once, "fuzz");
  if (!again.ok()) Fail("a re-encoded session meta does not decode");
  if (EncodeSessionMeta(*again) != once) {
    Fail("session meta encoding is not stable");
  }
}

void KvChunkPayload(uint64_t token_bytes, absl::string_view payload) {
  std::string storage;
  absl::StatusOr<KvChunkView> chunk = DecodeKvChunk(
      Unwrap(RecordKind::kKvChunk, payload, &storage), token_bytes, "fuzz");
  CheckRejection(chunk);
  if (!chunk.ok()) return;
  if (chunk->keys.size() != chunk->values.size() ||
      chunk->keys.size() != uint64_t{chunk->num_tokens} * token_bytes) {
    Fail("an accepted K/V chunk has sizes that do not match token_bytes");
  }
  const std::string once = EncodeKvChunk(*chunk);
  absl::StatusOr<KvChunkView> again = DecodeKvChunk(once, token_bytes, "fuzz");
  if (!again.ok()) Fail("a re-encoded K/V chunk does not decode");
  if (EncodeKvChunk(*again) != once) Fail("K/V chunk encoding is not stable");
}

void LayerIndexPayload(uint32_t layer, uint32_t heads, uint32_t head_dim,
                       absl::string_view payload) {
  std::string storage;
  absl::StatusOr<std::vector<std::shared_ptr<WaveIndex>>> indexes =
      DecodeLayerIndex(Unwrap(RecordKind::kLayerIndex, payload, &storage),
                       layer, heads, head_dim, "fuzz");
  CheckRejection(indexes);
  if (!indexes.ok()) return;
  if (indexes->size() != heads) Fail("wrong number of kv head indexes");
  std::vector<const WaveIndex*> views;
  for (const auto& index : *indexes) {
    if (index == nullptr || index->head_dim() != head_dim) {
      Fail("an accepted layer index has a missing or mis-shaped head");
    }
    views.push_back(index.get());
  }
  const std::string once = EncodeLayerIndex(layer, views);
  absl::StatusOr<std::vector<std::shared_ptr<WaveIndex>>> again =
      DecodeLayerIndex(once, layer, heads, head_dim, "fuzz");
  if (!again.ok()) Fail("a re-encoded layer index does not decode");
  std::vector<const WaveIndex*> again_views;
  for (const auto& index : *again) again_views.push_back(index.get());
  if (EncodeLayerIndex(layer, again_views) != once) {
    Fail("layer index encoding is not stable");
  }
}

}  // namespace
}  // namespace wavekv

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace wavekv;
  if (size == 0) return 0;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  const int mode = data[0] & 3;
  if (mode == 0) {
    RawRecord(bytes.substr(1));
    return 0;
  }
  if (size < 4) return 0;
  const absl::string_view payload = bytes.substr(4);
  switch (mode) {
    case 1:
      SessionMetaPayload(payload);
      break;
    case 2:
      // 1..2^16 bytes per token and layer.
      KvChunkPayload(1 + (uint64_t{data[1]} | uint64_t{data[2]} << 8), payload);
      break;
    case 3:
      LayerIndexPayload(data[1] & 7, 1 + (data[2] & 3), 8u << (data[3] & 3),
                        payload);
      break;
  }
  return 0;
}
