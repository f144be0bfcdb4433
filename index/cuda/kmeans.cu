// Segmented spherical k-means on the GPU (contract: kmeans.h). One launch
// set clusters many (layer, kv head) problems of the same shape:
//   centre:  per-problem mean (double partials), centred keys normalised to
//            unit length in fp16 for scoring (a positive per-key scale does
//            not change a key's argmax), initial centroids = the unit keys at
//            the evenly spaced picks;
//   assign:  tensor-core scoring (fp16 in, fp32 accumulate) fused with the
//            argmax (ties to the lowest cluster id): mma.sync m16n8k16
//            (AssignKernel, sm_80+) or wgmma (kmeans_wgmma.cuh, sm_90a: 128-
//            key tiles, and a centroid-stationary kernel for the in-segment
//            iterations);
//   update:  per iteration, either one fused kernel per (segment, cluster
//            chunk) -- counting sort of the segment's assignments in shared
//            memory, then one warp per cluster summing its members' centred
//            keys in token order in fp32 (as the CPU does), normalised, with
//            the early stop of converged segments -- or (segments too long
//            for shared memory) a stable CUB radix sort of (problem, cluster)
//            keys and the same per-cluster sums;
//   final:   assignment against all centroids of the problem, radix sort;
//   stats:   one warp per cluster: size, member mean of the original keys
//            and value sum, both accumulated in double in token order.
// Every step is deterministic: no floating-point atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "index/cuda/kmeans_raw.h"
#include "index/cuda/kmeans_wgmma.cuh"

namespace wavekv::cuda {
namespace {

using kmeans_wgmma::EarlyStop;

__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float ToFloat(float x) { return x; }

__device__ __forceinline__ uint16_t HalfBits(float x) {
  return __half_as_ushort(__float2half_rn(x));
}

template <int EPL, typename T>
__device__ __forceinline__ void LoadLane(const T* row, int lane,
                                         float (&out)[EPL]) {
#pragma unroll
  for (int e = 0; e < EPL; ++e) out[e] = ToFloat(row[lane * EPL + e]);
}

// One lane's EPL elements of a row as loaded (converted later, so that a
// batch of row loads stays in flight: converting right after each load
// would wait for it).
template <int EPL, typename T>
struct alignas(EPL * sizeof(T) < 16 ? EPL * sizeof(T) : 16) RawLane {
  T v[EPL];
};

// Whether rows at `base` + i * `stride` elements allow RawLane vector loads.
template <int EPL, typename T>
__device__ __forceinline__ bool RawLaneAligned(const T* base, int64_t stride) {
  constexpr uintptr_t kAlign = alignof(RawLane<EPL, T>);
  return (reinterpret_cast<uintptr_t>(base) % kAlign) == 0 &&
         (static_cast<uintptr_t>(stride) * sizeof(T)) % kAlign == 0;
}

template <bool kVec, int EPL, typename T>
__device__ __forceinline__ void LoadRaw(const T* row, int lane,
                                        RawLane<EPL, T>& r) {
  if constexpr (kVec) {
    r = *reinterpret_cast<const RawLane<EPL, T>*>(row + lane * EPL);
  } else {
#pragma unroll
    for (int e = 0; e < EPL; ++e) r.v[e] = row[lane * EPL + e];
  }
}

// LoadLane with one vector load where the row is aligned for it (the
// elements and their order are the same either way).
template <int EPL, typename T>
__device__ __forceinline__ void LoadLaneVec(const T* row, int lane,
                                            float (&out)[EPL]) {
  RawLane<EPL, T> r;
  if (RawLaneAligned<EPL>(row, 0)) {
    LoadRaw<true>(row, lane, r);
  } else {
    LoadRaw<false>(row, lane, r);
  }
#pragma unroll
  for (int e = 0; e < EPL; ++e) out[e] = ToFloat(r.v[e]);
}

// Member rows a warp keeps in flight for about `budget_bytes` of raw data
// per lane.
template <int EPL, typename T>
constexpr int RowsInFlight(int budget_bytes) {
  const int bytes = EPL * static_cast<int>(sizeof(T));
  const int r = budget_bytes / bytes;
  return r < 4 ? 4 : (r > 16 ? 16 : r);
}

// EPL fp16 bit patterns to an aligned (EPL * 2 bytes) destination.
template <int EPL>
__device__ __forceinline__ void StoreLane(uint16_t* dst, const uint16_t* h) {
  if constexpr (EPL == 2 || EPL == 4 || EPL == 8) {
    using V = std::conditional_t<EPL == 8, uint4,
                                 std::conditional_t<EPL == 4, uint2, uint32_t>>;
    V v;
    memcpy(&v, h, sizeof(V));
    *reinterpret_cast<V*>(dst) = v;
  } else {
#pragma unroll
    for (int e = 0; e < EPL; ++e) dst[e] = h[e];
  }
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(~0u, v, off);
  return v;
}

// ---------------------------------------------------------------- centre

template <typename T, int D>
__global__ void MeanPartialKernel(KMeansRawArgs a, int chunks) {
  const int p = blockIdx.y;
  const int j = threadIdx.x;
  const KMeansProblem prob = a.problems[p];
  const T* keys = static_cast<const T*>(prob.keys);
  const uint32_t t0 = blockIdx.x * kMeanChunkRows;
  const uint32_t t1 = min(a.num_tokens, t0 + kMeanChunkRows);
  double acc = 0.0;
  bool bad = false;
  uint32_t t = t0;
  for (; t + 8 <= t1; t += 8) {  // 8 loads in flight, summed in token order
    float x[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      x[u] = ToFloat(keys[static_cast<int64_t>(t + u) * prob.row_stride + j]);
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      bad |= !isfinite(x[u]);
      acc += x[u];
    }
  }
  for (; t < t1; ++t) {
    const float x =
        ToFloat(keys[static_cast<int64_t>(t) * prob.row_stride + j]);
    bad |= !isfinite(x);
    acc += x;
  }
  a.mean_partials[(static_cast<int64_t>(p) * chunks + blockIdx.x) * D + j] =
      acc;
  if (bad) atomicExch(&a.flags[0], 1);
}

template <int D>
__global__ void MeanFinalKernel(KMeansRawArgs a, int chunks) {
  const int p = blockIdx.x;
  const int j = threadIdx.x;
  double s = 0.0;
  for (int c = 0; c < chunks; ++c) {
    s += a.mean_partials[(static_cast<int64_t>(p) * chunks + c) * D + j];
  }
  a.mean[p * D + j] = static_cast<float>(s / a.num_tokens);
}

// One warp per (problem, token): unit-length centred key in fp16, and the
// token's id as the sort value.
template <typename T, int D>
__global__ void CentreKernel(KMeansRawArgs a) {
  constexpr int EPL = D / 32;
  const int64_t w =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t total = static_cast<int64_t>(a.num_problems) * a.num_tokens;
  if (w >= total) return;  // warp-uniform
  const int p = static_cast<int>(w / a.num_tokens);
  const uint32_t t = static_cast<uint32_t>(w % a.num_tokens);
  const KMeansProblem prob = a.problems[p];
  float x[EPL];
  LoadLaneVec<EPL>(static_cast<const T*>(prob.keys) +
                       static_cast<int64_t>(t) * prob.row_stride,
                   lane, x);
  float ss = 0.f;
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    x[e] -= a.mean[p * D + lane * EPL + e];
    ss += x[e] * x[e];
  }
  const float norm = sqrtf(WarpSum(ss));
  const float inv = (norm > 0.f && isfinite(norm)) ? 1.f / norm : 1.f;
  uint16_t h[EPL];
#pragma unroll
  for (int e = 0; e < EPL; ++e) h[e] = HalfBits(x[e] * inv);
  StoreLane<EPL>(a.xhat + w * D + lane * EPL, h);
  if (lane == 0) a.sort_vals_in[w] = t;
}

// One warp per (problem, cluster): the unit key at the segment's pick
// floor(c*n/k + n/(2k)), as index/kmeans.cc.
template <int D>
__global__ void InitKernel(KMeansRawArgs a) {
  const int64_t w =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= static_cast<int64_t>(a.num_problems) * a.num_clusters) return;
  const int p = static_cast<int>(w / a.num_clusters);
  const uint32_t g = static_cast<uint32_t>(w % a.num_clusters);
  int s = 0;
  while (s + 1 < a.num_segments && a.segments[s + 1].first_cluster <= g) ++s;
  const KMeansSegment seg = a.segments[s];
  const uint64_t n = seg.end - seg.begin;
  const uint64_t c = g - seg.first_cluster;
  const uint64_t pick = seg.begin + (2 * c * n + n) / (2 * seg.num_clusters);
  const uint16_t* src =
      a.xhat + (static_cast<int64_t>(p) * a.num_tokens + pick) * D;
  uint16_t* dst = a.cent + w * D;
  for (int j = lane; j < D; j += 32) dst[j] = src[j];
}

// ---------------------------------------------------------------- assign

template <int D>
struct AssignCfg {
  static constexpr int kThreads = 256;
  static constexpr int BM = kAssignRows;
  static constexpr int BN = D == 256 ? 64 : 128;
  static constexpr int LD = D + 8;    // fp16 per smem row (16 B padding)
  static constexpr int NT = BN / 16;  // n8 tiles per warp (2 warps on N)
  static constexpr int kSmemBytes = (BM + 2 * BN) * LD * 2;
};

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem,
                                          bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: zero-fill
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s),
               "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4],
                                           const uint16_t* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4],
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void Better(float& v, uint32_t& i, float ov,
                                       uint32_t oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

// Block = one tile of up to 128 keys of problem blockIdx.y against the
// tile's centroid range, 8 warps as 4 (rows) x 2 (centroid columns).
template <int D>
__global__ void __launch_bounds__(256)
    AssignKernel(const AssignTile* tiles, const uint16_t* xhat,
                 const uint16_t* cent, uint32_t n, uint32_t k,
                 uint32_t* assignment, uint32_t* sort_keys, EarlyStop stop) {
  using C = AssignCfg<D>;
  constexpr int CH = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) uint16_t smem[];
  uint16_t* as = smem;
  uint16_t* bs = smem + C::BM * C::LD;
  const AssignTile tile = tiles[blockIdx.x];
  const int p = blockIdx.y;
  const int ps = p * stop.num_segments + static_cast<int>(tile.segment);
  if (stop.converged != nullptr && stop.converged[ps] != 0) return;
  const uint16_t* x = xhat + static_cast<int64_t>(p) * n * D;
  const uint16_t* cp = cent + static_cast<int64_t>(p) * k * D;

  for (int i = threadIdx.x; i < C::BM * CH; i += C::kThreads) {
    const int r = i / CH, ch = i % CH;
    const uint32_t row = tile.row_begin + r;
    const bool valid = row < tile.row_end;
    CpAsync16(
        as + r * C::LD + ch * 8,
        x + static_cast<int64_t>(valid ? row : tile.row_begin) * D + ch * 8,
        valid);
  }
  auto load_b = [&](int stage, uint32_t n0) {
    uint16_t* dst = bs + stage * C::BN * C::LD;
    for (int i = threadIdx.x; i < C::BN * CH; i += C::kThreads) {
      const int r = i / CH, ch = i % CH;
      const uint32_t c = n0 + r;
      const bool valid = c < tile.cent_end;
      CpAsync16(
          dst + r * C::LD + ch * 8,
          cp + static_cast<int64_t>(valid ? c : tile.cent_begin) * D + ch * 8,
          valid);
    }
  };
  load_b(0, tile.cent_begin);
  CpAsyncCommit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp % 4, wn = warp / 4;
  float best[2][2];
  uint32_t bidx[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      best[mt][h] = -FLT_MAX;
      bidx[mt][h] = 0xffffffffu;
    }
  }

  int stage = 0;
  for (uint32_t n0 = tile.cent_begin; n0 < tile.cent_end; n0 += C::BN) {
    if (n0 + C::BN < tile.cent_end) load_b(stage ^ 1, n0 + C::BN);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    const uint16_t* b = bs + stage * C::BN * C::LD;
    float acc[2][C::NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
      }
    }
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      uint32_t af[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int row = wm * 32 + mt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        LdMatrixX4(af[mt], as + row * C::LD + k0 + (lane / 16) * 8);
      }
#pragma unroll
      for (int np = 0; np < C::NT / 2; ++np) {
        const int nrow =
            wn * (C::BN / 2) + np * 16 + (lane % 8) + (lane / 16) * 8;
        uint32_t bf[4];
        LdMatrixX4(bf, b + nrow * C::LD + k0 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          Mma16816(acc[mt][2 * np], af[mt], bf[0], bf[1]);
          Mma16816(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
        }
      }
    }
    // Columns visited in increasing order per thread: strict '>' keeps the
    // lowest id on ties.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const uint32_t col =
                n0 + wn * (C::BN / 2) + nt * 8 + 2 * (lane % 4) + e;
            const float v = acc[mt][nt][h * 2 + e];
            if (col < tile.cent_end && v > best[mt][h]) {
              best[mt][h] = v;
              bidx[mt][h] = col;
            }
          }
        }
      }
    }
    __syncthreads();
    stage ^= 1;
  }

  // Reduce over the 4 lanes of a quad (same rows), then over the 2 warps.
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        const float ov = __shfl_xor_sync(~0u, best[mt][h], off);
        const uint32_t oi = __shfl_xor_sync(~0u, bidx[mt][h], off);
        Better(best[mt][h], bidx[mt][h], ov, oi);
      }
    }
  }
  float* red_v = reinterpret_cast<float*>(smem);
  uint32_t* red_i = reinterpret_cast<uint32_t*>(smem) + C::BM;
  if (wn == 1 && lane % 4 == 0) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * 32 + mt * 16 + h * 8 + lane / 4;
        red_v[r] = best[mt][h];
        red_i[r] = bidx[mt][h];
      }
    }
  }
  __syncthreads();
  bool diff = false;
  if (wn == 0 && lane % 4 == 0) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * 32 + mt * 16 + h * 8 + lane / 4;
        const uint32_t row = tile.row_begin + r;
        if (row >= tile.row_end) continue;
        float v = best[mt][h];
        uint32_t c = bidx[mt][h];
        Better(v, c, red_v[r], red_i[r]);
        if (c == 0xffffffffu) c = tile.cent_begin;  // all scores NaN
        const int64_t at = static_cast<int64_t>(p) * n + row;
        if (stop.changed != nullptr) diff |= assignment[at] != c;
        assignment[at] = c;
        if (sort_keys != nullptr) {
          sort_keys[at] = static_cast<uint32_t>(p) * k + c;
        }
      }
    }
  }
  if (stop.changed != nullptr) {
    if (__syncthreads_or(diff) && threadIdx.x == 0) stop.changed[ps] = 1;
  }
}

// ------------------------------------------------------ sort + boundaries

// offsets[g] = first sorted position of global cluster g (P*K + 1 entries).
__global__ void OffsetsKernel(const uint32_t* sorted_keys, int64_t num_items,
                              int64_t num_groups, uint32_t* offsets) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_items) return;
  const int64_t key = sorted_keys[i];
  const int64_t prev = i == 0 ? -1 : static_cast<int64_t>(sorted_keys[i - 1]);
  for (int64_t g = prev + 1; g <= key; ++g)
    offsets[g] = static_cast<uint32_t>(i);
  if (i == num_items - 1) {
    for (int64_t g = key + 1; g <= num_groups; ++g) {
      offsets[g] = static_cast<uint32_t>(num_items);
    }
  }
}

int SortByCluster(const KMeansRawArgs& a, uint32_t* vals_out,
                  cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(a.num_problems) * a.num_tokens;
  size_t bytes = a.cub_temp_bytes;
  cudaError_t err = cub::DeviceRadixSort::SortPairs(
      a.cub_temp, bytes, a.sort_keys_in, a.sort_keys_out, a.sort_vals_in,
      vals_out, static_cast<int>(items), 0, a.end_bit, stream);
  if (err != cudaSuccess) return err;
  const int64_t groups = static_cast<int64_t>(a.num_problems) * a.num_clusters;
  OffsetsKernel<<<static_cast<unsigned>((items + 255) / 256), 256, 0, stream>>>(
      a.sort_keys_out, items, groups, a.offsets);
  return cudaGetLastError();
}

// ---------------------------------------------------------- update, stats

// One warp per (problem, cluster): normalised sum of the members' centred
// keys (fp32, token order); an empty or zero-sum cluster keeps its centroid.
template <typename T, int D>
__global__ void UpdateKernel(KMeansRawArgs a, const uint32_t* members) {
  constexpr int EPL = D / 32;
  const int64_t g =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (g >= static_cast<int64_t>(a.num_problems) * a.num_clusters) return;
  const uint32_t b = a.offsets[g], e = a.offsets[g + 1];
  if (b == e) return;
  const int p = static_cast<int>(g / a.num_clusters);
  const KMeansProblem prob = a.problems[p];
  const T* keys = static_cast<const T*>(prob.keys);
  float m[EPL], s[EPL];
#pragma unroll
  for (int j = 0; j < EPL; ++j) {
    m[j] = a.mean[p * D + lane * EPL + j];
    s[j] = 0.f;
  }
  for (uint32_t i = b; i < e; ++i) {
    float x[EPL];
    LoadLane<EPL>(keys + static_cast<int64_t>(members[i]) * prob.row_stride,
                  lane, x);
#pragma unroll
    for (int j = 0; j < EPL; ++j) s[j] += x[j] - m[j];
  }
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < EPL; ++j) ss += s[j] * s[j];
  const float norm = sqrtf(WarpSum(ss));
  if (!(norm > 0.f) || !isfinite(norm)) return;
  const float inv = 1.f / norm;
  uint16_t* out = a.cent + g * D + lane * EPL;
#pragma unroll
  for (int j = 0; j < EPL; ++j) out[j] = HalfBits(s[j] * inv);
}

// Fused in-segment update, one block per job = (problem blockIdx.y,
// segment, chunk of <= kFusedClusters clusters), for iteration `it`:
//   early stop: a segment whose assignment did not change in iteration it
//     (> 0) is converged: its centroids are a fixed point, so stopping
//     leaves every later result unchanged (index/kmeans.cc does the same);
//   counting sort in shared memory: each warp takes a contiguous run of the
//     segment's tokens; per-warp counts per cluster, a scan, then a stable
//     scatter (__match_any_sync ranks lanes of one cluster in lane order),
//     so members come out cluster-major in token order;
//   sums: one warp per cluster, fp32 in token order, normalised, exactly as
//     UpdateKernel computes them from the global sort.
template <typename T, int D>
__global__ void __launch_bounds__(256)
    FusedUpdateKernel(KMeansRawArgs a, int it) {
  constexpr int EPL = D / 32;
  constexpr int W = 8;                 // warps
  constexpr int B = EPL <= 4 ? 8 : 4;  // member rows in flight per warp
  constexpr uint32_t kNone = 0xffffu;
  extern __shared__ __align__(16) uint16_t fsm[];
  __shared__ uint32_t hist[W][kFusedClusters];
  __shared__ uint32_t start[kFusedClusters + 1];
  const AssignTile job = a.update_jobs[blockIdx.x];
  const int p = blockIdx.y;
  const int pss = a.num_problems * a.num_segments;
  const int ps = p * a.num_segments + static_cast<int>(job.segment);
  int* changed = a.seg_flags;
  int* converged = a.seg_flags + 2 * pss;
  if (converged[ps] != 0) return;
  if (it > 0 && changed[(it & 1) * pss + ps] == 0) {
    if (threadIdx.x == 0) converged[ps] = 1;
    return;
  }
  if (threadIdx.x == 0) changed[((it + 1) & 1) * pss + ps] = 0;

  const uint32_t seg_n = job.row_end - job.row_begin;
  const uint32_t c0 = job.cent_begin, cnt = job.cent_end - job.cent_begin;
  uint16_t* loc = fsm;  // [seg_n], chunk-local cluster
  uint16_t* members = fsm + ((seg_n + 7) & ~7u);  // [seg_n], token - begin
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = threadIdx.x; i < W * kFusedClusters; i += 256) {
    hist[i / kFusedClusters][i % kFusedClusters] = 0;
  }
  __syncthreads();
  const uint32_t per_warp = (seg_n + W - 1) / W;
  const uint32_t w0 = min(seg_n, warp * per_warp);
  const uint32_t w1 = min(seg_n, w0 + per_warp);
  const uint32_t* asg =
      a.assignment + static_cast<int64_t>(p) * a.num_tokens + job.row_begin;
  for (uint32_t base = w0; base < w1; base += 32) {  // warp-uniform
    const uint32_t i = base + lane;
    uint32_t c = kNone;
    if (i < w1) {
      const uint32_t g = asg[i] - c0;
      if (g < cnt) c = g;
      loc[i] = static_cast<uint16_t>(c);
    }
    const uint32_t peers = __match_any_sync(~0u, c);
    if (c != kNone && lane == __ffs(peers) - 1) hist[warp][c] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();
  if (warp == 0) {
    // Cluster j = 2 * lane + {0, 1}: totals, exclusive scan, per-warp starts.
    const int j0 = 2 * lane, j1 = j0 + 1;
    uint32_t t0 = 0, t1 = 0;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      t0 += hist[w][j0];
      t1 += hist[w][j1];
    }
    uint32_t incl = t0 + t1;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const uint32_t o = __shfl_up_sync(~0u, incl, off);
      if (lane >= off) incl += o;
    }
    const uint32_t excl = incl - (t0 + t1);
    start[j0] = excl;
    start[j1] = excl + t0;
    if (lane == 31) start[kFusedClusters] = incl;
    uint32_t r0 = excl, r1 = excl + t0;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const uint32_t h0 = hist[w][j0], h1 = hist[w][j1];
      hist[w][j0] = r0;
      hist[w][j1] = r1;
      r0 += h0;
      r1 += h1;
    }
  }
  __syncthreads();
  for (uint32_t base = w0; base < w1; base += 32) {  // warp-uniform
    const uint32_t i = base + lane;
    const uint32_t c = i < w1 ? loc[i] : kNone;
    const uint32_t peers = __match_any_sync(~0u, c);
    if (c != kNone) {
      members[hist[warp][c] + __popc(peers & ((1u << lane) - 1))] =
          static_cast<uint16_t>(i);
    }
    __syncwarp();
    if (c != kNone && lane == __ffs(peers) - 1) hist[warp][c] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();

  const KMeansProblem prob = a.problems[p];
  const T* keys = static_cast<const T*>(prob.keys) +
                  static_cast<int64_t>(job.row_begin) * prob.row_stride;
  float m[EPL];
#pragma unroll
  for (int j = 0; j < EPL; ++j) m[j] = a.mean[p * D + lane * EPL + j];
  for (uint32_t j = warp; j < cnt; j += W) {
    const uint32_t b = start[j], e = start[j + 1];
    if (b == e) continue;
    float s[EPL];
#pragma unroll
    for (int q = 0; q < EPL; ++q) s[q] = 0.f;
    uint32_t i = b;
    for (; i + B <= e; i += B) {
      float x[B][EPL];
#pragma unroll
      for (int u = 0; u < B; ++u) {
        LoadLane<EPL>(
            keys + static_cast<int64_t>(members[i + u]) * prob.row_stride, lane,
            x[u]);
      }
#pragma unroll
      for (int u = 0; u < B; ++u) {
#pragma unroll
        for (int q = 0; q < EPL; ++q) s[q] += x[u][q] - m[q];
      }
    }
    for (; i < e; ++i) {
      float x[EPL];
      LoadLane<EPL>(keys + static_cast<int64_t>(members[i]) * prob.row_stride,
                    lane, x);
#pragma unroll
      for (int q = 0; q < EPL; ++q) s[q] += x[q] - m[q];
    }
    float ss = 0.f;
#pragma unroll
    for (int q = 0; q < EPL; ++q) ss += s[q] * s[q];
    const float norm = sqrtf(WarpSum(ss));
    if (!(norm > 0.f) || !isfinite(norm)) continue;  // warp-uniform
    const float inv = 1.f / norm;
    uint16_t* out = a.cent +
                    (static_cast<int64_t>(p) * a.num_clusters + c0 + j) * D +
                    lane * EPL;
#pragma unroll
    for (int q = 0; q < EPL; ++q) out[q] = HalfBits(s[q] * inv);
  }
}

template <typename T, int D>
__global__ void StatsKernel(KMeansRawArgs a) {
  constexpr int EPL = D / 32;
  const int64_t g =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (g >= static_cast<int64_t>(a.num_problems) * a.num_clusters) return;
  const uint32_t b = a.offsets[g], e = a.offsets[g + 1];
  const int p = static_cast<int>(g / a.num_clusters);
  const KMeansProblem prob = a.problems[p];
  const T* keys = static_cast<const T*>(prob.keys);
  const T* values = static_cast<const T*>(prob.values);
  double ks[EPL], vs[EPL];
#pragma unroll
  for (int j = 0; j < EPL; ++j) ks[j] = vs[j] = 0.0;
  bool bad = false;
  constexpr int kVecRows = RowsInFlight<EPL, T>(64);  // rows in flight
  auto sums = [&](auto vec_tag) {
    constexpr bool kVec = decltype(vec_tag)::value;
    // Scalar loads (unaligned rows, not seen in practice): fewer rows.
    constexpr int kRows = kVec ? kVecRows : 4;
    for (uint32_t i = b; i < e; i += kRows) {  // warp-uniform
      RawLane<EPL, T> x[kRows], v[kRows];
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
        if (i + u < e) {
          const int64_t off =
              static_cast<int64_t>(a.slot_tokens[i + u]) * prob.row_stride;
          LoadRaw<kVec>(keys + off, lane, x[u]);
          LoadRaw<kVec>(values + off, lane, v[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
        if (i + u < e) {
#pragma unroll
          for (int j = 0; j < EPL; ++j) {
            const float xv = ToFloat(x[u].v[j]), vv = ToFloat(v[u].v[j]);
            ks[j] += xv;
            vs[j] += vv;
            bad |= !isfinite(vv);
          }
        }
      }
    }
  };
  if (RawLaneAligned<EPL>(keys, prob.row_stride) &&
      RawLaneAligned<EPL>(values, prob.row_stride)) {
    sums(std::true_type{});
  } else {
    sums(std::false_type{});
  }
  const uint32_t size = e - b;
  const double inv = size > 0 ? 1.0 / size : 0.0;
  float* c = a.centroids + g * D + lane * EPL;
  float* vo = a.value_sums + g * D + lane * EPL;
#pragma unroll
  for (int j = 0; j < EPL; ++j) {
    c[j] = static_cast<float>(ks[j] * inv);
    vo[j] = static_cast<float>(vs[j]);
  }
  if (lane == 0) a.sizes[g] = size;
  if (bad) atomicExch(&a.flags[1], 1);
}

// ---------------------------------------------------------------- driver

unsigned WarpBlocks(int64_t warps) {
  return static_cast<unsigned>((warps + 7) / 8);  // 8 warps per block
}

template <typename T, int D>
int Pipeline(const KMeansRawArgs& a, cudaStream_t stream) {
  auto mark = [&](int phase) {
    if (a.mark != nullptr) a.mark(a.mark_ctx, phase);
  };
  cudaError_t err;
#define WAVEKV_CHECK_LAUNCH()                                  \
  do {                                                         \
    if ((err = cudaGetLastError()) != cudaSuccess) return err; \
  } while (0)

  const int chunks = (a.num_tokens + kMeanChunkRows - 1) / kMeanChunkRows;
  const int64_t rows = static_cast<int64_t>(a.num_problems) * a.num_tokens;
  const int64_t groups = static_cast<int64_t>(a.num_problems) * a.num_clusters;
  if ((err = cudaMemsetAsync(a.flags, 0, 2 * sizeof(int), stream)) !=
      cudaSuccess) {
    return err;
  }
  MeanPartialKernel<T, D>
      <<<dim3(chunks, a.num_problems), D, 0, stream>>>(a, chunks);
  WAVEKV_CHECK_LAUNCH();
  MeanFinalKernel<D><<<a.num_problems, D, 0, stream>>>(a, chunks);
  WAVEKV_CHECK_LAUNCH();
  CentreKernel<T, D><<<WarpBlocks(rows), 256, 0, stream>>>(a);
  WAVEKV_CHECK_LAUNCH();
  InitKernel<D><<<WarpBlocks(groups), 256, 0, stream>>>(a);
  WAVEKV_CHECK_LAUNCH();
  mark(kPhaseCentre);

  constexpr int kSmem = AssignCfg<D>::kSmemBytes;
  constexpr int kWgSmem = kmeans_wgmma::Cfg<D, 1>::kSmemBytes;
  if (a.wgmma) {
    err = cudaFuncSetAttribute(kmeans_wgmma::WgmmaAssignKernel<D, 1>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                               kWgSmem);
  } else {
    err = cudaFuncSetAttribute(
        AssignKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  }
  if (err != cudaSuccess) return err;
  const int stat_smem =
      kmeans_wgmma::StatCfg<D>::SmemBytes(a.stationary_cent_tiles);
  if (a.stationary_cent_tiles > 0) {
    if ((err = cudaFuncSetAttribute(kmeans_wgmma::WgmmaStationaryKernel<D>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    stat_smem)) != cudaSuccess) {
      return err;
    }
  }
  auto assign = [&](const AssignTile* tiles, int num_tiles, uint32_t* keys,
                    EarlyStop stop) {
    const dim3 grid(num_tiles, a.num_problems);
    if (a.wgmma) {
      kmeans_wgmma::WgmmaAssignKernel<D, 1><<<grid, 256, kWgSmem, stream>>>(
          tiles, a.xhat, a.cent, a.num_tokens, a.num_clusters, a.assignment,
          keys, stop);
    } else {
      AssignKernel<D><<<grid, 256, kSmem, stream>>>(
          tiles, a.xhat, a.cent, a.num_tokens, a.num_clusters, a.assignment,
          keys, stop);
    }
  };
  // In-segment scoring of the fused path (no sort keys needed).
  auto assign_in_segment = [&](EarlyStop stop) {
    if (a.stationary_cent_tiles > 0) {
      kmeans_wgmma::WgmmaStationaryKernel<D>
          <<<dim3(a.num_stationary_jobs, a.num_problems), 256, stat_smem,
             stream>>>(a.stationary_jobs, a.xhat, a.cent, a.num_tokens,
                       a.num_clusters, a.assignment, stop);
    } else {
      assign(a.seg_tiles, a.num_seg_tiles, nullptr, stop);
    }
  };
  const int64_t pss = static_cast<int64_t>(a.num_problems) * a.num_segments;
  const size_t fused_smem = 4u * ((a.max_segment_rows + 7) & ~7u);
  if (a.fused_update) {
    if ((err = cudaMemsetAsync(a.seg_flags, 0, 3 * pss * sizeof(int),
                               stream)) != cudaSuccess) {
      return err;
    }
    if ((err = cudaFuncSetAttribute(FusedUpdateKernel<T, D>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(fused_smem))) !=
        cudaSuccess) {
      return err;
    }
  }
  for (int it = 0; it < a.iterations; ++it) {
    if (a.fused_update) {
      EarlyStop stop;
      stop.converged = a.seg_flags + 2 * pss;
      stop.changed = it > 0 ? a.seg_flags + (it & 1) * pss : nullptr;
      stop.num_segments = a.num_segments;
      assign_in_segment(stop);
      WAVEKV_CHECK_LAUNCH();
      mark(kPhaseAssign);
      FusedUpdateKernel<T, D><<<dim3(a.num_update_jobs, a.num_problems), 256,
                                fused_smem, stream>>>(a, it);
      WAVEKV_CHECK_LAUNCH();
      mark(kPhaseUpdate);
      continue;
    }
    assign(a.seg_tiles, a.num_seg_tiles, a.sort_keys_in, EarlyStop{});
    WAVEKV_CHECK_LAUNCH();
    mark(kPhaseAssign);
    if (int e = SortByCluster(a, a.slot_tokens, stream)) return e;
    mark(kPhaseSort);
    UpdateKernel<T, D>
        <<<WarpBlocks(groups), 256, 0, stream>>>(a, a.slot_tokens);
    WAVEKV_CHECK_LAUNCH();
    mark(kPhaseUpdate);
  }
  assign(a.all_tiles, a.num_all_tiles, a.sort_keys_in, EarlyStop{});
  WAVEKV_CHECK_LAUNCH();
  mark(kPhaseFinalAssign);
  if (int e = SortByCluster(a, a.slot_tokens, stream)) return e;
  mark(kPhaseFinalSort);
  StatsKernel<T, D><<<WarpBlocks(groups), 256, 0, stream>>>(a);
  WAVEKV_CHECK_LAUNCH();
  mark(kPhaseStats);
#undef WAVEKV_CHECK_LAUNCH
  return cudaSuccess;
}

template <typename T>
int DispatchDim(const KMeansRawArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 64:
      return Pipeline<T, 64>(a, stream);
    case 128:
      return Pipeline<T, 128>(a, stream);
    case 256:
      return Pipeline<T, 256>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool KMeansWgmmaAvailable() {
  static const bool available = [] {
    int* d = nullptr;
    if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    int h = 0;
    kmeans_wgmma::ProbeKernel<<<1, 1>>>(d);
    bool ok =
        cudaGetLastError() == cudaSuccess &&
        cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
    cudaFree(d);
    cudaGetLastError();
    return ok && h == 1;
  }();
  return available;
}

size_t KMeansSortTempBytes(int64_t num_items, int end_bit) {
  size_t bytes = 0;
  cudaError_t err = cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr),
      static_cast<uint32_t*>(nullptr), static_cast<const uint32_t*>(nullptr),
      static_cast<uint32_t*>(nullptr), static_cast<int>(num_items), 0, end_bit);
  return err == cudaSuccess ? bytes : 0;
}

int LaunchKMeansRaw(const KMeansRawArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case ElemType::kFp16:
      return DispatchDim<__half>(a, stream);
    case ElemType::kBf16:
      return DispatchDim<__nv_bfloat16>(a, stream);
    case ElemType::kFp32:
      return DispatchDim<float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace wavekv::cuda
