// Zone selection (see retrieval.h for the contract): one block of 1024
// threads per problem, after the score kernel (scoring.cu) wrote every
// cluster's score key and the problem's histogram of the top key digit.
// Selection is by the 64-bit OrderValue (key, ~id): distinct per cluster,
// larger = better, so "top n" is "OrderValue >= the n-th largest" and ties
// go to the lower id exactly as on the CPU.
//  1. From the histogram (4096 bins), the bins that hold rank n1 =
//     retrieval + estimation (the zones) and n2 = retrieval, and how many
//     clusters lie in higher bins.
//  2. One pass over the keys collects the clusters of those two bins
//     (usually a few hundred) into shared memory; if more than
//     kCandidates, the next step reads the keys again instead (slower,
//     exact: e.g. all scores equal).
//  3. Radix select over the remaining 51 bits of OrderValue (key bits
//     18..0, then ~id) for both targets at once, stopping as soon as each
//     target's digit bin holds one cluster: the two thresholds.
//  4. One pass over the keys: clusters >= the retrieval threshold go to
//     shared memory (sorted best first: by rank up to kRankSortMax, else a
//     bitonic sort), estimation-zone members are counted per window of
//     kTailWindow ids; an exclusive scan gives each window its first slot
//     in the id-ordered estimation zone (the tail kernel fills it).
#include <cstdint>

#include "index/cuda/retrieval_kernels.cuh"

namespace wavekv::cuda::retrieval {
namespace {

constexpr int kThreads = kSelectThreads;
// Keys loaded per thread before they are used, in passes over the keys.
constexpr int kUnroll = 8;
// Candidate clusters (the two boundary bins) kept in shared memory.
constexpr uint32_t kCandidates = 4096;
// Largest retrieval zone placed by rank instead of the bitonic sort.
constexpr uint32_t kRankSortMax = 256;
constexpr int kDigitBins = 2048;

using u64 = unsigned long long;

// Appends v to buf (slots counted in *count) for the lanes where `pred`;
// one shared atomic per warp. The whole warp must call it.
__device__ __forceinline__ void WarpAppend(bool pred, u64 v, u64* buf,
                                           uint32_t cap, uint32_t* count) {
  const unsigned mask = __ballot_sync(0xffffffffu, pred);
  if (mask == 0) return;
  const int lane = threadIdx.x % 32;
  const int leader = __ffs(mask) - 1;
  uint32_t base = 0;
  if (lane == leader) base = atomicAdd(count, __popc(mask));
  base = __shfl_sync(0xffffffffu, base, leader);
  if (pred) {
    const uint32_t pos = base + __popc(mask & ((1u << lane) - 1));
    if (pos < cap) buf[pos] = v;
  }
}

// For two targets at once (one 64-bit scan; counts stay below 2^32): over
// `bins` bins with counts get(bin, c0, c1), counted from the top, the bin
// holding target j's element (1-based rank) and the count in higher bins:
// s_out[2j], s_out[2j + 1]. Ends with a barrier.
template <class Get>
__device__ void FindBin2(Get get, int bins, uint32_t target0, uint32_t target1,
                         u64* s_warp, uint32_t* s_out) {
  constexpr int kMaxPer = kHistBins / kThreads;
  const int per = bins > kThreads ? bins / kThreads : 1;
  uint32_t c0[kMaxPer], c1[kMaxPer];
  u64 local = 0;
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int from_top = threadIdx.x * per + i;
    c0[i] = c1[i] = 0;
    if (i < per && from_top < bins) get(bins - 1 - from_top, c0[i], c1[i]);
    local += c0[i] | static_cast<u64>(c1[i]) << 32;
  }
  u64 total;
  u64 acc = BlockExclusiveSum<kThreads>(local, s_warp, total);
#pragma unroll
  for (int i = 0; i < kMaxPer; ++i) {
    const int bin = bins - 1 - (static_cast<int>(threadIdx.x) * per + i);
    const uint32_t a0 = static_cast<uint32_t>(acc), a1 = acc >> 32;
    if (a0 < target0 && a0 + c0[i] >= target0) {
      s_out[0] = bin;
      s_out[1] = a0;
    }
    if (a1 < target1 && a1 + c1[i] >= target1) {
      s_out[2] = bin;
      s_out[3] = a1;
    }
    acc += c0[i] | static_cast<u64>(c1[i]) << 32;
  }
  __syncthreads();
}

// Calls f(OrderValue) for every candidate: the shared list, or (overflow)
// every non-empty cluster's key.
template <class F>
__device__ void ForEachCandidate(bool overflow, const u64* list, uint32_t m,
                                 const uint32_t* keys, uint32_t k, F f) {
  if (!overflow) {
    for (uint32_t i = threadIdx.x; i < m; i += kThreads) f(list[i]);
    return;
  }
  for (uint32_t base = 0; base < k; base += kThreads * kUnroll) {
    uint32_t kk[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const uint32_t c = base + i * kThreads + threadIdx.x;
      kk[i] = c < k ? __ldg(keys + c) : 0u;
    }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      if (kk[i] != 0) f(OrderValue(kk[i], base + i * kThreads + threadIdx.x));
    }
  }
}

// `cap`: OrderValues s_buf holds (>= kCandidates, >= every retrieval zone
// rounded up to a power of 2).
__global__ void __launch_bounds__(kThreads)
    SelectKernel(RetrievalArgs a, uint32_t cap) {
  AllowDependents();
  extern __shared__ u64 s_buf[];  // candidates, then the retrieval zone
  __shared__ uint32_t s_hist[2][kDigitBins];
  __shared__ u64 s_warp64[32];
  __shared__ uint32_t s_warp[32];
  __shared__ uint32_t s_found[4];
  __shared__ uint32_t s_count;
  __shared__ u64 s_thr[2];
  const RetrievalProblem p = a.device_problems[blockIdx.x];
  WaitForPredecessor();
  const uint32_t k = p.num_clusters;
  const Layout lay = MakeLayout(k, a.group_size, a.head_dim);
  uint32_t* ghist = At<uint32_t>(p.workspace, lay.hist);
  const uint32_t* keys = At<uint32_t>(p.workspace, lay.keys);
  uint32_t* windows = At<uint32_t>(p.workspace, lay.windows);
  const uint32_t num_windows = NumWindows(k);
  for (uint32_t i = threadIdx.x; i < num_windows; i += kThreads) {
    windows[i] = 0;
  }
  const uint32_t nonempty = k == 0 ? 0 : ghist[kCounterNonEmpty];
  const uint32_t n2 = min(p.retrieval_clusters, nonempty);
  // No retrieval zone, no estimation zone (as PlanRetrieval).
  const uint32_t n1 =
      n2 == 0 ? 0 : n2 + min(p.estimation_clusters, nonempty - n2);
  // thr[0]: zones (top n1), thr[1]: retrieval (top n2); ~0: nothing.
  u64 thr[2] = {~0ull, ~0ull};
  if (n2 > 0) {
    // 1. Boundary bins of the top digit.
    FindBin2([&](int bin, uint32_t& c0, uint32_t& c1) { c0 = c1 = ghist[bin]; },
             kHistBins, n1, n2, s_warp64, s_found);
    const uint32_t bin[2] = {s_found[0], s_found[2]};
    uint32_t target[2] = {n1 - s_found[1], n2 - s_found[3]};
    if (threadIdx.x == 0) s_count = 0;
    __syncthreads();
    // 2. Candidates: the clusters of both boundary bins.
    for (uint32_t base = 0; base < k; base += kThreads * kUnroll) {
      uint32_t kk[kUnroll];
#pragma unroll
      for (int i = 0; i < kUnroll; ++i) {
        const uint32_t c = base + i * kThreads + threadIdx.x;
        kk[i] = c < k ? __ldg(keys + c) : 0u;
      }
#pragma unroll
      for (int i = 0; i < kUnroll; ++i) {
        const uint32_t d = kk[i] >> kHistShift;
        WarpAppend(kk[i] != 0 && (d == bin[0] || d == bin[1]),
                   OrderValue(kk[i], base + i * kThreads + threadIdx.x), s_buf,
                   cap, &s_count);
      }
    }
    __syncthreads();
    const uint32_t m = s_count;
    const bool overflow = m > cap;
    // 3. Radix select below the top digit: OrderValue bits 50..0.
    u64 prefix[2] = {static_cast<u64>(bin[0]) << 51, static_cast<u64>(bin[1])
                                                         << 51};
    int known[2] = {51, 51};  // bits below `known` not yet fixed
    bool unique[2] = {false, false};
    for (int pass = 0; pass < 5 && !(unique[0] && unique[1]); ++pass) {
      const int width = pass < 4 ? 11 : 7;
      const int shift = 51 - 11 * pass - width;
      for (int i = threadIdx.x; i < 2 * kDigitBins; i += kThreads) {
        (&s_hist[0][0])[i] = 0;
      }
      __syncthreads();
      const int above = shift + width;
      ForEachCandidate(overflow, s_buf, m, keys, k, [&](u64 v) {
        const uint32_t digit =
            static_cast<uint32_t>(v >> shift) & ((1u << width) - 1);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (!unique[j] && (v >> above) == (prefix[j] >> above)) {
            atomicAdd(&s_hist[j][digit], 1u);
          }
        }
      });
      __syncthreads();
      FindBin2(
          [&](int b, uint32_t& c0, uint32_t& c1) {
            c0 = s_hist[0][b];
            c1 = s_hist[1][b];
          },
          1 << width, unique[0] ? 0u : target[0], unique[1] ? 0u : target[1],
          s_warp64, s_found);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (unique[j]) continue;
        const uint32_t digit = s_found[2 * j];
        prefix[j] |= static_cast<u64>(digit) << shift;
        target[j] -= s_found[2 * j + 1];
        known[j] = shift;
        unique[j] = s_hist[j][digit] == 1;
      }
      __syncthreads();  // s_hist, s_found reused
    }
    // The one cluster under each prefix is the threshold.
    if (known[0] > 0 || known[1] > 0) {
      ForEachCandidate(overflow, s_buf, m, keys, k, [&](u64 v) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (known[j] > 0 && (v >> known[j]) == (prefix[j] >> known[j])) {
            s_thr[j] = v;
          }
        }
      });
    }
    __syncthreads();
    thr[0] = known[0] > 0 ? s_thr[0] : prefix[0];
    thr[1] = known[1] > 0 ? s_thr[1] : prefix[1];
    if (threadIdx.x == 0) s_count = 0;
    __syncthreads();  // candidates dead: s_buf takes the retrieval zone
  }
  // 4. Retrieval zone members; estimation-zone members per window (a warp's
  // 32 ids lie in one window: one global atomic per warp).
  if (n2 > 0) {
    for (uint32_t base = 0; base < k; base += kThreads * kUnroll) {
      uint32_t kk[kUnroll];
#pragma unroll
      for (int i = 0; i < kUnroll; ++i) {
        const uint32_t c = base + i * kThreads + threadIdx.x;
        kk[i] = c < k ? __ldg(keys + c) : 0u;
      }
#pragma unroll
      for (int i = 0; i < kUnroll; ++i) {
        const uint32_t c = base + i * kThreads + threadIdx.x;
        const u64 v = OrderValue(kk[i], c);
        const bool in_r = c < k && v >= thr[1];
        const bool in_e = c < k && !in_r && v >= thr[0];
        WarpAppend(in_r, v, s_buf, cap, &s_count);
        const unsigned e = __ballot_sync(0xffffffffu, in_e);
        if (e != 0 && threadIdx.x % 32 == 0) {
          atomicAdd(&windows[c / kTailWindow], __popc(e));
        }
      }
    }
  }
  __syncthreads();
  // Window offsets: exclusive scan in place, 1024 windows per round.
  uint32_t running = 0;
  for (uint32_t base = 0; base < num_windows; base += kThreads) {
    const uint32_t i = base + threadIdx.x;
    const uint32_t c = i < num_windows ? __ldcg(windows + i) : 0u;
    uint32_t total;
    const uint32_t ex = BlockExclusiveSum<kThreads>(c, s_warp, total);
    if (i < num_windows) windows[i] = running + ex;
    running += total;
  }
  // The retrieval zone best first. OrderValues are distinct, so a small
  // zone is placed by rank (a thread per value counts the larger ones: no
  // barriers); a larger one is sorted by a bitonic sort, descending.
  if (n2 <= kRankSortMax) {
    for (uint32_t i = threadIdx.x; i < n2; i += kThreads) {
      const u64 v = s_buf[i];
      uint32_t rank = 0;
#pragma unroll 8
      for (uint32_t j = 0; j < n2; ++j) rank += s_buf[j] > v;
      p.out_retrieval[rank] = ~static_cast<uint32_t>(v & 0xffffffffull);
    }
    for (uint32_t i = n2 + threadIdx.x; i < p.retrieval_clusters;
         i += kThreads) {
      p.out_retrieval[i] = kNoCluster;
    }
  } else {
    uint32_t size = 1;
    while (size < n2) size *= 2;
    for (uint32_t i = n2 + threadIdx.x; i < size; i += kThreads) s_buf[i] = 0;
    __syncthreads();
    for (uint32_t span = 2; span <= size; span *= 2) {
      for (uint32_t j = span / 2; j > 0; j /= 2) {
        for (uint32_t i = threadIdx.x; i < size; i += kThreads) {
          const uint32_t x = i ^ j;
          if (x > i) {
            const u64 u = s_buf[i], v = s_buf[x];
            const bool desc = (i & span) == 0;
            if (desc ? u < v : u > v) {
              s_buf[i] = v;
              s_buf[x] = u;
            }
          }
        }
        __syncthreads();
      }
    }
    for (uint32_t i = threadIdx.x; i < p.retrieval_clusters; i += kThreads) {
      p.out_retrieval[i] =
          i < n2 ? ~static_cast<uint32_t>(s_buf[i] & 0xffffffffull)
                 : kNoCluster;
    }
  }
  if (p.out_estimation != nullptr) {
    for (uint32_t i = n1 - n2 + threadIdx.x; i < p.estimation_clusters;
         i += kThreads) {
      p.out_estimation[i] = kNoCluster;
    }
  }
  if (threadIdx.x == 0) {
    p.out_counts[0] = n2;
    p.out_counts[1] = n1 - n2;
    ghist[kCounterEstimation] = n1 - n2;
    *reinterpret_cast<u64*>(ghist + kThresholdZones) = thr[0];
    *reinterpret_cast<u64*>(ghist + kThresholdRetrieval) = thr[1];
  }
}

}  // namespace

int LaunchSelect(const RetrievalArgs& a, uint32_t max_retrieval,
                 cudaStream_t stream) {
  uint32_t size = 1;
  while (size < max_retrieval) size *= 2;
  if (size < kCandidates) size = kCandidates;
  const int smem = static_cast<int>(size * sizeof(u64));
  // Static shared memory is ~17 KiB: over 48 KiB in all needs the opt-in.
  if (smem > 24 * 1024) {
    const cudaError_t attr = cudaFuncSetAttribute(
        SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (attr != cudaSuccess) return static_cast<int>(attr);
  }
  return static_cast<int>(LaunchDependent(SelectKernel, a.num_problems,
                                          kThreads, smem, stream, a, size));
}

}  // namespace wavekv::cuda::retrieval
