// Tail statistics over the estimation zone (see retrieval.h for the
// contract) and the whole pipeline's launcher.
//
// Tail kernel: grid (windows of kTailWindow cluster ids, problems). Each
// block finds the estimation-zone members of its window by the select
// kernel's two thresholds (in id order, by a block scan; written to
// out_estimation from the window's offset), then per query head takes
// their max logit, the weights e^{l_c - m} and sum of s_c e^{l_c - m}; every
// member's value-sum row is read once (kLanes = head_dim / 4 threads,
// 16-byte loads) and applied to all heads of the group. One partial
// (m, den, num[d]) per (window, head). The last block of a problem to
// finish (a counter in the workspace, zeroed by the logits kernel)
// combines the windows of every head with a log-sum-exp rescale, so the
// merge costs no launch of its own.
#include <cfloat>
#include <cstdint>

#include "index/cuda/retrieval_kernels.cuh"

namespace wavekv::cuda::retrieval {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float* TailSlot(void* ws, const Layout& lay,
                                           uint32_t chunk, int group, int h,
                                           int head_dim) {
  return At<float>(ws, lay.tail) +
         (static_cast<size_t>(chunk) * group + h) * (head_dim + 2);
}

// One window's partial for every head (the whole block calls it).
template <int D, int G>
__device__ void TailWindow(const RetrievalProblem& p, const Layout& lay,
                           int group) {
  constexpr int kLanes = D / 4;
  constexpr int kRowGroups = kThreads / kLanes;
  constexpr int kIds = kTailWindow / kThreads;  // consecutive ids per thread
  const uint32_t k = p.num_clusters;
  const uint32_t begin = blockIdx.x * kTailWindow;

  __shared__ uint32_t s_id[kTailWindow];
  __shared__ float s_size[kTailWindow];
  __shared__ float s_w[G][kTailWindow];
  __shared__ float s_acc[kRowGroups / 2][G][D];
  __shared__ uint32_t s_warp[32];
  const uint32_t* counters = At<uint32_t>(p.workspace, lay.hist);
  const unsigned long long thr_zones =
      *reinterpret_cast<const unsigned long long*>(counters + kThresholdZones);
  const unsigned long long thr_retrieval =
      *reinterpret_cast<const unsigned long long*>(counters +
                                                   kThresholdRetrieval);
  const uint32_t* keys = At<uint32_t>(p.workspace, lay.keys);
  const float* logits = At<float>(p.workspace, lay.logits);
  // Members of the window in id order.
  uint32_t in = 0;  // bit i: id begin + kIds * tid + i
#pragma unroll
  for (int i = 0; i < kIds; ++i) {
    const uint32_t c = begin + kIds * threadIdx.x + i;
    if (c < k) {
      const unsigned long long v = OrderValue(keys[c], c);
      in |= static_cast<uint32_t>(v >= thr_zones && v < thr_retrieval) << i;
    }
  }
  uint32_t n;
  uint32_t pos =
      BlockExclusiveSum<kThreads>(static_cast<uint32_t>(__popc(in)), s_warp, n);
  const uint32_t offset =
      __ldcg(At<uint32_t>(p.workspace, lay.windows) + blockIdx.x);
#pragma unroll
  for (int i = 0; i < kIds; ++i) {
    if (in >> i & 1u) {
      const uint32_t c = begin + kIds * threadIdx.x + i;
      s_id[pos] = c;
      if (p.out_estimation != nullptr) p.out_estimation[offset + pos] = c;
      ++pos;
    }
  }
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < kTailWindow; i += kThreads) {
    const bool live = i < n;
    const uint32_t id = live ? s_id[i] : 0u;
    s_size[i] = live ? static_cast<float>(__ldg(p.sizes + id)) : 0.f;
    for (int h = 0; h < group; ++h) {
      s_w[h][i] = live ? logits[static_cast<size_t>(h) * k + id] : -INFINITY;
    }
  }
  __syncthreads();
  // Warp h: head h's window max, weights and denominator.
  const int warp = threadIdx.x / 32, wl = threadIdx.x % 32;
  if (warp < group) {
    float m = -INFINITY;
    for (uint32_t i = wl; i < n; i += 32) m = fmaxf(m, s_w[warp][i]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2)
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float den = 0.f;
    for (uint32_t i = wl; i < n; i += 32) {
      const float w = __expf(s_w[warp][i] - m);
      s_w[warp][i] = w;
      den = fmaf(s_size[i], w, den);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2)
      den += __shfl_xor_sync(0xffffffffu, den, off);
    if (wl == 0) {
      float* slot = TailSlot(p.workspace, lay, blockIdx.x, group, warp, D);
      slot[0] = m;
      slot[1] = den;
    }
  }
  __syncthreads();
  // Numerators: each value-sum row read once for all heads.
  const int lane = threadIdx.x % kLanes, rg = threadIdx.x / kLanes;
  float acc[G][4];
#pragma unroll
  for (int h = 0; h < G; ++h) acc[h][0] = acc[h][1] = acc[h][2] = acc[h][3] = 0;
  // kRowUnroll rows' loads in flight per thread before their FMAs.
  constexpr int kRowUnroll = 8;
  for (uint32_t i0 = rg; i0 < n; i0 += kRowGroups * kRowUnroll) {
    float4 v[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const uint32_t i = i0 + u * kRowGroups;
      v[u] =
          i < n
              ? __ldg(reinterpret_cast<const float4*>(
                    p.value_sums + static_cast<size_t>(s_id[i]) * D + lane * 4))
              : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const uint32_t i = i0 + u * kRowGroups;
      if (i >= n) break;
#pragma unroll
      for (int h = 0; h < G; ++h) {
        if (h >= group) break;
        const float w = s_w[h][i];
        acc[h][0] = fmaf(w, v[u].x, acc[h][0]);
        acc[h][1] = fmaf(w, v[u].y, acc[h][1]);
        acc[h][2] = fmaf(w, v[u].z, acc[h][2]);
        acc[h][3] = fmaf(w, v[u].w, acc[h][3]);
      }
    }
  }
  // Row groups combined in a fixed order through half as many slots: the
  // upper half hands its sums to the lower half, which then publishes.
  constexpr int kHalf = kRowGroups / 2;
  if (rg >= kHalf) {
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h >= group) break;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        s_acc[rg - kHalf][h][lane * 4 + j] = acc[h][j];
    }
  }
  __syncthreads();
  if (rg < kHalf) {
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h >= group) break;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s_acc[rg][h][lane * 4 + j] += acc[h][j];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += kThreads) {
    const int h = idx / D, d = idx % D;
    float sum = 0.f;
#pragma unroll
    for (int r = 0; r < kHalf; ++r) sum += s_acc[r][h][d];
    TailSlot(p.workspace, lay, blockIdx.x, group, h, D)[2 + d] = sum;
  }
}

// The last block of a problem: per head, the windows' maxima (warp h),
// then in rounds of 32 windows their weights e^{m_c - m} (warp h) and the
// numerators (the block over (head, dim)). Partials are read with __ldcg:
// other blocks wrote them (published by their fence before the counter).
template <int D, int G>
__device__ void MergeChunks(const RetrievalProblem& p, const Layout& lay,
                            int group, uint32_t chunks) {
  constexpr int kPer = (G * D + kThreads - 1) / kThreads;
  __shared__ float s_mm[G];
  __shared__ float s_w[G][32];
  const int warp = threadIdx.x / 32, wl = threadIdx.x % 32;
  if (warp < group) {
    float m = -INFINITY;
#pragma unroll 4
    for (uint32_t c = wl; c < chunks; c += 32) {
      const float* slot = TailSlot(p.workspace, lay, c, group, warp, D);
      const float cm = __ldcg(slot), cden = __ldcg(slot + 1);  // both in flight
      if (cden > 0.f) m = fmaxf(m, cm);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2)
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (wl == 0) s_mm[warp] = m;
  }
  float den = 0.f;  // warp h's lanes: head h
  float num[kPer];
#pragma unroll
  for (int r = 0; r < kPer; ++r) num[r] = 0.f;
  const size_t stride = static_cast<size_t>(group) * (D + 2);
  for (uint32_t base = 0; base < chunks; base += 32) {
    __syncthreads();  // s_mm ready; s_w free
    if (warp < group) {
      const uint32_t c = base + wl;
      float w = 0.f;
      if (c < chunks) {
        const float* slot = TailSlot(p.workspace, lay, c, group, warp, D);
        const float cm = __ldcg(slot), cden = __ldcg(slot + 1);
        if (cden > 0.f) {
          w = __expf(cm - s_mm[warp]);
          den = fmaf(cden, w, den);
        }
      }
      s_w[warp][wl] = w;
    }
    __syncthreads();
    const uint32_t n = min(32u, chunks - base);
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int idx = threadIdx.x + r * kThreads;
      if (idx < group * D) {
        const int h = idx / D, j = idx % D;
        const float* col =
            TailSlot(p.workspace, lay, base, group, h, D) + 2 + j;
        // 16 values in flight at once, then a sequential sum (same order
        // as one chain over the round).
        float acc = 0.f;
#pragma unroll
        for (uint32_t i0 = 0; i0 < 32; i0 += 16) {
          float v[16];
#pragma unroll
          for (uint32_t i = 0; i < 16; ++i) {
            v[i] = i0 + i < n ? __ldcg(col + (i0 + i) * stride) : 0.f;
          }
#pragma unroll
          for (uint32_t i = 0; i < 16; ++i) {
            if (i0 + i < n) acc = fmaf(s_w[h][i0 + i], v[i], acc);
          }
        }
        num[r] += acc;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int idx = threadIdx.x + r * kThreads;
    if (idx < group * D) p.out_num[idx] = num[r];
  }
  __syncthreads();  // s_mm visible when no round ran
  if (warp < group) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2)
      den += __shfl_xor_sync(0xffffffffu, den, off);
    if (wl == 0) {
      p.out_max[warp] = den > 0.f ? s_mm[warp] : -INFINITY;
      p.out_den[warp] = den;
    }
  }
}

// Grid (windows of the largest index, problems).
template <int D, int G>
__global__ void __launch_bounds__(kThreads, G <= 4 ? 4 : 2)
    TailKernel(RetrievalArgs a) {
  __shared__ bool s_last;
  // A programmatic dependent launched after us (e.g. the page-table
  // kernel, which waits for our completion first) may be scheduled early.
  AllowDependents();
  const RetrievalProblem p = a.device_problems[blockIdx.y];
  const uint32_t k = p.num_clusters;
  const int group = a.group_size;
  const Layout lay = MakeLayout(k, group, D);
  uint32_t* counters = At<uint32_t>(p.workspace, lay.hist);
  const uint32_t zone = k == 0 ? 0 : counters[kCounterEstimation];
  const uint32_t windows = zone == 0 ? 0 : NumWindows(k);
  if (blockIdx.x < windows) {  // uniform across the block
    TailWindow<D, G>(p, lay, group);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    s_last = atomicAdd(&counters[kCounterTailDone], 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!s_last) return;  // uniform across the block
  __threadfence();
  MergeChunks<D, G>(p, lay, group, windows);
}

template <int D>
int LaunchTailTyped(const RetrievalArgs& a, dim3 grid, cudaStream_t s) {
  if (a.group_size <= 1) {
    TailKernel<D, 1><<<grid, kThreads, 0, s>>>(a);
  } else if (a.group_size <= 2) {
    TailKernel<D, 2><<<grid, kThreads, 0, s>>>(a);
  } else if (a.group_size <= 4) {
    TailKernel<D, 4><<<grid, kThreads, 0, s>>>(a);
  } else {
    TailKernel<D, kMaxRetrievalGroup><<<grid, kThreads, 0, s>>>(a);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int LaunchTail(const RetrievalArgs& a, uint32_t max_clusters,
               cudaStream_t stream) {
  // At least one block per problem: the last block writes the partials,
  // the empty partial for an empty zone.
  const uint32_t windows = NumWindows(max_clusters);
  const dim3 grid(windows == 0 ? 1 : windows, a.num_problems);
  switch (a.head_dim) {
    case 64:
      return LaunchTailTyped<64>(a, grid, stream);
    case 128:
      return LaunchTailTyped<128>(a, grid, stream);
    case 256:
      return LaunchTailTyped<256>(a, grid, stream);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace wavekv::cuda::retrieval

namespace wavekv::cuda {

size_t RetrievalWorkspaceBytes(uint32_t num_clusters, int group_size,
                               int head_dim) {
  return retrieval::MakeLayout(num_clusters, group_size, head_dim).total;
}

namespace {

uint32_t MaxClusters(const RetrievalArgs& args) {
  uint32_t max_k = 0;
  for (int i = 0; i < args.num_problems; ++i) {
    const uint32_t k = args.problems[i].num_clusters;
    max_k = max_k > k ? max_k : k;
  }
  return max_k;
}

}  // namespace

int LaunchRetrievalSelectRaw(const RetrievalArgs& args, cudaStream_t stream) {
  uint32_t max_r = 0;
  for (int i = 0; i < args.num_problems; ++i) {
    const RetrievalProblem& p = args.problems[i];
    const uint32_t r = p.retrieval_clusters < p.num_clusters
                           ? p.retrieval_clusters
                           : p.num_clusters;
    max_r = max_r > r ? max_r : r;
  }
  const uint32_t max_k = MaxClusters(args);
  if (int err = retrieval::LaunchLogits(args, max_k, stream); err != 0) {
    return err;
  }
  if (int err = retrieval::LaunchScores(args, max_k, stream); err != 0) {
    return err;
  }
  const bool classify = max_k > retrieval::kSingleBlockSelectMax &&
                        args.num_problems <= retrieval::kClassifyMaxProblems;
  if (classify) {
    if (int err = retrieval::LaunchClassify(args, max_k, stream); err != 0) {
      return err;
    }
  }
  return retrieval::LaunchSelect(args, max_r, classify, stream);
}

int LaunchRetrievalTailRaw(const RetrievalArgs& args, cudaStream_t stream) {
  return retrieval::LaunchTail(args, MaxClusters(args), stream);
}

int LaunchRetrievalRaw(const RetrievalArgs& args, cudaStream_t stream) {
  if (int err = LaunchRetrievalSelectRaw(args, stream); err != 0) return err;
  return LaunchRetrievalTailRaw(args, stream);
}

}  // namespace wavekv::cuda
