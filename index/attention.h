// Exact attention over a set of keys/values as a *partial* softmax, and the
// log-sum-exp merge of partials (DESIGN.md, tripartite attention, step 5).
//
// Every partial is carried as (max logit m, denominator Σ e^{l-m},
// numerator Σ e^{l-m} v). Merging partials of disjoint token sets and then
// finalising gives exactly the softmax attention over their union, which is
// how the exact zones and the estimated tail are combined.
//
// Thread-safe: all functions are pure.
#ifndef WAVEKV_INDEX_ATTENTION_H_
#define WAVEKV_INDEX_ATTENTION_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/types/span.h"
#include "index/dtype.h"

namespace wavekv {

// A partial softmax for one query head. Empty: max_logit = -inf,
// denominator = 0, numerator all zeros.
struct AttentionPartial {
  float max_logit = -std::numeric_limits<float>::infinity();
  float denominator = 0.0f;
  std::vector<float> numerator;  // [head_dim]

  static AttentionPartial Empty(size_t head_dim);
  bool empty() const { return denominator == 0.0f; }
};

// Keys or values of `num_tokens` tokens of one kv head, [num_tokens][head_dim]
// in `dtype`, contiguous.
struct KvView {
  DType dtype = DType::kFp32;
  size_t head_dim = 0;
  size_t num_tokens = 0;
  const uint8_t* keys = nullptr;
  const uint8_t* values = nullptr;
};

// Exact partial attention of one query (fp32 [head_dim]) over `kv`, with
// logits q·k * scale. `kv.num_tokens == 0` gives the empty partial.
AttentionPartial PartialAttention(absl::Span<const float> query,
                                  const KvView& kv, float scale);

// PartialAttention for the `num_heads` query heads of a GQA group at once
// (queries: [num_heads][head_dim] fp32): K/V are read and decoded once for
// all heads. Returns one partial per head, in order.
std::vector<AttentionPartial> PartialAttentionGroup(
    absl::Span<const float> queries, size_t num_heads, const KvView& kv,
    float scale);

// Merges `b` into `a` with a log-sum-exp rescale. Either may be empty.
// REQUIRES: equal numerator sizes (or an empty one with no numerator).
void MergeInto(AttentionPartial& a, const AttentionPartial& b);

// Attention output numerator / denominator. REQUIRES: !p.empty().
std::vector<float> Finalize(const AttentionPartial& p);

// The default softmax scale 1/sqrt(head_dim).
float DefaultScale(size_t head_dim);

// Reference full attention of one query over `kv` (decode + finalise).
std::vector<float> FullAttention(absl::Span<const float> query,
                                 const KvView& kv, float scale);

}  // namespace wavekv

#endif  // WAVEKV_INDEX_ATTENTION_H_
