#include "index/cuda/wave_buffer_lru.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace wavekv::cuda {

absl::StatusOr<WaveBufferLru> WaveBufferLru::Create(
    int num_rows, int num_clusters, std::vector<int32_t> cluster_sizes,
    int slots_per_row, int slot_tokens) {
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
  lru.entries_.resize(n);
  lru.piece_prefix_.resize(n);
  for (int r = 0; r < num_rows; ++r) {
    int64_t prefix = 0;
    for (int c = 0; c < num_clusters; ++c) {
      const int64_t k = lru.Key(r, c);
      if (cluster_sizes[k] < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cluster_sizes[", k, "]: ", cluster_sizes[k], " is negative"));
      }
      lru.entries_[k].size = cluster_sizes[k];
      lru.piece_prefix_[k] = prefix;
      prefix += lru.Pieces(k);
    }
    lru.pieces_per_row_ = std::max(lru.pieces_per_row_, prefix);
  }
  lru.head_.assign(num_rows, -1);
  lru.tail_.assign(num_rows, -1);
  lru.free_.resize(num_rows);
  for (int r = 0; r < num_rows; ++r) {
    // Popped from the back: slot r * slots_per_row is handed out first.
    for (int i = slots_per_row - 1; i >= 0; --i) {
      lru.free_[r].push_back(r * slots_per_row + i);
    }
  }
  lru.slot_of_piece_.assign(lru.slot_table_size(), -1);
  return lru;
}

void WaveBufferLru::Unlink(int row, int cluster) {
  Entry& e = entries_[Key(row, cluster)];
  if (e.prev >= 0) {
    entries_[Key(row, e.prev)].next = e.next;
  } else {
    head_[row] = e.next;
  }
  if (e.next >= 0) {
    entries_[Key(row, e.next)].prev = e.prev;
  } else {
    tail_[row] = e.prev;
  }
  e.prev = e.next = -1;
}

void WaveBufferLru::PushFront(int row, int cluster) {
  Entry& e = entries_[Key(row, cluster)];
  e.prev = -1;
  e.next = head_[row];
  if (head_[row] >= 0) entries_[Key(row, head_[row])].prev = cluster;
  head_[row] = cluster;
  if (tail_[row] < 0) tail_[row] = cluster;
}

void WaveBufferLru::Evict(int row, int cluster, WaveBufferPlan* plan,
                          WaveBufferStats* stats) {
  Unlink(row, cluster);
  const int64_t k = Key(row, cluster);
  entries_[k].resident = 0;
  const int64_t list = SlotListIndex(row, cluster);
  for (int j = 0; j < Pieces(k); ++j) {
    free_[row].push_back(slot_of_piece_[list + j]);
    slot_of_piece_[list + j] = -1;
  }
  plan->slot_list_writes.push_back({k, -1});
  ++stats->evicted_clusters;
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
  std::vector<int32_t> hits, misses;
  for (int r = row_begin; r < row_end; ++r) {
    hits.clear();
    misses.clear();
    const int32_t* ids = selected.data() + int64_t{r} * num_selected;
    // Position of each selected cluster in the row this step, as the
    // page-table build lays it out (ids out of range count 0 tokens).
    int64_t pos = row_first_token.empty() ? 0 : row_first_token[r];
    for (int i = 0; i < num_selected; ++i) {
      const int32_t c = ids[i];
      if (c < 0 || c >= num_clusters_) continue;
      Entry& e = entries_[Key(r, c)];
      const int64_t first = pos;
      pos += e.size;
      if (e.size == 0 || e.stamp == step_) continue;  // empty or duplicate
      e.stamp = step_;
      e.step_first = row_first_token.empty() ? -1 : static_cast<int32_t>(first);
      ++stats->lookups;
      if (e.resident) {
        ++stats->hits;
        hits.push_back(c);
      } else {
        misses.push_back(c);
      }
    }
    // Lowest rank first, so rank 0 ends frontmost.
    for (auto it = hits.rbegin(); it != hits.rend(); ++it) {
      Unlink(r, *it);
      PushFront(r, *it);
    }
    for (const int32_t c : misses) {
      const int64_t k = Key(r, c);
      const int need = Pieces(k);
      if (need > slots_per_row_) {
        ++stats->uncacheable_clusters;
        continue;
      }
      while (static_cast<int>(free_[r].size()) < need && tail_[r] >= 0 &&
             entries_[Key(r, tail_[r])].stamp != step_) {
        Evict(r, tail_[r], plan, stats);
      }
      if (static_cast<int>(free_[r].size()) < need) {
        ++stats->overflow_clusters;
        continue;
      }
      const int64_t list = SlotListIndex(r, c);
      const int32_t first = entries_[k].step_first;
      for (int j = 0; j < need; ++j) {
        const int32_t slot = free_[r].back();
        free_[r].pop_back();
        slot_of_piece_[list + j] = slot;
        plan->copies.push_back(
            {r, c, j, slot, first < 0 ? -1 : first + j * slot_tokens_});
        plan->slot_id_writes.push_back({list + j, slot});
      }
      plan->slot_list_writes.push_back({k, static_cast<int32_t>(list)});
      entries_[k].resident = 1;
      PushFront(r, c);
      ++stats->admitted_clusters;
      stats->admitted_slots += need;
    }
  }
}

}  // namespace wavekv::cuda
