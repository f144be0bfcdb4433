// Plain (absl-free) declarations shared by the nvcc-compiled paged-attention
// kernels and the C++ launchers in paged_attention.h. See that header for the
// contract.
#ifndef WAVEKV_INDEX_CUDA_PAGED_ATTENTION_RAW_H_
#define WAVEKV_INDEX_CUDA_PAGED_ATTENTION_RAW_H_

#include <cstddef>
#include <cstdint>

#include "index/cuda/decode_attention_raw.h"  // ElemType, cudaStream_t

typedef struct CUevent_st* cudaEvent_t;  // as in cuda_runtime.h

namespace wavekv::cuda {

// Tokens per wave-buffer slot. A slot holds the keys of up to kSlotTokens
// tokens, then their values: [kSlotTokens][head_dim] K, [kSlotTokens][head_dim]
// V (elements of the attention dtype). A cached cluster of s tokens uses
// ceil(s / kSlotTokens) slots, in any order.
inline constexpr int kSlotTokens = 8;

// One run of consecutive tokens of a row (row = one kv head of one session).
// 32 bytes.
struct KvPage {
  // Token i of the run: keys at `keys + i * head_dim` elements, values at
  // `values + i * head_dim`. Device memory or mapped pinned host memory
  // (read by GPU threads directly, zero-copy). Ignored when slot_list >= 0.
  const void* keys = nullptr;
  const void* values = nullptr;
  int32_t first_token = 0;  // position of the run within its row's tokens
  int32_t num_tokens = 0;   // >= 0; 0 = empty run (skipped)
  // >= 0: the run lives in the wave buffer: token i is in slot
  // slot_ids[slot_list + i / kSlotTokens] at position i % kSlotTokens.
  int32_t slot_list = -1;
  // 1: also copy this run's tokens to the staging area (see
  // PagedAttentionArgs::stage), so the wave buffer can admit them from
  // device memory instead of reading the host a second time.
  int32_t stage = 0;
};

// Exact attention of each q head over the tokens of its row's pages, split-K
// with a log-sum-exp merge, merged with an optional estimated tail triple.
struct PagedAttentionArgs {
  ElemType dtype = ElemType::kFp16;
  int head_dim = 128;  // 64, 128 or 256
  int num_rows = 0;    // sessions x kv heads; row r = b * kv_heads + kv
  int group = 4;       // q heads per row (GQA group), 1..8
  float scale = 0.0f;  // softmax scale, e.g. 1/sqrt(head_dim)
  // [num_rows * group][head_dim] fp32; q head h of row r is r * group + h.
  const float* queries = nullptr;
  // Page table: row r owns pages[r * pages_per_row, (r+1) * pages_per_row),
  // sorted by first_token, runs back to back from token 0 (page i's
  // first_token = sum of the earlier pages' num_tokens).
  const KvPage* pages = nullptr;
  int pages_per_row = 0;
  // Wave-buffer slots (only read for pages with slot_list >= 0).
  const void* slot_pool = nullptr;
  const int32_t* slot_ids = nullptr;
  // Optional staging area for pages with stage == 1: row r's token t (its
  // position in the row) is copied to keys at
  // stage + ((2 * r) * stage_row_tokens + t) * head_dim elements and values
  // at stage + ((2 * r + 1) * stage_row_tokens + t) * head_dim. Tokens at
  // t >= stage_row_tokens are not staged.
  void* stage = nullptr;
  int64_t stage_row_tokens = 0;
  // Expected tokens per row (upper estimate), used only to pick the split
  // count when num_splits == 0.
  int64_t tokens_hint = 0;
  int num_splits = 0;  // 0 = choose from tokens_hint and the GPU
  int max_splits = 0;
  // Scratch of SplitScratchFloats(num_rows * group, head_dim, max_splits).
  float* split_scratch = nullptr;
  // Optional estimated tail per q head (all three or none): max logit,
  // denominator, numerator [head_dim]. An empty tail has den 0.
  const float* tail_max = nullptr;
  const float* tail_den = nullptr;
  const float* tail_num = nullptr;
  // Optional: the tail is complete at this event (e.g. RetrievalTailFork's
  // tail_done). The launcher makes the stream wait on it after the split
  // kernel, so the tail's producer on another stream overlaps the splits.
  cudaEvent_t tail_ready = nullptr;
  // Outputs per q head: merged max logit, denominator, numerator [head_dim],
  // and the normalised output [head_dim] (0 where the denominator is 0).
  float* out_max = nullptr;
  float* out_den = nullptr;
  float* out_num = nullptr;
  float* out = nullptr;
};

// Builds a page table from ranked cluster selections: per row, page 0 is the
// steady zone, page 1 + i is selected cluster i (empty if its id is negative
// or the cluster is empty). Pages point at the cluster store, or at the wave
// buffer's slots where the cluster is resident. One block per row.
struct ClusterPagesArgs {
  ElemType dtype = ElemType::kFp16;
  int head_dim = 128;
  int num_rows = 0;
  int num_clusters = 0;  // per row
  int num_selected = 0;  // per row; pages_per_row of the output = 1 + this
  const int32_t* selected = nullptr;       // [num_rows][num_selected]
  const int32_t* cluster_sizes = nullptr;  // [num_rows][num_clusters]
  // [num_rows][num_clusters]: element offset of the cluster's keys in its
  // row's store; its values follow the keys (offset + size * head_dim).
  const int64_t* cluster_offsets = nullptr;
  const void* const* row_store = nullptr;  // [num_rows], device or host
  // Optional [num_rows][num_clusters]: slot list index or -1 (wave buffer).
  const int32_t* cluster_slot_list = nullptr;
  // Steady zone per row (device): keys/values [steady_tokens][head_dim].
  const void* const* steady_keys = nullptr;    // [num_rows]
  const void* const* steady_values = nullptr;  // [num_rows]
  const int32_t* steady_tokens = nullptr;      // [num_rows]
  KvPage* pages = nullptr;  // out: [num_rows][1 + num_selected]
  // Optional device counters, incremented: non-empty selected clusters, and
  // those of them resident in the wave buffer.
  unsigned long long* lookups = nullptr;
  unsigned long long* hits = nullptr;
  // Mark pages of non-resident clusters for staging (KvPage::stage).
  bool stage_misses = false;
};

// Raw launchers; return a cudaError_t value (0 = ok).
// REQUIRES: args validated by the launchers of paged_attention.h.
int LaunchPagedAttentionRaw(const PagedAttentionArgs& args, int num_splits,
                            cudaStream_t stream);
int LaunchClusterPagesRaw(const ClusterPagesArgs& args, cudaStream_t stream);

// Resident split-kernel blocks per SM for args' dtype, head_dim and group,
// or a negative cudaError_t value.
int PagedSplitBlocksPerSm(const PagedAttentionArgs& args);

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_PAGED_ATTENTION_RAW_H_
