#include "kvstore/finite_check.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "index/dtype.h"

namespace wavekv {

int64_t FirstNonFinite(absl::Span<const uint8_t> bytes, DType dtype) {
  const size_t width = DTypeBytes(dtype);
  const size_t n = bytes.size() / width;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* e = bytes.data() + i * width;  // little endian
    bool all_ones;
    switch (dtype) {
      case DType::kFp16:  // exponent: bits 10..14
        all_ones = (e[1] & 0x7C) == 0x7C;
        break;
      case DType::kBf16:  // exponent: bits 7..14
        all_ones = (e[1] & 0x7F) == 0x7F && (e[0] & 0x80) != 0;
        break;
      default:  // kFp32, exponent: bits 23..30
        all_ones = (e[3] & 0x7F) == 0x7F && (e[2] & 0x80) != 0;
        break;
    }
    if (all_ones) return static_cast<int64_t>(i);
  }
  return -1;
}

absl::Status CheckFiniteKv(absl::Span<const LayerAppend> layers,
                           const ModelShape& shape) {
  const uint64_t per_token = uint64_t{shape.num_kv_heads} * shape.head_dim;
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerAppend& la = layers[i];
    for (const auto& [field, bytes] :
         {std::pair<const char*, absl::Span<const uint8_t>>{"keys", la.keys},
          {"values", la.values}}) {
      const int64_t bad = FirstNonFinite(bytes, shape.dtype);
      if (bad < 0) continue;
      const uint64_t at = static_cast<uint64_t>(bad);
      return absl::InvalidArgumentError(absl::StrCat(
          "layers[", i, "].", field, ": non-finite value (NaN or infinity) at ",
          "token ", la.start_token + at / per_token, ", kv head ",
          (at % per_token) / shape.head_dim, ", element ",
          at % shape.head_dim));
    }
  }
  return absl::OkStatus();
}

}  // namespace wavekv
