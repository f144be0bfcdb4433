#include "kvstore/storage/session_records.h"

#include <cstring>

#include "absl/base/internal/endian.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "index/wave_index_codec.h"

namespace wavekv {
namespace {

constexpr uint32_t kMetaFormat = 1;

// Appends little-endian fields to a string.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) {
    char b[4];
    absl::little_endian::Store32(b, v);
    out_.append(b, 4);
  }
  void U64(uint64_t v) {
    char b[8];
    absl::little_endian::Store64(b, v);
    out_.append(b, 8);
  }
  void F32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    U32(bits);
  }
  void Bytes(absl::string_view s) {
    U64(s.size());
    out_.append(s.data(), s.size());
  }

 private:
  std::string& out_;
};

// Reads little-endian fields; every read checks the remaining length and
// the first failure sticks (ok() false, fields read as 0).
class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool ok() const { return ok_; }
  bool done() const { return in_.empty(); }
  const std::string& failed_field() const { return failed_; }

  uint8_t U8(const char* field) {
    if (!Need(1, field)) return 0;
    const uint8_t v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return v;
  }
  uint32_t U32(const char* field) {
    if (!Need(4, field)) return 0;
    const uint32_t v = absl::little_endian::Load32(in_.data());
    in_.remove_prefix(4);
    return v;
  }
  uint64_t U64(const char* field) {
    if (!Need(8, field)) return 0;
    const uint64_t v = absl::little_endian::Load64(in_.data());
    in_.remove_prefix(8);
    return v;
  }
  float F32(const char* field) {
    const uint32_t bits = U32(field);
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  absl::string_view Bytes(const char* field) {
    const uint64_t n = U64(field);
    return Raw(n, field);
  }
  absl::string_view Raw(uint64_t n, const char* field) {
    if (!Need(n, field)) return {};
    absl::string_view v = in_.substr(0, n);
    in_.remove_prefix(n);
    return v;
  }

 private:
  bool Need(uint64_t n, const char* field) {
    if (!ok_) return false;
    if (in_.size() < n) {
      ok_ = false;
      failed_ = field;
      return false;
    }
    return true;
  }
  absl::string_view in_;
  bool ok_ = true;
  std::string failed_;
};

absl::Status Truncated(absl::string_view where, const Reader& r) {
  return absl::DataLossError(
      absl::StrCat(where, ": payload truncated at ", r.failed_field()));
}

std::string Hex8(uint32_t v) { return absl::StrFormat("%08x", v); }
std::string Hex16(uint64_t v) { return absl::StrFormat("%016x", v); }

}  // namespace

std::string SessionMetaKey(absl::string_view session_id) {
  return absl::StrCat("m/", session_id);
}
std::string KvChunkKey(absl::string_view session_id, uint32_t layer,
                       uint64_t first_token) {
  return absl::StrCat("k/", session_id, "/", Hex8(layer), "/",
                      Hex16(first_token));
}
std::string LayerIndexKey(absl::string_view session_id, uint32_t layer) {
  return absl::StrCat("i/", session_id, "/", Hex8(layer));
}
std::string NamedValueKey(absl::string_view name) {
  return absl::StrCat("x/", name);
}
std::string SessionRangeBegin(char kind_prefix, absl::string_view session_id) {
  return absl::StrCat(std::string(1, kind_prefix), "/", session_id, "/");
}
std::string SessionRangeEnd(char kind_prefix, absl::string_view session_id) {
  // '0' follows '/' in ASCII: the end of every key with the prefix.
  return absl::StrCat(std::string(1, kind_prefix), "/", session_id, "0");
}

std::string EncodeSessionMeta(const SessionMeta& meta) {
  std::string out;
  Writer w(out);
  w.U32(kMetaFormat);
  w.Bytes(meta.session_id);
  w.Bytes(meta.tenant);
  const ModelShape& s = meta.options.shape;
  w.U32(s.num_layers);
  w.U32(s.num_q_heads);
  w.U32(s.num_kv_heads);
  w.U32(s.head_dim);
  w.U8(static_cast<uint8_t>(s.dtype));
  const IndexOptions& i = meta.options.index;
  w.U32(i.sink_tokens);
  w.U32(i.recent_tokens);
  w.U32(i.segment_tokens);
  w.U32(i.cluster_size);
  w.U32(i.kmeans_iterations);
  w.U32(i.update_tokens);
  w.F32(i.retrieval_fraction);
  w.F32(i.estimation_fraction);
  w.U8(static_cast<uint8_t>(meta.options.durability));
  w.U64(meta.options.max_tokens);
  w.Bytes(meta.options.label);
  w.U64(meta.max_tokens);
  w.U64(static_cast<uint64_t>(meta.created_unix_ms));
  return out;
}

absl::StatusOr<SessionMeta> DecodeSessionMeta(absl::string_view payload,
                                              absl::string_view where) {
  Reader r(payload);
  SessionMeta meta;
  const uint32_t format = r.U32("format");
  if (r.ok() && format != kMetaFormat) {
    return absl::DataLossError(absl::StrCat(where, ": session meta format ",
                                            format, " is not ", kMetaFormat));
  }
  meta.session_id = std::string(r.Bytes("session_id"));
  meta.tenant = std::string(r.Bytes("tenant"));
  ModelShape& s = meta.options.shape;
  s.num_layers = r.U32("shape.num_layers");
  s.num_q_heads = r.U32("shape.num_q_heads");
  s.num_kv_heads = r.U32("shape.num_kv_heads");
  s.head_dim = r.U32("shape.head_dim");
  s.dtype = static_cast<DType>(r.U8("shape.dtype"));
  IndexOptions& i = meta.options.index;
  i.sink_tokens = r.U32("index.sink_tokens");
  i.recent_tokens = r.U32("index.recent_tokens");
  i.segment_tokens = r.U32("index.segment_tokens");
  i.cluster_size = r.U32("index.cluster_size");
  i.kmeans_iterations = r.U32("index.kmeans_iterations");
  i.update_tokens = r.U32("index.update_tokens");
  i.retrieval_fraction = r.F32("index.retrieval_fraction");
  i.estimation_fraction = r.F32("index.estimation_fraction");
  meta.options.durability = static_cast<Durability>(r.U8("durability"));
  meta.options.max_tokens = r.U64("options.max_tokens");
  meta.options.label = std::string(r.Bytes("label"));
  meta.max_tokens = r.U64("max_tokens");
  meta.created_unix_ms = static_cast<int64_t>(r.U64("created_unix_ms"));
  if (!r.ok()) return Truncated(where, r);
  if (!r.done()) {
    return absl::DataLossError(
        absl::StrCat(where, ": trailing bytes after the session meta"));
  }
  const uint8_t d = static_cast<uint8_t>(meta.options.durability);
  if (d < 1 || d > 3) {
    return absl::DataLossError(
        absl::StrCat(where, ": durability ", d, " is not 1..3"));
  }
  if (absl::Status v = meta.options.Validate(); !v.ok()) {
    return absl::DataLossError(
        absl::StrCat(where, ": stored options invalid: ", v.message()));
  }
  if (meta.max_tokens == 0) {
    return absl::DataLossError(absl::StrCat(where, ": max_tokens is 0"));
  }
  return meta;
}

std::string EncodeKvChunk(const KvChunkView& chunk) {
  std::string out;
  out.reserve(32 + chunk.keys.size() + chunk.values.size());
  Writer w(out);
  w.U32(chunk.layer);
  w.U64(chunk.first_token);
  w.U32(chunk.num_tokens);
  w.U64(chunk.keys.size());
  out.append(chunk.keys.data(), chunk.keys.size());
  out.append(chunk.values.data(), chunk.values.size());
  return out;
}

absl::StatusOr<KvChunkView> DecodeKvChunk(absl::string_view payload,
                                          uint64_t token_bytes,
                                          absl::string_view where) {
  Reader r(payload);
  KvChunkView chunk;
  chunk.layer = r.U32("layer");
  chunk.first_token = r.U64("first_token");
  chunk.num_tokens = r.U32("num_tokens");
  const uint64_t side = r.U64("keys length");
  if (!r.ok()) return Truncated(where, r);
  if (chunk.num_tokens == 0 || token_bytes == 0 ||
      side / token_bytes != chunk.num_tokens || side % token_bytes != 0) {
    return absl::DataLossError(
        absl::StrCat(where, ": chunk of ", chunk.num_tokens, " tokens holds ",
                     side, " key bytes, expected ", token_bytes, " per token"));
  }
  chunk.keys = r.Raw(side, "keys");
  chunk.values = r.Raw(side, "values");
  if (!r.ok()) return Truncated(where, r);
  if (!r.done()) {
    return absl::DataLossError(
        absl::StrCat(where, ": trailing bytes after the chunk"));
  }
  return chunk;
}

std::string EncodeLayerIndex(uint32_t layer,
                             const std::vector<const WaveIndex*>& heads) {
  std::string out;
  Writer w(out);
  w.U32(layer);
  w.U32(static_cast<uint32_t>(heads.size()));
  for (const WaveIndex* index : heads) w.Bytes(EncodeWaveIndex(*index));
  return out;
}

absl::StatusOr<std::vector<std::shared_ptr<WaveIndex>>> DecodeLayerIndex(
    absl::string_view payload, uint32_t expected_layer, uint32_t expected_heads,
    uint32_t head_dim, absl::string_view where) {
  Reader r(payload);
  const uint32_t layer = r.U32("layer");
  const uint32_t heads = r.U32("num_kv_heads");
  if (!r.ok()) return Truncated(where, r);
  if (layer != expected_layer || heads != expected_heads) {
    return absl::DataLossError(
        absl::StrCat(where, ": index record of layer ", layer, " with ", heads,
                     " kv heads, expected layer ", expected_layer, " with ",
                     expected_heads));
  }
  std::vector<std::shared_ptr<WaveIndex>> out;
  out.reserve(heads);
  for (uint32_t h = 0; h < heads; ++h) {
    absl::string_view bytes = r.Bytes("index bytes");
    if (!r.ok()) return Truncated(where, r);
    absl::StatusOr<WaveIndex> index = DecodeWaveIndex(bytes);
    if (!index.ok()) {
      return absl::DataLossError(
          absl::StrCat(where, ": kv head ", h, ": ", index.status().message()));
    }
    if (index->head_dim() != head_dim) {
      return absl::DataLossError(absl::StrCat(where, ": kv head ", h,
                                              ": head_dim ", index->head_dim(),
                                              ", expected ", head_dim));
    }
    if (h > 0 && index->indexed_span() != out[0]->indexed_span()) {
      return absl::DataLossError(absl::StrCat(
          where, ": kv head ", h, " covers other tokens than kv head 0"));
    }
    out.push_back(std::make_shared<WaveIndex>(*std::move(index)));
  }
  if (!r.done()) {
    return absl::DataLossError(
        absl::StrCat(where, ": trailing bytes after the indexes"));
  }
  return out;
}

}  // namespace wavekv
