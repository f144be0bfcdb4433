// The worker-side CPU reference of tripartite attention (DESIGN.md, "The
// algorithm"): turns one session's Retrieve answer at one layer into the
// attention output of every query head.
//
// For kv head h, and each q head of its GQA group (q head i uses kv head
// i / group_size), the output merges three partial softmaxes with the
// log-sum-exp rescale of index/attention.h:
//   (a) exact attention over the retrieval zone's K/V (the answer's slot
//       ranges, fetched with FetchClusters or inline with include_kv),
//   (b) exact attention over the steady zone (SessionResult.steady token
//       ranges) read from the caller's own copy of the layer's K/V,
//   (c) the estimation zone's tail statistics, when the answer has them.
// Logits are q·k / sqrt(head_dim).
//
// Thread-safe: all functions are pure.
//
// Example:
//   ASSIGN_OR_RETURN(AttentionShape shape, AttentionShape::FromProto(info));
//   ASSIGN_OR_RETURN(std::vector<float> out,
//       RetrievedAttention(shape, answer, query, RetrievedKvInline(answer),
//                          LayerKvView{keys, values, num_tokens}));
#ifndef WAVEKV_CLIENT_ATTENTION_REFERENCE_H_
#define WAVEKV_CLIENT_ATTENTION_REFERENCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/attention.h"
#include "index/dtype.h"
#include "proto/wavekv/v1/wavekv.pb.h"

namespace wavekv {

// The attention part of a session's model shape.
struct AttentionShape {
  uint32_t num_q_heads = 0;   // multiple of num_kv_heads
  uint32_t num_kv_heads = 0;  // >= 1
  uint32_t head_dim = 0;      // >= 1
  DType dtype = DType::kFp16;

  // InvalidArgument naming the field ("shape.dtype: ...") if unusable.
  static absl::StatusOr<AttentionShape> FromProto(const v1::ModelShape& shape);
  absl::Status Validate() const;
  uint32_t group_size() const { return num_q_heads / num_kv_heads; }
  // K (or V) bytes of one token of one layer, all kv heads.
  uint64_t TokenBytes() const;
};

// The caller's own copy of one layer's K/V in the wire layout
// [num_tokens][num_kv_heads][head_dim], session dtype.
struct LayerKvView {
  absl::Span<const uint8_t> keys;
  absl::Span<const uint8_t> values;
  uint64_t num_tokens = 0;
};

// One kv head's retrieval-zone K/V: [slots][head_dim], session dtype, in the
// order of KvHeadResult.retrieval (what include_kv returns inline and what
// FetchClusters returns reassembled).
struct RetrievedKv {
  absl::Span<const uint8_t> keys;
  absl::Span<const uint8_t> values;

  static RetrievedKv Of(const std::string& keys, const std::string& values);
};

// The inline K/V of an include_kv answer, indexed by kv head. The views
// point into `result`, which must outlive them.
std::vector<RetrievedKv> RetrievedKvInline(const v1::SessionResult& result);

// Per q head partial softmax over the answer's three zones, before
// finalisation (callers that hold more exact tokens can merge them in).
// `retrieved` is indexed by kv head (size num_kv_heads). `local` is needed
// only when the answer has steady ranges. Returns num_q_heads partials.
// InvalidArgument naming the field ("heads[2].keys: ...", "query: ...") when
// the answer does not fit the shape, the query or the local copy.
absl::StatusOr<std::vector<AttentionPartial>> RetrievedAttentionPartials(
    const AttentionShape& shape, const v1::SessionResult& result,
    absl::Span<const float> query, absl::Span<const RetrievedKv> retrieved,
    const LayerKvView& local);

// Attention outputs fp32 [num_q_heads][head_dim] of the answer.
// FailedPrecondition if a q head has nothing to attend to.
absl::StatusOr<std::vector<float>> RetrievedAttention(
    const AttentionShape& shape, const v1::SessionResult& result,
    absl::Span<const float> query, absl::Span<const RetrievedKv> retrieved,
    const LayerKvView& local);

// Exact partials of every q head over the token ranges `ranges` of the
// local copy (ranges must lie within local.num_tokens and not overlap).
absl::StatusOr<std::vector<AttentionPartial>> LocalAttentionPartials(
    const AttentionShape& shape, absl::Span<const float> query,
    const LayerKvView& local, absl::Span<const v1::TokenRange> ranges);

// Full attention of every q head over all local.num_tokens tokens: the
// ground truth a retrieval answer is compared with. [num_q_heads][head_dim].
absl::StatusOr<std::vector<float>> LocalFullAttention(
    const AttentionShape& shape, absl::Span<const float> query,
    const LayerKvView& local);

}  // namespace wavekv

#endif  // WAVEKV_CLIENT_ATTENTION_REFERENCE_H_
