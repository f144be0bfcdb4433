// The wave index of one (session, layer, kv head) (DESIGN.md, "Wave
// index"): clusters of the keys between the sinks and the recent window,
// with per cluster the centroid C (exact mean of its member keys), the value
// sum VS = Σ v, the size s, and the member tokens in cluster-major slot
// order, so that the caller can store K/V with each cluster contiguous:
// cluster c occupies slots [cluster_offset(c), cluster_offset(c) + s_c).
//
// The index grows by blocks of consecutive tokens (AddBlock): the prefill
// build and every decode update (see NextIndexBlock in wave_index_params.h)
// each cluster one block into new clusters appended after the existing ones;
// existing clusters never change, so slots already laid out stay valid.
//
// Example:
//   WaveIndex index(head_dim);
//   TokenSpan next = NextIndexBlock(params, num_tokens, index.end_token());
//   if (!next.empty()) {
//     ASSIGN_OR_RETURN(BlockLayout layout,
//                      index.AddBlock(params, next.begin, rows_of(next)));
//     // copy K/V of layout.slot_tokens[i] into slot layout.first_slot + i
//   }
//
// Not thread-safe: AddBlock needs exclusive access; const methods may run
// concurrently with each other.
#ifndef WAVEKV_INDEX_WAVE_INDEX_H_
#define WAVEKV_INDEX_WAVE_INDEX_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/dtype.h"
#include "index/panel_matrix.h"
#include "index/wave_index_params.h"

namespace wavekv {

using ClusterId = uint32_t;

// K/V rows of consecutive tokens of one kv head, in `dtype`. Token t's key
// is at keys + t * stride (stride = row_stride_bytes, or head_dim *
// DTypeBytes(dtype) when 0), so rows of one head inside a
// [tokens][kv_heads][head_dim] layer buffer can be passed without copying.
struct KvRows {
  DType dtype = DType::kFp32;
  size_t head_dim = 0;
  size_t num_tokens = 0;
  const uint8_t* keys = nullptr;
  const uint8_t* values = nullptr;
  size_t row_stride_bytes = 0;
};

// Where the tokens of one added block went.
struct BlockLayout {
  ClusterId first_cluster = 0;
  uint32_t num_clusters = 0;
  uint64_t first_slot = 0;
  // Token position of each new slot, in slot order (cluster-major; members
  // of a cluster in token order): slot first_slot + i holds token
  // slot_tokens[i].
  std::vector<uint64_t> slot_tokens;
};

// One block clustered by WaveIndex::PrepareBlock and not yet part of the
// index (see CommitBlock).
struct PreparedBlock {
  uint64_t first_token = 0;
  // The index's size when the block was prepared (CommitBlock checks it).
  size_t base_clusters = 0;
  uint64_t base_slots = 0;
  std::vector<float> centroids;   // [num_clusters][head_dim]
  std::vector<float> value_sums;  // [num_clusters][head_dim]
  std::vector<uint32_t> sizes;    // [num_clusters]
  // Token of each new slot, cluster-major (members of a cluster in token
  // order): slot base_slots + i holds token slot_tokens[i].
  std::vector<uint64_t> slot_tokens;

  size_t num_clusters() const { return sizes.size(); }
  uint64_t num_tokens() const { return slot_tokens.size(); }
};

// The plain contents of a WaveIndex (for persistence, see
// wave_index_codec.h).
struct WaveIndexParts {
  size_t head_dim = 0;
  uint64_t begin_token = 0;
  uint64_t end_token = 0;
  std::vector<float> centroids;       // [num_clusters][head_dim]
  std::vector<float> value_sums;      // [num_clusters][head_dim]
  std::vector<uint32_t> sizes;        // [num_clusters]
  std::vector<uint64_t> slot_tokens;  // [num_slots], cluster-major
};

class WaveIndex {
 public:
  // REQUIRES: head_dim > 0.
  explicit WaveIndex(size_t head_dim);

  WaveIndex(WaveIndex&&) = default;
  WaveIndex& operator=(WaveIndex&&) = default;

  // Clusters tokens [first_token, first_token + rows.num_tokens) into
  // PlanSegments(params, n) new clusters, appended to the index, using up to
  // `num_threads` threads (same result for any count). Returns the layout of
  // the new slots. InvalidArgument if params are invalid, rows do not match
  // head_dim or lack data, or hold non-finite keys/values; FailedPrecondition
  // if the block does not start at end_token() (when the index is not
  // empty). An empty block changes nothing. On error nothing changes.
  absl::StatusOr<BlockLayout> AddBlock(const WaveIndexParams& params,
                                       uint64_t first_token, const KvRows& rows,
                                       int num_threads = 1);

  // AddBlock in two steps, so that a caller can cluster while others read
  // the index and hold its lock only for the cheap commit:
  //  - PrepareBlock validates and clusters (the expensive part; same errors
  //    as AddBlock) without changing the index, so it may run concurrently
  //    with const methods;
  //  - CommitBlock appends the prepared block: FailedPrecondition (nothing
  //    changes) if the index gained clusters since PrepareBlock. It copies
  //    the block's statistics and grows capacities geometrically, so it
  //    costs O(block) amortised.
  //  - CommitGrowthBytes tells beforehand by exactly how many bytes
  //    memory_bytes() grows when CommitBlock(block) runs on the index as it
  //    is now, so a caller can reserve memory first.
  // AddBlock(p, t, rows, n) is CommitBlock(*PrepareBlock(p, t, rows, n)).
  absl::StatusOr<PreparedBlock> PrepareBlock(const WaveIndexParams& params,
                                             uint64_t first_token,
                                             const KvRows& rows,
                                             int num_threads = 1) const;
  absl::StatusOr<BlockLayout> CommitBlock(PreparedBlock block);
  size_t CommitGrowthBytes(const PreparedBlock& block) const;

  // Rebuilds an index from its parts. InvalidArgument naming the problem if
  // they are inconsistent: array sizes, sizes not summing to the slots,
  // slot tokens not a permutation of [begin_token, end_token) or not in
  // token order within a cluster, non-finite values.
  static absl::StatusOr<WaveIndex> FromParts(WaveIndexParts parts);
  WaveIndexParts ToParts() const;

  size_t head_dim() const { return head_dim_; }
  // Tokens covered: [begin_token(), end_token()); both 0 while empty.
  uint64_t begin_token() const { return begin_token_; }
  uint64_t end_token() const { return end_token_; }
  TokenSpan indexed_span() const { return {begin_token_, end_token_}; }
  uint64_t num_slots() const { return slot_tokens_.size(); }

  size_t num_clusters() const { return sizes_.size(); }
  size_t num_nonempty_clusters() const { return num_nonempty_; }

  // Per-cluster statistics. REQUIRES: c < num_clusters().
  uint32_t cluster_size(ClusterId c) const { return sizes_[c]; }
  uint64_t cluster_offset(ClusterId c) const { return offsets_[c]; }
  absl::Span<const float> value_sum(ClusterId c) const {
    return {value_sums_.data() + c * head_dim_, head_dim_};
  }
  std::vector<float> centroid(ClusterId c) const;

  absl::Span<const uint32_t> cluster_sizes() const { return sizes_; }
  // num_clusters() + 1 prefix sums of the sizes (first slot of each cluster).
  absl::Span<const uint64_t> cluster_offsets() const { return offsets_; }
  // [num_clusters][head_dim].
  absl::Span<const float> value_sums() const { return value_sums_; }
  // Token position held by each slot.
  absl::Span<const uint64_t> slot_tokens() const { return slot_tokens_; }
  // The centroids packed for scoring (retrieval.h).
  const PanelMatrix& centroid_panels() const { return centroids_; }

  // Bytes of heap memory held.
  size_t memory_bytes() const;

 private:
  // Float capacity of centroids_ after growing from `capacity_floats` to
  // hold `rows` rows (CommitBlock's policy, mirrored by CommitGrowthBytes).
  size_t PanelTarget(size_t capacity_floats, size_t rows) const;

  size_t head_dim_;
  uint64_t begin_token_ = 0;
  uint64_t end_token_ = 0;
  PanelMatrix centroids_;
  std::vector<float> value_sums_;
  std::vector<uint32_t> sizes_;
  std::vector<uint64_t> offsets_;
  std::vector<uint64_t> slot_tokens_;
  size_t num_nonempty_ = 0;
};

}  // namespace wavekv

#endif  // WAVEKV_INDEX_WAVE_INDEX_H_
