#include "index/cuda/wave_buffer_lru.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace wavekv::cuda {
namespace {

// Cells are requested this many selected ids ahead of their use (the cells
// of a 1M-token row span 256 KiB, and the other rows and layers evict them
// between steps: nearly every lookup misses the caches), a resident
// cluster's queue position half as far ahead (once its cell has arrived).
constexpr int kCellAhead = 64;
constexpr int kSlotAhead = 32;

template <typename T>
inline void Prefetch(const T* p) {
  __builtin_prefetch(p, 1, 3);
}

}  // namespace

absl::StatusOr<WaveBufferLru> WaveBufferLru::Create(
    int num_rows, int num_clusters, std::vector<int32_t> cluster_sizes,
    int slots_per_row, int slot_tokens) {
  if (num_rows <= 0 || num_clusters < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_rows/num_clusters: ", num_rows, "/", num_clusters,
                     " (need num_rows > 0, num_clusters >= 0)"));
  }
  if (slots_per_row < 0 || slots_per_row > kMaxSlotsPerRow ||
      slot_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slots_per_row/slot_tokens: ", slots_per_row, "/",
                     slot_tokens, " (need 0..", kMaxSlotsPerRow, " and > 0)"));
  }
  if (int64_t{num_rows} * slots_per_row > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("slots_per_row: ", slots_per_row, " x num_rows ", num_rows,
                     " exceeds 2^31 slot ids"));
  }
  const int64_t n = int64_t{num_rows} * num_clusters;
  if (static_cast<int64_t>(cluster_sizes.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster_sizes: expected ", n, " entries, got ", cluster_sizes.size()));
  }
  WaveBufferLru lru;
  lru.num_rows_ = num_rows;
  lru.num_clusters_ = num_clusters;
  lru.slots_per_row_ = slots_per_row;
  lru.slot_tokens_ = slot_tokens;
  lru.cells_.resize(n);
  lru.list_index_.resize(n);
  for (int r = 0; r < num_rows; ++r) {
    int64_t prefix = 0;
    for (int c = 0; c < num_clusters; ++c) {
      const int64_t k = lru.Key(r, c);
      const int32_t size = cluster_sizes[k];
      if (size < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("cluster_sizes[", k, "]: ", size, " is negative"));
      }
      lru.cells_[k] = std::min<uint32_t>(size, kSizeEscape);
      lru.list_index_[k] = static_cast<int32_t>(prefix);
      prefix += lru.Pieces(size);
      if (prefix > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cluster_sizes: row ", r, " has more than 2^31 slot pieces"));
      }
    }
    lru.pieces_per_row_ = std::max(lru.pieces_per_row_, prefix);
  }
  lru.sizes_ = std::move(cluster_sizes);
  lru.rows_.resize(num_rows);
  for (Row& row : lru.rows_) {
    row.seq.assign(slots_per_row, -1);
    row.owner.assign(slots_per_row, -1);
    row.chain.assign(slots_per_row, -1);
    row.free.resize(slots_per_row);
    // Popped from the top: slot 0 of the row is handed out first.
    for (int i = 0; i < slots_per_row; ++i) {
      row.free[i] = slots_per_row - 1 - i;
    }
    row.num_free = slots_per_row;
  }
  return lru;
}

void WaveBufferLru::Step(absl::Span<const int32_t> selected, int num_selected,
                         WaveBufferPlan* plan,
                         absl::Span<const int32_t> row_first_token) {
  plan->Clear();
  BeginStep();
  WaveBufferStats delta;
  StepRows(selected, num_selected, row_first_token, 0, num_rows_, plan, &delta);
  AddStats(delta);
}

WaveBufferWorkers::WaveBufferWorkers(int threads) {
  threads = std::clamp(threads, 1, kMaxThreads);
  for (int i = 1; i < threads; ++i) {
    helpers_.emplace_back([this, i] { Helper(i); });
  }
}

WaveBufferWorkers::~WaveBufferWorkers() {
  const uint64_t gen = (word_.load(std::memory_order_relaxed) >> 8) + 1;
  word_.store(gen << 8 | kStop, std::memory_order_release);
  word_.notify_all();
  for (std::thread& t : helpers_) t.join();
}

void WaveBufferWorkers::Helper(int index) {
  uint64_t seen = 0;
  while (true) {
    word_.wait(seen, std::memory_order_acquire);
    seen = word_.load(std::memory_order_acquire);
    const uint64_t tasks = seen & 0xff;
    if (tasks == kStop) return;
    if (static_cast<uint64_t>(index) >= tasks) continue;
    (*fn_)(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      pending_.notify_one();
    }
  }
}

void WaveBufferWorkers::Run(int tasks, absl::FunctionRef<void(int)> fn) {
  tasks = std::clamp(tasks, 1, threads());
  if (tasks > 1) {
    fn_ = &fn;
    pending_.store(tasks - 1, std::memory_order_relaxed);
    const uint64_t gen = (word_.load(std::memory_order_relaxed) >> 8) + 1;
    word_.store(gen << 8 | static_cast<uint64_t>(tasks),
                std::memory_order_release);
    word_.notify_all();
  }
  fn(0);
  if (tasks > 1) {
    for (int p; (p = pending_.load(std::memory_order_acquire)) != 0;) {
      pending_.wait(p, std::memory_order_acquire);
    }
  }
}

void WaveBufferLru::StepParallel(absl::Span<const int32_t> selected,
                                 int num_selected,
                                 absl::Span<const int32_t> row_first_token,
                                 int tasks, WaveBufferWorkers* workers,
                                 std::vector<WaveBufferPlan>* plans) {
  tasks = std::clamp(tasks, 1, std::min(num_rows_, workers->threads()));
  plans->resize(tasks);
  deltas_.assign(tasks, {});
  BeginStep();
  workers->Run(tasks, [&](int t) {
    (*plans)[t].Clear();
    StepRows(selected, num_selected, row_first_token,
             static_cast<int>(int64_t{num_rows_} * t / tasks),
             static_cast<int>(int64_t{num_rows_} * (t + 1) / tasks),
             &(*plans)[t], &deltas_[t].stats);
  });
  for (const PaddedStats& d : deltas_) AddStats(d.stats);
}

void WaveBufferLru::BeginStep() { ++stats_.steps; }

void WaveBufferLru::AddStats(const WaveBufferStats& d) {
  stats_.lookups += d.lookups;
  stats_.hits += d.hits;
  stats_.admitted_clusters += d.admitted_clusters;
  stats_.admitted_slots += d.admitted_slots;
  stats_.evicted_clusters += d.evicted_clusters;
  stats_.overflow_clusters += d.overflow_clusters;
  stats_.uncacheable_clusters += d.uncacheable_clusters;
}

void WaveBufferLru::StepRows(absl::Span<const int32_t> selected,
                             int num_selected,
                             absl::Span<const int32_t> row_first_token,
                             int row_begin, int row_end, WaveBufferPlan* plan,
                             WaveBufferStats* stats) {
  const bool positions = !row_first_token.empty();
  for (int r = row_begin; r < row_end; ++r) {
    StepRow(r, selected.data() + int64_t{r} * num_selected, num_selected,
            positions ? row_first_token[r] : 0, positions, plan, stats);
  }
}

void WaveBufferLru::ReserveQueue(Row& r, int slots, int appends) {
  // Live entries are at most one per slot: with twice that room, compaction
  // runs once every (room - live) appends, amortised O(1) per append.
  const int64_t room = 2 * (int64_t{slots} + appends);
  if (static_cast<int64_t>(r.queue.size()) < room) r.queue.resize(room);
  if (int64_t{r.back} + appends <= static_cast<int64_t>(r.queue.size())) {
    return;
  }
  int32_t w = 0;
  for (int32_t p = r.front; p < r.back; ++p) {
    const int32_t s = r.queue[p];
    if (r.seq[s] != p) continue;  // stale
    r.queue[w] = s;
    r.seq[s] = w++;
  }
  r.front = 0;
  r.back = w;
}

int32_t WaveBufferLru::Victim(Row& r) {
  while (r.front < r.back) {
    const int32_t p = r.front;
    const int32_t s = r.queue[p];
    if (r.seq[s] != p) {  // touched again later, or freed
      ++r.front;
      continue;
    }
    if (p >= r.step_begin) return -1;  // everything left is this step's
    ++r.front;
    return s;
  }
  return -1;
}

void WaveBufferLru::Evict(int row, int32_t slot, WaveBufferPlan* plan,
                          WaveBufferStats* stats) {
  Row& r = rows_[row];
  const int32_t c = r.owner[slot];
  r.seq[slot] = -1;
  r.owner[slot] = -1;
  for (int32_t p = slot; p >= 0;) {
    r.free[r.num_free++] = p;
    const int32_t next = r.chain[p];
    r.chain[p] = -1;
    p = next;
  }
  const int64_t k = Key(row, c);
  cells_[k] &= kSizeEscape;  // absent
  plan->slot_list_writes.push_back({k, -1});
  ++stats->evicted_clusters;
}

void WaveBufferLru::StepRow(int row, const int32_t* ids, int num_selected,
                            int64_t first, bool positions, WaveBufferPlan* plan,
                            WaveBufferStats* stats) {
  Row& r = rows_[row];
  uint32_t* cells = cells_.data() + Key(row, 0);
  int32_t* seq = r.seq.data();
  const auto valid = [this](int32_t c) {
    return static_cast<uint32_t>(c) < static_cast<uint32_t>(num_clusters_);
  };
  thread_local Scratch scratch;  // kept across steps: no step allocates
  std::vector<int32_t>& hits = scratch.hits;
  std::vector<Miss>& misses = scratch.misses;
  hits.clear();
  misses.clear();
  ReserveQueue(r, slots_per_row_, num_selected);
  r.step_begin = r.back;

  // 1. Lookups in rank order, prefetched ahead: the cell first, then (once
  // it has arrived) the queue position of a resident cluster.
  for (int i = 0; i < std::min(kCellAhead, num_selected); ++i) {
    if (valid(ids[i])) Prefetch(&cells[ids[i]]);
  }
  int64_t pos = first;
  uint64_t lookups = 0;
  for (int i = 0; i < num_selected; ++i) {
    if (i + kCellAhead < num_selected && valid(ids[i + kCellAhead])) {
      Prefetch(&cells[ids[i + kCellAhead]]);
    }
    if (i + kSlotAhead < num_selected && valid(ids[i + kSlotAhead])) {
      const uint32_t state = cells[ids[i + kSlotAhead]] >> kSizeBits;
      if (state >= kFirstSlot) Prefetch(&seq[state - kFirstSlot]);
    }
    const int32_t c = ids[i];
    if (!valid(c)) continue;
    const uint32_t cell = cells[c];
    const int32_t size = CellSize(cell, Key(row, c));
    const int64_t at = pos;
    pos += size;
    if (size == 0) continue;
    const uint32_t state = cell >> kSizeBits;
    if (state >= kFirstSlot) {
      const int32_t s = static_cast<int32_t>(state - kFirstSlot);
      if (seq[s] == kMarked) continue;  // duplicate
      seq[s] = kMarked;
      ++lookups;
      hits.push_back(s);
    } else if (state == kAbsent) {
      cells[c] = cell | (kPending << kSizeBits);  // duplicates see this
      ++lookups;
      misses.push_back({c, positions ? static_cast<int32_t>(at) : -1, size});
      Prefetch(&list_index_[Key(row, c)]);
    }
    // kPending: a duplicate miss.
  }
  stats->lookups += lookups;
  stats->hits += hits.size();

  // 2. Hits become the most recent touches, rank 0 the newest of them.
  int32_t* queue = r.queue.data();
  int32_t back = r.back;
  for (auto it = hits.rbegin(); it != hits.rend(); ++it) {
    seq[*it] = back;
    queue[back++] = *it;
  }
  r.back = back;

  // The clusters the misses will evict are the oldest live queue entries:
  // prefetch their cells (written when evicted) for as many slots as the
  // misses lack; walking their slot chains here also brings in what Evict
  // reads (measured: both halves matter at 1M x 32 rows).
  int64_t lacking = -int64_t{r.num_free};
  for (const Miss& m : misses) lacking += Pieces(m.size);
  for (int32_t p = r.front; lacking > 0 && p < r.step_begin; ++p) {
    const int32_t s = queue[p];
    if (seq[s] != p) continue;
    Prefetch(&cells[r.owner[s]]);
    for (int32_t q = s; q >= 0; q = r.chain[q]) --lacking;
  }

  // 3. Misses in rank order: evict until they fit, then admit (newer still).
  int32_t* free = r.free.data();
  int32_t* chain = r.chain.data();
  const int64_t slot_base = int64_t{row} * slots_per_row_;
  const int64_t list_base = int64_t{row} * pieces_per_row_;
  for (const Miss& m : misses) {
    uint32_t& cell = cells[m.cluster];
    const int need = Pieces(m.size);
    if (need > slots_per_row_) {
      cell &= kSizeEscape;
      ++stats->uncacheable_clusters;
      continue;
    }
    while (r.num_free < need) {
      const int32_t v = Victim(r);
      if (v < 0) break;
      Evict(row, v, plan, stats);
    }
    if (r.num_free < need) {
      cell &= kSizeEscape;
      ++stats->overflow_clusters;
      continue;
    }
    const int64_t list = list_base + list_index_[Key(row, m.cluster)];
    int32_t head = -1, last = -1;
    int32_t left = m.size;
    for (int j = 0; j < need; ++j) {
      const int32_t s = free[--r.num_free];
      if (last >= 0) {
        chain[last] = s;
      } else {
        head = s;
      }
      last = s;
      const int32_t global = static_cast<int32_t>(slot_base + s);
      const int32_t tokens = std::min(left, slot_tokens_);
      left -= tokens;
      plan->copies.push_back({row, m.cluster, j, global,
                              m.first < 0 ? -1 : m.first + j * slot_tokens_,
                              tokens});
      plan->slot_id_writes.push_back({list + j, global});
    }
    chain[last] = -1;
    plan->slot_list_writes.push_back(
        {Key(row, m.cluster), static_cast<int32_t>(list)});
    r.owner[head] = m.cluster;
    seq[head] = r.back;
    queue[r.back++] = head;
    cell = (cell & kSizeEscape) |
           ((static_cast<uint32_t>(head) + kFirstSlot) << kSizeBits);
    ++stats->admitted_clusters;
    stats->admitted_slots += need;
  }
}

}  // namespace wavekv::cuda
