// Zone selection (see retrieval.h for the contract): one block of 1024
// threads per problem, after the score kernel (scoring.cu) wrote every
// cluster's score key and the problem's histogram of HistDigit(key).
// Selection is by the 64-bit OrderValue (key, ~id): distinct per cluster,
// larger = better, so "top n" is "OrderValue >= the n-th largest" and ties
// go to the lower id exactly as on the CPU.
//  1. From the histogram (4096 bins), the bins that hold rank n1 =
//     retrieval + estimation (the zones) and n2 = retrieval, and how many
//     clusters lie in higher bins.
//  2. One pass over the keys: clusters in bins above the retrieval bin are
//     in the retrieval zone (kept in shared memory), clusters in bins
//     strictly between the two are in the estimation zone (counted per
//     window of kTailWindow ids), and the clusters of the two boundary bins
//     (usually a few hundred) are kept as candidates; if more than
//     kCandidates, the steps below read the keys again instead (slower,
//     exact: e.g. all scores equal). For large indexes in small calls the
//     many-block classify kernel (below) makes this pass, and the select
//     block copies its lists.
//  3. Radix select over the OrderValue bits the bin leaves open, for both
//     targets at once, stopping as soon as each target's digit bin holds
//     one cluster: the two thresholds. The candidates are then placed.
//  4. The retrieval zone is sorted best first (by rank up to kRankSortMax,
//     else a bitonic sort); an exclusive scan of the window counts gives
//     each window its first slot in the id-ordered estimation zone (the
//     tail kernel fills it).
#include <cstdint>

#include "index/cuda/retrieval_kernels.cuh"

namespace wavekv::cuda::retrieval {
namespace {

constexpr int kThreads = kSelectThreads;
// Keys loaded per thread before they are used, in passes over the keys.
constexpr int kUnroll = 8;
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
template <int kBlock = kThreads, class Get>
__device__ void FindBin2(Get get, int bins, uint32_t target0, uint32_t target1,
                         u64* s_warp, uint32_t* s_out) {
  constexpr int kMaxPer = kHistBins / kBlock;
  const int per = bins > kBlock ? bins / kBlock : 1;
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
  u64 acc = BlockExclusiveSum<kBlock>(local, s_warp, total);
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
// every cluster in bin b0 or b1, from the keys.
template <class F>
__device__ void ForEachCandidate(bool overflow, const u64* list, uint32_t m,
                                 const uint32_t* keys, uint32_t k, uint32_t b0,
                                 uint32_t b1, F f) {
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
      const uint32_t d = HistDigit(kk[i]);
      if (kk[i] != 0 && (d == b0 || d == b1)) {
        f(OrderValue(kk[i], base + i * kThreads + threadIdx.x));
      }
    }
  }
}

constexpr int kClassifyThreads = 256;

// Grid (windows of the largest index, problems); problems of at most
// kSingleBlockSelectMax clusters are left to the select kernel.
__global__ void __launch_bounds__(kClassifyThreads)
    ClassifyKernel(RetrievalArgs a) {
  constexpr int kIds = kTailWindow / kClassifyThreads;
  __shared__ u64 s_warp64[32];
  __shared__ uint32_t s_warp[32];
  __shared__ uint32_t s_found[4];
  const RetrievalProblem p = a.device_problems[blockIdx.y];
  const uint32_t k = p.num_clusters;
  const uint32_t begin = blockIdx.x * kTailWindow;
  // Uniform across the block.
  if (k <= kSingleBlockSelectMax || begin >= k) return;
  const Layout lay = MakeLayout(k, a.group_size, a.head_dim);
  uint32_t* ghist = At<uint32_t>(p.workspace, lay.hist);
  uint32_t* windows = At<uint32_t>(p.workspace, lay.windows);
  const uint32_t nonempty = ghist[kCounterNonEmpty];
  const uint32_t n2 = min(p.retrieval_clusters, nonempty);
  const uint32_t n1 =
      n2 == 0 ? 0 : n2 + min(p.estimation_clusters, nonempty - n2);
  if (n2 == 0) {
    if (threadIdx.x == 0) windows[blockIdx.x] = 0;
    return;
  }
  const uint32_t* keys = At<uint32_t>(p.workspace, lay.keys);
  uint32_t kk[kIds];
#pragma unroll
  for (int i = 0; i < kIds; ++i) {
    const uint32_t c = begin + i * kClassifyThreads + threadIdx.x;
    kk[i] = c < k ? __ldg(keys + c) : 0u;
  }
  FindBin2<kClassifyThreads>(
      [&](int bin, uint32_t& c0, uint32_t& c1) { c0 = c1 = ghist[bin]; },
      kHistBins, n1, n2, s_warp64, s_found);
  const uint32_t bin_z = s_found[0], bin_r = s_found[2];
  u64* gcand = At<u64>(p.workspace, lay.candidates);
  u64* gret = At<u64>(p.workspace, lay.retrieved);
  uint32_t certain = 0;
#pragma unroll
  for (int i = 0; i < kIds; ++i) {
    const uint32_t c = begin + i * kClassifyThreads + threadIdx.x;
    const uint32_t d = HistDigit(kk[i]);
    const bool live = kk[i] != 0;
    const u64 v = OrderValue(kk[i], c);
    WarpAppend(live && d > bin_r, v, gret, kMaxRetrievalClusters,
               ghist + kCounterRetrieved);
    WarpAppend(live && (d == bin_z || d == bin_r), v, gcand, kCandidates,
               ghist + kCounterCandidates);
    certain += live && d > bin_z && d < bin_r;
  }
  uint32_t total;
  BlockExclusiveSum<kClassifyThreads>(certain, s_warp, total);
  if (threadIdx.x == 0) windows[blockIdx.x] = total;
}

// s_buf: `ret_cap` OrderValues for the retrieval zone (>= every retrieval
// zone rounded up to a power of 2), then kCandidates candidates.
// `classify`: the classify kernel ran (for the problems over
// kSingleBlockSelectMax clusters).
__global__ void __launch_bounds__(kThreads)
    SelectKernel(RetrievalArgs a, uint32_t ret_cap, bool classify) {
  extern __shared__ u64 s_buf[];
  u64* s_ret = s_buf;
  u64* s_cand = s_buf + ret_cap;
  __shared__ uint32_t s_hist[2][kDigitBins];
  __shared__ u64 s_warp64[32];
  __shared__ uint32_t s_warp[32];
  __shared__ uint32_t s_found[4];
  __shared__ uint32_t s_nret, s_ncand;
  __shared__ u64 s_thr[2];
  const RetrievalProblem p = a.device_problems[blockIdx.x];
  const uint32_t k = p.num_clusters;
  const Layout lay = MakeLayout(k, a.group_size, a.head_dim);
  uint32_t* ghist = At<uint32_t>(p.workspace, lay.hist);
  const uint32_t* keys = At<uint32_t>(p.workspace, lay.keys);
  uint32_t* windows = At<uint32_t>(p.workspace, lay.windows);
  const uint32_t num_windows = NumWindows(k);
  // Classified (large indexes): the classify kernel filled the lists and
  // each window's count of certain estimation-zone members.
  const bool classified = classify && k > kSingleBlockSelectMax;
  if (!classified) {
    for (uint32_t i = threadIdx.x; i < num_windows; i += kThreads) {
      windows[i] = 0;
    }
  }
  if (threadIdx.x == 0) s_nret = s_ncand = 0;
  const uint32_t nonempty = k == 0 ? 0 : ghist[kCounterNonEmpty];
  const uint32_t n2 = min(p.retrieval_clusters, nonempty);
  // No retrieval zone, no estimation zone (as PlanRetrieval).
  const uint32_t n1 =
      n2 == 0 ? 0 : n2 + min(p.estimation_clusters, nonempty - n2);
  // thr[0]: zones (top n1), thr[1]: retrieval (top n2); ~0: nothing.
  u64 thr[2] = {~0ull, ~0ull};
  if (n2 > 0) {  // uniform across the block
    // 1. Boundary bins (bin[1] >= bin[0]: the retrieval rank is higher).
    FindBin2([&](int bin, uint32_t& c0, uint32_t& c1) { c0 = c1 = ghist[bin]; },
             kHistBins, n1, n2, s_warp64, s_found);
    const uint32_t bin[2] = {s_found[0], s_found[2]};
    uint32_t target[2] = {n1 - s_found[1], n2 - s_found[3]};
    if (classified) {
      const u64* gcand = At<u64>(p.workspace, lay.candidates);
      const u64* gret = At<u64>(p.workspace, lay.retrieved);
      const uint32_t nc = ghist[kCounterCandidates];
      const uint32_t nr = ghist[kCounterRetrieved];
      for (uint32_t i = threadIdx.x; i < min(nc, kCandidates); i += kThreads) {
        s_cand[i] = gcand[i];
      }
      for (uint32_t i = threadIdx.x; i < min(nr, ret_cap); i += kThreads) {
        s_ret[i] = gret[i];
      }
      if (threadIdx.x == 0) {
        s_ncand = nc;
        s_nret = nr;
      }
    } else {
      // 2. One pass: certain members placed, boundary bins kept.
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
          const uint32_t d = HistDigit(kk[i]);
          const bool live = kk[i] != 0;
          const u64 v = OrderValue(kk[i], c);
          WarpAppend(live && d > bin[1], v, s_ret, ret_cap, &s_nret);
          WarpAppend(live && (d == bin[0] || d == bin[1]), v, s_cand,
                     kCandidates, &s_ncand);
          // A warp's 32 ids lie in one window: one global atomic per warp.
          const unsigned e =
              __ballot_sync(0xffffffffu, live && d > bin[0] && d < bin[1]);
          if (e != 0 && threadIdx.x % 32 == 0) {
            atomicAdd(&windows[c / kTailWindow], __popc(e));
          }
        }
      }
    }
    __syncthreads();
    const uint32_t m = s_ncand;
    const bool overflow = m > kCandidates;
    // 3. Radix select of each target inside its bin. A bin above 0 fixes
    // key bits 30..16 (OrderValue bits 62..48); bin 0 fixes nothing.
    u64 prefix[2];
    int known[2];  // OrderValue bits below `known` not yet fixed
    bool unique[2] = {false, false};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      prefix[j] = bin[j] == 0 ? 0ull
                              : static_cast<u64>(bin[j] + kDigitBase)
                                    << (32 + kDigitShift);
      known[j] = bin[j] == 0 ? 63 : 32 + kDigitShift;
    }
    auto member = [&](int j, u64 v) {
      return HistDigit(static_cast<uint32_t>(v >> 32)) == bin[j] &&
             (v >> known[j]) == (prefix[j] >> known[j]);
    };
    while (!(unique[0] && unique[1])) {  // uniform: shared-memory results
      int shift[2], width[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        width[j] = known[j] < 11 ? known[j] : 11;
        shift[j] = known[j] - width[j];
      }
      for (int i = threadIdx.x; i < 2 * kDigitBins; i += kThreads) {
        (&s_hist[0][0])[i] = 0;
      }
      __syncthreads();
      ForEachCandidate(
          overflow, s_cand, m, keys, k, bin[0], bin[1], [&](u64 v) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              if (!unique[j] && member(j, v)) {
                const uint32_t digit = static_cast<uint32_t>(v >> shift[j]) &
                                       ((1u << width[j]) - 1);
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
          kDigitBins, unique[0] ? 0u : target[0], unique[1] ? 0u : target[1],
          s_warp64, s_found);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (unique[j]) continue;
        const uint32_t digit = s_found[2 * j];
        prefix[j] |= static_cast<u64>(digit) << shift[j];
        target[j] -= s_found[2 * j + 1];
        known[j] = shift[j];
        unique[j] = s_hist[j][digit] == 1 || known[j] == 0;
      }
      __syncthreads();  // s_hist, s_found reused
    }
    // The one cluster under each prefix is the threshold.
    if (known[0] > 0 || known[1] > 0) {
      ForEachCandidate(overflow, s_cand, m, keys, k, bin[0], bin[1],
                       [&](u64 v) {
#pragma unroll
                         for (int j = 0; j < 2; ++j) {
                           if (known[j] > 0 && member(j, v)) s_thr[j] = v;
                         }
                       });
    }
    __syncthreads();
    thr[0] = known[0] > 0 ? s_thr[0] : prefix[0];
    thr[1] = known[1] > 0 ? s_thr[1] : prefix[1];
    // The candidates' places.
    ForEachCandidate(overflow, s_cand, m, keys, k, bin[0], bin[1], [&](u64 v) {
      if (v >= thr[1]) {
        const uint32_t pos = atomicAdd(&s_nret, 1u);
        if (pos < ret_cap) s_ret[pos] = v;
      } else if (v >= thr[0]) {
        atomicAdd(&windows[~static_cast<uint32_t>(v) / kTailWindow], 1u);
      }
    });
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
      const u64 v = s_ret[i];
      uint32_t rank = 0;
#pragma unroll 8
      for (uint32_t j = 0; j < n2; ++j) rank += s_ret[j] > v;
      p.out_retrieval[rank] = ~static_cast<uint32_t>(v & 0xffffffffull);
    }
    for (uint32_t i = n2 + threadIdx.x; i < p.retrieval_clusters;
         i += kThreads) {
      p.out_retrieval[i] = kNoCluster;
    }
  } else {
    uint32_t size = 1;
    while (size < n2) size *= 2;
    for (uint32_t i = n2 + threadIdx.x; i < size; i += kThreads) s_ret[i] = 0;
    __syncthreads();
    for (uint32_t span = 2; span <= size; span *= 2) {
      for (uint32_t j = span / 2; j > 0; j /= 2) {
        for (uint32_t i = threadIdx.x; i < size; i += kThreads) {
          const uint32_t x = i ^ j;
          if (x > i) {
            const u64 u = s_ret[i], v = s_ret[x];
            const bool desc = (i & span) == 0;
            if (desc ? u < v : u > v) {
              s_ret[i] = v;
              s_ret[x] = u;
            }
          }
        }
        __syncthreads();
      }
    }
    for (uint32_t i = threadIdx.x; i < p.retrieval_clusters; i += kThreads) {
      p.out_retrieval[i] =
          i < n2 ? ~static_cast<uint32_t>(s_ret[i] & 0xffffffffull)
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

int LaunchClassify(const RetrievalArgs& a, uint32_t max_clusters,
                   cudaStream_t stream) {
  ClassifyKernel<<<dim3(NumWindows(max_clusters), a.num_problems),
                   kClassifyThreads, 0, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
}

int LaunchSelect(const RetrievalArgs& a, uint32_t max_retrieval,
                 bool classified, cudaStream_t stream) {
  uint32_t ret_cap = 256;
  while (ret_cap < max_retrieval) ret_cap *= 2;
  const int smem = static_cast<int>((ret_cap + kCandidates) * sizeof(u64));
  // Static shared memory is ~17 KiB: over 48 KiB in all needs the opt-in.
  if (smem > 24 * 1024) {
    const cudaError_t attr = cudaFuncSetAttribute(
        SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (attr != cudaSuccess) return static_cast<int>(attr);
  }
  SelectKernel<<<a.num_problems, kThreads, smem, stream>>>(a, ret_cap,
                                                           classified);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wavekv::cuda::retrieval
