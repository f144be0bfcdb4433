// Cluster ranking and tail statistics for one decode step of one GQA group
// (DESIGN.md, "Tripartite attention"):
//   l_hc = q_h · C_c * scale for each query head h of the group;
//   score_c = Σ_h softmax_h(l_h)_c over the non-empty clusters;
//   retrieval zone = the top ComputeZoneBudget(...).retrieval_clusters
//   clusters by score (attended exactly by the caller), estimation zone =
//   the next estimation_clusters; the rest is ignored. Empty clusters are
//   never selected.
//   For each query head, the estimation zone's partial softmax (tail
//   statistics): m = max l, denominator Σ s_c e^{l_c - m}, numerator
//   Σ e^{l_c - m} VS_c — every member token's logit approximated by its
//   cluster's, which never over-counts a cluster's mass (Jensen, since C_c
//   is the exact member mean).
// The caller merges its exact partial (steady + retrieval zones) with the
// tail using MergeInto (attention.h).
//
// Thread-safe: pure functions over a const WaveIndex.
#ifndef WAVEKV_INDEX_RETRIEVAL_H_
#define WAVEKV_INDEX_RETRIEVAL_H_

#include <cstddef>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/attention.h"
#include "index/wave_index.h"
#include "index/wave_index_params.h"

namespace wavekv {

struct RetrievalPlan {
  // Retrieval zone, best first (ties to the lower cluster id).
  std::vector<ClusterId> retrieval_clusters;
  // Estimation zone, in cluster id order.
  std::vector<ClusterId> estimation_clusters;
  // One per query head of the group: the estimation zone's partial softmax
  // (empty, i.e. max_logit -inf and denominator 0, when the zone is empty).
  std::vector<AttentionPartial> tail;
};

// Ranks `index`'s clusters for the `group_size` query heads `queries`
// ([group_size][head_dim] fp32) with logit scale `scale` (usually
// DefaultScale(head_dim)) and computes the tail statistics. Zone sizes come
// from params.retrieval_fraction / estimation_fraction. An index with no
// non-empty cluster gives empty zones and empty tails. InvalidArgument if
// group_size == 0, queries.size() != group_size * head_dim, a query element
// or scale is not finite, or the fractions are invalid.
absl::StatusOr<RetrievalPlan> PlanRetrieval(const WaveIndex& index,
                                            absl::Span<const float> queries,
                                            size_t group_size,
                                            const WaveIndexParams& params,
                                            float scale);

}  // namespace wavekv

#endif  // WAVEKV_INDEX_RETRIEVAL_H_
