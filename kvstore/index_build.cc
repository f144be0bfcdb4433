// Session::BuildIndex: clusters a layer's waiting tokens into new wave-index
// blocks and moves their K/V from the token-order stores into the cluster
// stores (session.h describes the stores and the locking).
//
// One block, for every kv head of the layer:
//  1. reserve the new cluster slots' bytes in the memory budget;
//  2. per kv head, the heads in parallel on the build pool: copy the
//     block's K/V in token order into a new segment (short reader locks, a
//     few thousand tokens at a time); then cluster every head (no lock):
//     on the GPU in one batch when the engine has one (EngineGpu), else,
//     or if that fails, per head with WaveIndex::PrepareBlock on the pool;
//     and reorder each segment in place into its cluster-major order;
//  3. under the layer's writer lock: check that nothing conflicting
//     happened, reserve the index's growth, commit every head's block,
//     install the segments and drop the tokens from the token-order stores,
//     whose freed chunks go back to the budget.
// While a block is built its tokens are held twice (token order and the new
// segment); both are in the budget, so the transient never exceeds it.
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "index/dtype.h"
#include "index/wave_index.h"
#include "index/wave_index_params.h"
#include "kvstore/cluster_store.h"
#include "kvstore/gpu/engine_gpu.h"
#include "kvstore/session.h"
#include "kvstore/thread_pool.h"

namespace wavekv {
namespace {

// Tokens copied per reader-lock hold, so appends to the layer never wait
// long behind a build.
constexpr uint64_t kCopyTokens = 4096;

// A block is at most this many segments (64K tokens at the default 8K
// segments). A block's final k-means assignment is against all of its
// centroids, so its cost grows with the square of its length; bounded
// blocks keep the build linear in the context (and bound its transient
// memory) when a long prefill arrives faster than it is indexed.
constexpr uint64_t kMaxBlockSegments = 8;

// NextIndexBlock, cut to at most kMaxBlockSegments segments.
TokenSpan NextBoundedBlock(const WaveIndexParams& params, uint64_t num_tokens,
                           uint64_t indexed_end) {
  TokenSpan block = NextIndexBlock(params, num_tokens, indexed_end);
  const uint64_t max_tokens = kMaxBlockSegments * params.segment_tokens;
  if (block.num_tokens() > max_tokens) block.end = block.begin + max_tokens;
  return block;
}

absl::Status Annotate(const absl::Status& status, absl::string_view what) {
  return absl::Status(status.code(),
                      absl::StrCat(what, ": ", status.message()));
}

}  // namespace

Session::BuildReport Session::BuildIndex(uint32_t layer_index,
                                         MemoryBudget& budget,
                                         ThreadPool& pool,
                                         EngineGpu* gpu) {
  ABSL_RAW_CHECK(layer_index < layers_.size(), "BuildIndex: bad layer");
  Layer& layer = *layers_[layer_index];
  BuildReport report;
  while (true) {
    TokenSpan block;
    {
      absl::ReaderMutexLock lock(&layer.mu);
      if (closed_.load(std::memory_order_acquire)) return report;
      block = NextBoundedBlock(params_,
                               layer.num_tokens.load(std::memory_order_relaxed),
                               layer.indexed.end);
    }
    absl::Status status;
    if (!block.empty()) {
      absl::StatusOr<bool> installed =
          BuildBlock(layer_index, block, budget, pool, gpu);
      if (installed.ok() && !*installed) return report;  // closed
      if (installed.ok()) {
        ++report.blocks;
        // The index record follows every installed block, so a restart
        // finds the index instead of re-clustering. Failing to write it
        // costs only that (recovery rebuilds), so it is logged.
        if (absl::Status s = PersistIndex(layer_index); !s.ok()) {
          ABSL_RAW_LOG(WARNING, "%s", std::string(s.message()).c_str());
        }
      } else {
        status = installed.status();
      }
    }
    absl::MutexLock lock(&layer.mu);
    if (!status.ok()) {
      layer.build_error = status;
      layer.build_pending = false;
      report.status = status;
      return report;
    }
    // Caught up: clear the mark under the writer lock, so that an Append
    // either sees it set (and this loop sees its tokens) or schedules anew.
    if (NextIndexBlock(params_,
                       layer.num_tokens.load(std::memory_order_relaxed),
                       layer.indexed.end)
            .empty()) {
      layer.build_pending = false;
      layer.build_error = absl::OkStatus();
      return report;
    }
  }
}

absl::StatusOr<bool> Session::BuildBlock(uint32_t layer_index, TokenSpan block,
                                         MemoryBudget& budget, ThreadPool& pool,
                                         EngineGpu* gpu) {
  Layer& layer = *layers_[layer_index];
  const ModelShape& shape = options_.shape;
  const size_t num_heads = shape.num_kv_heads;
  const size_t d = shape.head_dim;
  const size_t row_bytes = d * DTypeBytes(shape.dtype);
  const uint64_t n = block.num_tokens();
  const std::string what =
      absl::StrCat("index build of layer ", layer_index, ", tokens [",
                   block.begin, ", ", block.end, ")");

  // 1. The new cluster slots of every head, reserved before allocating.
  const uint64_t segment_bytes = ClusterStore::Segment::BytesFor(n, row_bytes);
  if (absl::Status s = budget.TryReserve(num_heads * segment_bytes); !s.ok()) {
    return Annotate(s, what);
  }
  BudgetReservation segments_reserved(budget, num_heads * segment_bytes);

  // 2. Copy, cluster and reorder every head without the writer lock, the
  //    heads in parallel on the build pool (this thread takes part).
  struct HeadBuild {
    std::shared_ptr<WaveIndex> index;
    bool fresh = false;
    std::optional<ClusterStore::Segment> segment;
    std::optional<PreparedBlock> prepared;
    absl::Status status;
    bool closed = false;
  };
  std::vector<HeadBuild> heads(num_heads);
  {
    absl::ReaderMutexLock lock(&layer.mu);
    if (closed_.load(std::memory_order_acquire)) return false;
    for (size_t h = 0; h < num_heads; ++h) {
      heads[h].index = layer.heads[h].index;
    }
  }
  pool.ParallelFor(num_heads, [&](size_t h) {
    HeadBuild& out = heads[h];
    if (out.index == nullptr) {
      out.index = std::make_shared<WaveIndex>(d);
      out.fresh = true;
    }
    absl::StatusOr<ClusterStore::Segment> segment =
        ClusterStore::Segment::Allocate(out.index->num_slots(), n, row_bytes,
                                        arena_);
    if (!segment.ok()) {
      out.status = Annotate(segment.status(), what);
      return;
    }
    for (uint64_t done = 0; done < n; done += kCopyTokens) {
      const uint64_t m = std::min(kCopyTokens, n - done);
      absl::ReaderMutexLock lock(&layer.mu);
      if (closed_.load(std::memory_order_acquire)) {
        out.closed = true;
        return;
      }
      layer.heads[h].tokens.CopyOut(
          block.begin + done, m, segment->keys() + done * row_bytes,
          segment->values() + done * row_bytes, nullptr);
    }
    out.segment.emplace(*std::move(segment));
  });
  for (const HeadBuild& head : heads) {
    if (head.closed) return false;
  }
  for (const HeadBuild& head : heads) {
    if (!head.status.ok()) return head.status;
  }
  // The indexes are read without the layer lock: only this build changes
  // them, and it does so under the writer lock below.
  auto rows_of = [&](const HeadBuild& head) {
    return KvRows{shape.dtype,          d,        n, head.segment->keys(),
                  head.segment->values(), row_bytes};
  };
  if (gpu != nullptr) {
    std::vector<KvRows> rows;
    std::vector<std::shared_ptr<WaveIndex>> indexes;
    for (const HeadBuild& head : heads) {
      rows.push_back(rows_of(head));
      indexes.push_back(head.index);
    }
    // A failure is counted and logged by EngineGpu; the CPU redoes it.
    absl::StatusOr<std::vector<PreparedBlock>> blocks =
        gpu->PrepareBlocks(params_, block.begin, rows, indexes, what);
    if (blocks.ok()) {
      for (size_t h = 0; h < num_heads; ++h) {
        heads[h].prepared.emplace(std::move((*blocks)[h]));
      }
    }
  }
  pool.ParallelFor(num_heads, [&](size_t h) {
    HeadBuild& out = heads[h];
    if (!out.prepared.has_value()) {
      absl::StatusOr<PreparedBlock> prepared = out.index->PrepareBlock(
          params_, block.begin, rows_of(out), /*threads=*/1);
      if (!prepared.ok()) {
        out.status =
            Annotate(prepared.status(), absl::StrCat(what, ", kv head ", h));
        return;
      }
      out.prepared.emplace(*std::move(prepared));
    }
    const std::vector<uint64_t>& slot_tokens = out.prepared->slot_tokens;
    std::vector<uint64_t> source(n);
    for (uint64_t i = 0; i < n; ++i) source[i] = slot_tokens[i] - block.begin;
    out.segment->Permute(source);
    std::copy(slot_tokens.begin(), slot_tokens.end(),
              out.segment->positions());
  });
  for (const HeadBuild& head : heads) {
    if (!head.status.ok()) return head.status;
  }

  // 3. Install, under the writer lock.
  absl::MutexLock lock(&layer.mu);
  if (closed_.load(std::memory_order_acquire)) return false;
  const TokenSpan expected_before = layer.indexed;
  if ((expected_before.empty() ? block.begin : expected_before.end) !=
      block.begin) {
    return absl::AbortedError(absl::StrCat(
        what,
        ": the layer's index changed during the build; retried at the "
        "next append"));
  }
  uint64_t predicted = 0;
  for (size_t h = 0; h < num_heads; ++h) {
    const HeadStore& head = layer.heads[h];
    const HeadBuild& built = heads[h];
    const bool same_index =
        built.fresh ? head.index == nullptr : head.index == built.index;
    if (!same_index ||
        head.clusters.num_slots() != built.segment->first_slot() ||
        !head.tokens.Holds(block.begin, n)) {
      return absl::AbortedError(absl::StrCat(
          what, ", kv head ", h,
          ": the layer's stores changed during the build; retried at the "
          "next append"));
    }
    predicted += (built.fresh ? built.index->memory_bytes() : 0) +
                 built.index->CommitGrowthBytes(*built.prepared);
  }
  if (absl::Status s = budget.TryReserve(predicted); !s.ok()) {
    return Annotate(s, what);
  }
  const uint64_t begin =
      expected_before.empty() ? block.begin : expected_before.begin;
  uint64_t grown = 0;
  uint64_t freed = 0;
  for (size_t h = 0; h < num_heads; ++h) {
    HeadStore& head = layer.heads[h];
    HeadBuild& built = heads[h];
    WaveIndex& index = *built.index;
    const uint64_t before = built.fresh ? 0 : index.memory_bytes();
    absl::StatusOr<BlockLayout> layout =
        index.CommitBlock(*std::move(built.prepared));
    // Cannot fail: the index is the one the block was prepared against.
    ABSL_RAW_CHECK(layout.ok(), "BuildBlock: CommitBlock failed");
    grown += index.memory_bytes() - before;
    if (built.fresh) head.index = built.index;
    head.clusters.Install(*std::move(built.segment));
    freed += head.tokens.DropRange(begin, block.end);
  }
  if (grown < predicted) budget.Release(predicted - grown);
  if (grown > predicted) budget.ForceReserve(grown - predicted);
  segments_reserved.Keep();
  layer.indexed = TokenSpan{begin, block.end};
  layer.indexed_tokens.store(layer.indexed.num_tokens(),
                             std::memory_order_release);
  memory_bytes_.fetch_add(num_heads * segment_bytes + grown,
                          std::memory_order_acq_rel);
  memory_bytes_.fetch_sub(freed, std::memory_order_acq_rel);
  budget.Release(freed);
  return true;
}

}  // namespace wavekv
