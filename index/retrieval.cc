#include "index/retrieval.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "index/simd.h"

namespace wavekv {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// score[c] += e^{l[c] - m} / Σ e^{l - m} over the non-empty clusters (one
// query head's softmax). Empty clusters have l = -inf, hence weight 0.
WAVEKV_MULTIVERSION
void AccumulateSoftmax(const float* __restrict logits, size_t n,
                       float* __restrict probs, float* __restrict score) {
  float m = kNegInf;
  for (size_t c = 0; c < n; ++c) m = std::max(m, logits[c]);
  float z = 0.0f;
  for (size_t c = 0; c < n; ++c) {
    probs[c] = simd::Exp(logits[c] - m);
    z += probs[c];
  }
  const float inv = 1.0f / z;
  for (size_t c = 0; c < n; ++c) score[c] += probs[c] * inv;
}

// Tail statistics of one query head over the estimation zone.
WAVEKV_MULTIVERSION
void TailPartial(const float* __restrict logits,
                 absl::Span<const ClusterId> zone, const WaveIndex& index,
                 float* __restrict weights, AttentionPartial& out) {
  const size_t d = index.head_dim();
  float m = kNegInf;
  for (ClusterId c : zone) m = std::max(m, logits[c]);
  float den = 0.0f;
  for (size_t i = 0; i < zone.size(); ++i) {
    weights[i] = simd::Exp(logits[zone[i]] - m);
  }
  for (size_t i = 0; i < zone.size(); ++i) {
    // Tail estimate: denominator Σ s_c e^{l_c}, numerator Σ e^{l_c} VS_c.
    den += static_cast<float>(index.cluster_size(zone[i])) * weights[i];
    simd::Axpy(weights[i], index.value_sum(zone[i]).data(),
               out.numerator.data(), d);
  }
  out.max_logit = m;
  out.denominator = den;
}

}  // namespace

absl::StatusOr<RetrievalPlan> PlanRetrieval(const WaveIndex& index,
                                            absl::Span<const float> queries,
                                            size_t group_size,
                                            const WaveIndexParams& params,
                                            float scale) {
  const size_t d = index.head_dim();
  if (group_size == 0) {
    return absl::InvalidArgumentError("group_size: must be > 0");
  }
  if (queries.size() != group_size * d) {
    return absl::InvalidArgumentError(
        absl::StrCat("query: expected ", group_size * d, " floats (",
                     group_size, " heads x ", d, "), got ", queries.size()));
  }
  for (size_t i = 0; i < queries.size(); ++i) {
    if (!std::isfinite(queries[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "query: non-finite value at head ", i / d, ", element ", i % d));
    }
  }
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale: must be finite, got ", scale));
  }
  if (absl::Status s = params.Validate(); !s.ok()) return s;

  RetrievalPlan plan;
  plan.tail.assign(group_size, AttentionPartial::Empty(d));
  const size_t k = index.num_clusters();
  const ZoneBudget budget =
      ComputeZoneBudget(params, index.num_nonempty_clusters());
  if (budget.retrieval_clusters == 0) return plan;

  // Logits of every (query head, cluster); empty clusters masked to -inf.
  std::vector<float> logits(group_size * k);
  InnerProducts(queries.data(), group_size, index.centroid_panels(), scale,
                logits.data());
  const absl::Span<const uint32_t> sizes = index.cluster_sizes();
  if (index.num_nonempty_clusters() < k) {
    for (size_t h = 0; h < group_size; ++h) {
      for (size_t c = 0; c < k; ++c) {
        if (sizes[c] == 0) logits[h * k + c] = kNegInf;
      }
    }
  }
  // Group score: sum over heads of each head's softmax over clusters.
  std::vector<float> score(k, 0.0f), scratch(k);
  for (size_t h = 0; h < group_size; ++h) {
    AccumulateSoftmax(logits.data() + h * k, k, scratch.data(), score.data());
  }

  // Non-empty clusters ordered by (score desc, id asc): a strict total
  // order, so selection is deterministic.
  std::vector<ClusterId> order;
  order.reserve(index.num_nonempty_clusters());
  for (size_t c = 0; c < k; ++c) {
    if (sizes[c] > 0) order.push_back(static_cast<ClusterId>(c));
  }
  auto better = [&score](ClusterId a, ClusterId b) {
    return score[a] > score[b] || (score[a] == score[b] && a < b);
  };
  const size_t r = budget.retrieval_clusters;
  const size_t e = budget.estimation_clusters;
  const auto zone_end = order.begin() + r + e;
  if (zone_end < order.end()) {
    std::nth_element(order.begin(), zone_end, order.end(), better);
  }
  if (r < r + e)
    std::nth_element(order.begin(), order.begin() + r, zone_end, better);
  std::sort(order.begin(), order.begin() + r, better);
  std::sort(order.begin() + r, zone_end, better);
  plan.retrieval_clusters.assign(order.begin(), order.begin() + r);
  plan.estimation_clusters.assign(order.begin() + r, zone_end);

  if (e > 0) {
    for (size_t h = 0; h < group_size; ++h) {
      TailPartial(logits.data() + h * k, plan.estimation_clusters, index,
                  scratch.data(), plan.tail[h]);
    }
  }
  return plan;
}

}  // namespace wavekv
