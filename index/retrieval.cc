#include "index/retrieval.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <iterator>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "index/simd.h"

namespace wavekv {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// score[c] += e^{l[c] - m} / Σ e^{l - m} over the non-empty clusters (one
// query head's softmax). Empty clusters have l = -inf, hence weight 0.
WAVEKV_MULTIVERSION
void AccumulateSoftmax(const float* __restrict logits, size_t n,
                       float* __restrict probs, float* __restrict score) {
  const float m = simd::ReduceMax(logits, n);
  std::copy(logits, logits + n, probs);
  const float inv = 1.0f / simd::ExpShiftSum(probs, n, m);
  for (size_t c = 0; c < n; ++c) score[c] += probs[c] * inv;
}

// Query heads whose tail numerators are accumulated together.
constexpr size_t kHeadTile = 4;

// Tail statistics of every query head over the estimation zone `zone`.
// `weights` holds RoundUp(group_size, kHeadTile) + 1 rows of zone.size().
// Each value sum is read once and applied to all heads.
WAVEKV_MULTIVERSION
void TailPartials(const float* __restrict logits, size_t k, size_t group_size,
                  absl::Span<const ClusterId> zone, const WaveIndex& index,
                  float* __restrict weights,
                  std::vector<AttentionPartial>& out) {
  const size_t d = index.head_dim();
  const size_t e = zone.size();
  const size_t padded = (group_size + kHeadTile - 1) / kHeadTile * kHeadTile;
  // Rows group_size .. padded - 1 are zero weights (padding of the last
  // head tile); cluster sizes as floats are the last row.
  std::fill(weights + group_size * e, weights + padded * e, 0.0f);
  float* sizes = weights + padded * e;
  for (size_t i = 0; i < e; ++i) {
    sizes[i] = static_cast<float>(index.cluster_size(zone[i]));
  }
  for (size_t h = 0; h < group_size; ++h) {
    const float* l = logits + h * k;
    float* w = weights + h * e;
    for (size_t i = 0; i < e; ++i) w[i] = l[zone[i]];
    const float m = simd::ReduceMax(w, e);
    simd::ExpShiftSum(w, e, m);
    out[h].max_logit = m;
    // Tail estimate: denominator Σ s_c e^{l_c - m} (DESIGN.md, step 3).
    out[h].denominator = simd::Dot(sizes, w, e);
  }
  // Numerator Σ e^{l_c - m} VS_c: per 16 dims, the heads' sums stay in
  // registers while the zone's value sums stream by once.
  const float* vs_base = index.value_sums().data();
  for (size_t h0 = 0; h0 < group_size; h0 += kHeadTile) {
    const float* w = weights + h0 * e;  // rows h0 .. h0 + kHeadTile - 1
    size_t j = 0;
    for (; j + simd::kVecLanes <= d; j += simd::kVecLanes) {
      simd::F16 acc[kHeadTile] = {};
      for (size_t i = 0; i < e; ++i) {
        const simd::F16 v = simd::LoadF16(vs_base + zone[i] * d + j);
        for (size_t h = 0; h < kHeadTile; ++h) acc[h] += w[h * e + i] * v;
      }
      for (size_t h = 0; h < kHeadTile && h0 + h < group_size; ++h) {
        simd::StoreF16(out[h0 + h].numerator.data() + j, acc[h]);
      }
    }
    for (; j < d; ++j) {
      for (size_t h = 0; h < kHeadTile && h0 + h < group_size; ++h) {
        float acc = 0.0f;
        for (size_t i = 0; i < e; ++i)
          acc += w[h * e + i] * vs_base[zone[i] * d + j];
        out[h0 + h].numerator[j] = acc;
      }
    }
  }
}

// The `n` best of `candidates` under the strict order (score desc, id asc),
// returned in id order. `candidates` must be in id order.
std::vector<ClusterId> TopN(absl::Span<const ClusterId> candidates,
                            const std::vector<float>& score, size_t n) {
  if (n >= candidates.size()) {
    return std::vector<ClusterId>(candidates.begin(), candidates.end());
  }
  std::vector<ClusterId> out;
  if (n == 0) return out;
  std::vector<float> values(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) {
    values[i] = score[candidates[i]];
  }
  std::nth_element(values.begin(), values.begin() + (n - 1), values.end(),
                   std::greater<float>());
  const float threshold = values[n - 1];
  size_t above = 0;
  for (ClusterId c : candidates) above += score[c] > threshold;
  // Ties at the threshold go to the lower ids.
  size_t ties = n - above;
  out.reserve(n);
  for (ClusterId c : candidates) {
    if (score[c] > threshold) {
      out.push_back(c);
    } else if (score[c] == threshold && ties > 0) {
      out.push_back(c);
      --ties;
    }
  }
  return out;
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
  RETURN_IF_ERROR(params.Validate());

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

  // Zones under the strict order (score desc, id asc), so selection is
  // deterministic: first the r + e best non-empty clusters, then the r best
  // of those.
  std::vector<ClusterId> nonempty;
  nonempty.reserve(index.num_nonempty_clusters());
  for (size_t c = 0; c < k; ++c) {
    if (sizes[c] > 0) nonempty.push_back(static_cast<ClusterId>(c));
  }
  const size_t r = budget.retrieval_clusters;
  const size_t e = budget.estimation_clusters;
  const std::vector<ClusterId> zones = TopN(nonempty, score, r + e);
  plan.retrieval_clusters = TopN(zones, score, r);
  std::sort(plan.retrieval_clusters.begin(), plan.retrieval_clusters.end(),
            [&score](ClusterId a, ClusterId b) {
              return score[a] > score[b] || (score[a] == score[b] && a < b);
            });
  // Estimation zone: the rest of `zones`, kept in id order (value sums are
  // then read in memory order).
  plan.estimation_clusters.reserve(e);
  std::vector<ClusterId> retrieved_by_id = plan.retrieval_clusters;
  std::sort(retrieved_by_id.begin(), retrieved_by_id.end());
  std::set_difference(zones.begin(), zones.end(), retrieved_by_id.begin(),
                      retrieved_by_id.end(),
                      std::back_inserter(plan.estimation_clusters));

  if (e > 0) {
    std::vector<float> weights(
        ((group_size + kHeadTile - 1) / kHeadTile * kHeadTile + 1) * e);
    TailPartials(logits.data(), k, group_size, plan.estimation_clusters, index,
                 weights.data(), plan.tail);
  }
  return plan;
}

}  // namespace wavekv
