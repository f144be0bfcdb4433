// Centroid scoring (see retrieval.h for the contract).
//
// Logits kernel: grid (tiles of kLogitTile clusters, problems). A centroid
// row is read by kLanes = head_dim / 8 threads (16-byte loads of 8 fp16/bf16
// elements, 32 bytes for fp32), so every centroid byte is read once for all
// the group's query heads, with kUnroll rows of loads in flight per thread.
// Each block writes its logits (empty clusters: -inf) and, per query head,
// the tile's max and Σ e^{l - max}.
// Score kernel (indexes of more than kFusedScoreMaxClusters clusters; the
// select kernel scores smaller ones itself): grid (tiles of kScoreTile
// clusters, problems). Each block combines the tile statistics into the
// per-head softmax max and denominator, computes the group score of its
// clusters and their score keys, and adds them to the problem's first radix
// histogram.
#include <cfloat>
#include <cstdint>

#include "index/cuda/retrieval_kernels.cuh"

namespace wavekv::cuda::retrieval {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads, G <= 4 ? 3 : 2)
    LogitsKernel(RetrievalArgs a) {
  constexpr int kLanes = D / 8;  // threads per centroid row
  constexpr int kRowsPerStep = kThreads / kLanes;
  constexpr int kSteps = kLogitTile / kRowsPerStep;
  constexpr int kUnroll = kSteps < 4 ? kSteps : 4;
  const RetrievalProblem p = a.device_problems[blockIdx.y];
  const uint32_t k = p.num_clusters;
  const int group = a.group_size;
  const Layout lay = MakeLayout(k, group, D);
  if (blockIdx.x == 0) {
    uint32_t* hist = At<uint32_t>(p.workspace, lay.hist);
    for (int i = threadIdx.x; i < kHistWords; i += kThreads) hist[i] = 0;
  }
  const uint32_t tile_begin = blockIdx.x * kLogitTile;
  if (tile_begin >= k) return;  // uniform across the block

  const int lane = threadIdx.x % kLanes;
  const int row = threadIdx.x / kLanes;
  float q[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      q[h][i] = h < group ? p.queries[h * D + lane * 8 + i] * a.scale : 0.f;
    }
  }
  __shared__ float s_l[G][kLogitTile];
  const char* base =
      static_cast<const char*>(p.centroids) + lane * 8 * sizeof(T);
  // After the reduction below, lane `lane` of a row holds the full logit of
  // head (lane / kHeadLanes) and the row's first lane of each head writes it.
  constexpr int kHeadLanes = kLanes / G;
  const int my_head = lane / kHeadLanes;
  const bool writer = lane % kHeadLanes == 0;
  // Every thread runs every step: the shuffles need the whole warp.
  for (int step = 0; step < kSteps; step += kUnroll) {
    float c[kUnroll][8];
    bool live[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t cl = tile_begin + (step + u) * kRowsPerStep + row;
      live[u] = cl < k;
      if (live[u]) {
        Load8<T>::Run(base + static_cast<size_t>(cl) * D * sizeof(T), c[u]);
        if (writer && p.sizes[cl] == 0) live[u] = false;
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) c[u][i] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float v[G];
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = fmaf(q[h][i], c[u][i], s);
        v[h] = s;
      }
      // Reduce-scatter over the row's lanes: each round halves the heads a
      // lane carries (the upper lane of a pair keeps the upper half), so
      // log2(G) rounds cost G - 1 shuffles instead of G * log2(G); then a
      // plain butterfly over the kHeadLanes lanes of each head.
#pragma unroll
      for (int width = G, off = kLanes / 2; width > 1; width /= 2, off /= 2) {
        const bool upper = (lane & off) != 0;
#pragma unroll
        for (int i = 0; i < width / 2; ++i) {
          const float send = upper ? v[i] : v[i + width / 2];
          const float keep = upper ? v[i + width / 2] : v[i];
          v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off, kLanes);
        }
      }
#pragma unroll
      for (int off = kHeadLanes / 2; off > 0; off /= 2)
        v[0] += __shfl_xor_sync(0xffffffffu, v[0], off, kLanes);
      if (writer) {
        s_l[my_head][(step + u) * kRowsPerStep + row] =
            live[u] ? v[0] : -INFINITY;
      }
    }
  }
  __syncthreads();

  float* logits = At<float>(p.workspace, lay.logits);
  const uint32_t n = min(static_cast<uint32_t>(kLogitTile), k - tile_begin);
  for (int h = 0; h < group; ++h) {
    if (threadIdx.x < n) {
      logits[static_cast<size_t>(h) * k + tile_begin + threadIdx.x] =
          s_l[h][threadIdx.x];
    }
  }
  // Tile statistics: warp h reduces head h.
  const int warp = threadIdx.x / 32, wl = threadIdx.x % 32;
  if (warp < group) {
    float m = -INFINITY;
    for (int i = wl; i < kLogitTile; i += 32) m = fmaxf(m, s_l[warp][i]);
    m = WarpMax(m);
    float sum = 0.f;
    if (m > -INFINITY) {
      for (int i = wl; i < kLogitTile; i += 32) {
        const float l = s_l[warp][i];
        if (l > -INFINITY) sum += __expf(l - m);
      }
    }
    sum = WarpSum(sum);
    if (wl == 0) {
      float* st = At<float>(p.workspace, lay.tile_stats) +
                  (static_cast<size_t>(blockIdx.x) * group + warp) * 2;
      st[0] = m;
      st[1] = sum;
    }
  }
}

template <int G>
__global__ void __launch_bounds__(kThreads) ScoreKernel(RetrievalArgs a) {
  constexpr int kItems = kScoreTile / kThreads;
  const RetrievalProblem p = a.device_problems[blockIdx.y];
  const uint32_t k = p.num_clusters;
  const uint32_t tile_begin = blockIdx.x * kScoreTile;
  if (tile_begin >= k) return;  // uniform across the block
  const int group = a.group_size;
  const Layout lay = MakeLayout(k, group, a.head_dim);

  __shared__ float s_m[G], s_inv[G];
  __shared__ uint32_t s_hist[kHist0Bins];
  __shared__ uint32_t s_nonempty;
  for (int i = threadIdx.x; i < kHist0Bins; i += kThreads) s_hist[i] = 0;
  if (threadIdx.x == 0) s_nonempty = 0;
  // Per-head softmax max and denominator over all tiles (warp h: head h).
  const int warp = threadIdx.x / 32, wl = threadIdx.x % 32;
  if (warp < group) {
    const float* st = At<float>(p.workspace, lay.tile_stats);
    const uint32_t tiles = (k + kLogitTile - 1) / kLogitTile;
    float m = -INFINITY;
    for (uint32_t t = wl; t < tiles; t += 32)
      m = fmaxf(m, st[(static_cast<size_t>(t) * group + warp) * 2]);
    m = WarpMax(m);
    float sum = 0.f;
    if (m > -INFINITY) {
      for (uint32_t t = wl; t < tiles; t += 32) {
        const float* s = st + (static_cast<size_t>(t) * group + warp) * 2;
        if (s[1] > 0.f) sum += s[1] * __expf(s[0] - m);
      }
    }
    sum = WarpSum(sum);
    if (wl == 0) {
      s_m[warp] = m;
      s_inv[warp] = sum > 0.f ? 1.f / sum : 0.f;
    }
  }
  __syncthreads();

  const float* logits = At<float>(p.workspace, lay.logits);
  uint32_t* keys = At<uint32_t>(p.workspace, lay.keys);
  uint32_t nonempty = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const uint32_t c = tile_begin + i * kThreads + threadIdx.x;
    if (c >= k) break;
    uint32_t key = 0;
    if (p.sizes[c] != 0) {
      float score = 0.f;
#pragma unroll
      for (int h = 0; h < G; ++h) {
        if (h >= group) break;
        score +=
            __expf(logits[static_cast<size_t>(h) * k + c] - s_m[h]) * s_inv[h];
      }
      key = __float_as_uint(score) + 1u;
      ++nonempty;
      atomicAdd(&s_hist[key >> 21], 1u);
    }
    keys[c] = key;
  }
  atomicAdd(&s_nonempty, nonempty);
  __syncthreads();
  uint32_t* hist = At<uint32_t>(p.workspace, lay.hist);
  for (int i = threadIdx.x; i < kHist0Bins; i += kThreads) {
    if (s_hist[i] != 0) atomicAdd(&hist[i], s_hist[i]);
  }
  if (threadIdx.x == 0 && s_nonempty != 0) {
    atomicAdd(&hist[kCounterNonEmpty], s_nonempty);
  }
}

template <typename T, int D>
int LaunchLogitsTyped(const RetrievalArgs& a, dim3 grid, cudaStream_t s) {
  if (a.group_size <= 1) {
    LogitsKernel<T, D, 1><<<grid, kThreads, 0, s>>>(a);
  } else if (a.group_size <= 2) {
    LogitsKernel<T, D, 2><<<grid, kThreads, 0, s>>>(a);
  } else if (a.group_size <= 4) {
    LogitsKernel<T, D, 4><<<grid, kThreads, 0, s>>>(a);
  } else {
    LogitsKernel<T, D, kMaxRetrievalGroup><<<grid, kThreads, 0, s>>>(a);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LaunchLogitsByDim(const RetrievalArgs& a, dim3 grid, cudaStream_t s) {
  switch (a.head_dim) {
    case 64:
      return LaunchLogitsTyped<T, 64>(a, grid, s);
    case 128:
      return LaunchLogitsTyped<T, 128>(a, grid, s);
    case 256:
      return LaunchLogitsTyped<T, 256>(a, grid, s);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace

int LaunchLogits(const RetrievalArgs& a, uint32_t max_clusters,
                 cudaStream_t stream) {
  // At least one block per problem: block 0 zeroes the histogram.
  const uint32_t tiles =
      max_clusters == 0 ? 1 : (max_clusters + kLogitTile - 1) / kLogitTile;
  const dim3 grid(tiles, a.num_problems);
  switch (a.centroid_type) {
    case ElemType::kFp16:
      return LaunchLogitsByDim<__half>(a, grid, stream);
    case ElemType::kBf16:
      return LaunchLogitsByDim<__nv_bfloat16>(a, grid, stream);
    case ElemType::kFp32:
      return LaunchLogitsByDim<float>(a, grid, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int LaunchScores(const RetrievalArgs& a, uint32_t max_clusters,
                 cudaStream_t stream) {
  if (max_clusters == 0) return 0;
  const dim3 grid((max_clusters + kScoreTile - 1) / kScoreTile, a.num_problems);
  if (a.group_size <= 1) {
    ScoreKernel<1><<<grid, kThreads, 0, stream>>>(a);
  } else if (a.group_size <= 2) {
    ScoreKernel<2><<<grid, kThreads, 0, stream>>>(a);
  } else if (a.group_size <= 4) {
    ScoreKernel<4><<<grid, kThreads, 0, stream>>>(a);
  } else {
    ScoreKernel<kMaxRetrievalGroup><<<grid, kThreads, 0, stream>>>(a);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wavekv::cuda::retrieval
