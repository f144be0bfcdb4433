#include "index/cuda/wave_buffer_lru.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace wavekv::cuda {
namespace {

// Lookups are issued this many selected ids ahead of their use (the cells
// of a 1M-token row span 512 KiB: nearly every lookup misses the caches).
constexpr int kCellAhead = 64;
constexpr int kSlotAhead = 32;  // resident clusters' slot entries

template <typename T>
inline void Prefetch(const T* p) {
  __builtin_prefetch(p, 1, 3);
}

struct Miss {
  int32_t cluster;
  int32_t first;  // row position this step, or -1
};

// Per-thread scratch of StepRow, kept across steps (no per-step allocation).
struct Scratch {
  std::vector<int32_t> hits;  // first slots, rank order
  std::vector<Miss> misses;   // rank order
};

Scratch& ThreadScratch() {
  thread_local Scratch s;
  return s;
}

}  // namespace

absl::StatusOr<WaveBufferLru> WaveBufferLru::Create(
    int num_rows, int num_clusters, std::vector<int32_t> cluster_sizes,
    int slots_per_row, int slot_tokens, WaveBufferPolicy policy) {
  if (num_rows <= 0 || num_clusters < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_rows/num_clusters: ", num_rows, "/", num_clusters,
                     " (need num_rows > 0, num_clusters >= 0)"));
  }
  if (slots_per_row < 0 || slot_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slots_per_row/slot_tokens: ", slots_per_row, "/",
                     slot_tokens, " (need >= 0 and > 0)"));
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
  lru.policy_ = policy;
  lru.cells_.resize(n);
  lru.list_index_.resize(n);
  for (int r = 0; r < num_rows; ++r) {
    int64_t prefix = 0;
    for (int c = 0; c < num_clusters; ++c) {
      const int64_t k = lru.Key(r, c);
      if (cluster_sizes[k] < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cluster_sizes[", k, "]: ", cluster_sizes[k], " is negative"));
      }
      lru.cells_[k] = {cluster_sizes[k], kNone};
      lru.list_index_[k] = static_cast<int32_t>(prefix);
      prefix += lru.Pieces(cluster_sizes[k]);
      if (prefix > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cluster_sizes: row ", r, " has more than 2^31 slot pieces"));
      }
    }
    lru.pieces_per_row_ = std::max(lru.pieces_per_row_, prefix);
  }
  const int64_t total_slots = int64_t{num_rows} * slots_per_row;
  lru.slots_.assign(total_slots, Slot{-1, 0, -1, -1, -1});
  lru.free_.resize(total_slots);
  lru.num_free_.assign(num_rows, slots_per_row);
  for (int r = 0; r < num_rows; ++r) {
    // Popped from the top: slot 0 of the row is handed out first.
    int32_t* f = lru.RowFree(r);
    for (int i = 0; i < slots_per_row; ++i) f[i] = slots_per_row - 1 - i;
  }
  lru.head_.assign(num_rows, -1);
  lru.tail_.assign(num_rows, -1);
  lru.hand_.assign(num_rows, 0);
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

void WaveBufferLru::BeginStep() {
  ++step_;
  ++stats_.steps;
}

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

int32_t WaveBufferLru::Victim(int row) {
  Slot* sl = RowSlots(row);
  if (policy_ == WaveBufferPolicy::kLru) {
    const int32_t t = tail_[row];
    return t >= 0 && sl[t].stamp != step_ ? t : -1;
  }
  // CLOCK: two full turns find an unreferenced cluster if any exists that
  // this step did not select (the first turn clears reference bits).
  int32_t h = hand_[row];
  for (int64_t n = 0; n < 2 * int64_t{slots_per_row_}; ++n) {
    const int32_t s = h;
    h = h + 1 == slots_per_row_ ? 0 : h + 1;
    Slot& x = sl[s];
    if (x.cluster < 0 || x.stamp == step_) continue;
    if (x.prev != 0) {  // referenced: spare it once
      x.prev = 0;
      continue;
    }
    hand_[row] = h;
    return s;
  }
  hand_[row] = h;
  return -1;
}

void WaveBufferLru::Evict(int row, int32_t s, WaveBufferPlan* plan,
                          WaveBufferStats* stats) {
  Slot* sl = RowSlots(row);
  Slot& x = sl[s];
  const int32_t c = x.cluster;
  if (policy_ == WaveBufferPolicy::kLru) {
    if (x.prev >= 0) {
      sl[x.prev].next = x.next;
    } else {
      head_[row] = x.next;
    }
    if (x.next >= 0) {
      sl[x.next].prev = x.prev;
    } else {
      tail_[row] = x.prev;
    }
  }
  x.cluster = -1;
  x.prev = x.next = -1;
  int32_t* free = RowFree(row);
  int32_t& nf = num_free_[row];
  for (int32_t p = s; p >= 0;) {
    free[nf++] = p;
    const int32_t next = sl[p].chain;
    sl[p].chain = -1;
    p = next;
  }
  const int64_t k = Key(row, c);
  cells_[k].slot = kNone;
  plan->slot_list_writes.push_back({k, -1});
  ++stats->evicted_clusters;
}

void WaveBufferLru::StepRow(int row, const int32_t* ids, int num_selected,
                            int64_t first, bool positions, WaveBufferPlan* plan,
                            WaveBufferStats* stats) {
  Cell* cells = cells_.data() + Key(row, 0);
  Slot* sl = RowSlots(row);
  const uint32_t step = step_;
  const bool lru = policy_ == WaveBufferPolicy::kLru;
  const auto valid = [this](int32_t c) {
    return static_cast<uint32_t>(c) < static_cast<uint32_t>(num_clusters_);
  };
  Scratch& scratch = ThreadScratch();
  std::vector<int32_t>& hits = scratch.hits;
  std::vector<Miss>& misses = scratch.misses;
  hits.clear();
  misses.clear();

  // 1. Lookups in rank order, prefetched ahead: the cell first, then (once
  // it has arrived) the slot entry of a resident cluster.
  for (int i = 0; i < std::min(kCellAhead, num_selected); ++i) {
    if (valid(ids[i])) Prefetch(&cells[ids[i]]);
  }
  int64_t pos = first;
  uint64_t lookups = 0, hit_count = 0;
  for (int i = 0; i < num_selected; ++i) {
    if (i + kCellAhead < num_selected && valid(ids[i + kCellAhead])) {
      Prefetch(&cells[ids[i + kCellAhead]]);
    }
    if (i + kSlotAhead < num_selected && valid(ids[i + kSlotAhead])) {
      const int32_t s = cells[ids[i + kSlotAhead]].slot;
      if (s >= 0) Prefetch(&sl[s]);
    }
    const int32_t c = ids[i];
    if (!valid(c)) continue;
    Cell& e = cells[c];
    const int64_t at = pos;
    pos += e.size;
    if (e.size == 0) continue;
    if (e.slot >= 0) {
      Slot& x = sl[e.slot];
      if (x.stamp == step) continue;  // duplicate
      x.stamp = step;
      ++lookups;
      ++hit_count;
      if (lru) {
        hits.push_back(e.slot);
      } else {
        x.prev = 1;  // CLOCK: referenced
      }
    } else if (e.slot == kNone) {
      e.slot = kPending;  // marks duplicates until admitted or skipped
      ++lookups;
      misses.push_back({c, positions ? static_cast<int32_t>(at) : -1});
      Prefetch(&list_index_[Key(row, c)]);
    }
    // kPending: a duplicate miss.
  }
  stats->lookups += lookups;
  stats->hits += hit_count;

  // 2. LRU: hits to the front, rank 0 frontmost. Unlink them all, then splice
  // them in as one run (what moving each to the front in reverse rank order
  // gives).
  if (lru && !hits.empty()) {
    const size_t n = hits.size();
    for (size_t i = 0; i < n; ++i) {
      if (i + kSlotAhead < n) {
        const Slot& y = sl[hits[i + kSlotAhead]];
        if (y.prev >= 0) Prefetch(&sl[y.prev]);
        if (y.next >= 0) Prefetch(&sl[y.next]);
      }
      Slot& x = sl[hits[i]];
      if (x.prev >= 0) {
        sl[x.prev].next = x.next;
      } else {
        head_[row] = x.next;
      }
      if (x.next >= 0) {
        sl[x.next].prev = x.prev;
      } else {
        tail_[row] = x.prev;
      }
    }
    const int32_t old_head = head_[row];
    for (size_t i = 0; i < n; ++i) {
      Slot& x = sl[hits[i]];
      x.prev = i == 0 ? -1 : hits[i - 1];
      x.next = i + 1 < n ? hits[i + 1] : old_head;
    }
    if (old_head >= 0) {
      sl[old_head].prev = hits[n - 1];
    } else {
      tail_[row] = hits[n - 1];
    }
    head_[row] = hits[0];
  }

  // 3. Misses in rank order: evict until they fit, then admit.
  int32_t* free = RowFree(row);
  int32_t& nf = num_free_[row];
  const int64_t slot_base = int64_t{row} * slots_per_row_;
  const int64_t list_base = int64_t{row} * pieces_per_row_;
  for (const Miss& m : misses) {
    Cell& e = cells[m.cluster];
    const int need = Pieces(e.size);
    if (need > slots_per_row_) {
      e.slot = kNone;
      ++stats->uncacheable_clusters;
      continue;
    }
    while (nf < need) {
      const int32_t v = Victim(row);
      if (v < 0) break;
      Evict(row, v, plan, stats);
    }
    if (nf < need) {
      e.slot = kNone;
      ++stats->overflow_clusters;
      continue;
    }
    const int64_t list = list_base + list_index_[Key(row, m.cluster)];
    int32_t head = -1, last = -1;
    int32_t left = e.size;
    for (int j = 0; j < need; ++j) {
      const int32_t s = free[--nf];
      if (last >= 0) {
        sl[last].chain = s;
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
    sl[last].chain = -1;
    plan->slot_list_writes.push_back(
        {Key(row, m.cluster), static_cast<int32_t>(list)});
    Slot& x = sl[head];
    x.cluster = m.cluster;
    x.stamp = step;
    if (lru) {
      x.prev = -1;
      x.next = head_[row];
      if (head_[row] >= 0) sl[head_[row]].prev = head;
      head_[row] = head;
      if (tail_[row] < 0) tail_[row] = head;
    } else {
      x.prev = 1;  // CLOCK: admitted as referenced
      x.next = -1;
    }
    e.slot = head;
    ++stats->admitted_clusters;
    stats->admitted_slots += need;
  }
}

}  // namespace wavekv::cuda
