// Parameters of the wave index (DESIGN.md, "The algorithm") and the pure
// planning rules derived from them: which tokens to cluster next, how a
// block is split into segments, and the retrieval/estimation budgets.
//
// The fields mirror kvstore's IndexOptions and wavekv.v1.IndexOptions (same
// names, defaults and ranges); kvstore converts. index/ depends on neither.
//
// Thread-safe: plain values and pure functions.
#ifndef WAVEKV_INDEX_WAVE_INDEX_PARAMS_H_
#define WAVEKV_INDEX_WAVE_INDEX_PARAMS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace wavekv {

struct WaveIndexParams {
  // First tokens of the context, never clustered (steady zone). 0..4096.
  uint32_t sink_tokens = 4;
  // Most recent tokens, never clustered (steady zone). 0..65536.
  uint32_t recent_tokens = 64;
  // Tokens per clustering segment. 64..1048576.
  uint32_t segment_tokens = 8192;
  // Average tokens per cluster. 1..4096.
  uint32_t cluster_size = 16;
  // Spherical k-means iterations inside each segment (before the final
  // global assignment). 1..100.
  uint32_t kmeans_iterations = 9;
  // Tokens waiting beyond the recent window that trigger clustering them
  // into new clusters. 16..1048576, a multiple of cluster_size.
  uint32_t update_tokens = 1024;
  // Share of non-empty clusters attended exactly. (0, 1].
  float retrieval_fraction = 0.018f;
  // Share of non-empty clusters estimated from their statistics. [0, 1],
  // retrieval_fraction + estimation_fraction <= 1.
  float estimation_fraction = 0.232f;

  // OK, or InvalidArgument naming the field and value, e.g.
  // "index_options.cluster_size: must be in [1, 4096], got 0". Never clamps.
  absl::Status Validate() const;
};

// Half-open range [begin, end) of token positions.
struct TokenSpan {
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t num_tokens() const { return end > begin ? end - begin : 0; }
  bool empty() const { return end <= begin; }
  friend bool operator==(const TokenSpan&, const TokenSpan&) = default;
};

// The tokens a layer's index should cluster next, when `num_tokens` are
// stored and the index covers [sink_tokens, indexed_end) (indexed_end <=
// sink_tokens when nothing is indexed yet): everything from the index end
// up to the recent window, once at least update_tokens tokens wait there;
// otherwise an empty span. Prefill (one large block) and decode updates
// (blocks of exactly update_tokens) both follow from this rule.
TokenSpan NextIndexBlock(const WaveIndexParams& params, uint64_t num_tokens,
                         uint64_t indexed_end);

// The steady zone (attended exactly by the caller): the tokens of
// [0, num_tokens) outside the indexed span, as at most two ranges in order.
std::vector<TokenSpan> SteadySpans(uint64_t num_tokens, TokenSpan indexed);

// One clustering segment of a block: rows [begin, end) of the block and the
// number of clusters it gets.
struct SegmentPlan {
  uint64_t begin = 0;
  uint64_t end = 0;
  uint32_t num_clusters = 0;
};

// Splits a block of `num_tokens` tokens into max(1, round(n / segment_tokens))
// segments of near-equal size, each with max(1, round(n_seg / cluster_size))
// clusters. Empty for num_tokens == 0.
std::vector<SegmentPlan> PlanSegments(const WaveIndexParams& params,
                                      uint64_t num_tokens);

// Cluster budgets of one decode step over `num_nonempty_clusters` clusters:
// retrieval = ceil(retrieval_fraction * n), at least 1 when n > 0;
// estimation = ceil(estimation_fraction * n), at most n - retrieval.
// (A product within 1e-3 above an integer counts as that integer, so float
// fractions such as 0.018f give the intended counts.)
struct ZoneBudget {
  size_t retrieval_clusters = 0;
  size_t estimation_clusters = 0;
};
ZoneBudget ComputeZoneBudget(const WaveIndexParams& params,
                             size_t num_nonempty_clusters);

}  // namespace wavekv

#endif  // WAVEKV_INDEX_WAVE_INDEX_PARAMS_H_
