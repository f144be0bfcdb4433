// Plain (absl-free) declarations shared by the nvcc-compiled retrieval
// kernels (scoring.cu, retrieval_tail.cu) and the C++ launcher in
// retrieval.h. See retrieval.h for the contract.
#ifndef WAVEKV_INDEX_CUDA_RETRIEVAL_RAW_H_
#define WAVEKV_INDEX_CUDA_RETRIEVAL_RAW_H_

#include <cstddef>
#include <cstdint>

#include "index/cuda/decode_attention_raw.h"  // ElemType, cudaStream_t

namespace wavekv::cuda {

// Written into out_retrieval / out_estimation slots past the actual count.
inline constexpr uint32_t kNoCluster = 0xFFFFFFFFu;

// Largest retrieval zone one problem may ask for (sorted best first in
// shared memory) and largest GQA group.
inline constexpr uint32_t kMaxRetrievalClusters = 8192;
inline constexpr int kMaxRetrievalGroup = 8;

// One (session, kv head) of a batched retrieval call. Every pointer is a
// device pointer. The index of the kv head: `num_clusters` clusters with
// centroid rows [num_clusters][head_dim] of RetrievalArgs::centroid_type,
// value sums [num_clusters][head_dim] fp32 and sizes [num_clusters] uint32
// (0 = empty cluster: never selected).
struct RetrievalProblem {
  const void* centroids = nullptr;
  const float* value_sums = nullptr;
  const uint32_t* sizes = nullptr;
  uint32_t num_clusters = 0;
  // Zone budgets (usually ComputeZoneBudget over the non-empty clusters).
  // The kernels clamp them to the non-empty clusters actually present:
  // retrieval = min(retrieval_clusters, n), estimation =
  // min(estimation_clusters, n - retrieval); with no retrieval zone
  // (retrieval_clusters == 0 or n == 0) the estimation zone is empty too,
  // as in PlanRetrieval.
  uint32_t retrieval_clusters = 0;
  uint32_t estimation_clusters = 0;
  // The group's query heads, [group_size][head_dim] fp32.
  const float* queries = nullptr;
  // RetrievalWorkspaceBytes(num_clusters, ...) bytes, 256-byte aligned,
  // private to this problem for the duration of the call.
  void* workspace = nullptr;
  // Outputs.
  //  out_retrieval [retrieval_clusters]: retrieval zone, best first
  //    (group score descending, ties to the lower id); kNoCluster past the
  //    actual count.
  //  out_counts [2]: actual retrieval and estimation zone sizes.
  //  out_estimation [estimation_clusters] (may be null): the estimation
  //    zone in cluster id order; kNoCluster past the actual count.
  //  out_max [group_size], out_den [group_size], out_num
  //    [group_size][head_dim]: per query head the estimation zone's partial
  //    softmax (max logit, Σ s_c e^{l_c - m}, Σ e^{l_c - m} VS_c); the empty
  //    partial (-inf, 0, zeros) when the zone is empty.
  uint32_t* out_retrieval = nullptr;
  uint32_t* out_counts = nullptr;
  uint32_t* out_estimation = nullptr;
  float* out_max = nullptr;
  float* out_den = nullptr;
  float* out_num = nullptr;
};

// One batched call: every problem shares centroid type, head_dim, GQA group
// size and logit scale.
struct RetrievalArgs {
  ElemType centroid_type = ElemType::kFp16;  // fp16, bf16 or fp32
  int head_dim = 128;                        // 64, 128 or 256
  int group_size = 4;                        // 1..kMaxRetrievalGroup
  float scale = 0.0f;                        // logit scale, e.g. 1/sqrt(d)
  int num_problems = 0;                      // 0..65535
  // The problems twice: a host copy (validated, used to size the grids) and
  // the same bytes in device memory (read by the kernels). The caller
  // uploads them (e.g. cudaMemcpyAsync from pinned memory on `stream`).
  const RetrievalProblem* problems = nullptr;
  const RetrievalProblem* device_problems = nullptr;
};

// Bytes of workspace one problem of `num_clusters` clusters needs.
size_t RetrievalWorkspaceBytes(uint32_t num_clusters, int group_size,
                               int head_dim);

// Enqueues the kernels (grid sizes from the host copy `args.problems`);
// returns a cudaError_t value (0 = ok).
// REQUIRES: args validated by LaunchRetrieval (retrieval.h).
int LaunchRetrievalRaw(const RetrievalArgs& args, cudaStream_t stream);
// The same in two parts: scoring + selection (out_retrieval, out_counts and
// the padding of out_estimation are complete after it), then the tail
// estimation (out_estimation's ids and the partials), which must be
// enqueued after the first part has completed (same stream or an event).
int LaunchRetrievalSelectRaw(const RetrievalArgs& args, cudaStream_t stream);
int LaunchRetrievalTailRaw(const RetrievalArgs& args, cudaStream_t stream);

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_RETRIEVAL_RAW_H_
