// CPU bookkeeping of the wave buffer (DESIGN.md, "Wave buffer"): which
// clusters of one layer are resident in GPU slots, per row (one kv head of
// one session), in least-recently-used order. Plain C++ (no CUDA), so the
// policy is tested in CI; index/cuda/wave_buffer.h drives it from the GPU's
// selections and turns its plans into copies.
//
// A cluster of s tokens occupies ceil(s / slot_tokens) slots of its row, in
// any order. Its slot list lives at a fixed place of the slot-id table
// (SlotListIndex), so admitting a cluster writes its slot ids there and
// points the cluster's entry of the slot-list table at it; evicting it
// writes -1. Policy per step and row, with the ranked selection:
//  - every non-empty selected cluster is one lookup; resident ones are hits
//    and move to the LRU front (rank 0 ends frontmost);
//  - misses are admitted in rank order, evicting from the LRU tail, but never
//    a cluster selected in this step. A miss that still does not fit is
//    counted in `overflow_clusters` and skipped (a smaller later miss may
//    still fit: admission is not prefix-only); one larger than the whole
//    row's capacity is counted in `uncacheable_clusters`.
// Nothing selected is ever dropped: a cluster that is not resident is read
// from host memory by the attention kernel (zero-copy) for this step.
//
// Not thread-safe: one thread drives an instance (StepRows: see there).
#ifndef WAVEKV_INDEX_CUDA_WAVE_BUFFER_LRU_H_
#define WAVEKV_INDEX_CUDA_WAVE_BUFFER_LRU_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace wavekv::cuda {

struct WaveBufferStats {
  uint64_t steps = 0;
  uint64_t lookups = 0;  // non-empty selected clusters
  uint64_t hits = 0;     // of them, resident when selected
  uint64_t admitted_clusters = 0;
  uint64_t admitted_slots = 0;
  uint64_t evicted_clusters = 0;
  uint64_t overflow_clusters = 0;     // missed, not admitted: no room
  uint64_t uncacheable_clusters = 0;  // larger than a row's capacity
};

// What the GPU must do after one step's bookkeeping.
struct WaveBufferPlan {
  struct Copy {  // copy slot-sized piece `piece` of (row, cluster) to `slot`
    int32_t row;
    int32_t cluster;
    int32_t piece;
    int32_t slot;  // global slot id (row * slots_per_row + i)
    // Position in the row, this step, of the piece's first token (as laid
    // out by the page-table build), or -1 if Step got no row_first_token.
    int32_t first_token;
  };
  struct Write {  // table[index] = value
    int64_t index;
    int32_t value;
  };
  std::vector<Copy> copies;
  std::vector<Write> slot_id_writes;    // into the slot-id table
  std::vector<Write> slot_list_writes;  // into [rows][clusters] slot lists
  void Clear() {
    copies.clear();
    slot_id_writes.clear();
    slot_list_writes.clear();
  }
};

class WaveBufferLru {
 public:
  // cluster_sizes: [num_rows][num_clusters] tokens (>= 0). InvalidArgument
  // naming the field on bad shapes or values.
  static absl::StatusOr<WaveBufferLru> Create(
      int num_rows, int num_clusters, std::vector<int32_t> cluster_sizes,
      int slots_per_row, int slot_tokens);

  // Bookkeeping for one step: `selected` is [num_rows][num_selected] ranked
  // cluster ids (negative or >= num_clusters: no cluster). Fills `plan`
  // (cleared first) with the admissions and table writes. With
  // `row_first_token` ([num_rows]: tokens before the selection in each row,
  // i.e. the steady zone), copies carry their tokens' row positions.
  void Step(absl::Span<const int32_t> selected, int num_selected,
            WaveBufferPlan* plan,
            absl::Span<const int32_t> row_first_token = {});

  // Step in parts, for several threads: BeginStep once, then StepRows over
  // disjoint row ranges (may run concurrently: rows share no state), each
  // with its own plan (appended to) and stats, then AddStats with each.
  void BeginStep();
  void StepRows(absl::Span<const int32_t> selected, int num_selected,
                absl::Span<const int32_t> row_first_token, int row_begin,
                int row_end, WaveBufferPlan* plan, WaveBufferStats* stats);
  void AddStats(const WaveBufferStats& delta);

  // Index in the slot-id table of the first slot id of (row, cluster).
  int64_t SlotListIndex(int row, int cluster) const {
    return static_cast<int64_t>(row) * pieces_per_row_ +
           piece_prefix_[static_cast<int64_t>(row) * num_clusters_ + cluster];
  }
  // Entries of the slot-id table (all rows).
  int64_t slot_table_size() const {
    return static_cast<int64_t>(num_rows_) * pieces_per_row_;
  }
  bool resident(int row, int cluster) const {
    return entries_[Key(row, cluster)].resident != 0;
  }
  int free_slots(int row) const { return static_cast<int>(free_[row].size()); }
  int slots_per_row() const { return slots_per_row_; }
  const WaveBufferStats& stats() const { return stats_; }

 private:
  WaveBufferLru() = default;
  int64_t Key(int row, int cluster) const {
    return static_cast<int64_t>(row) * num_clusters_ + cluster;
  }
  int Pieces(int64_t key) const {
    return (entries_[key].size + slot_tokens_ - 1) / slot_tokens_;
  }
  void Unlink(int row, int cluster);
  void PushFront(int row, int cluster);
  void Evict(int row, int cluster, WaveBufferPlan* plan,
             WaveBufferStats* stats);

  // Per (row, cluster) state, packed so one lookup touches one cache line.
  struct Entry {
    uint64_t stamp = 0;  // step (1-based) that last selected it
    int32_t size = 0;    // tokens
    int32_t prev = -1;   // LRU links within the row
    int32_t next = -1;
    int32_t resident = 0;
    int32_t step_first = -1;  // position in the row at its last selection
  };

  int num_rows_ = 0;
  int num_clusters_ = 0;
  int slots_per_row_ = 0;
  int slot_tokens_ = 0;
  int64_t pieces_per_row_ = 0;  // slot-id table entries per row
  std::vector<Entry> entries_;
  std::vector<int64_t> piece_prefix_;  // per (row, cluster), within the row
  std::vector<int32_t> head_, tail_;   // per row, -1 = empty
  std::vector<std::vector<int32_t>> free_;  // free global slot ids per row
  std::vector<int32_t> slot_of_piece_;      // host mirror of the slot table
  uint64_t step_ = 0;
  WaveBufferStats stats_;
};

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_WAVE_BUFFER_LRU_H_
