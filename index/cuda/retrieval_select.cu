// Zone selection (see retrieval.h for the contract): one block of 1024
// threads per problem.
//  0. Group scores (indexes of up to kFusedScoreMaxClusters clusters; the
//     score kernel does this for larger ones): the block combines the logits
//     kernel's tile statistics into each head's softmax max and denominator,
//     writes every cluster's score key and builds the first radix histogram in
//     shared memory (no separate score launch, no global atomics).
//  1. Radix select over the 32-bit score keys (scoring.cu) for two targets
//     at once: n1 = retrieval + estimation (the zones) and n2 = retrieval.
//     The first digit's histogram comes from step 0; two more
//     passes over the keys (11 and 10 bits) give the exact key of the n-th
//     best cluster and how many keys lie strictly above it.
//  2. One ordered pass over cluster ids: a key above the threshold is in,
//     a key equal to it is in while fewer than (n - above) equal keys with a
//     lower id were taken (ties to the lower id, as on the CPU). Block-wide
//     prefix sums give each selected cluster its slot, so the estimation
//     zone comes out in id order.
//  3. The retrieval zone, as 64-bit (key, ~id) pairs in shared memory, is
//     ordered best first: by rank (up to kRankSortMax pairs) or by a
//     bitonic sort.
#include <cstdint>

#include "index/cuda/retrieval_kernels.cuh"

namespace wavekv::cuda::retrieval {
namespace {

constexpr int kThreads = kSelectThreads;
constexpr int kItems = 16;  // consecutive ids per thread in the ordered pass
// Keys loaded per thread before the histogram atomics of a radix pass.
constexpr int kPassUnroll = 8;
// Largest retrieval zone placed by rank instead of the bitonic sort.
constexpr uint32_t kRankSortMax = 256;

// Exclusive prefix sum over the block of `v`; `total` gets the block sum.
// Every thread must call it. s_warp holds 32 words.
template <typename T>
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
    T w = lane < kWarps ? s_warp[lane] : 0;
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

// For two targets at once (one 64-bit scan; counts stay below 2^32): in
// hist0 / hist1 (bins, counted from the top), the bin holding target j's
// element (1-based rank) and the count of elements in higher bins:
// s_out[2j], s_out[2j + 1].
__device__ void FindBin2(const uint32_t* hist0, const uint32_t* hist1, int bins,
                         uint32_t target0, uint32_t target1,
                         unsigned long long* s_warp, uint32_t* s_out) {
  const int per = bins / kThreads;  // 1 or 2
  const int hi = bins - 1 - threadIdx.x * per;
  unsigned long long local = 0;
  for (int i = 0; i < per; ++i) {
    local += hist0[hi - i] | static_cast<unsigned long long>(hist1[hi - i])
                                 << 32;
  }
  unsigned long long total;
  unsigned long long acc = BlockExclusiveSum(local, s_warp, total);
  for (int i = 0; i < per; ++i) {
    const uint32_t c0 = hist0[hi - i], c1 = hist1[hi - i];
    const uint32_t a0 = static_cast<uint32_t>(acc), a1 = acc >> 32;
    if (a0 < target0 && a0 + c0 >= target0) {
      s_out[0] = hi - i;
      s_out[1] = a0;
    }
    if (a1 < target1 && a1 + c1 >= target1) {
      s_out[2] = hi - i;
      s_out[3] = a1;
    }
    acc += c0 | static_cast<unsigned long long>(c1) << 32;
  }
  __syncthreads();
}

template <int G>
__device__ uint32_t ScoreKeys(const RetrievalProblem& p, const Layout& lay,
                              int group, uint32_t* keys, uint32_t* s_hist0,
                              uint32_t* s_warp) {
  constexpr int kUnroll = 4;
  __shared__ float s_m[G], s_inv[G];
  const uint32_t k = p.num_clusters;
  // Per-head softmax max and denominator over all tiles (warp h: head h).
  const int warp = threadIdx.x / 32, wl = threadIdx.x % 32;
  if (warp < group) {
    const float* st = At<float>(p.workspace, lay.tile_stats);
    const uint32_t tiles = (k + kLogitTile - 1) / kLogitTile;
    float m = -INFINITY;
    for (uint32_t t = wl; t < tiles; t += 32)
      m = fmaxf(m, st[(static_cast<size_t>(t) * group + warp) * 2]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2)
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float sum = 0.f;
    if (m > -INFINITY) {
      for (uint32_t t = wl; t < tiles; t += 32) {
        const float* s = st + (static_cast<size_t>(t) * group + warp) * 2;
        if (s[1] > 0.f) sum += s[1] * __expf(s[0] - m);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2)
      sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (wl == 0) {
      s_m[warp] = m;
      s_inv[warp] = sum > 0.f ? 1.f / sum : 0.f;
    }
  }
  __syncthreads();
  const float* logits = At<float>(p.workspace, lay.logits);
  uint32_t nonempty = 0;
  for (uint32_t base = 0; base < k; base += kThreads * kUnroll) {
    uint32_t sz[kUnroll];
    float l[kUnroll][G];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const uint32_t c = base + i * kThreads + threadIdx.x;
      sz[i] = c < k ? p.sizes[c] : 0u;
#pragma unroll
      for (int h = 0; h < G; ++h) {
        l[i][h] =
            c < k && h < group ? logits[static_cast<size_t>(h) * k + c] : 0.f;
      }
    }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
      const uint32_t c = base + i * kThreads + threadIdx.x;
      if (c >= k) break;
      uint32_t key = 0;
      if (sz[i] != 0) {
        float score = 0.f;
#pragma unroll
        for (int h = 0; h < G; ++h) {
          if (h >= group) break;
          score += __expf(l[i][h] - s_m[h]) * s_inv[h];
        }
        key = __float_as_uint(score) + 1u;
        ++nonempty;
        atomicAdd(&s_hist0[key >> 21], 1u);
      }
      keys[c] = key;
    }
  }
  uint32_t total;
  BlockExclusiveSum(nonempty, s_warp, total);  // ends with a barrier
  return total;
}

template <int G>
__global__ void __launch_bounds__(kThreads)
    SelectKernel(RetrievalArgs a, bool fused_scores) {
  extern __shared__ unsigned long long s_sort[];
  __shared__ uint32_t s_hist[2][kHist0Bins];
  __shared__ uint32_t s_warp[32];
  __shared__ unsigned long long s_warp64[32];
  __shared__ uint32_t s_found[4];
  const RetrievalProblem p = a.device_problems[blockIdx.x];
  const uint32_t k = p.num_clusters;
  const Layout lay = MakeLayout(k, a.group_size, a.head_dim);
  uint32_t* ghist = At<uint32_t>(p.workspace, lay.hist);
  uint32_t* keys = At<uint32_t>(p.workspace, lay.keys);
  uint32_t* est = At<uint32_t>(p.workspace, lay.estimation);

  uint32_t nonempty;
  if (fused_scores) {  // uniform across the grid
    for (int i = threadIdx.x; i < kHist0Bins; i += kThreads) s_hist[0][i] = 0;
    __syncthreads();
    nonempty = ScoreKeys<G>(p, lay, a.group_size, keys, s_hist[0], s_warp);
  } else {
    nonempty = k == 0 ? 0 : ghist[kCounterNonEmpty];
    for (int i = threadIdx.x; i < kHist0Bins; i += kThreads) {
      s_hist[0][i] = ghist[i];
    }
    __syncthreads();
  }
  const uint32_t n2 = min(p.retrieval_clusters, nonempty);
  const uint32_t n1 = n2 + min(p.estimation_clusters, nonempty - n2);
  uint32_t target[2] = {n1, n2};  // remaining rank inside the prefix
  uint32_t prefix[2] = {0, 0};
  uint32_t above[2] = {0, 0};

  if (n2 > 0) {
    // Digit 0 (bits 31..21): histogram from step 0.
    FindBin2(s_hist[0], s_hist[0], kHist0Bins, target[0], target[1], s_warp64,
             s_found);
    for (int j = 0; j < 2; ++j) {
      prefix[j] = s_found[2 * j];
      target[j] -= s_found[2 * j + 1];
      above[j] += s_found[2 * j + 1];
    }
    __syncthreads();
    // Digits 1 (bits 20..10) and 2 (bits 9..0).
    for (int pass = 1; pass <= 2; ++pass) {
      const int shift = pass == 1 ? 10 : 0;
      const int bins = pass == 1 ? 2048 : 1024;
      const int known = pass == 1 ? 21 : 10;  // bits above this digit
      for (int i = threadIdx.x; i < 2 * kHist0Bins; i += kThreads) {
        (&s_hist[0][0])[i] = 0;
      }
      __syncthreads();
      // kPassUnroll independent key loads in flight before the atomics.
      for (uint32_t base = 0; base < k; base += kThreads * kPassUnroll) {
        uint32_t kk[kPassUnroll];
#pragma unroll
        for (int i = 0; i < kPassUnroll; ++i) {
          const uint32_t c = base + i * kThreads + threadIdx.x;
          kk[i] = c < k ? keys[c] : 0u;
        }
#pragma unroll
        for (int i = 0; i < kPassUnroll; ++i) {
          if (base + i * kThreads + threadIdx.x >= k) break;
          const uint32_t key = kk[i];
          const uint32_t digit = (key >> shift) & (bins - 1);
          if ((key >> known) == prefix[0]) atomicAdd(&s_hist[0][digit], 1u);
          if ((key >> known) == prefix[1]) atomicAdd(&s_hist[1][digit], 1u);
        }
      }
      __syncthreads();
      FindBin2(s_hist[0], s_hist[1], bins, target[0], target[1], s_warp64,
               s_found);
      for (int j = 0; j < 2; ++j) {
        prefix[j] = (prefix[j] << (pass == 1 ? 11 : 10)) | s_found[2 * j];
        target[j] -= s_found[2 * j + 1];
        above[j] += s_found[2 * j + 1];
      }
      __syncthreads();
    }
  }
  // prefix[j] is now the full threshold key, target[j] how many keys equal
  // to it (lowest ids first) are taken.
  const uint32_t t1 = prefix[0], t2 = prefix[1];
  const uint32_t need1 = target[0], need2 = target[1];
  uint32_t eq1 = 0, eq2 = 0, taken_r = 0, taken_e = 0;  // running totals
  if (n2 > 0) {
    for (uint32_t base = 0; base < k; base += kThreads * kItems) {
      const uint32_t c0 = base + threadIdx.x * kItems;
      uint32_t kk[kItems];
      uint32_t e1 = 0, e2 = 0;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        kk[i] = c0 + i < k ? keys[c0 + i] : 0u;
        e1 += kk[i] == t1;
        e2 += kk[i] == t2;
      }
      uint32_t total;
      const uint32_t ex = BlockExclusiveSum(e1 | (e2 << 16), s_warp, total);
      uint32_t tie1 = eq1 + (ex & 0xffffu), tie2 = eq2 + (ex >> 16);
      eq1 += total & 0xffffu;
      eq2 += total >> 16;
      uint32_t in_r = 0, in_e = 0;  // bit i: item i selected
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const bool r = kk[i] > t2 || (kk[i] == t2 && tie2 < need2);
        const bool z = kk[i] > t1 || (kk[i] == t1 && tie1 < need1);
        tie1 += kk[i] == t1;
        tie2 += kk[i] == t2;
        in_r |= static_cast<uint32_t>(r) << i;
        in_e |= static_cast<uint32_t>(z && !r) << i;
      }
      const uint32_t cnt = __popc(in_r) | (__popc(in_e) << 16);
      const uint32_t pos = BlockExclusiveSum(cnt, s_warp, total);
      uint32_t rp = taken_r + (pos & 0xffffu), ep = taken_e + (pos >> 16);
      taken_r += total & 0xffffu;
      taken_e += total >> 16;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const uint32_t id = c0 + i;
        if (in_r >> i & 1u) {
          s_sort[rp++] = (static_cast<unsigned long long>(kk[i]) << 32) | ~id;
        } else if (in_e >> i & 1u) {
          est[ep] = id;
          if (p.out_estimation != nullptr) p.out_estimation[ep] = id;
          ++ep;
        }
      }
    }
  }
  // The retrieval zone best first. (key, ~id) pairs are distinct, so a
  // small zone is placed by rank (a thread per pair counts the larger ones:
  // no barriers); a larger one is sorted by a bitonic sort, descending.
  __syncthreads();
  if (n2 <= kRankSortMax) {
    for (uint32_t i = threadIdx.x; i < n2; i += kThreads) {
      const unsigned long long v = s_sort[i];
      uint32_t rank = 0;
#pragma unroll 8
      for (uint32_t j = 0; j < n2; ++j) rank += s_sort[j] > v;
      p.out_retrieval[rank] = ~static_cast<uint32_t>(v & 0xffffffffull);
    }
    for (uint32_t i = n2 + threadIdx.x; i < p.retrieval_clusters;
         i += kThreads) {
      p.out_retrieval[i] = kNoCluster;
    }
  } else {
    uint32_t size = 1;
    while (size < n2) size *= 2;
    for (uint32_t i = n2 + threadIdx.x; i < size; i += kThreads) s_sort[i] = 0;
    __syncthreads();
    for (uint32_t span = 2; span <= size; span *= 2) {
      for (uint32_t j = span / 2; j > 0; j /= 2) {
        for (uint32_t i = threadIdx.x; i < size; i += kThreads) {
          const uint32_t x = i ^ j;
          if (x > i) {
            const unsigned long long u = s_sort[i], v = s_sort[x];
            const bool desc = (i & span) == 0;
            if (desc ? u < v : u > v) {
              s_sort[i] = v;
              s_sort[x] = u;
            }
          }
        }
        __syncthreads();
      }
    }
    for (uint32_t i = threadIdx.x; i < p.retrieval_clusters; i += kThreads) {
      p.out_retrieval[i] =
          i < n2 ? ~static_cast<uint32_t>(s_sort[i] & 0xffffffffull)
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
  }
}

template <int G>
int LaunchSelectTyped(const RetrievalArgs& a, int smem, bool fused,
                      cudaStream_t stream) {
  if (smem > 32 * 1024) {  // static shared memory is ~16 KiB
    const cudaError_t attr = cudaFuncSetAttribute(
        SelectKernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (attr != cudaSuccess) return static_cast<int>(attr);
  }
  SelectKernel<G><<<a.num_problems, kThreads, smem, stream>>>(a, fused);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int LaunchSelect(const RetrievalArgs& a, uint32_t max_retrieval,
                 bool fused_scores, cudaStream_t stream) {
  uint32_t size = 1;
  while (size < max_retrieval) size *= 2;
  const int smem = static_cast<int>(size * sizeof(unsigned long long));
  if (a.group_size <= 1)
    return LaunchSelectTyped<1>(a, smem, fused_scores, stream);
  if (a.group_size <= 2)
    return LaunchSelectTyped<2>(a, smem, fused_scores, stream);
  if (a.group_size <= 4)
    return LaunchSelectTyped<4>(a, smem, fused_scores, stream);
  return LaunchSelectTyped<kMaxRetrievalGroup>(a, smem, fused_scores, stream);
}

}  // namespace wavekv::cuda::retrieval
