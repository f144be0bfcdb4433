#include "index/wave_index.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "index/kmeans.h"

namespace wavekv {
namespace {

// Decodes `rows` (keys or values) into [num_tokens][head_dim] fp32 and checks
// that every element is finite.
absl::Status DecodeRows(const KvRows& rows, const uint8_t* base,
                        const char* field, std::vector<float>& out) {
  const size_t d = rows.head_dim;
  const size_t row_bytes = d * DTypeBytes(rows.dtype);
  const size_t stride =
      rows.row_stride_bytes == 0 ? row_bytes : rows.row_stride_bytes;
  out.resize(rows.num_tokens * d);
  for (size_t t = 0; t < rows.num_tokens; ++t) {
    DecodeToFloat(rows.dtype, base + t * stride, d, out.data() + t * d);
  }
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": non-finite value at token ", i / d,
                       " of the block, element ", i % d));
    }
  }
  return absl::OkStatus();
}

}  // namespace

WaveIndex::WaveIndex(size_t head_dim)
    : head_dim_(head_dim), centroids_(head_dim), offsets_{0} {}

std::vector<float> WaveIndex::centroid(ClusterId c) const {
  std::vector<float> out(head_dim_);
  centroids_.CopyRow(c, out.data());
  return out;
}

absl::StatusOr<WaveIndex> WaveIndex::FromParts(WaveIndexParts parts) {
  const size_t d = parts.head_dim;
  if (d == 0) return absl::InvalidArgumentError("head_dim: must be > 0");
  const size_t k = parts.sizes.size();
  if (k > std::numeric_limits<ClusterId>::max()) {
    return absl::InvalidArgumentError("sizes: too many clusters");
  }
  if (parts.centroids.size() != k * d || parts.value_sums.size() != k * d) {
    return absl::InvalidArgumentError(absl::StrCat(
        "centroids/value_sums: expected ", k * d, " floats each, got ",
        parts.centroids.size(), " and ", parts.value_sums.size()));
  }
  for (size_t i = 0; i < k * d; ++i) {
    if (!std::isfinite(parts.centroids[i]) ||
        !std::isfinite(parts.value_sums[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "centroids/value_sums: non-finite value in cluster ", i / d));
    }
  }
  uint64_t total = 0;
  for (uint32_t s : parts.sizes) total += s;
  const uint64_t span = parts.end_token >= parts.begin_token
                            ? parts.end_token - parts.begin_token
                            : std::numeric_limits<uint64_t>::max();
  if (total != parts.slot_tokens.size() || total != span) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sizes: sum to ", total, ", but there are ", parts.slot_tokens.size(),
        " slot tokens and the token range [", parts.begin_token, ", ",
        parts.end_token, ") holds ", span));
  }
  std::vector<bool> seen(total, false);
  uint64_t slot = 0;
  for (size_t c = 0; c < k; ++c) {
    for (uint32_t i = 0; i < parts.sizes[c]; ++i, ++slot) {
      const uint64_t t = parts.slot_tokens[slot];
      if (t < parts.begin_token || t >= parts.end_token ||
          seen[t - parts.begin_token]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "slot_tokens[", slot, "] = ", t, " is out of range or repeated"));
      }
      if (i > 0 && parts.slot_tokens[slot - 1] >= t) {
        return absl::InvalidArgumentError(
            absl::StrCat("slot_tokens: cluster ", c, " is not in token order"));
      }
      seen[t - parts.begin_token] = true;
    }
  }

  WaveIndex index(d);
  if (total > 0) {
    index.begin_token_ = parts.begin_token;
    index.end_token_ = parts.end_token;
  }
  index.centroids_.Reserve(k);
  for (size_t c = 0; c < k; ++c) {
    index.centroids_.AppendRow(parts.centroids.data() + c * d);
    index.offsets_.push_back(index.offsets_.back() + parts.sizes[c]);
    if (parts.sizes[c] > 0) ++index.num_nonempty_;
  }
  index.value_sums_ = std::move(parts.value_sums);
  index.sizes_ = std::move(parts.sizes);
  index.slot_tokens_ = std::move(parts.slot_tokens);
  return index;
}

WaveIndexParts WaveIndex::ToParts() const {
  WaveIndexParts parts;
  parts.head_dim = head_dim_;
  parts.begin_token = begin_token_;
  parts.end_token = end_token_;
  const size_t k = num_clusters();
  parts.centroids.resize(k * head_dim_);
  for (size_t c = 0; c < k; ++c) {
    centroids_.CopyRow(c, parts.centroids.data() + c * head_dim_);
  }
  parts.value_sums = value_sums_;
  parts.sizes = sizes_;
  parts.slot_tokens = slot_tokens_;
  return parts;
}

size_t WaveIndex::memory_bytes() const {
  return centroids_.memory_bytes() + value_sums_.capacity() * sizeof(float) +
         sizes_.capacity() * sizeof(uint32_t) +
         offsets_.capacity() * sizeof(uint64_t) +
         slot_tokens_.capacity() * sizeof(uint64_t);
}

absl::StatusOr<BlockLayout> WaveIndex::AddBlock(const WaveIndexParams& params,
                                                uint64_t first_token,
                                                const KvRows& rows,
                                                int num_threads) {
  ASSIGN_OR_RETURN(PreparedBlock block,
                   PrepareBlock(params, first_token, rows, num_threads));
  return CommitBlock(std::move(block));
}

absl::StatusOr<PreparedBlock> WaveIndex::PrepareBlock(
    const WaveIndexParams& params, uint64_t first_token, const KvRows& rows,
    int num_threads) const {
  RETURN_IF_ERROR(params.Validate());
  const size_t d = head_dim_;
  if (rows.head_dim != d) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim: index has ", d, ", rows have ", rows.head_dim));
  }
  const size_t row_bytes = d * DTypeBytes(rows.dtype);
  if (rows.row_stride_bytes != 0 && rows.row_stride_bytes < row_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("row_stride_bytes: ", rows.row_stride_bytes,
                     " is less than one row (", row_bytes, " bytes)"));
  }
  PreparedBlock block;
  block.first_token = first_token;
  block.base_clusters = num_clusters();
  block.base_slots = num_slots();
  if (rows.num_tokens == 0) return block;
  if (rows.keys == nullptr || rows.values == nullptr) {
    return absl::InvalidArgumentError("keys/values: null with num_tokens > 0");
  }
  if (num_slots() > 0 && first_token != end_token_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "index covers tokens [", begin_token_, ", ", end_token_,
        "); a new block must start at ", end_token_, ", got ", first_token));
  }
  const std::vector<SegmentPlan> plan = PlanSegments(params, rows.num_tokens);
  uint64_t new_clusters = 0;
  for (const SegmentPlan& s : plan) new_clusters += s.num_clusters;
  if (num_clusters() + new_clusters > std::numeric_limits<ClusterId>::max()) {
    return absl::ResourceExhaustedError("index: too many clusters");
  }

  std::vector<float> keys, values;
  RETURN_IF_ERROR(DecodeRows(rows, rows.keys, "keys", keys));
  RETURN_IF_ERROR(DecodeRows(rows, rows.values, "values", values));
  absl::StatusOr<KMeansResult> km =
      SegmentedSphericalKMeans(keys.data(), rows.num_tokens, d, plan,
                               params.kmeans_iterations, num_threads);
  if (!km.ok()) return km.status();
  keys.clear();
  keys.shrink_to_fit();

  // Cluster-major layout: a stable counting sort of the tokens by cluster.
  const size_t k = km->num_clusters;
  std::vector<uint64_t> cursor(k, 0);
  for (size_t c = 1; c < k; ++c) cursor[c] = cursor[c - 1] + km->sizes[c - 1];
  block.slot_tokens.resize(rows.num_tokens);
  // Value sums accumulated in double, in token order.
  std::vector<double> vs(k * d, 0.0);
  for (size_t t = 0; t < rows.num_tokens; ++t) {
    const uint32_t c = km->assignment[t];
    block.slot_tokens[cursor[c]++] = first_token + t;
    double* acc = vs.data() + c * d;
    const float* v = values.data() + t * d;
    for (size_t j = 0; j < d; ++j) acc[j] += v[j];
  }
  block.value_sums.assign(vs.begin(), vs.end());
  block.centroids = std::move(km->centroids);
  block.sizes = std::move(km->sizes);
  return block;
}

namespace {

// Capacity after growing to hold `needed` elements: unchanged if it
// suffices, else at least doubled (amortised O(1) appends).
size_t GrownCapacity(size_t capacity, size_t needed) {
  return needed <= capacity ? capacity : std::max(needed, 2 * capacity);
}

// Floats of a PanelMatrix of `dim` columns holding `rows` rows.
size_t PanelFloats(size_t rows, size_t dim) {
  const size_t lanes = PanelMatrix::kPanelRows;
  return (rows + lanes - 1) / lanes * lanes * dim;
}

// Reserves GrownCapacity elements; libstdc++'s reserve(n) allocates exactly
// n, which CommitGrowthBytes relies on.
template <typename T>
void GrowFor(std::vector<T>& v, size_t needed) {
  v.reserve(GrownCapacity(v.capacity(), needed));
}

}  // namespace

size_t WaveIndex::CommitGrowthBytes(const PreparedBlock& block) const {
  const size_t k = block.num_clusters();
  const size_t d = head_dim_;
  auto growth = [](size_t capacity, size_t needed, size_t elem_bytes) {
    return (GrownCapacity(capacity, needed) - capacity) * elem_bytes;
  };
  const size_t panel_capacity = centroids_.memory_bytes() / sizeof(float);
  size_t bytes =
      PanelTarget(panel_capacity, num_clusters() + k) * sizeof(float) -
      panel_capacity * sizeof(float);
  bytes +=
      growth(value_sums_.capacity(), value_sums_.size() + k * d, sizeof(float));
  bytes += growth(sizes_.capacity(), sizes_.size() + k, sizeof(uint32_t));
  bytes += growth(offsets_.capacity(), offsets_.size() + k, sizeof(uint64_t));
  bytes += growth(slot_tokens_.capacity(),
                  slot_tokens_.size() + block.num_tokens(), sizeof(uint64_t));
  return bytes;
}

size_t WaveIndex::PanelTarget(size_t capacity_floats, size_t rows) const {
  const size_t needed = PanelFloats(rows, head_dim_);
  if (needed <= capacity_floats) return capacity_floats;
  // Doubling in whole panels, so that Reserve() allocates exactly this.
  const size_t panel = PanelFloats(1, head_dim_);
  return std::max(needed, 2 * (capacity_floats / panel) * panel);
}

absl::StatusOr<BlockLayout> WaveIndex::CommitBlock(PreparedBlock block) {
  if (block.base_clusters != num_clusters() ||
      block.base_slots != num_slots()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "block: prepared against an index of ", block.base_clusters,
        " clusters and ", block.base_slots, " slots, but it now has ",
        num_clusters(), " and ", num_slots()));
  }
  const size_t d = head_dim_;
  const size_t k = block.num_clusters();
  BlockLayout layout;
  layout.first_cluster = static_cast<ClusterId>(num_clusters());
  layout.first_slot = num_slots();
  layout.num_clusters = static_cast<uint32_t>(k);
  if (block.num_tokens() == 0) return layout;

  const size_t panel_capacity = centroids_.memory_bytes() / sizeof(float);
  const size_t panel_target = PanelTarget(panel_capacity, num_clusters() + k);
  if (panel_target > panel_capacity) centroids_.Reserve(panel_target / d);
  GrowFor(value_sums_, value_sums_.size() + k * d);
  GrowFor(sizes_, sizes_.size() + k);
  GrowFor(offsets_, offsets_.size() + k);
  GrowFor(slot_tokens_, slot_tokens_.size() + block.num_tokens());

  if (num_slots() == 0) begin_token_ = block.first_token;
  end_token_ = block.first_token + block.num_tokens();
  for (size_t c = 0; c < k; ++c) {
    centroids_.AppendRow(block.centroids.data() + c * d);
    sizes_.push_back(block.sizes[c]);
    offsets_.push_back(offsets_.back() + block.sizes[c]);
    if (block.sizes[c] > 0) ++num_nonempty_;
  }
  value_sums_.insert(value_sums_.end(), block.value_sums.begin(),
                     block.value_sums.end());
  slot_tokens_.insert(slot_tokens_.end(), block.slot_tokens.begin(),
                      block.slot_tokens.end());
  layout.slot_tokens = std::move(block.slot_tokens);
  return layout;
}

}  // namespace wavekv
