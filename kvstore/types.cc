// Validation of the engine's options. Every check rejects (InvalidArgument
// naming the proto field and the value); nothing is ever clamped.
#include "kvstore/types.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "index/dtype.h"

namespace wavekv {
namespace {

absl::Status CheckRange(absl::string_view field, uint64_t value, uint64_t lo,
                        uint64_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " is out of range ", lo, "..", hi));
  }
  return absl::OkStatus();
}

bool IsValidDType(DType dtype) {
  return dtype == DType::kFp16 || dtype == DType::kBf16 ||
         dtype == DType::kFp32;
}

bool IsValidDurability(Durability durability) {
  return durability == Durability::kNone || durability == Durability::kAsync ||
         durability == Durability::kSync;
}

// Returns the byte offset of the first invalid UTF-8 sequence in `s`, or
// s.size() if `s` is well-formed (no overlongs, surrogates, or > U+10FFFF).
size_t FirstInvalidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    uint32_t cp = 0;
    uint32_t min_cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min_cp = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min_cp = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min_cp = 0x10000;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return i;
    }
    i += len;
  }
  return s.size();
}

}  // namespace

absl::Status ModelShape::Validate() const {
  if (absl::Status s = CheckRange("shape.num_layers", num_layers, 1, 1024);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange("shape.num_q_heads", num_q_heads, 1, 1024);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange("shape.num_kv_heads", num_kv_heads, 1, 256);
      !s.ok()) {
    return s;
  }
  if (num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape.num_q_heads: ", num_q_heads,
        " is not a multiple of shape.num_kv_heads (", num_kv_heads, ")"));
  }
  if (absl::Status s = CheckRange("shape.head_dim", head_dim, 16, 512);
      !s.ok()) {
    return s;
  }
  if (head_dim % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.head_dim: ", head_dim, " is not a multiple of 8"));
  }
  if (!IsValidDType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape.dtype: ", static_cast<int>(dtype),
                     " is not FP16 (1), BF16 (2) or FP32 (3)"));
  }
  return absl::OkStatus();
}

uint64_t ModelShape::TokenLayerBytes() const {
  return uint64_t{num_kv_heads} * head_dim * DTypeBytes(dtype);
}

absl::Status IndexOptions::Validate() const {
  struct Bound {
    const char* field;
    uint32_t value;
    uint32_t lo;
    uint32_t hi;
  };
  const Bound bounds[] = {
      {"index_options.sink_tokens", sink_tokens, 0, 4096},
      {"index_options.recent_tokens", recent_tokens, 0, 65536},
      {"index_options.segment_tokens", segment_tokens, 64, 1048576},
      {"index_options.cluster_size", cluster_size, 1, 4096},
      {"index_options.kmeans_iterations", kmeans_iterations, 1, 100},
      {"index_options.update_tokens", update_tokens, 16, 1048576},
  };
  for (const Bound& b : bounds) {
    if (absl::Status s = CheckRange(b.field, b.value, b.lo, b.hi); !s.ok()) {
      return s;
    }
  }
  if (cluster_size > segment_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_options.cluster_size: ", cluster_size,
                     " exceeds index_options.segment_tokens (", segment_tokens,
                     "); a segment must hold at least one cluster"));
  }
  if (update_tokens % cluster_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_options.update_tokens: ", update_tokens,
                     " is not a multiple of index_options.cluster_size (",
                     cluster_size, ")"));
  }
  // Written so that NaN fails every check.
  if (!(retrieval_fraction > 0.0f && retrieval_fraction <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_options.retrieval_fraction: ", retrieval_fraction,
                     " is outside (0, 1]"));
  }
  if (!(estimation_fraction >= 0.0f && estimation_fraction <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_options.estimation_fraction: ", estimation_fraction,
                     " is outside [0, 1]"));
  }
  // The sum is taken in double with a tolerance of float rounding, so that
  // e.g. 0.018 + 0.982 (which the user meant to be 1) is accepted.
  const double sum =
      static_cast<double>(retrieval_fraction) + estimation_fraction;
  if (sum > 1.0 + 1e-6) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_options.estimation_fraction: ", estimation_fraction,
                     " plus index_options.retrieval_fraction (",
                     retrieval_fraction, ") is ", sum, ", more than 1"));
  }
  return absl::OkStatus();
}

absl::Status SessionOptions::Validate() const {
  if (absl::Status s = shape.Validate(); !s.ok()) return s;
  if (absl::Status s = index.Validate(); !s.ok()) return s;
  if (!IsValidDurability(durability)) {
    return absl::InvalidArgumentError(
        absl::StrCat("durability: ", static_cast<int>(durability),
                     " is not NONE (1), ASYNC (2) or SYNC (3)"));
  }
  if (label.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "label: ", label.size(), " bytes, more than the limit of 128"));
  }
  if (size_t bad = FirstInvalidUtf8(label); bad != label.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("label: invalid UTF-8 at byte ", bad));
  }
  return absl::OkStatus();
}

}  // namespace wavekv
