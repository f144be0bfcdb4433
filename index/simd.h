// Internal to index/: function multi-versioning and small fp32 vector kernels
// written so that GCC auto-vectorises them (-O3 -ffp-contract=fast, see
// index/BUILD). Not part of the public API.
//
// WAVEKV_MULTIVERSION on a function compiles it for x86-64-v4 (AVX-512),
// x86-64-v3 (AVX2+FMA) and the baseline, and picks one at load time, so one
// binary runs everywhere and uses the widest vectors the CPU has. The helpers
// below are always_inline so that they are compiled for the caller's ISA.
//
// Thread-safe: all functions are pure.
#ifndef WAVEKV_INDEX_SIMD_H_
#define WAVEKV_INDEX_SIMD_H_

#include <cstddef>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WAVEKV_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define WAVEKV_MULTIVERSION
#endif

#define WAVEKV_INLINE inline __attribute__((always_inline))

namespace wavekv::simd {

// Lanes of independent partial sums: enough for two AVX-512 registers, so the
// reduction is vectorised without reassociating a single accumulator.
inline constexpr size_t kLanes = 16;

// Σ a[j]·b[j] for j < n.
WAVEKV_INLINE float Dot(const float* __restrict a, const float* __restrict b,
                        size_t n) {
  float acc[kLanes] = {};
  size_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (size_t u = 0; u < kLanes; ++u) acc[u] += a[j + u] * b[j + u];
  }
  float tail = 0.0f;
  for (; j < n; ++j) tail += a[j] * b[j];
  for (size_t u = 0; u < kLanes / 2; ++u) acc[u] += acc[u + kLanes / 2];
  for (size_t u = 0; u < kLanes / 4; ++u) acc[u] += acc[u + kLanes / 4];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail;
}

// y[j] += a·x[j] for j < n.
WAVEKV_INLINE void Axpy(float a, const float* __restrict x, float* __restrict y,
                        size_t n) {
  for (size_t j = 0; j < n; ++j) y[j] += a * x[j];
}

// y[j] *= a for j < n.
WAVEKV_INLINE void Scale(float a, float* __restrict y, size_t n) {
  for (size_t j = 0; j < n; ++j) y[j] *= a;
}

}  // namespace wavekv::simd

#endif  // WAVEKV_INDEX_SIMD_H_
