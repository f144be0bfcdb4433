#include "index/wave_index_params.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv {
namespace {

absl::Status CheckRange(const char* field, uint32_t value, uint32_t lo,
                        uint32_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(absl::StrCat("index_options.", field,
                                                   ": must be in [", lo, ", ",
                                                   hi, "], got ", value));
  }
  return absl::OkStatus();
}

// ceil(fraction * n), treating products just above an integer (float
// representation error) as that integer.
size_t FractionCeil(float fraction, size_t n) {
  const double x = static_cast<double>(fraction) * static_cast<double>(n);
  return static_cast<size_t>(std::max(0.0, std::ceil(x - 1e-3)));
}

}  // namespace

absl::Status WaveIndexParams::Validate() const {
  RETURN_IF_ERROR(CheckRange("sink_tokens", sink_tokens, 0, 4096));
  RETURN_IF_ERROR(CheckRange("recent_tokens", recent_tokens, 0, 65536));
  RETURN_IF_ERROR(CheckRange("segment_tokens", segment_tokens, 64, 1048576));
  RETURN_IF_ERROR(CheckRange("cluster_size", cluster_size, 1, 4096));
  RETURN_IF_ERROR(CheckRange("kmeans_iterations", kmeans_iterations, 1, 100));
  RETURN_IF_ERROR(CheckRange("update_tokens", update_tokens, 16, 1048576));
  if (update_tokens % cluster_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "index_options.update_tokens: must be a multiple of cluster_size (",
        cluster_size, "), got ", update_tokens));
  }
  // Written so that NaN fails too.
  if (!(retrieval_fraction > 0.0f && retrieval_fraction <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_options.retrieval_fraction: must be in (0, 1], "
                     "got ",
                     retrieval_fraction));
  }
  if (!(estimation_fraction >= 0.0f && estimation_fraction <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_options.estimation_fraction: must be in [0, 1], "
                     "got ",
                     estimation_fraction));
  }
  if (static_cast<double>(retrieval_fraction) + estimation_fraction >
      1.0 + 1e-6) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_options.estimation_fraction: retrieval_fraction + "
                     "estimation_fraction must be <= 1, got ",
                     retrieval_fraction, " + ", estimation_fraction));
  }
  return absl::OkStatus();
}

TokenSpan NextIndexBlock(const WaveIndexParams& params, uint64_t num_tokens,
                         uint64_t indexed_end) {
  const uint64_t begin = std::max<uint64_t>(indexed_end, params.sink_tokens);
  const uint64_t limit =
      num_tokens > params.recent_tokens ? num_tokens - params.recent_tokens : 0;
  if (limit <= begin || limit - begin < params.update_tokens) return {};
  return TokenSpan{begin, limit};
}

std::vector<TokenSpan> SteadySpans(uint64_t num_tokens, TokenSpan indexed) {
  std::vector<TokenSpan> out;
  if (indexed.empty() || indexed.begin >= num_tokens) {
    if (num_tokens > 0) out.push_back({0, num_tokens});
    return out;
  }
  if (indexed.begin > 0) out.push_back({0, indexed.begin});
  if (indexed.end < num_tokens) out.push_back({indexed.end, num_tokens});
  return out;
}

std::vector<SegmentPlan> PlanSegments(const WaveIndexParams& params,
                                      uint64_t num_tokens) {
  std::vector<SegmentPlan> out;
  if (num_tokens == 0 || params.segment_tokens == 0 ||
      params.cluster_size == 0) {
    return out;
  }
  // round(n / segment_tokens), at least one segment.
  const uint64_t num_segments = std::max<uint64_t>(
      1, (num_tokens + params.segment_tokens / 2) / params.segment_tokens);
  out.reserve(num_segments);
  for (uint64_t s = 0; s < num_segments; ++s) {
    SegmentPlan seg;
    seg.begin = s * num_tokens / num_segments;
    seg.end = (s + 1) * num_tokens / num_segments;
    const uint64_t n = seg.end - seg.begin;
    seg.num_clusters = static_cast<uint32_t>(std::max<uint64_t>(
        1, (n + params.cluster_size / 2) / params.cluster_size));
    out.push_back(seg);
  }
  return out;
}

ZoneBudget ComputeZoneBudget(const WaveIndexParams& params,
                             size_t num_nonempty_clusters) {
  ZoneBudget b;
  const size_t n = num_nonempty_clusters;
  if (n == 0) return b;
  b.retrieval_clusters =
      std::clamp<size_t>(FractionCeil(params.retrieval_fraction, n), 1, n);
  b.estimation_clusters = std::min(FractionCeil(params.estimation_fraction, n),
                                   n - b.retrieval_clusters);
  return b;
}

}  // namespace wavekv
