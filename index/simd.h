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

#include <bit>
#include <cstddef>
#include <cstdint>

// Not under ThreadSanitizer: the ifunc resolvers run during relocation,
// before the TSan runtime is up, and crash when instrumented.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_THREAD__)
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

// e^x for x <= 88, branch-free so that loops over it vectorise (std::exp
// does not). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and a
// degree-6 polynomial for e^r: max relative error ~2 ulp. x < -87.3
// (including -inf) gives 0; x > 88 gives e^88. NaN (e.g. inf - inf from
// overflowing logits) gives a meaningless but defined result: the clamp
// sends it to -87, so the float->int conversion below never sees a NaN.
WAVEKV_INLINE float Exp(float x) {
  const float clamped = x > -87.0f ? (x > 88.0f ? 88.0f : x) : -87.0f;
  // Round x*log2(e) to nearest with the 1.5*2^23 trick.
  constexpr float kRound = 12582912.0f;
  const float n = (clamped * 1.44269504088896341f + kRound) - kRound;
  float r = clamped - n * 0.693359375f;  // ln2, high part (exact product)
  r = r - n * -2.12194440e-4f;           // ln2, low part
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t e = static_cast<int32_t>(n) + 127;  // in [1, 254]
  const float scale = std::bit_cast<float>(static_cast<uint32_t>(e) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

// A 16-float vector for explicit SIMD (GCC/Clang vector extension): one
// AVX-512 register, two AVX2 registers or four SSE registers depending on
// the clone it is compiled in. Unaligned loads/stores are allowed.
typedef float F16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t I16 __attribute__((vector_size(64), aligned(4), may_alias));
inline constexpr size_t kVecLanes = 16;

WAVEKV_INLINE F16 LoadF16(const float* p) {
  return *reinterpret_cast<const F16*>(p);
}
WAVEKV_INLINE void StoreF16(float* p, F16 v) { *reinterpret_cast<F16*>(p) = v; }

// max_i x[i] (-inf for n == 0), vectorised; NaNs are ignored unless first.
WAVEKV_INLINE float ReduceMax(const float* x, size_t n) {
  constexpr float kNegInf = -__builtin_inff();
  F16 acc = F16{} + kNegInf;
  size_t i = 0;
  for (; i + kVecLanes <= n; i += kVecLanes) {
    const F16 v = LoadF16(x + i);
    acc = v > acc ? v : acc;
  }
  float m = kNegInf;
  for (size_t u = 0; u < kVecLanes; ++u) m = acc[u] > m ? acc[u] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// Σ_i x[i] with 16 independent partial sums (vectorised).
WAVEKV_INLINE float ReduceSum(const float* x, size_t n) {
  F16 acc = F16{};
  size_t i = 0;
  for (; i + kVecLanes <= n; i += kVecLanes) acc += LoadF16(x + i);
  float s = 0.0f;
  for (; i < n; ++i) s += x[i];
  for (size_t u = 0; u < kVecLanes; ++u) s += acc[u];
  return s;
}

WAVEKV_INLINE float HorizontalSum(F16 v) {
  float s = 0.0f;
  for (size_t u = 0; u < kVecLanes; ++u) s += v[u];
  return s;
}

// out[r] = scale * q·rows[r] for R rows of length n (row stride `stride`
// floats): R independent accumulator chains share each load of q.
template <size_t R>
WAVEKV_INLINE void DotRows(const float* __restrict q,
                           const float* __restrict rows, size_t stride,
                           size_t n, float scale, float* __restrict out) {
  F16 acc[R];
  for (size_t r = 0; r < R; ++r) acc[r] = F16{};
  size_t j = 0;
  for (; j + kVecLanes <= n; j += kVecLanes) {
    const F16 qv = LoadF16(q + j);
    for (size_t r = 0; r < R; ++r)
      acc[r] += qv * LoadF16(rows + r * stride + j);
  }
  for (size_t r = 0; r < R; ++r) {
    float s = HorizontalSum(acc[r]);
    for (size_t jj = j; jj < n; ++jj) s += q[jj] * rows[r * stride + jj];
    out[r] = scale * s;
  }
}

// x[i] = e^{x[i] - m} in place; returns Σ x[i].
WAVEKV_INLINE float ExpShiftSum(float* __restrict x, size_t n, float m) {
  for (size_t i = 0; i < n; ++i) x[i] = Exp(x[i] - m);
  return ReduceSum(x, n);
}

}  // namespace wavekv::simd

#endif  // WAVEKV_INDEX_SIMD_H_
