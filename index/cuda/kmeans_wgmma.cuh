// Hopper (sm_90a) scoring kernel of the GPU k-means (kmeans.cu): the same
// contract as AssignKernel (argmax of unit key . unit centroid over the
// tile's centroid range, ties to the lowest id, fp16 in, fp32 accumulate),
// computed with warpgroup MMAs (wgmma.mma_async) reading both operands from
// shared memory in the 128-byte swizzled K-major layout:
//   element (r, k) of an R-row tile lives in K-atom k / 64 (R rows x 128 B,
//   1024-byte aligned) at byte r * 128 + (((k % 64) / 8) ^ (r % 8)) * 16 +
//   (k % 8) * 2.
// Block = 2 warpgroups over a tile of 128 * MT rows; warpgroup g scores rows
// [64 MT g, 64 MT (g + 1)) (MT m64 slices) against BN centroids per stage
// (cp.async, double buffered), each warp owning 16 full rows of a slice, so
// the argmax needs no cross-warp step. MT = 2 halves the centroid traffic
// from L2 per scored key (centroids are re-read once per row tile).
// Compiled to a real kernel only in the sm_90a pass
// (__CUDA_ARCH_FEAT_SM90_ALL); elsewhere it traps, and the host launches it
// only after KMeansWgmmaAvailable() said the device runs sm_90a code.
#ifndef WAVEKV_INDEX_CUDA_KMEANS_WGMMA_CUH_
#define WAVEKV_INDEX_CUDA_KMEANS_WGMMA_CUH_

#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "index/cuda/kmeans_raw.h"

namespace wavekv::cuda::kmeans_wgmma {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WAVEKV_KMEANS_WGMMA 1
#endif

template <int D, int MT>
struct Cfg {
  static constexpr int kThreads = 256;
  static constexpr int BM = 128 * MT;  // two warpgroups of 64 * MT rows
  static constexpr int BN = D == 256 ? 64 : 128;
  static constexpr int kAtoms = D / 64;  // 128-byte K-atoms per row
  static constexpr int kABytes = BM * D * 2;
  static constexpr int kBBytes = BN * D * 2;  // one stage
  // +1024: the dynamic buffer is re-aligned to 1024 bytes by hand.
  static constexpr int kSmemBytes = kABytes + 2 * kBBytes + 1024;
};

// Flags shared with AssignKernel: early stop of converged segments.
struct EarlyStop {
  const int* converged = nullptr;  // [P * S], skip the tile if set
  int* changed = nullptr;          // [P * S], set if an assignment changed
  int num_segments = 0;
};

#ifdef WAVEKV_KMEANS_WGMMA

__device__ __forceinline__ void CpAsync16(uint32_t smem, const void* gmem,
                                          bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem),
               "l"(gmem), "r"(valid ? 16 : 0));
}

// Matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 B apart.
__device__ __forceinline__ uint64_t Desc(uint32_t smem_addr) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>(16 >> 4) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

// D[64 x 128] (+)= A[64 x 16] * B[128 x 16]^T, both K-major in shared
// memory (descriptors), fp16 in, fp32 accumulators in registers.
__device__ __forceinline__ void WgmmaM64N128(float (&d)[64], uint64_t desc_a,
                                             uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, "
      "%30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "
      "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, "
      "%58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]),
        "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
        "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]),
        "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),
        "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),
        "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 64] (+)= A[64 x 16] * B[64 x 16]^T, both K-major in shared
// memory (descriptors), fp16 in, fp32 accumulators in registers.
__device__ __forceinline__ void WgmmaM64N64(float (&d)[32], uint64_t desc_a,
                                            uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, "
      "%30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]),
        "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
        "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
        "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

template <int BN>
struct Acc;
template <>
struct Acc<128> {
  static constexpr int kRegs = 64;
  __device__ static void Mma(float (&d)[64], uint64_t a, uint64_t b, int acc) {
    WgmmaM64N128(d, a, b, acc);
  }
};
template <>
struct Acc<64> {
  static constexpr int kRegs = 32;
  __device__ static void Mma(float (&d)[32], uint64_t a, uint64_t b, int acc) {
    WgmmaM64N64(d, a, b, acc);
  }
};

// Rows [0, R) of `src` (row r at src + r * D, rows >= valid_rows zero-filled)
// into the swizzled tile at `dst` (shared address).
template <int R, int D>
__device__ __forceinline__ void LoadTile(uint32_t dst, const uint16_t* src,
                                         uint32_t valid_rows) {
  constexpr int CH = D / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < R * CH; i += 256) {
    const int r = i / CH, ch = i % CH;
    const bool valid = static_cast<uint32_t>(r) < valid_rows;
    const uint32_t at =
        (ch / 8) * (R * 128) + r * 128 + (((ch % 8) ^ (r % 8)) * 16);
    CpAsync16(dst + at, src + static_cast<int64_t>(valid ? r : 0) * D + ch * 8,
              valid);
  }
}

#endif  // WAVEKV_KMEANS_WGMMA

template <int D, int MT>
__global__ void __launch_bounds__(256)
    WgmmaAssignKernel(const AssignTile* tiles, const uint16_t* xhat,
                      const uint16_t* cent, uint32_t n, uint32_t k,
                      uint32_t* assignment, uint32_t* sort_keys,
                      EarlyStop stop) {
#ifdef WAVEKV_KMEANS_WGMMA
  using C = Cfg<D, MT>;
  extern __shared__ __align__(1024) uint8_t wg_smem_raw[];
  const uint32_t raw =
      static_cast<uint32_t>(__cvta_generic_to_shared(wg_smem_raw));
  const uint32_t base = (raw + 1023) & ~1023u;
  const uint32_t as = base;
  const uint32_t bs = base + C::kABytes;
  const AssignTile tile = tiles[blockIdx.x];
  const int p = blockIdx.y;
  const int ps = p * stop.num_segments + static_cast<int>(tile.segment);
  if (stop.converged != nullptr && stop.converged[ps] != 0) return;
  const uint16_t* x = xhat + static_cast<int64_t>(p) * n * D;
  const uint16_t* cp = cent + static_cast<int64_t>(p) * k * D;

  LoadTile<C::BM, D>(as, x + static_cast<int64_t>(tile.row_begin) * D,
                     tile.row_end - tile.row_begin);
  LoadTile<C::BN, D>(bs, cp + static_cast<int64_t>(tile.cent_begin) * D,
                     tile.cent_end - tile.cent_begin);
  asm volatile("cp.async.commit_group;\n" ::);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wg = warp / 4;
  // This thread's rows within the tile: r0 + 64 mt + 8 h.
  const int r0 = wg * 64 * MT + (warp % 4) * 16 + lane / 4;
  float best[MT][2];
  uint32_t bidx[MT][2];
  float acc[MT][Acc<C::BN>::kRegs];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    best[mt][0] = best[mt][1] = -FLT_MAX;
    bidx[mt][0] = bidx[mt][1] = 0xffffffffu;
#pragma unroll
    for (int i = 0; i < Acc<C::BN>::kRegs; ++i) acc[mt][i] = 0.f;
  }

  int stage = 0;
  for (uint32_t n0 = tile.cent_begin; n0 < tile.cent_end; n0 += C::BN) {
    if (n0 + C::BN < tile.cent_end) {
      LoadTile<C::BN, D>(bs + (stage ^ 1) * C::kBBytes,
                         cp + static_cast<int64_t>(n0 + C::BN) * D,
                         tile.cent_end - (n0 + C::BN));
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 1;\n" ::);
    // cp.async wrote through the generic proxy; wgmma reads through the
    // async proxy.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const uint32_t b = bs + stage * C::kBBytes;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t koff = (ks % 4) * 32;  // 16 fp16 within the atom
      const uint64_t db = Desc(b + (ks / 4) * (C::BN * 128) + koff);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const uint64_t da = Desc(as + (ks / 4) * (C::BM * 128) +
                                 (wg * MT + mt) * 64 * 128 + koff);
        Acc<C::BN>::Mma(acc[mt], da, db, ks > 0 ? 1 : 0);
      }
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    // Fragment: acc[4j + 2h + e] = (row r0 + 8h, column n0 + 8j +
    // 2 * (lane % 4) + e); columns visited in increasing order, strict '>'
    // keeps the lowest id on ties.
    const uint32_t valid = tile.cent_end - n0;
    if (valid >= static_cast<uint32_t>(C::BN)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int j = 0; j < C::BN / 8; ++j) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float v = acc[mt][4 * j + 2 * h + e];
              if (v > best[mt][h]) {
                best[mt][h] = v;
                bidx[mt][h] = n0 + 8 * j + 2 * (lane % 4) + e;
              }
            }
          }
        }
      }
    } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int j = 0; j < C::BN / 8; ++j) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const uint32_t col = 8 * j + 2 * (lane % 4) + e;
              const float v = acc[mt][4 * j + 2 * h + e];
              if (col < valid && v > best[mt][h]) {
                best[mt][h] = v;
                bidx[mt][h] = n0 + col;
              }
            }
          }
        }
      }
    }
    __syncthreads();
    stage ^= 1;
  }

  // Reduce over the 4 lanes of a quad (same rows).
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        const float ov = __shfl_xor_sync(~0u, best[mt][h], off);
        const uint32_t oi = __shfl_xor_sync(~0u, bidx[mt][h], off);
        if (ov > best[mt][h] || (ov == best[mt][h] && oi < bidx[mt][h])) {
          best[mt][h] = ov;
          bidx[mt][h] = oi;
        }
      }
    }
  }
  bool diff = false;
  if (lane % 4 == 0) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t row = tile.row_begin + r0 + 64 * mt + 8 * h;
        if (row >= tile.row_end) continue;
        uint32_t c = bidx[mt][h];
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
#else
  __trap();
#endif
}

// Persistent, pipelined variant for D <= 128 (PipeKernel): one block per SM
// walks jobs (problem, 256-key row tile) q = blockIdx.x, + gridDim.x, ...
// (problem-major, so concurrent blocks share one problem's centroids in
// L2), skipping converged segments. A step is one BN-centroid tile of a
// job; steps run through 3 B stages and 2 A stages (the next job's keys
// load during the current job's last step). Each warpgroup splits its 128
// rows into two m64 slices and overlaps the argmax epilogue of one slice
// with the tensor work of the other:
//   step s: issue slice0(s); finish slice1(s-1); issue slice1(s); finish
//   slice0(s).
template <int D>
struct PipeCfg {
  static_assert(D <= 128, "two 256-row A stages must fit shared memory");
  static constexpr int BM = 256;
  static constexpr int BN = 128;
  static constexpr int kABytes = BM * D * 2;
  static constexpr int kBBytes = BN * D * 2;
  static constexpr int kSmemBytes = 2 * kABytes + 3 * kBBytes + 1024;
};

#ifdef WAVEKV_KMEANS_WGMMA
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
#endif

template <int D>
__global__ void __launch_bounds__(256, 1)
    WgmmaPipeKernel(const AssignTile* tiles, int num_tiles, int num_problems,
                    const uint16_t* xhat, const uint16_t* cent, uint32_t n,
                    uint32_t k, uint32_t* assignment, uint32_t* sort_keys,
                    EarlyStop stop) {
#ifdef WAVEKV_KMEANS_WGMMA
  using C = PipeCfg<D>;
  constexpr int BN = C::BN;
  extern __shared__ __align__(1024) uint8_t pipe_smem_raw[];
  const uint32_t raw =
      static_cast<uint32_t>(__cvta_generic_to_shared(pipe_smem_raw));
  const uint32_t base = (raw + 1023) & ~1023u;
  const uint32_t a_base = base;
  const uint32_t b_base = base + 2 * C::kABytes;
  const int total = num_tiles * num_problems;
  const int G = static_cast<int>(gridDim.x);
  auto skip = [&](int q) {
    if (stop.converged == nullptr) return q;
    while (q < total &&
           stop.converged[(q / num_tiles) * stop.num_segments +
                          static_cast<int>(tiles[q % num_tiles].segment)] !=
               0) {
      q += G;
    }
    return q;
  };
  auto issue = [&](int q, uint32_t n0, int b_stage, int a_stage, bool with_a) {
    const int p = q / num_tiles;
    const AssignTile t = tiles[q % num_tiles];
    if (with_a) {
      LoadTile<C::BM, D>(a_base + a_stage * C::kABytes,
                         xhat + (static_cast<int64_t>(p) * n + t.row_begin) * D,
                         t.row_end - t.row_begin);
    }
    LoadTile<BN, D>(b_base + b_stage * C::kBBytes,
                    cent + (static_cast<int64_t>(p) * k + n0) * D,
                    t.cent_end - n0);
    asm volatile("cp.async.commit_group;\n" ::);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wg = warp / 4;
  // Row of this thread in slice m, half h: r0 + 64 m + 8 h.
  const int r0 = wg * 128 + (warp % 4) * 16 + lane / 4;
  float best[2][2];
  uint32_t bidx[2][2];
  float acc[2][64];
#pragma unroll
  for (int m = 0; m < 2; ++m) {
    best[m][0] = best[m][1] = -FLT_MAX;
    bidx[m][0] = bidx[m][1] = 0xffffffffu;
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[m][i] = 0.f;
  }
  // Argmax of slice m over the step's centroid tile (columns in increasing
  // order; strict '>' keeps the lowest id).
  auto epilogue = [&](auto mc, int q, uint32_t n0) {
    constexpr int m = decltype(mc)::value;
    const uint32_t valid = tiles[q % num_tiles].cent_end - n0;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const uint32_t col = 8 * j + 2 * (lane % 4) + e;
          const float v = acc[m][4 * j + 2 * h + e];
          if ((valid >= static_cast<uint32_t>(BN) || col < valid) &&
              v > best[m][h]) {
            best[m][h] = v;
            bidx[m][h] = n0 + col;
          }
        }
      }
    }
  };
  // Slice m of job q is complete: reduce over the quad, write, reset.
  auto finish = [&](auto mc, int q) {
    constexpr int m = decltype(mc)::value;
    const int p = q / num_tiles;
    const AssignTile t = tiles[q % num_tiles];
    bool diff = false;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        const float ov = __shfl_xor_sync(~0u, best[m][h], off);
        const uint32_t oi = __shfl_xor_sync(~0u, bidx[m][h], off);
        if (ov > best[m][h] || (ov == best[m][h] && oi < bidx[m][h])) {
          best[m][h] = ov;
          bidx[m][h] = oi;
        }
      }
      const uint32_t row = t.row_begin + r0 + 64 * m + 8 * h;
      if (lane % 4 == 0 && row < t.row_end) {
        uint32_t c = bidx[m][h];
        if (c == 0xffffffffu) c = t.cent_begin;  // all scores NaN
        const int64_t at = static_cast<int64_t>(p) * n + row;
        if (stop.changed != nullptr) diff |= assignment[at] != c;
        assignment[at] = c;
        if (sort_keys != nullptr) {
          sort_keys[at] = static_cast<uint32_t>(p) * k + c;
        }
      }
      best[m][h] = -FLT_MAX;
      bidx[m][h] = 0xffffffffu;
    }
    if (diff) {
      stop.changed[p * stop.num_segments + static_cast<int>(t.segment)] = 1;
    }
  };
  auto mma = [&](auto mc, uint32_t a_stage_addr, uint32_t b_stage_addr) {
    constexpr int m = decltype(mc)::value;
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t koff = (ks % 4) * 32;
      const uint64_t da = Desc(a_stage_addr + (ks / 4) * (C::BM * 128) +
                               (wg * 128 + 64 * m) * 128 + koff);
      const uint64_t db = Desc(b_stage_addr + (ks / 4) * (BN * 128) + koff);
      WgmmaM64N128(acc[m], da, db, ks > 0 ? 1 : 0);
    }
    WgmmaCommit();
  };
  using M0 = std::integral_constant<int, 0>;
  using M1 = std::integral_constant<int, 1>;

  int cq = skip(static_cast<int>(blockIdx.x));
  if (cq >= total) return;
  uint32_t cn0 = tiles[cq % num_tiles].cent_begin;
  int ca = 0;  // A stage of the current job
  issue(cq, cn0, 0, ca, true);
  bool have_prev = false, prev_last = false;
  int pq = 0;
  uint32_t pn0 = 0;
  for (int s = 0;; ++s) {
    // The step after this one.
    int nq = cq;
    uint32_t nn0 = cn0 + BN;
    if (nn0 >= tiles[cq % num_tiles].cent_end) {
      nq = skip(cq + G);
      nn0 = nq < total ? tiles[nq % num_tiles].cent_begin : 0;
    }
    const bool c_last = nq != cq;
    const int na = c_last ? ca ^ 1 : ca;
    asm volatile("cp.async.wait_group 0;\n" ::);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    // B stage (s + 1) % 3 was read by step s - 2: done in every warpgroup.
    // A stage na was read by the previous job; if that job ended at step
    // s - 1, its slice 1 may still run: drain it first (block-uniform).
    if (nq < total) {
      if (c_last && have_prev && prev_last) {
        WgmmaWait<0>();
        __syncthreads();
      }
      issue(nq, nn0, (s + 1) % 3, na, c_last);
    }
    const uint32_t a_addr = a_base + ca * C::kABytes;
    const uint32_t b_addr = b_base + (s % 3) * C::kBBytes;
    mma(M0{}, a_addr, b_addr);
    if (have_prev) {
      WgmmaWait<1>();  // slice 1 of the previous step
      epilogue(M1{}, pq, pn0);
      if (prev_last) finish(M1{}, pq);
    }
    mma(M1{}, a_addr, b_addr);
    WgmmaWait<1>();  // slice 0 of this step
    epilogue(M0{}, cq, cn0);
    if (c_last) finish(M0{}, cq);
    have_prev = true;
    prev_last = c_last;
    pq = cq;
    pn0 = cn0;
    if (nq >= total) break;
    cq = nq;
    cn0 = nn0;
    ca = na;
  }
  WgmmaWait<0>();
  epilogue(M1{}, pq, pn0);
  finish(M1{}, pq);
#else
  __trap();
#endif
}

// Writes 1 to *out where the sm_90a code of this file was loaded.
__global__ void ProbeKernel(int* out) {
#ifdef WAVEKV_KMEANS_WGMMA
  *out = 1;
#else
  *out = 0;
#endif
}

}  // namespace wavekv::cuda::kmeans_wgmma

#endif  // WAVEKV_INDEX_CUDA_KMEANS_WGMMA_CUH_
