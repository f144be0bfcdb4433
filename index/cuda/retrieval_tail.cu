// Tail statistics over the estimation zone (see retrieval.h for the
// contract) and the whole pipeline's launcher.
//
// Tail kernel: grid (chunks of kTailChunk estimation-zone clusters,
// problems). Per query head the block takes its chunk's max logit, the
// weights e^{l_c - m} and Σ s_c e^{l_c - m}; then every value-sum row of the
// chunk is read once (kLanes = head_dim / 4 threads, 16-byte loads) and
// applied to all heads of the group. One partial (m, den, num[d]) per
// (chunk, head). The last block of a problem to finish (a counter in the
// workspace, zeroed by the logits kernel) combines the chunks of every head
// with a log-sum-exp rescale, so the merge costs no launch of its own.
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

// One chunk's partial for every head (the whole block calls it).
template <int D, int G>
__device__ void TailChunk(const RetrievalProblem& p, const Layout& lay,
                          int group, uint32_t zone) {
  constexpr int kLanes = D / 4;
  constexpr int kRowGroups = kThreads / kLanes;
  const uint32_t k = p.num_clusters;
  const uint32_t begin = blockIdx.x * kTailChunk;
  const uint32_t n = min(static_cast<uint32_t>(kTailChunk), zone - begin);

  __shared__ uint32_t s_id[kTailChunk];
  __shared__ float s_size[kTailChunk];
  __shared__ float s_w[G][kTailChunk];
  __shared__ float s_acc[kRowGroups][G][D];
  const uint32_t* est = At<uint32_t>(p.workspace, lay.estimation);
  const float* logits = At<float>(p.workspace, lay.logits);
  if (threadIdx.x < kTailChunk) {
    const bool live = threadIdx.x < n;
    const uint32_t id = live ? est[begin + threadIdx.x] : 0u;
    s_id[threadIdx.x] = id;
    s_size[threadIdx.x] = live ? static_cast<float>(p.sizes[id]) : 0.f;
    for (int h = 0; h < group; ++h) {
      s_w[h][threadIdx.x] =
          live ? logits[static_cast<size_t>(h) * k + id] : -INFINITY;
    }
  }
  __syncthreads();
  // Warp h: head h's chunk max, weights and denominator.
  const int warp = threadIdx.x / 32, wl = threadIdx.x % 32;
  if (warp < group) {
    float m = -INFINITY;
    for (int i = wl; i < kTailChunk; i += 32) m = fmaxf(m, s_w[warp][i]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2)
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float den = 0.f;
    for (int i = wl; i < kTailChunk; i += 32) {
      const float w = i < n ? __expf(s_w[warp][i] - m) : 0.f;
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
  for (uint32_t i = rg; i < n; i += kRowGroups) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(
        p.value_sums + static_cast<size_t>(s_id[i]) * D + lane * 4));
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h >= group) break;
      const float w = s_w[h][i];
      acc[h][0] = fmaf(w, v.x, acc[h][0]);
      acc[h][1] = fmaf(w, v.y, acc[h][1]);
      acc[h][2] = fmaf(w, v.z, acc[h][2]);
      acc[h][3] = fmaf(w, v.w, acc[h][3]);
    }
  }
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (h >= group) break;
#pragma unroll
    for (int j = 0; j < 4; ++j) s_acc[rg][h][lane * 4 + j] = acc[h][j];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += kThreads) {
    const int h = idx / D, d = idx % D;
    float sum = 0.f;
#pragma unroll
    for (int r = 0; r < kRowGroups; ++r) sum += s_acc[r][h][d];
    TailSlot(p.workspace, lay, blockIdx.x, group, h, D)[2 + d] = sum;
  }
}

// The last block of a problem: per head, the chunks' maxima (warp h), then
// in rounds of 32 chunks their weights e^{m_c - m} (warp h) and the
// numerators (the block over (head, dim)). Partials are read with __ldcg:
// other blocks wrote them (published by their fence before the counter).
template <int D, int G>
__device__ void MergeChunks(const RetrievalProblem& p, const Layout& lay,
                            int group, uint32_t zone) {
  constexpr int kPer = (G * D + kThreads - 1) / kThreads;
  __shared__ float s_mm[G];
  __shared__ float s_w[G][32];
  const uint32_t chunks = (zone + kTailChunk - 1) / kTailChunk;
  const int warp = threadIdx.x / 32, wl = threadIdx.x % 32;
  if (warp < group) {
    float m = -INFINITY;
    for (uint32_t c = wl; c < chunks; c += 32) {
      const float* slot = TailSlot(p.workspace, lay, c, group, warp, D);
      if (__ldcg(slot + 1) > 0.f) m = fmaxf(m, __ldcg(slot));
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
        const float cden = __ldcg(slot + 1);
        if (cden > 0.f) {
          w = __expf(__ldcg(slot) - s_mm[warp]);
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
        float acc = 0.f;
#pragma unroll 8
        for (uint32_t i = 0; i < n; ++i) {
          acc = fmaf(s_w[h][i], __ldcg(col + i * stride), acc);
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

// Grid (max(1, chunks of the largest zone), problems).
template <int D, int G>
__global__ void __launch_bounds__(kThreads) TailKernel(RetrievalArgs a) {
  __shared__ bool s_last;
  const RetrievalProblem p = a.device_problems[blockIdx.y];
  const uint32_t k = p.num_clusters;
  const int group = a.group_size;
  const Layout lay = MakeLayout(k, group, D);
  uint32_t* counters = At<uint32_t>(p.workspace, lay.hist);
  const uint32_t zone = k == 0 ? 0 : counters[kCounterEstimation];
  if (blockIdx.x * kTailChunk < zone) {  // uniform across the block
    TailChunk<D, G>(p, lay, group, zone);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    s_last = atomicAdd(&counters[kCounterTailDone], 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!s_last) return;  // uniform across the block
  __threadfence();
  MergeChunks<D, G>(p, lay, group, zone);
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

int LaunchTail(const RetrievalArgs& a, uint32_t max_estimation,
               cudaStream_t stream) {
  // At least one block per problem: the last block writes the partials,
  // the empty partial for an empty zone.
  const uint32_t chunks = (max_estimation + kTailChunk - 1) / kTailChunk;
  const dim3 grid(chunks == 0 ? 1 : chunks, a.num_problems);
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

int LaunchRetrievalRaw(const RetrievalArgs& args, cudaStream_t stream) {
  uint32_t max_k = 0, max_r = 0, max_e = 0;
  for (int i = 0; i < args.num_problems; ++i) {
    const RetrievalProblem& p = args.problems[i];
    max_k = max_k > p.num_clusters ? max_k : p.num_clusters;
    const uint32_t r = p.retrieval_clusters < p.num_clusters
                           ? p.retrieval_clusters
                           : p.num_clusters;
    max_r = max_r > r ? max_r : r;
    const uint32_t e = p.estimation_clusters < p.num_clusters - r
                           ? p.estimation_clusters
                           : p.num_clusters - r;
    max_e = max_e > e ? max_e : e;
  }
  if (int err = retrieval::LaunchLogits(args, max_k, stream); err != 0) {
    return err;
  }
  const bool fused = max_k <= retrieval::kFusedScoreMaxClusters;
  if (!fused) {
    if (int err = retrieval::LaunchScores(args, max_k, stream); err != 0) {
      return err;
    }
  }
  if (int err = retrieval::LaunchSelect(args, max_r, fused, stream); err != 0) {
    return err;
  }
  return retrieval::LaunchTail(args, max_e, stream);
}

}  // namespace wavekv::cuda
