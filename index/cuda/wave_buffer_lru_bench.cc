// CPU cost of the wave buffer's bookkeeping (wave_buffer_lru.h) on realistic
// selection traces, against the pre-session-4 implementation (kept below, in
// namespace `baseline`, only for this comparison).
//
// Traces, as bench/decode_attention produces them at 1M context: 65536
// clusters per row, sizes uniform 4..28 with 1% empty, slot_tokens 8, 5% of
// the row's slots in the buffer, 1180 ranked clusters selected per row per
// step. The selection is the retrieval's: per row (kv head) a GQA group of 4
// query heads scores every centroid (l = q·C / sqrt(128), fp32 normal
// centroids of sd 0.5, queries of sd 1), group score = sum over heads of
// softmax(l), top 1180 by (score desc, id asc). Every step each query takes
// a random-walk step of angle ~walk (the device bench's QueryWalk). 8 base
// rows are scored; batch 4 (32 rows) replays them with cluster ids permuted
// (an odd multiplier mod 65536) per extra session. 4 layers' state stays
// alive (the pipeline's cache footprint); layer L replays the trace 10·L
// steps ahead. 40 warm-up steps per layer; then every iteration is one
// layer's step (round robin). Traces are cached under $TMPDIR (or /tmp).
//
//   bazel run -c opt //index/cuda:wave_buffer_lru_bench --
//       --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "index/cuda/wave_buffer_lru.h"

namespace wavekv::cuda {
namespace baseline {

class WaveBufferLruOld {
 public:
  // cluster_sizes: [num_rows][num_clusters] tokens (>= 0). InvalidArgument
  // naming the field on bad shapes or values.
  static absl::StatusOr<WaveBufferLruOld> Create(
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
  WaveBufferLruOld() = default;
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

absl::StatusOr<WaveBufferLruOld> WaveBufferLruOld::Create(
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
  WaveBufferLruOld lru;
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

void WaveBufferLruOld::Unlink(int row, int cluster) {
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

void WaveBufferLruOld::PushFront(int row, int cluster) {
  Entry& e = entries_[Key(row, cluster)];
  e.prev = -1;
  e.next = head_[row];
  if (head_[row] >= 0) entries_[Key(row, head_[row])].prev = cluster;
  head_[row] = cluster;
  if (tail_[row] < 0) tail_[row] = cluster;
}

void WaveBufferLruOld::Evict(int row, int cluster, WaveBufferPlan* plan,
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

void WaveBufferLruOld::Step(absl::Span<const int32_t> selected,
                            int num_selected, WaveBufferPlan* plan,
                            absl::Span<const int32_t> row_first_token) {
  plan->Clear();
  BeginStep();
  WaveBufferStats delta;
  StepRows(selected, num_selected, row_first_token, 0, num_rows_, plan, &delta);
  AddStats(delta);
}

void WaveBufferLruOld::BeginStep() {
  ++step_;
  ++stats_.steps;
}

void WaveBufferLruOld::AddStats(const WaveBufferStats& d) {
  stats_.lookups += d.lookups;
  stats_.hits += d.hits;
  stats_.admitted_clusters += d.admitted_clusters;
  stats_.admitted_slots += d.admitted_slots;
  stats_.evicted_clusters += d.evicted_clusters;
  stats_.overflow_clusters += d.overflow_clusters;
  stats_.uncacheable_clusters += d.uncacheable_clusters;
}

void WaveBufferLruOld::StepRows(absl::Span<const int32_t> selected,
                                int num_selected,
                                absl::Span<const int32_t> row_first_token,
                                int row_begin, int row_end,
                                WaveBufferPlan* plan, WaveBufferStats* stats) {
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

}  // namespace baseline
namespace {

constexpr int kClusters = 65536;
constexpr int kSelected = 1180;
constexpr int kSlotTok = 8;
constexpr int kD = 128, kGroup = 4, kBaseRows = 8;
constexpr int kLayers = 4, kWarm = 40, kMeasured = 100, kLayerOffset = 10;
constexpr int kTraceSteps = kWarm + kMeasured + kLayerOffset * (kLayers - 1);

std::vector<int32_t> Sizes(int rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(4, 28);
  std::vector<int32_t> s(int64_t{rows} * kClusters);
  for (int32_t& x : s) x = rng() % 100 == 0 ? 0 : d(rng);
  return s;
}

int SlotsPerRow(const std::vector<int32_t>& sizes, int rows) {
  int64_t most = 0;
  for (int r = 0; r < rows; ++r) {
    int64_t p = 0;
    for (int c = 0; c < kClusters; ++c) {
      p += (sizes[int64_t{r} * kClusters + c] + kSlotTok - 1) / kSlotTok;
    }
    most = std::max(most, p);
  }
  return static_cast<int>(std::ceil(0.05 * most));
}

// logits[c][j] = centroids[c] · q[j] for the 32 queries (8 rows x 4 heads).
__attribute__((target_clones("avx2", "default"))) void Logits(
    const float* centroids, const float* q_t /* [kD][32] */, float* out) {
  for (int c = 0; c < kClusters; ++c) {
    float acc[kBaseRows * kGroup] = {};
    const float* x = centroids + int64_t{c} * kD;
    for (int k = 0; k < kD; ++k) {
      const float v = x[k];
      const float* q = q_t + k * kBaseRows * kGroup;
      for (int j = 0; j < kBaseRows * kGroup; ++j) acc[j] += v * q[j];
    }
    std::copy(acc, acc + kBaseRows * kGroup, out + int64_t{c} * 32);
  }
}

// [steps][kBaseRows][kSelected] ranked ids.
std::vector<int32_t> MakeTrace(double walk) {
  const char* tmp = std::getenv("TMPDIR");
  const std::string path =
      absl::StrCat(tmp ? tmp : "/tmp", "/wave_buffer_lru_trace_v1_",
                   std::lround(walk * 1000), ".bin");
  const size_t n = size_t(kTraceSteps) * kBaseRows * kSelected;
  std::vector<int32_t> trace(n);
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    const size_t got = std::fread(trace.data(), 4, n, f);
    std::fclose(f);
    if (got == n) return trace;
  }
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> centroids(int64_t{kClusters} * kD);
  for (float& x : centroids) x = 0.5f * normal(rng);
  const int nq = kBaseRows * kGroup;
  std::vector<float> q(nq * kD);
  for (float& x : q) x = normal(rng);
  std::vector<float> q_t(kD * nq), logits(int64_t{kClusters} * nq);
  std::vector<float> score(kClusters);
  std::vector<int32_t> order(kClusters);
  const float scale = 1.f / std::sqrt(float(kD));
  for (int t = 0; t < kTraceSteps; ++t) {
    if (t > 0) {  // random-walk step of angle ~walk, norm kept
      for (int j = 0; j < nq; ++j) {
        float* v = q.data() + j * kD;
        float e[kD], vv = 0, ee = 0;
        for (int k = 0; k < kD; ++k) {
          e[k] = normal(rng);
          vv += v[k] * v[k];
          ee += e[k] * e[k];
        }
        const float norm = std::sqrt(vv), f = walk * norm / std::sqrt(ee);
        float yy = 0;
        for (int k = 0; k < kD; ++k) {
          v[k] += f * e[k];
          yy += v[k] * v[k];
        }
        for (int k = 0; k < kD; ++k) v[k] *= norm / std::sqrt(yy);
      }
    }
    for (int j = 0; j < nq; ++j) {
      for (int k = 0; k < kD; ++k) q_t[k * nq + j] = q[j * kD + k] * scale;
    }
    Logits(centroids.data(), q_t.data(), logits.data());
    for (int r = 0; r < kBaseRows; ++r) {
      std::fill(score.begin(), score.end(), 0.f);
      for (int h = 0; h < kGroup; ++h) {
        const int j = r * kGroup + h;
        float m = -INFINITY;
        for (int c = 0; c < kClusters; ++c) m = std::max(m, logits[c * nq + j]);
        double z = 0;
        for (int c = 0; c < kClusters; ++c)
          z += std::exp(logits[c * nq + j] - m);
        const float inv = 1.f / static_cast<float>(z);
        for (int c = 0; c < kClusters; ++c) {
          score[c] += std::exp(logits[c * nq + j] - m) * inv;
        }
      }
      for (int c = 0; c < kClusters; ++c) order[c] = c;
      auto better = [&](int32_t a, int32_t b) {
        return score[a] > score[b] || (score[a] == score[b] && a < b);
      };
      std::nth_element(order.begin(), order.begin() + kSelected, order.end(),
                       better);
      std::sort(order.begin(), order.begin() + kSelected, better);
      std::copy(order.begin(), order.begin() + kSelected,
                trace.begin() + (int64_t{t} * kBaseRows + r) * kSelected);
    }
  }
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(trace.data(), 4, n, f);
    std::fclose(f);
  }
  return trace;
}

const std::vector<int32_t>& Trace(double walk) {
  static auto* cache = new std::vector<std::pair<double, std::vector<int32_t>>>;
  for (auto& [w, t] : *cache) {
    if (w == walk) return t;
  }
  cache->emplace_back(walk, MakeTrace(walk));
  return cache->back().second;
}

// The ids of step t for `rows` rows (rows beyond 8: permuted replicas).
void StepIds(const std::vector<int32_t>& trace, int t, int rows,
             std::vector<int32_t>* ids) {
  ids->resize(int64_t{rows} * kSelected);
  for (int r = 0; r < rows; ++r) {
    const int32_t* src =
        trace.data() + (int64_t{t} * kBaseRows + r % kBaseRows) * kSelected;
    int32_t* dst = ids->data() + int64_t{r} * kSelected;
    const uint32_t a = 2 * (r / kBaseRows) + 1, b = 7919u * (r / kBaseRows);
    for (int i = 0; i < kSelected; ++i) {
      dst[i] = static_cast<int32_t>((uint32_t(src[i]) * a + b) % kClusters);
    }
  }
}

enum Impl { kOld = 0, kNew = 1 };

// Runs one implementation; threads > 1 splits rows like WaveBuffer::Update.
template <typename Lru>
void Run(benchmark::State& state, std::vector<Lru>& layers, int rows,
         int threads, double walk) {
  const auto& trace = Trace(walk);
  const std::vector<int32_t> first(rows, 580);
  std::vector<WaveBufferPlan> plans(threads);
  std::vector<int32_t> ids;
  WaveBufferWorkers workers(threads);
  auto step = [&](Lru& l, const std::vector<int32_t>& sel) {
    if constexpr (std::is_same_v<Lru, WaveBufferLru>) {
      // As WaveBuffer::Update does now: threads started once.
      l.StepParallel(sel, kSelected, first, threads, &workers, &plans);
    } else {
      // As WaveBuffer::Update did: a thread per part, started every step.
      l.BeginStep();
      std::vector<WaveBufferStats> d(threads);
      auto work = [&](int t) {
        plans[t].Clear();
        l.StepRows(sel, kSelected, first, rows * t / threads,
                   rows * (t + 1) / threads, &plans[t], &d[t]);
      };
      std::vector<std::thread> pool;
      for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
      work(0);
      for (auto& th : pool) th.join();
      for (auto& x : d) l.AddStats(x);
    }
  };
  for (int t = 0; t < kWarm; ++t) {
    for (int L = 0; L < kLayers; ++L) {
      StepIds(trace, t + kLayerOffset * L, rows, &ids);
      step(layers[L], ids);
    }
  }
  std::vector<WaveBufferStats> s0;
  for (auto& l : layers) s0.push_back(l.stats());
  // Selections of the measured steps, prepared outside the timed loop.
  std::vector<std::vector<int32_t>> sel(kLayers * kMeasured);
  for (int i = 0; i < kLayers * kMeasured; ++i) {
    StepIds(trace, kWarm + i / kLayers + kLayerOffset * (i % kLayers), rows,
            &sel[i]);
  }
  int i = 0;
  for (auto _ : state) {
    step(layers[i % kLayers], sel[i]);
    ++i;
  }
  uint64_t look = 0, hits = 0, adm = 0, over = 0;
  for (int L = 0; L < kLayers; ++L) {
    look += layers[L].stats().lookups - s0[L].lookups;
    hits += layers[L].stats().hits - s0[L].hits;
    adm += layers[L].stats().admitted_clusters - s0[L].admitted_clusters;
    over += layers[L].stats().overflow_clusters - s0[L].overflow_clusters;
  }
  state.counters["hit"] = double(hits) / double(look);
  state.counters["lookups"] = double(look) / i;
  state.counters["admitted"] = double(adm) / i;
  state.counters["overflow"] = double(over) / i;
  state.counters["us_per_layer"] =
      benchmark::Counter(double(i) * 1e-6, benchmark::Counter::kIsRate |
                                               benchmark::Counter::kInvert);
}

// Args: rows, walk x 1000, implementation, threads.
void BM_Bookkeeping(benchmark::State& state) {
  const int rows = state.range(0);
  const double walk = state.range(1) / 1000.0;
  const int impl = state.range(2), threads = state.range(3);
  const auto sizes = Sizes(rows, 5);
  const int slots = SlotsPerRow(sizes, rows);
  if (impl == kOld) {
    std::vector<baseline::WaveBufferLruOld> layers;
    for (int L = 0; L < kLayers; ++L) {
      layers.push_back(*baseline::WaveBufferLruOld::Create(
          rows, kClusters, sizes, slots, kSlotTok));
    }
    Run(state, layers, rows, threads, walk);
  } else {
    std::vector<WaveBufferLru> layers;
    for (int L = 0; L < kLayers; ++L) {
      layers.push_back(
          *WaveBufferLru::Create(rows, kClusters, sizes, slots, kSlotTok));
    }
    Run(state, layers, rows, threads, walk);
  }
  state.SetLabel(impl == kOld ? "old" : "new");
}

BENCHMARK(BM_Bookkeeping)
    ->ArgNames({"rows", "walk_x1000", "impl", "threads"})
    ->ArgsProduct({{8, 32}, {200, 50}, {kOld, kNew}, {1, 2, 4, 8}})
    ->Iterations(kLayers* kMeasured)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace wavekv::cuda

BENCHMARK_MAIN();
