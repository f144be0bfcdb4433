#include "index/wave_index_codec.h"

#include <bit>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the codec writes native little-endian values");

constexpr char kMagic[6] = {'W', 'K', 'V', 'I', 'D', 'X'};
constexpr uint16_t kVersion = 1;
constexpr size_t kHeaderBytes = 6 + 2 + 2 + 4 + 8 * 4;

template <typename T>
void Put(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <typename T>
void PutArray(std::string& out, const std::vector<T>& v) {
  if (!v.empty()) {
    out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
}

class Reader {
 public:
  explicit Reader(absl::string_view bytes) : bytes_(bytes) {}

  template <typename T>
  absl::Status Get(T& v, const char* what) {
    if (bytes_.size() < sizeof(T)) return Truncated(what);
    std::memcpy(&v, bytes_.data(), sizeof(T));
    bytes_.remove_prefix(sizeof(T));
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status GetArray(std::vector<T>& v, uint64_t count, const char* what) {
    if (count > bytes_.size() / sizeof(T)) return Truncated(what);
    v.resize(count);
    if (count > 0) std::memcpy(v.data(), bytes_.data(), count * sizeof(T));
    bytes_.remove_prefix(count * sizeof(T));
    return absl::OkStatus();
  }

  size_t remaining() const { return bytes_.size(); }

 private:
  static absl::Status Truncated(const char* what) {
    return absl::DataLossError(
        absl::StrCat("wave index encoding truncated in ", what));
  }
  absl::string_view bytes_;
};

}  // namespace

std::string EncodeWaveIndex(const WaveIndex& index) {
  const WaveIndexParts parts = index.ToParts();
  std::string out;
  out.reserve(kHeaderBytes + parts.centroids.size() * 4 +
              parts.value_sums.size() * 4 + parts.sizes.size() * 4 +
              parts.slot_tokens.size() * 8);
  out.append(kMagic, sizeof(kMagic));
  Put(out, kVersion);
  Put(out, uint16_t{0});
  Put(out, static_cast<uint32_t>(parts.head_dim));
  Put(out, parts.begin_token);
  Put(out, parts.end_token);
  Put(out, static_cast<uint64_t>(parts.sizes.size()));
  Put(out, static_cast<uint64_t>(parts.slot_tokens.size()));
  PutArray(out, parts.centroids);
  PutArray(out, parts.value_sums);
  PutArray(out, parts.sizes);
  PutArray(out, parts.slot_tokens);
  return out;
}

absl::StatusOr<WaveIndex> DecodeWaveIndex(absl::string_view bytes) {
  if (bytes.size() < sizeof(kMagic) ||
      std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError("wave index encoding: bad magic");
  }
  Reader r(bytes.substr(sizeof(kMagic)));
  uint16_t version = 0, reserved = 0;
  uint32_t head_dim = 0;
  uint64_t num_clusters = 0, num_slots = 0;
  WaveIndexParts parts;
  RETURN_IF_ERROR(r.Get(version, "version"));
  if (version != kVersion) {
    return absl::DataLossError(
        absl::StrCat("wave index encoding: unknown version ", version));
  }
  RETURN_IF_ERROR(r.Get(reserved, "header"));
  RETURN_IF_ERROR(r.Get(head_dim, "header"));
  RETURN_IF_ERROR(r.Get(parts.begin_token, "header"));
  RETURN_IF_ERROR(r.Get(parts.end_token, "header"));
  RETURN_IF_ERROR(r.Get(num_clusters, "header"));
  RETURN_IF_ERROR(r.Get(num_slots, "header"));
  parts.head_dim = head_dim;
  if (head_dim == 0 ||
      num_clusters > std::numeric_limits<uint64_t>::max() / head_dim) {
    return absl::DataLossError("wave index encoding: bad header");
  }
  RETURN_IF_ERROR(
      r.GetArray(parts.centroids, num_clusters * head_dim, "centroids"));
  RETURN_IF_ERROR(
      r.GetArray(parts.value_sums, num_clusters * head_dim, "value sums"));
  RETURN_IF_ERROR(r.GetArray(parts.sizes, num_clusters, "sizes"));
  RETURN_IF_ERROR(r.GetArray(parts.slot_tokens, num_slots, "slot tokens"));
  if (r.remaining() != 0) {
    return absl::DataLossError(absl::StrCat(
        "wave index encoding: ", r.remaining(), " trailing bytes"));
  }
  absl::StatusOr<WaveIndex> index = WaveIndex::FromParts(std::move(parts));
  if (!index.ok()) {
    return absl::DataLossError(
        absl::StrCat("wave index encoding: ", index.status().message()));
  }
  return index;
}

}  // namespace wavekv
