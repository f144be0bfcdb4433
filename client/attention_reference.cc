#include "client/attention_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv {
namespace {

// Tokens per block of MergeExact: K+V of a block in fp32 (at head_dim 128,
// 512 KiB) stays in cache while the group's q heads read it.
constexpr size_t kBlockTokens = 512;

// Writes rows [first, first + n) of one kv head's K and V as fp32
// [n][head_dim] into keys / values.
using BlockSource =
    absl::FunctionRef<void(size_t first, size_t n, float* keys, float* values)>;

// Exact partials of kv head h's group of q heads over `num_tokens` tokens
// produced by `fill`, merged into partials[q]. Tokens are decoded a block at
// a time into a small buffer that the whole group reads from cache; merging
// per-block partials is exact (log-sum-exp).
void MergeExact(const AttentionShape& shape, uint32_t h,
                absl::Span<const float> query, size_t num_tokens,
                BlockSource fill, std::vector<AttentionPartial>& partials) {
  if (num_tokens == 0) return;
  const float scale = DefaultScale(shape.head_dim);
  const uint32_t g = shape.group_size();
  const size_t d = shape.head_dim;
  const size_t rows = std::min(kBlockTokens, num_tokens);
  std::vector<float> keys(rows * d), values(rows * d);
  for (size_t first = 0; first < num_tokens; first += kBlockTokens) {
    KvView block;
    block.dtype = DType::kFp32;
    block.head_dim = d;
    block.num_tokens = std::min(kBlockTokens, num_tokens - first);
    fill(first, block.num_tokens, keys.data(), values.data());
    block.keys = reinterpret_cast<const uint8_t*>(keys.data());
    block.values = reinterpret_cast<const uint8_t*>(values.data());
    for (uint32_t q = h * g; q < (h + 1) * g; ++q) {
      MergeInto(partials[q], PartialAttention(query.subspan(size_t{q} * d, d),
                                              block, scale));
    }
  }
}

// Exact attention of kv head h's group over `ranges` of the local copy.
void MergeLocal(const AttentionShape& shape, uint32_t h,
                absl::Span<const float> query, const LayerKvView& local,
                absl::Span<const v1::TokenRange> ranges,
                std::vector<AttentionPartial>& partials) {
  std::vector<uint64_t> positions;
  for (const v1::TokenRange& r : ranges) {
    for (uint64_t t = r.begin(); t < r.end(); ++t) positions.push_back(t);
  }
  const size_t d = shape.head_dim;
  const size_t head_bytes = d * DTypeBytes(shape.dtype);
  const size_t token_bytes = shape.TokenBytes();
  MergeExact(
      shape, h, query, positions.size(),
      [&](size_t first, size_t n, float* keys, float* values) {
        for (size_t i = 0; i < n; ++i) {
          const size_t offset =
              positions[first + i] * token_bytes + h * head_bytes;
          DecodeToFloat(shape.dtype, local.keys.data() + offset, d,
                        keys + i * d);
          DecodeToFloat(shape.dtype, local.values.data() + offset, d,
                        values + i * d);
        }
      },
      partials);
}

absl::Status CheckQuery(const AttentionShape& shape,
                        absl::Span<const float> query) {
  const size_t want = size_t{shape.num_q_heads} * shape.head_dim;
  if (query.size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("query: expected ", want,
                     " floats ([num_q_heads][head_dim]), got ", query.size()));
  }
  return absl::OkStatus();
}

absl::Status CheckLocal(const AttentionShape& shape, const LayerKvView& local) {
  const uint64_t want = local.num_tokens * shape.TokenBytes();
  if (local.keys.size() != want || local.values.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "local: expected ", want, " bytes of keys and of values for ",
        local.num_tokens, " tokens, got ", local.keys.size(), " and ",
        local.values.size()));
  }
  return absl::OkStatus();
}

absl::Status CheckRanges(absl::Span<const v1::TokenRange> ranges,
                         uint64_t num_tokens, const char* field) {
  std::vector<std::pair<uint64_t, uint64_t>> sorted;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const v1::TokenRange& r = ranges[i];
    if (r.begin() > r.end() || r.end() > num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, "[", i, "]: range [", r.begin(), ", ", r.end(),
          ") is not within the local copy's ", num_tokens, " tokens"));
    }
    sorted.emplace_back(r.begin(), r.end());
  }
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i].first < sorted[i - 1].second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ranges overlap at token ", sorted[i].first));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<AttentionPartial> TailPartial(const v1::TailStats& tail,
                                             uint32_t head_dim,
                                             const std::string& field) {
  AttentionPartial p = AttentionPartial::Empty(head_dim);
  if (tail.denominator() == 0.0f) {
    if (!tail.numerator().empty() &&
        tail.numerator().size() != head_dim * sizeof(float)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".numerator: expected 0 or ", head_dim * sizeof(float),
          " bytes, got ", tail.numerator().size()));
    }
    return p;  // empty estimation zone
  }
  if (!(tail.denominator() > 0.0f) || !std::isfinite(tail.denominator()) ||
      !std::isfinite(tail.max_logit())) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": max_logit ", tail.max_logit(), " and denominator ",
        tail.denominator(), " are not a valid partial softmax"));
  }
  if (tail.numerator().size() != head_dim * sizeof(float)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".numerator: expected ", head_dim * sizeof(float),
        " bytes (FP32 [head_dim]), got ", tail.numerator().size()));
  }
  p.max_logit = tail.max_logit();
  p.denominator = tail.denominator();
  std::memcpy(p.numerator.data(), tail.numerator().data(),
              tail.numerator().size());
  return p;
}

}  // namespace

absl::StatusOr<AttentionShape> AttentionShape::FromProto(
    const v1::ModelShape& shape) {
  AttentionShape out;
  out.num_q_heads = shape.num_q_heads();
  out.num_kv_heads = shape.num_kv_heads();
  out.head_dim = shape.head_dim();
  switch (shape.dtype()) {
    case v1::DTYPE_FP16:
      out.dtype = DType::kFp16;
      break;
    case v1::DTYPE_BF16:
      out.dtype = DType::kBf16;
      break;
    case v1::DTYPE_FP32:
      out.dtype = DType::kFp32;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "shape.dtype: unsupported value ", static_cast<int>(shape.dtype())));
  }
  RETURN_IF_ERROR(out.Validate());
  return out;
}

absl::Status AttentionShape::Validate() const {
  if (num_kv_heads == 0) {
    return absl::InvalidArgumentError("shape.num_kv_heads: must be >= 1");
  }
  if (num_q_heads == 0 || num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape.num_q_heads: must be a positive multiple of num_kv_heads (",
        num_kv_heads, "), got ", num_q_heads));
  }
  if (head_dim == 0) {
    return absl::InvalidArgumentError("shape.head_dim: must be >= 1");
  }
  return absl::OkStatus();
}

uint64_t AttentionShape::TokenBytes() const {
  return uint64_t{num_kv_heads} * head_dim * DTypeBytes(dtype);
}

RetrievedKv RetrievedKv::Of(const std::string& keys,
                            const std::string& values) {
  return RetrievedKv{
      absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(keys.data()),
                                keys.size()),
      absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(values.data()),
                                values.size())};
}

std::vector<RetrievedKv> RetrievedKvInline(const v1::SessionResult& result) {
  std::vector<RetrievedKv> out;
  out.reserve(result.heads_size());
  for (const v1::KvHeadResult& head : result.heads()) {
    out.push_back(RetrievedKv::Of(head.keys(), head.values()));
  }
  return out;
}

absl::StatusOr<std::vector<AttentionPartial>> LocalAttentionPartials(
    const AttentionShape& shape, absl::Span<const float> query,
    const LayerKvView& local, absl::Span<const v1::TokenRange> ranges) {
  RETURN_IF_ERROR(shape.Validate());
  RETURN_IF_ERROR(CheckQuery(shape, query));
  RETURN_IF_ERROR(CheckLocal(shape, local));
  RETURN_IF_ERROR(CheckRanges(ranges, local.num_tokens, "ranges"));
  std::vector<AttentionPartial> partials(
      shape.num_q_heads, AttentionPartial::Empty(shape.head_dim));
  for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
    MergeLocal(shape, h, query, local, ranges, partials);
  }
  return partials;
}

absl::StatusOr<std::vector<AttentionPartial>> RetrievedAttentionPartials(
    const AttentionShape& shape, const v1::SessionResult& result,
    absl::Span<const float> query, absl::Span<const RetrievedKv> retrieved,
    const LayerKvView& local) {
  RETURN_IF_ERROR(shape.Validate());
  RETURN_IF_ERROR(CheckQuery(shape, query));
  if (result.heads_size() != static_cast<int>(shape.num_kv_heads)) {
    return absl::InvalidArgumentError(
        absl::StrCat("heads: expected ", shape.num_kv_heads,
                     " (one per kv head), got ", result.heads_size()));
  }
  if (retrieved.size() != shape.num_kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("retrieved: expected ", shape.num_kv_heads,
                     " entries (one per kv head), got ", retrieved.size()));
  }
  const std::vector<v1::TokenRange> steady(result.steady().begin(),
                                           result.steady().end());
  if (!steady.empty()) {
    RETURN_IF_ERROR(CheckLocal(shape, local));
    RETURN_IF_ERROR(CheckRanges(steady, local.num_tokens, "steady"));
  }
  const uint32_t g = shape.group_size();
  const size_t head_bytes = size_t{shape.head_dim} * DTypeBytes(shape.dtype);

  std::vector<AttentionPartial> partials(
      shape.num_q_heads, AttentionPartial::Empty(shape.head_dim));
  for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
    const v1::KvHeadResult& head = result.heads(h);
    const std::string field = absl::StrCat("heads[", h, "]");
    if (head.kv_head() != h) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".kv_head: expected ", h, ", got ", head.kv_head()));
    }
    // (a) retrieval zone, exact.
    uint64_t slots = 0;
    for (const v1::SlotRange& r : head.retrieval()) slots += r.num_slots();
    const RetrievedKv& kv = retrieved[h];
    if (kv.keys.size() != slots * head_bytes ||
        kv.values.size() != slots * head_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".keys: expected ", slots * head_bytes,
          " bytes of keys and of values for ", slots, " retrieval slots, got ",
          kv.keys.size(), " and ", kv.values.size()));
    }
    const size_t d = shape.head_dim;
    MergeExact(
        shape, h, query, slots,
        [&](size_t first, size_t n, float* keys, float* values) {
          DecodeToFloat(shape.dtype, kv.keys.data() + first * head_bytes, n * d,
                        keys);
          DecodeToFloat(shape.dtype, kv.values.data() + first * head_bytes,
                        n * d, values);
        },
        partials);
    // (b) steady zone from the local copy, exact.
    if (!steady.empty()) {
      MergeLocal(shape, h, query, local, steady, partials);
    }
    // (c) estimation zone: the server's tail statistics.
    if (head.tail_size() != 0 && head.tail_size() != static_cast<int>(g)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".tail: expected 0 or ", g,
          " entries (one per q head of the group), got ", head.tail_size()));
    }
    for (int i = 0; i < head.tail_size(); ++i) {
      ASSIGN_OR_RETURN(AttentionPartial tail,
                       TailPartial(head.tail(i), shape.head_dim,
                                   absl::StrCat(field, ".tail[", i, "]")));
      MergeInto(partials[h * g + i], tail);
    }
  }
  return partials;
}

namespace {

absl::StatusOr<std::vector<float>> FinalizeAll(
    const AttentionShape& shape, const std::vector<AttentionPartial>& parts) {
  std::vector<float> out;
  out.reserve(size_t{shape.num_q_heads} * shape.head_dim);
  for (uint32_t q = 0; q < shape.num_q_heads; ++q) {
    if (parts[q].empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("q head ", q,
                       ": no tokens to attend to (empty retrieval, steady "
                       "and estimation zones)"));
    }
    std::vector<float> o = Finalize(parts[q]);
    out.insert(out.end(), o.begin(), o.end());
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<float>> RetrievedAttention(
    const AttentionShape& shape, const v1::SessionResult& result,
    absl::Span<const float> query, absl::Span<const RetrievedKv> retrieved,
    const LayerKvView& local) {
  ASSIGN_OR_RETURN(
      std::vector<AttentionPartial> parts,
      RetrievedAttentionPartials(shape, result, query, retrieved, local));
  return FinalizeAll(shape, parts);
}

absl::StatusOr<std::vector<float>> LocalFullAttention(
    const AttentionShape& shape, absl::Span<const float> query,
    const LayerKvView& local) {
  v1::TokenRange all;
  all.set_begin(0);
  all.set_end(local.num_tokens);
  ASSIGN_OR_RETURN(std::vector<AttentionPartial> parts,
                   LocalAttentionPartials(shape, query, local, {&all, 1}));
  return FinalizeAll(shape, parts);
}

}  // namespace wavekv
