// Internal to the retrieval kernels (scoring.cu, retrieval_select.cu,
// retrieval_tail.cu): the per-problem workspace layout, small device
// helpers and the per-stage host launchers. Not a public header.
#ifndef WAVEKV_INDEX_CUDA_RETRIEVAL_KERNELS_CUH_
#define WAVEKV_INDEX_CUDA_RETRIEVAL_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "index/cuda/retrieval_raw.h"

namespace wavekv::cuda::retrieval {

// Clusters scored by one block of the logits kernel (one tile statistic
// per head each), clusters per block of the score kernel, estimation-zone
// clusters per block of the tail kernel.
inline constexpr int kLogitTile = 256;
inline constexpr int kScoreTile = 1024;
// Up to this many clusters per problem the select kernel computes the
// score keys itself (one launch fewer; latency-bound sizes); larger indexes
// get the many-block score kernel (one select block would read all logits).
inline constexpr uint32_t kFusedScoreMaxClusters = 16384;
inline constexpr int kTailChunk = 128;
// Radix digits over the 32-bit score key: bits 31..21, 20..10, 9..0.
inline constexpr int kHist0Bins = 2048;
inline constexpr int kSelectThreads = 1024;

// Byte offsets of the arrays inside one problem's workspace (each 256-byte
// aligned). Score key of cluster c: 0 if empty, else bits(score_c) + 1, so
// that keys order like scores and every non-empty key is > every empty one.
struct Layout {
  size_t logits;      // float [group][K]
  size_t keys;        // uint32 [K]
  size_t estimation;  // uint32 [K]: estimation zone ids, id order
  size_t tile_stats;  // float [ceil(K / kLogitTile)][group][2] (max, sum)
  size_t hist;        // uint32 [kHist0Bins] + counters
  size_t tail;        // float [ceil(K / kTailChunk)][group][head_dim + 2]
  size_t total;
};

// Counters after the first histogram (all zeroed by the logits kernel):
// non-empty clusters (score kernel), actual estimation zone size (select
// kernel), tail blocks done (the last one merges the chunks' partials).
inline constexpr int kCounterNonEmpty = kHist0Bins;
inline constexpr int kCounterEstimation = kHist0Bins + 1;
inline constexpr int kCounterTailDone = kHist0Bins + 2;
inline constexpr int kHistWords = kHist0Bins + 32;

__host__ __device__ inline size_t AlignUp(size_t x) {
  return (x + 255) / 256 * 256;
}

__host__ __device__ inline Layout MakeLayout(uint32_t k, int group,
                                             int head_dim) {
  Layout l;
  size_t off = 0;
  l.logits = off;
  off += AlignUp(size_t{4} * group * k);
  l.keys = off;
  off += AlignUp(size_t{4} * k);
  l.estimation = off;
  off += AlignUp(size_t{4} * k);
  l.tile_stats = off;
  off += AlignUp(size_t{8} * group * ((k + kLogitTile - 1) / kLogitTile));
  l.hist = off;
  off += AlignUp(size_t{4} * kHistWords);
  l.tail = off;
  off += AlignUp(size_t{4} * group * (head_dim + 2) *
                 ((k + kTailChunk - 1) / kTailChunk));
  l.total = off;
  return l;
}

template <typename P>
__device__ __forceinline__ P* At(void* workspace, size_t offset) {
  return reinterpret_cast<P*>(static_cast<char*>(workspace) + offset);
}

// 8 consecutive elements of a centroid row, converted to float.
template <typename T>
struct Load8;

template <>
struct Load8<__half> {
  static __device__ __forceinline__ void Run(const void* p, float* out) {
    uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 f = __half22float2(h[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};

template <>
struct Load8<__nv_bfloat16> {
  static __device__ __forceinline__ void Run(const void* p, float* out) {
    uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 f = __bfloat1622float2(h[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};

template <>
struct Load8<float> {
  static __device__ __forceinline__ void Run(const void* p, float* out) {
    const float4* f = reinterpret_cast<const float4*>(p);
    float4 a = __ldg(f), b = __ldg(f + 1);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
  }
};

// Per-stage launchers (each returns a cudaError_t value).
// Logits + per-tile softmax statistics, zeroes the histogram.
int LaunchLogits(const RetrievalArgs& a, uint32_t max_clusters,
                 cudaStream_t stream);
// Group scores, score keys, first radix histogram, non-empty count (only
// when the select kernel does not score: max_clusters >
// kFusedScoreMaxClusters).
int LaunchScores(const RetrievalArgs& a, uint32_t max_clusters,
                 cudaStream_t stream);
// Zones (radix select + ordered collection + best-first sort); scores the
// clusters first when `fused_scores`.
int LaunchSelect(const RetrievalArgs& a, uint32_t max_retrieval,
                 bool fused_scores, cudaStream_t stream);
// Tail statistics over the estimation zone (split; the last block of each
// problem merges).
int LaunchTail(const RetrievalArgs& a, uint32_t max_estimation,
               cudaStream_t stream);

}  // namespace wavekv::cuda::retrieval

#endif  // WAVEKV_INDEX_CUDA_RETRIEVAL_KERNELS_CUH_
