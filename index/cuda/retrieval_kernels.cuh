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
#include "index/cuda/vec_load.cuh"

namespace wavekv::cuda::retrieval {

// Clusters scored by one block of the logits kernel (one tile statistic
// per head each), clusters per block of the score kernel, cluster ids per
// block of the tail kernel (one tail partial per window).
inline constexpr int kLogitTile = 256;
inline constexpr int kScoreTile = 1024;
inline constexpr int kTailWindow = 512;
// Score key of cluster c: 0 if empty, else bits(score_c) + 1 (scores are
// in [0, group] with group <= 8, so keys order like scores, stay at or
// below bits(8.0f) + 1, and every non-empty key is > every empty one).
// Histogram digit of a key (HistDigit): 128 bins per octave over the 32
// octaves below 8.0 (key bits 30..16, i.e. exponent and 7 mantissa bits,
// minus kDigitBase); smaller scores (below ~2^-29) share bin 0.
inline constexpr int kHistBins = 4096;
inline constexpr int kDigitShift = 16;
inline constexpr uint32_t kDigitBase =
    ((0x41000000u + 1u) >> kDigitShift) - (kHistBins - 1);

__host__ __device__ inline uint32_t HistDigit(uint32_t key) {
  const uint32_t hi = key >> kDigitShift;
  const uint32_t d = hi <= kDigitBase ? 0u : hi - kDigitBase;
  return d < kHistBins - 1u ? d : kHistBins - 1u;
}

inline constexpr int kSelectThreads = 1024;
// Boundary-bin candidates kept for the radix select (shared memory in the
// select kernel, and the workspace list the classify kernel fills).
inline constexpr uint32_t kCandidates = 4096;
// Up to this many clusters the select kernel's one block per problem
// classifies the keys itself. Larger indexes get the many-block classify
// kernel first when the call has at most kClassifyMaxProblems problems
// (1M tokens, batch 1: select 53 -> 32 us + 18 us classify, graph -4 us;
// at batch 4 and 16 it cost more than it saved: every classify block reads
// the whole 4096-bin histogram to find the boundary bins).
inline constexpr int kClassifyMaxProblems = 8;
inline constexpr uint32_t kSingleBlockSelectMax = 16384;

// Byte offsets of the arrays inside one problem's workspace (each 256-byte
// aligned).
struct Layout {
  size_t logits;      // float [group][K]
  size_t keys;        // uint32 [K]
  size_t tile_stats;  // float [ceil(K / kLogitTile)][group][2] (max, sum)
  size_t hist;        // uint32 [kHistBins] + counters and thresholds
  size_t windows;     // uint32 [ceil(K / kTailWindow)]: estimation-zone
                      // members in earlier windows (exclusive prefix)
  size_t tail;        // float [ceil(K / kTailWindow)][group][head_dim + 2]
  size_t candidates;  // uint64 [kCandidates]: classify kernel's list
  size_t retrieved;   // uint64 [kMaxRetrievalClusters]: classify's list
  size_t total;
};

// Words after the histogram (zeroed by the logits kernel): non-empty
// clusters (score kernel), tail blocks done (the last one merges the
// windows' partials), actual estimation zone size (select kernel); then two
// 64-bit thresholds (select kernel, at an 8-byte aligned word): a cluster
// is in the top n iff OrderValue(key, id) >= the threshold of n.
inline constexpr int kCounterNonEmpty = kHistBins;
inline constexpr int kCounterTailDone = kHistBins + 1;
inline constexpr int kCounterEstimation = kHistBins + 2;
inline constexpr int kThresholdZones = kHistBins + 4;      // 2 words
inline constexpr int kThresholdRetrieval = kHistBins + 6;  // 2 words
// Classify kernel (see kSingleBlockSelectMax): entries appended to the
// candidate and retrieval lists.
inline constexpr int kCounterCandidates = kHistBins + 8;
inline constexpr int kCounterRetrieved = kHistBins + 9;
inline constexpr int kHistWords = kHistBins + 32;

__host__ __device__ inline size_t AlignUp(size_t x) {
  return (x + 255) / 256 * 256;
}

__host__ __device__ inline uint32_t NumWindows(uint32_t k) {
  return (k + kTailWindow - 1) / kTailWindow;
}

__host__ __device__ inline Layout MakeLayout(uint32_t k, int group,
                                             int head_dim) {
  Layout l;
  size_t off = 0;
  l.logits = off;
  off += AlignUp(size_t{4} * group * k);
  l.keys = off;
  off += AlignUp(size_t{4} * k);
  l.tile_stats = off;
  off += AlignUp(size_t{8} * group * ((k + kLogitTile - 1) / kLogitTile));
  l.hist = off;
  off += AlignUp(size_t{4} * kHistWords);
  l.windows = off;
  off += AlignUp(size_t{4} * NumWindows(k));
  l.tail = off;
  off += AlignUp(size_t{4} * group * (head_dim + 2) * NumWindows(k));
  // The classify kernel's lists, only for indexes that use it.
  const bool classify = k > kSingleBlockSelectMax;
  l.candidates = off;
  off += classify ? AlignUp(size_t{8} * kCandidates) : 0;
  l.retrieved = off;
  off += classify ? AlignUp(size_t{8} * kMaxRetrievalClusters) : 0;
  l.total = off;
  return l;
}

template <typename P>
__device__ __forceinline__ P* At(void* workspace, size_t offset) {
  return reinterpret_cast<P*>(static_cast<char*>(workspace) + offset);
}

// Strict selection order as one 64-bit value: larger = better (score key
// descending, then id ascending). Distinct for distinct ids.
__device__ __forceinline__ unsigned long long OrderValue(uint32_t key,
                                                         uint32_t id) {
  return (static_cast<unsigned long long>(key) << 32) | ~id;
}

// Exclusive prefix sum over a block of kThreads threads; `total` gets the
// block sum. Every thread must call it; it ends with a barrier (s_warp,
// 32 words, may be reused right after).
template <int kThreads, typename T>
__device__ T BlockExclusiveSum(T v, T* s_warp, T& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  constexpr int kWarps = kThreads / 32;
  T x = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const T y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) s_warp[warp] = x;
  __syncthreads();
  if (warp == 0) {
    T w = lane < kWarps ? s_warp[lane] : T{0};
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const T y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    s_warp[lane] = w;
  }
  __syncthreads();
  total = s_warp[kWarps - 1];
  const T excl = x - v + (warp > 0 ? s_warp[warp - 1] : T{0});
  __syncthreads();  // s_warp may be reused
  return excl;
}

// Lets a kernel launched after this one as a programmatic dependent launch
// (sm_90; it must wait for our completion itself, griddepcontrol.wait) be
// scheduled before this one finishes. Our own kernels are plain launches:
// programmatic launches of them measured ~2.5 us slower at 128K batch 1 in
// CUDA-graph replays (and ~1% faster at 1M).
__device__ __forceinline__ void AllowDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Per-stage launchers (each returns a cudaError_t value).
// Logits + per-tile softmax statistics; zeroes the histogram and counters.
int LaunchLogits(const RetrievalArgs& a, uint32_t max_clusters,
                 cudaStream_t stream);
// Group scores, score keys, the first radix histogram, non-empty count
// (many blocks per problem).
int LaunchScores(const RetrievalArgs& a, uint32_t max_clusters,
                 cudaStream_t stream);
// Per window of kTailWindow ids (many blocks per problem): clusters certain
// to be in the retrieval zone and boundary-bin candidates appended to the
// workspace lists, certain estimation-zone members counted, for every
// problem of over kSingleBlockSelectMax clusters.
int LaunchClassify(const RetrievalArgs& a, uint32_t max_clusters,
                   cudaStream_t stream);
// Zone thresholds, the retrieval zone best first, per-window offsets of the
// estimation zone (one block per problem); `classified`: LaunchClassify ran
// first (it handled the problems of over kSingleBlockSelectMax clusters).
int LaunchSelect(const RetrievalArgs& a, uint32_t max_retrieval,
                 bool classified, cudaStream_t stream);
// Estimation zone ids and tail statistics per window of cluster ids (the
// last block of each problem merges).
int LaunchTail(const RetrievalArgs& a, uint32_t max_clusters,
               cudaStream_t stream);

}  // namespace wavekv::cuda::retrieval

#endif  // WAVEKV_INDEX_CUDA_RETRIEVAL_KERNELS_CUH_
