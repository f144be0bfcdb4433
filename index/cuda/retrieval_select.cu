// Zone selection (see retrieval.h for the contract): one block of 1024
// threads per problem.
//  1. Radix select over the 32-bit score keys (scoring.cu) for two targets
//     at once: n1 = retrieval + estimation (the zones) and n2 = retrieval.
//     The first digit's histogram comes from the score kernel; two more
//     passes over the keys (11 and 10 bits) give the exact key of the n-th
//     best cluster and how many keys lie strictly above it.
//  2. One ordered pass over cluster ids: a key above the threshold is in,
//     a key equal to it is in while fewer than (n - above) equal keys with a
//     lower id were taken (ties to the lower id, as on the CPU). Block-wide
//     prefix sums give each selected cluster its slot, so the estimation
//     zone comes out in id order.
//  3. The retrieval zone, as 64-bit (key, ~id) pairs in shared memory, is
//     sorted best first by a bitonic sort.
#include <cstdint>

#include "index/cuda/retrieval_kernels.cuh"

namespace wavekv::cuda::retrieval {
namespace {

constexpr int kThreads = kSelectThreads;
constexpr int kItems = 16;  // consecutive ids per thread in the ordered pass

// Exclusive prefix sum over the block of `v`; `total` gets the block sum.
// Every thread must call it. s_warp holds 32 words.
__device__ uint32_t BlockExclusiveSum(uint32_t v, uint32_t* s_warp,
                                      uint32_t& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  constexpr int kWarps = kThreads / 32;
  uint32_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) s_warp[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < kWarps ? s_warp[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const uint32_t y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    s_warp[lane] = w;
  }
  __syncthreads();
  total = s_warp[kWarps - 1];
  const uint32_t excl = x - v + (warp > 0 ? s_warp[warp - 1] : 0);
  __syncthreads();  // s_warp may be reused
  return excl;
}

// In `hist` (bins, counted from the top), the bin holding the target-th
// largest element (1-based) and the count of elements in higher bins.
__device__ void FindBin(const uint32_t* hist, int bins, uint32_t target,
                        uint32_t* s_warp, uint32_t* s_out) {
  const int per = bins / kThreads;  // 1 or 2
  const int hi = bins - 1 - threadIdx.x * per;
  uint32_t local = 0;
  for (int i = 0; i < per; ++i) local += hist[hi - i];
  uint32_t total;
  uint32_t acc = BlockExclusiveSum(local, s_warp, total);
  for (int i = 0; i < per; ++i) {
    const uint32_t c = hist[hi - i];
    if (acc < target && acc + c >= target) {
      s_out[0] = hi - i;
      s_out[1] = acc;
    }
    acc += c;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) SelectKernel(RetrievalArgs a) {
  extern __shared__ unsigned long long s_sort[];
  __shared__ uint32_t s_hist[2][kHist0Bins];
  __shared__ uint32_t s_warp[32];
  __shared__ uint32_t s_found[2];
  const RetrievalProblem p = a.device_problems[blockIdx.x];
  const uint32_t k = p.num_clusters;
  const Layout lay = MakeLayout(k, a.group_size, a.head_dim);
  uint32_t* ghist = At<uint32_t>(p.workspace, lay.hist);
  const uint32_t* keys = At<uint32_t>(p.workspace, lay.keys);
  uint32_t* est = At<uint32_t>(p.workspace, lay.estimation);

  const uint32_t nonempty = k == 0 ? 0 : ghist[kCounterNonEmpty];
  const uint32_t n2 = min(p.retrieval_clusters, nonempty);
  const uint32_t n1 = n2 + min(p.estimation_clusters, nonempty - n2);
  uint32_t target[2] = {n1, n2};  // remaining rank inside the prefix
  uint32_t prefix[2] = {0, 0};
  uint32_t above[2] = {0, 0};

  if (n2 > 0) {
    // Digit 0 (bits 31..21): histogram from the score kernel.
    for (int i = threadIdx.x; i < kHist0Bins; i += kThreads) {
      s_hist[0][i] = ghist[i];
    }
    __syncthreads();
    for (int j = 0; j < 2; ++j) {
      FindBin(s_hist[0], kHist0Bins, target[j], s_warp, s_found);
      prefix[j] = s_found[0];
      target[j] -= s_found[1];
      above[j] += s_found[1];
      __syncthreads();
    }
    // Digits 1 (bits 20..10) and 2 (bits 9..0).
    for (int pass = 1; pass <= 2; ++pass) {
      const int shift = pass == 1 ? 10 : 0;
      const int bins = pass == 1 ? 2048 : 1024;
      const int known = pass == 1 ? 21 : 10;  // bits above this digit
      for (int i = threadIdx.x; i < 2 * kHist0Bins; i += kThreads) {
        (&s_hist[0][0])[i] = 0;
      }
      __syncthreads();
      for (uint32_t c = threadIdx.x; c < k; c += kThreads) {
        const uint32_t key = keys[c];
        const uint32_t digit = (key >> shift) & (bins - 1);
        if ((key >> known) == prefix[0]) atomicAdd(&s_hist[0][digit], 1u);
        if ((key >> known) == prefix[1]) atomicAdd(&s_hist[1][digit], 1u);
      }
      __syncthreads();
      for (int j = 0; j < 2; ++j) {
        FindBin(s_hist[j], bins, target[j], s_warp, s_found);
        prefix[j] = (prefix[j] << (pass == 1 ? 11 : 10)) | s_found[0];
        target[j] -= s_found[1];
        above[j] += s_found[1];
        __syncthreads();
      }
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
  // Bitonic sort of the retrieval zone, descending (best first).
  uint32_t size = 1;
  while (size < n2) size *= 2;
  for (uint32_t i = n2 + threadIdx.x; i < size; i += kThreads) s_sort[i] = 0;
  __syncthreads();
  if (n2 > 1) {
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
  }
  for (uint32_t i = threadIdx.x; i < p.retrieval_clusters; i += kThreads) {
    p.out_retrieval[i] =
        i < n2 ? ~static_cast<uint32_t>(s_sort[i] & 0xffffffffull) : kNoCluster;
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

}  // namespace

int LaunchSelect(const RetrievalArgs& a, uint32_t max_retrieval,
                 cudaStream_t stream) {
  uint32_t size = 1;
  while (size < max_retrieval) size *= 2;
  const int smem = static_cast<int>(size * sizeof(unsigned long long));
  if (smem > 32 * 1024) {  // static shared memory is ~16 KiB
    const cudaError_t attr = cudaFuncSetAttribute(
        SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (attr != cudaSuccess) return static_cast<int>(attr);
  }
  SelectKernel<<<a.num_problems, kThreads, smem, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wavekv::cuda::retrieval
