// Centroid scoring (see retrieval.h for the contract).
//
// Logits kernel, fp16/bf16 centroids: grid (tiles of kLogitTile clusters,
// problems), 8 warps of 32 clusters each. Tensor cores (mma.sync m16n8k16,
// fp32 accumulate) multiply 16 centroid rows (A, straight from 16-byte
// global loads: the k dimension is permuted so that a lane's 8 contiguous
// elements are its fragment slots of two k-steps) by the group's queries
// (B, the 8 columns = query heads). Queries are split into 2 (fp16) or 3
// (bf16) terms of the centroid type after a per-head power-of-2 scaling,
// so the logits carry fp32-level precision (error ~2^-22 of |q|·|c|).
// fp32 centroids: one row per kLanes = head_dim / 8 threads on CUDA cores.
// Each block writes its logits (empty clusters: -inf) and, per query head,
// the tile's max and sum of e^{l - max}.
// Score kernel: grid (tiles of kScoreTile clusters, problems). Each block
// combines the tile statistics into the per-head softmax max and
// denominator, computes the group score of its clusters and their score
// keys, and adds them to the problem's first radix histogram.
#include <cfloat>
#include <cstdint>
#include <type_traits>

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

// Writes a tile's logits (s_l, -inf where empty or past k) and per head
// the tile's max and sum of e^{l - max}. After a barrier over s_l.
template <int G>
__device__ void TileEpilogue(const RetrievalProblem& p, const Layout& lay,
                             uint32_t k, int group, uint32_t tile_begin,
                             float (*s_l)[kLogitTile]) {
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
        Load8AsFloatReadOnly<T>(base + static_cast<size_t>(cl) * D * sizeof(T),
                                c[u]);
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

  TileEpilogue<G>(p, lay, k, group, tile_begin, s_l);
}

// Tensor-core operand types: fp16 queries split in 2 terms, bf16 in 3.
template <typename T>
struct MmaTraits;

template <>
struct MmaTraits<__half> {
  static constexpr int kTerms = 2;
  static __device__ __forceinline__ uint32_t Pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float Round(float x) {
    return __half2float(__float2half_rn(x));
  }
  static __device__ __forceinline__ void Mma(float* d, const uint32_t* a,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct MmaTraits<__nv_bfloat16> {
  static constexpr int kTerms = 3;
  static __device__ __forceinline__ uint32_t Pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float Round(float x) {
    return __bfloat162float(__float2bfloat16_rn(x));
  }
  static __device__ __forceinline__ void Mma(float* d, const uint32_t* a,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Term `term` of x in the centroid type: x = t0 + t1 + t2 + O(2^-24 x).
template <typename T>
__device__ __forceinline__ float QueryTerm(float x, int term) {
  float t = MmaTraits<T>::Round(x);
  for (int i = 0; i < term; ++i) {
    x -= t;
    t = MmaTraits<T>::Round(x);
  }
  return t;
}

// Fragment layout (PTX m16n8k16, g = lane / 4, t = lane % 4): A regs hold
// (row g | g + 8) x (k 2t, 2t+1 | 2t+8, 2t+9), B regs (k 2t, 2t+1 | 2t+8,
// 2t+9) x column g, C (row g | g + 8) x (column 2t, 2t+1). Logical k-step
// s = 2j + u of lane t is physical chunk c = 4j + t (8 elements) of the
// row, elements 4u..4u+3: 32-bit words 2u (k 2t, 2t+1) and 2u + 1 (k 2t+8,
// 2t+9) of the lane's 16-byte load. The same map for A and B keeps the dot
// products exact.
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads) LogitsMmaKernel(RetrievalArgs a) {
  constexpr int kSteps = D / 16;  // mma k-steps per row
  constexpr int kTerms = MmaTraits<T>::kTerms;
  constexpr int kPasses = D > 128 ? D / 128 : 1;  // load batches per row
  constexpr int kJ = D / 32 / kPasses;  // 16-byte chunks per row per pass
  constexpr int kWarpRows = kLogitTile / (kThreads / 32);  // 32
  static_assert(kWarpRows == 32, "two 16-row mma tiles per warp");
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

  __shared__ uint2 s_qf[kTerms][kSteps][32];
  __shared__ float s_scale[8];
  __shared__ float s_l[G][kLogitTile];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  // The warp's centroid loads first: they do not depend on the queries.
  const char* cen = static_cast<const char*>(p.centroids);
  const uint32_t row0 = tile_begin + warp * kWarpRows + g;  // + 8 * rr
  uint32_t sz[4];
#pragma unroll
  for (int rr = 0; rr < 4; ++rr) {
    const uint32_t row = row0 + 8 * rr;
    sz[rr] = row < k ? __ldg(p.sizes + row) : 0u;
  }
  uint4 ld[4][kJ];
  auto load_pass = [&](int pass) {
#pragma unroll
    for (int rr = 0; rr < 4; ++rr) {
      const uint32_t row = row0 + 8 * rr;
#pragma unroll
      for (int j = 0; j < kJ; ++j) {
        const int chunk = 4 * (pass * kJ + j) + t;
        ld[rr][j] = row < k
                        ? __ldg(reinterpret_cast<const uint4*>(
                              cen + (static_cast<size_t>(row) * D + chunk * 8) *
                                        sizeof(T)))
                        : make_uint4(0, 0, 0, 0);
      }
    }
  };
  load_pass(0);
  // Per-head power-of-2 scale (warp h), then the B fragments.
  if (warp < G) {
    float m = 0.f;
    if (warp < group) {
      for (int i = lane; i < D; i += 32) {
        m = fmaxf(m, fabsf(p.queries[warp * D + i] * a.scale));
      }
    }
    m = WarpMax(m);
    if (lane == 0) s_scale[warp] = m > 0.f ? ldexpf(1.f, ilogbf(m) + 1) : 1.f;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTerms * kSteps * 32; i += kThreads) {
    const int l = i % 32, s = (i / 32) % kSteps, term = i / 32 / kSteps;
    const int n = l / 4, tt = l % 4;
    const int e0 = 8 * (4 * (s / 2) + tt) + 4 * (s % 2);
    float x[4] = {0.f, 0.f, 0.f, 0.f};
    if (n < group) {
      const float inv = 1.f / s_scale[n];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        x[e] = QueryTerm<T>(p.queries[n * D + e0 + e] * a.scale * inv, term);
      }
    }
    s_qf[term][s][l] = make_uint2(MmaTraits<T>::Pack(x[0], x[1]),
                                  MmaTraits<T>::Pack(x[2], x[3]));
  }
  __syncthreads();

  float acc[2][4];
#pragma unroll
  for (int m = 0; m < 2; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0;
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    if (pass > 0) load_pass(pass);
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int s = 2 * (pass * kJ + j) + u;
#pragma unroll
        for (int m = 0; m < 2; ++m) {  // rows 16m + (g | g + 8)
          const uint4& r0 = ld[2 * m][j];
          const uint4& r1 = ld[2 * m + 1][j];
          const uint32_t af[4] = {u ? r0.z : r0.x, u ? r1.z : r1.x,
                                  u ? r0.w : r0.y, u ? r1.w : r1.y};
#pragma unroll
          for (int term = 0; term < kTerms; ++term) {
            const uint2 b = s_qf[term][s][lane];
            MmaTraits<T>::Mma(acc[m], af, b.x, b.y);
          }
        }
      }
    }
  }
  // acc[m]: (row 16m + g, heads 2t, 2t+1), (row 16m + g + 8, same heads).
#pragma unroll
  for (int m = 0; m < 2; ++m) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = 2 * t + (i & 1);
      const int rr = 2 * m + (i >> 1);
      const int local = warp * kWarpRows + g + 8 * rr;
      if (h < G) {
        s_l[h][local] = sz[rr] != 0 ? acc[m][i] * s_scale[h] : -INFINITY;
      }
    }
  }
  __syncthreads();
  TileEpilogue<G>(p, lay, k, group, tile_begin, s_l);
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
  __shared__ uint32_t s_hist[kHistBins];
  __shared__ uint32_t s_nonempty;
  for (int i = threadIdx.x; i < kHistBins; i += kThreads) s_hist[i] = 0;
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
  // Every load of the tile in flight before the arithmetic.
  uint32_t sz[kItems];
  float l[kItems][G];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const uint32_t c = tile_begin + i * kThreads + threadIdx.x;
    sz[i] = c < k ? __ldg(p.sizes + c) : 0u;
#pragma unroll
    for (int h = 0; h < G; ++h) {
      l[i][h] =
          c < k && h < group ? logits[static_cast<size_t>(h) * k + c] : 0.f;
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const uint32_t c = tile_begin + i * kThreads + threadIdx.x;
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
      atomicAdd(&s_hist[HistDigit(key)], 1u);
    }
    keys[c] = key;
  }
  atomicAdd(&s_nonempty, nonempty);
  __syncthreads();
  uint32_t* hist = At<uint32_t>(p.workspace, lay.hist);
  for (int i = threadIdx.x; i < kHistBins; i += kThreads) {
    if (s_hist[i] != 0) atomicAdd(&hist[i], s_hist[i]);
  }
  if (threadIdx.x == 0 && s_nonempty != 0) {
    atomicAdd(&hist[kCounterNonEmpty], s_nonempty);
  }
}

template <typename T, int D, int G>
void LaunchLogitsKernel(const RetrievalArgs& a, dim3 grid, cudaStream_t s) {
  if constexpr (std::is_same_v<T, float>) {
    LogitsKernel<T, D, G><<<grid, kThreads, 0, s>>>(a);
  } else {
    LogitsMmaKernel<T, D, G><<<grid, kThreads, 0, s>>>(a);
  }
}

template <typename T, int D>
int LaunchLogitsTyped(const RetrievalArgs& a, dim3 grid, cudaStream_t s) {
  if (a.group_size <= 1) {
    LaunchLogitsKernel<T, D, 1>(a, grid, s);
  } else if (a.group_size <= 2) {
    LaunchLogitsKernel<T, D, 2>(a, grid, s);
  } else if (a.group_size <= 4) {
    LaunchLogitsKernel<T, D, 4>(a, grid, s);
  } else {
    LaunchLogitsKernel<T, D, kMaxRetrievalGroup>(a, grid, s);
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
