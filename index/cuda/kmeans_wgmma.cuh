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
// the argmax needs no cross-warp step (MT = 1 is what the launcher uses:
// 256-row tiles with one block per SM measured slower on H100).
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

// Centroid-stationary variant for the in-segment iterations: a block
// loads its segment's centroids (at most StatCfg<D>::kMaxCentTiles tiles
// of 128) into shared memory once and streams its rows in 128-key tiles
// through two A stages (the next tile loads while this one is scored), so
// L2 traffic per key is one 256-byte row instead of every centroid. Each
// warpgroup scores 64 rows against the centroid tiles with two accumulator
// sets: the MMAs of tile t + 1 run while the argmax of tile t is taken.
// Job = (segment rows chunk, the segment's clusters), problem blockIdx.y.
template <int D>
struct StatCfg {
  static constexpr int BM = 128;
  static constexpr int BN = 128;
  static constexpr int kABytes = BM * D * 2;
  static constexpr int kBBytes = BN * D * 2;
  static constexpr int kMaxSmem = 232448;  // sm_90 opt-in per block
  static constexpr int kMaxCentTiles =
      (kMaxSmem - 1024 - 2 * kABytes) / kBBytes;
  static constexpr int SmemBytes(int cent_tiles) {
    return 2 * kABytes + cent_tiles * kBBytes + 1024;
  }
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
    WgmmaStationaryKernel(const AssignTile* jobs, const uint16_t* xhat,
                          const uint16_t* cent, uint32_t n, uint32_t k,
                          uint32_t* assignment, EarlyStop stop) {
#ifdef WAVEKV_KMEANS_WGMMA
  using C = StatCfg<D>;
  extern __shared__ __align__(1024) uint8_t stat_smem_raw[];
  const uint32_t raw =
      static_cast<uint32_t>(__cvta_generic_to_shared(stat_smem_raw));
  const uint32_t base = (raw + 1023) & ~1023u;
  const uint32_t a_base = base;
  const uint32_t b_base = base + 2 * C::kABytes;
  const AssignTile job = jobs[blockIdx.x];
  const int p = blockIdx.y;
  const int ps = p * stop.num_segments + static_cast<int>(job.segment);
  if (stop.converged != nullptr && stop.converged[ps] != 0) return;
  const uint16_t* x = xhat + static_cast<int64_t>(p) * n * D;
  const uint16_t* cp = cent + static_cast<int64_t>(p) * k * D;
  const uint32_t rows = job.row_end - job.row_begin;
  const int nrt = static_cast<int>((rows + C::BM - 1) / C::BM);
  const uint32_t ncent = job.cent_end - job.cent_begin;
  const int nb = static_cast<int>((ncent + C::BN - 1) / C::BN);

  for (int t = 0; t < nb; ++t) {
    LoadTile<C::BN, D>(
        b_base + t * C::kBBytes,
        cp + static_cast<int64_t>(job.cent_begin + t * C::BN) * D,
        ncent - t * C::BN);
  }
  LoadTile<C::BM, D>(a_base, x + static_cast<int64_t>(job.row_begin) * D, rows);
  asm volatile("cp.async.commit_group;\n" ::);
  if (nrt > 1) {
    LoadTile<C::BM, D>(a_base + C::kABytes,
                       x + static_cast<int64_t>(job.row_begin + C::BM) * D,
                       rows - C::BM);
  }
  asm volatile("cp.async.commit_group;\n" ::);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wg = warp / 4;
  const int r0 = wg * 64 + (warp % 4) * 16 + lane / 4;  // + 8 h
  float acc0[64], acc1[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc0[i] = acc1[i] = 0.f;
  float best[2];
  uint32_t bidx[2];
  auto mma = [&](float(&acc)[64], uint32_t a_addr, int t) {
    WgmmaFence();
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t koff = (ks % 4) * 32;
      const uint64_t da =
          Desc(a_addr + (ks / 4) * (C::BM * 128) + wg * 64 * 128 + koff);
      const uint64_t db =
          Desc(b_base + t * C::kBBytes + (ks / 4) * (C::BN * 128) + koff);
      WgmmaM64N128(acc, da, db, ks > 0 ? 1 : 0);
    }
    WgmmaCommit();
  };
  // Columns in increasing order; strict '>' keeps the lowest id.
  auto argmax = [&](const float(&acc)[64], int t) {
    const uint32_t n0 = job.cent_begin + t * C::BN;
    const uint32_t valid = ncent - t * C::BN;
#pragma unroll
    for (int j = 0; j < C::BN / 8; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const uint32_t col = 8 * j + 2 * (lane % 4) + e;
          const float v = acc[4 * j + 2 * h + e];
          if ((valid >= static_cast<uint32_t>(C::BN) || col < valid) &&
              v > best[h]) {
            best[h] = v;
            bidx[h] = n0 + col;
          }
        }
      }
    }
  };

  for (int r = 0; r < nrt; ++r) {
    asm volatile("cp.async.wait_group 1;\n" ::);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const uint32_t a_addr = a_base + (r & 1) * C::kABytes;
    best[0] = best[1] = -FLT_MAX;
    bidx[0] = bidx[1] = 0xffffffffu;
    mma(acc0, a_addr, 0);
    for (int t = 0; t < nb; t += 2) {  // block-uniform
      if (t + 1 < nb) {
        mma(acc1, a_addr, t + 1);
        WgmmaWait<1>();
      } else {
        WgmmaWait<0>();
      }
      argmax(acc0, t);
      if (t + 1 >= nb) break;
      if (t + 2 < nb) {
        mma(acc0, a_addr, t + 2);
        WgmmaWait<1>();
      } else {
        WgmmaWait<0>();
      }
      argmax(acc1, t + 1);
    }
    bool diff = false;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        const float ov = __shfl_xor_sync(~0u, best[h], off);
        const uint32_t oi = __shfl_xor_sync(~0u, bidx[h], off);
        if (ov > best[h] || (ov == best[h] && oi < bidx[h])) {
          best[h] = ov;
          bidx[h] = oi;
        }
      }
      const uint32_t row = job.row_begin + r * C::BM + r0 + 8 * h;
      if (lane % 4 == 0 && row < job.row_end) {
        uint32_t c = bidx[h];
        if (c == 0xffffffffu) c = job.cent_begin;  // all scores NaN
        const int64_t at = static_cast<int64_t>(p) * n + row;
        if (stop.changed != nullptr) diff |= assignment[at] != c;
        assignment[at] = c;
      }
    }
    if (diff) stop.changed[ps] = 1;
    __syncthreads();  // every warpgroup is done with A stage r & 1
    if (r + 2 < nrt) {
      LoadTile<C::BM, D>(
          a_base + (r & 1) * C::kABytes,
          x + static_cast<int64_t>(job.row_begin + (r + 2) * C::BM) * D,
          rows - (r + 2) * C::BM);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  }
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
