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
// Layout (the step is bound by cache misses, so state is small and dense):
// one 4-byte cell per (row, cluster) — its size and, if resident, the
// row-local id of its first slot — is all a lookup touches; everything else
// is per slot, i.e. over the ~5% of clusters that are resident. The LRU
// order is a per-row queue of touches (appended as clusters are selected or
// admitted; an entry is stale once its cluster is touched again or evicted), so
// a hit costs one append instead of relinking list neighbours; the queue is
// compacted when full. A step's lookups are prefetched ahead of use; no step
// allocates once the plans and queues have grown.
//
// Not thread-safe: one thread drives an instance (StepRows: see there).
#ifndef WAVEKV_INDEX_CUDA_WAVE_BUFFER_LRU_H_
#define WAVEKV_INDEX_CUDA_WAVE_BUFFER_LRU_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
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
    int32_t num_tokens;  // tokens of the piece, 1..slot_tokens
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

// A fixed set of threads for the bookkeeping of one step at a time (rows
// split over them), started once instead of per step; idle ones sleep on a
// futex (std::atomic wait), and one notify wakes them all at once.
// Thread-compatible: one caller of Run at a time.
class WaveBufferWorkers {
 public:
  static constexpr int kMaxThreads = 64;

  // 1 <= `threads` <= kMaxThreads run in all, the caller of Run included.
  explicit WaveBufferWorkers(int threads);
  ~WaveBufferWorkers();  // joins the helper threads
  WaveBufferWorkers(const WaveBufferWorkers&) = delete;
  WaveBufferWorkers& operator=(const WaveBufferWorkers&) = delete;

  int threads() const { return static_cast<int>(helpers_.size()) + 1; }
  // Runs fn(0), ..., fn(tasks - 1), task 0 on the caller, each other on its
  // own thread, and returns when all have returned. REQUIRES: 1 <= tasks <=
  // threads().
  void Run(int tasks, absl::FunctionRef<void(int)> fn);

 private:
  static constexpr uint64_t kStop = 0xff;  // in the tasks byte of word_
  void Helper(int index);

  // (generation << 8) | tasks of the current Run (kStop: exit). Helpers with
  // an index below tasks read fn_ after seeing a new generation (acquire);
  // the others touch nothing else.
  std::atomic<uint64_t> word_{0};
  std::atomic<int> pending_{0};  // tasks of this Run not yet returned
  const absl::FunctionRef<void(int)>* fn_ = nullptr;
  std::vector<std::thread> helpers_;
};

class WaveBufferLru {
 public:
  static constexpr int kMaxSlotsPerRow = (1 << 24) - 3;

  // cluster_sizes: [num_rows][num_clusters] tokens (>= 0); slots_per_row
  // at most kMaxSlotsPerRow. InvalidArgument naming the field on bad shapes
  // or values.
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

  // One step with its rows split over `tasks` (<= workers->threads(), at
  // most num_rows) contiguous ranges, one plan each: equal to Step with the
  // plans' contents concatenated in order. `plans` is resized to `tasks`.
  void StepParallel(absl::Span<const int32_t> selected, int num_selected,
                    absl::Span<const int32_t> row_first_token, int tasks,
                    WaveBufferWorkers* workers,
                    std::vector<WaveBufferPlan>* plans);

  // Index in the slot-id table of the first slot id of (row, cluster).
  int64_t SlotListIndex(int row, int cluster) const {
    return static_cast<int64_t>(row) * pieces_per_row_ +
           list_index_[Key(row, cluster)];
  }
  // Entries of the slot-id table (all rows).
  int64_t slot_table_size() const {
    return static_cast<int64_t>(num_rows_) * pieces_per_row_;
  }
  bool resident(int row, int cluster) const {
    return (cells_[Key(row, cluster)] >> kSizeBits) >= kFirstSlot;
  }
  int free_slots(int row) const { return rows_[row].num_free; }
  int slots_per_row() const { return slots_per_row_; }
  const WaveBufferStats& stats() const { return stats_; }

 private:
  // A cell packs (state << kSizeBits) | size code: size codes below
  // kSizeEscape are the size, kSizeEscape means "see sizes_"; state is
  // kAbsent, kPending (a miss of the running step) or kFirstSlot + the
  // row-local first slot of a resident cluster.
  static constexpr uint32_t kSizeBits = 8;
  static constexpr uint32_t kSizeEscape = (1u << kSizeBits) - 1;
  static constexpr uint32_t kAbsent = 0, kPending = 1, kFirstSlot = 2;
  // seq value of a resident cluster's first slot while it is selected in
  // the running step (before its queue append).
  static constexpr int32_t kMarked = 0x7fffffff;

  // Per row; rows share nothing, so StepRows may run rows concurrently.
  struct alignas(64) Row {
    // Per row-local slot: the queue position of the cluster's latest touch
    // on its first slot (-1 elsewhere), the cluster whose first slot it is,
    // and the next slot the same cluster holds (-1 = last).
    std::vector<int32_t> seq, owner, chain;
    std::vector<int32_t> free;  // stack of free slots; [0, num_free)
    int32_t num_free = 0;
    // LRU queue of first slots, oldest first: live in [front, back); an
    // entry is stale unless seq[slot] is its position.
    std::vector<int32_t> queue;
    int32_t front = 0, back = 0;
    int32_t step_begin = 0;  // back when the running step began
  };
  struct Miss {
    int32_t cluster;
    int32_t first;  // row position this step, or -1
    int32_t size;
  };
  struct Scratch {              // of StepRow, per thread
    std::vector<int32_t> hits;  // first slots, rank order
    std::vector<Miss> misses;   // rank order
  };

  WaveBufferLru() = default;
  int64_t Key(int row, int cluster) const {
    return static_cast<int64_t>(row) * num_clusters_ + cluster;
  }
  int Pieces(int32_t size) const {
    return (size + slot_tokens_ - 1) / slot_tokens_;
  }
  int32_t CellSize(uint32_t cell, int64_t key) const {
    const uint32_t code = cell & kSizeEscape;
    return code < kSizeEscape ? static_cast<int32_t>(code) : sizes_[key];
  }
  void StepRow(int row, const int32_t* ids, int num_selected, int64_t first,
               bool positions, WaveBufferPlan* plan, WaveBufferStats* stats);
  // Makes room for `appends` queue entries (drops stale ones).
  static void ReserveQueue(Row& r, int slots, int appends);
  // The least recently touched cluster's first slot, popped from the queue,
  // unless this step selected it (then -1, as when none is resident).
  static int32_t Victim(Row& r);
  void Evict(int row, int32_t slot, WaveBufferPlan* plan,
             WaveBufferStats* stats);

  int num_rows_ = 0;
  int num_clusters_ = 0;
  int slots_per_row_ = 0;
  int slot_tokens_ = 0;
  int64_t pieces_per_row_ = 0;       // slot-id table entries per row
  std::vector<uint32_t> cells_;      // [rows][clusters]
  std::vector<int32_t> sizes_;       // [rows][clusters], for escaped sizes
  std::vector<int32_t> list_index_;  // [rows][clusters] piece prefix in row
  std::vector<Row> rows_;
  struct alignas(64) PaddedStats {
    WaveBufferStats stats;
  };
  std::vector<PaddedStats> deltas_;  // StepParallel's, per task
  WaveBufferStats stats_;
};

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_WAVE_BUFFER_LRU_H_
