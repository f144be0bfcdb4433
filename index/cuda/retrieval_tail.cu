// Tail statistics over the estimation zone (see retrieval.h for the
// contract) and the whole pipeline's launcher.
//
// Tail kernel: grid (chunks of kTailChunk estimation-zone clusters,
// problems). Per query head the block takes its chunk's max logit, the
// weights e^{l_c - m} and Σ s_c e^{l_c - m}; then every value-sum row of the
// chunk is read once (kLanes = head_dim / 4 threads, 16-byte loads) and
// applied to all heads of the group. One partial (m, den, num[d]) per
// (chunk, head). Merge kernel: one block per (head, problem) combines the
// chunks with a log-sum-exp rescale.
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

template <int D, int G>
__global__ void __launch_bounds__(kThreads) TailKernel(RetrievalArgs a) {
  constexpr int kLanes = D / 4;
  constexpr int kRowGroups = kThreads / kLanes;
  const RetrievalProblem p = a.device_problems[blockIdx.y];
  const uint32_t k = p.num_clusters;
  const int group = a.group_size;
  const Layout lay = MakeLayout(k, group, D);
  const uint32_t zone = At<uint32_t>(p.workspace, lay.hist)[kCounterEstimation];
  const uint32_t begin = blockIdx.x * kTailChunk;
  if (k == 0 || begin >= zone) return;  // uniform across the block
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

constexpr int kMergeThreads = 256;

// Block-wide max or sum of `v` (every thread gets the result).
template <bool kMax>
__device__ float BlockReduce(float v, float* s_red) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = kMax ? fmaxf(v, o) : v + o;
  }
  if (threadIdx.x % 32 == 0) s_red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = s_red[0];
  for (int w = 1; w < kMergeThreads / 32; ++w) {
    r = kMax ? fmaxf(r, s_red[w]) : r + s_red[w];
  }
  __syncthreads();  // s_red may be reused
  return r;
}

// One block per (head, problem): the chunks' (max, den) are combined by the
// whole block; then each thread owns dims and sums the chunks' numerators
// with the weights staged in shared memory (independent loads in flight).
__global__ void __launch_bounds__(kMergeThreads)
    TailMergeKernel(RetrievalArgs a) {
  __shared__ float s_red[kMergeThreads / 32];
  __shared__ float s_w[kMergeThreads];
  const int h = blockIdx.x;
  const RetrievalProblem p = a.device_problems[blockIdx.y];
  const int group = a.group_size, d = a.head_dim;
  const uint32_t k = p.num_clusters;
  const Layout lay = MakeLayout(k, group, d);
  const uint32_t zone =
      k == 0 ? 0 : At<uint32_t>(p.workspace, lay.hist)[kCounterEstimation];
  const uint32_t chunks = (zone + kTailChunk - 1) / kTailChunk;
  float m = -INFINITY;
  for (uint32_t c = threadIdx.x; c < chunks; c += kMergeThreads) {
    const float* slot = TailSlot(p.workspace, lay, c, group, h, d);
    if (slot[1] > 0.f) m = fmaxf(m, slot[0]);
  }
  const float mm = BlockReduce<true>(m, s_red);
  float den = 0.f;
  float num[2] = {0.f, 0.f};  // dims threadIdx.x and + kMergeThreads
  for (uint32_t base = 0; base < chunks; base += kMergeThreads) {
    const uint32_t c = base + threadIdx.x;
    float w = 0.f;
    if (c < chunks) {
      const float* slot = TailSlot(p.workspace, lay, c, group, h, d);
      if (slot[1] > 0.f) {
        w = __expf(slot[0] - mm);
        den = fmaf(slot[1], w, den);
      }
    }
    s_w[threadIdx.x] = w;
    __syncthreads();
    const uint32_t n = min(static_cast<uint32_t>(kMergeThreads), chunks - base);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int j = threadIdx.x + r * kMergeThreads;
      if (j >= d) break;
      const float* col = TailSlot(p.workspace, lay, base, group, h, d) + 2 + j;
      const size_t stride = static_cast<size_t>(group) * (d + 2);
      float acc = 0.f;
#pragma unroll 8
      for (uint32_t i = 0; i < n; ++i) acc = fmaf(s_w[i], col[i * stride], acc);
      num[r] += acc;
    }
    __syncthreads();
  }
  den = BlockReduce<false>(den, s_red);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = threadIdx.x + r * kMergeThreads;
    if (j < d) p.out_num[h * d + j] = num[r];
  }
  if (threadIdx.x == 0) {
    p.out_max[h] = den > 0.f ? mm : -INFINITY;
    p.out_den[h] = den;
  }
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
  if (max_estimation > 0) {
    const dim3 grid((max_estimation + kTailChunk - 1) / kTailChunk,
                    a.num_problems);
    int err = 0;
    switch (a.head_dim) {
      case 64:
        err = LaunchTailTyped<64>(a, grid, stream);
        break;
      case 128:
        err = LaunchTailTyped<128>(a, grid, stream);
        break;
      case 256:
        err = LaunchTailTyped<256>(a, grid, stream);
        break;
      default:
        return static_cast<int>(cudaErrorInvalidValue);
    }
    if (err != 0) return err;
  }
  const dim3 grid(a.group_size, a.num_problems);
  TailMergeKernel<<<grid, kMergeThreads, 0, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
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
  if (int err = retrieval::LaunchScores(args, max_k, stream); err != 0) {
    return err;
  }
  if (int err = retrieval::LaunchSelect(args, max_r, stream); err != 0) {
    return err;
  }
  return retrieval::LaunchTail(args, max_e, stream);
}

}  // namespace wavekv::cuda
