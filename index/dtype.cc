#include "index/dtype.h"

#include <bit>
#include <cstring>

#include "index/simd.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define WAVEKV_HAVE_F16C_PATH 1
#endif

namespace wavekv {
namespace {

static_assert(std::endian::native == std::endian::little,
              "stored K/V bytes are little-endian; add byte swapping");

// Scalar kernels, written branch-free (selects only) so that the bulk loops
// below vectorise.

WAVEKV_INLINE float HalfBitsToFloat(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;  // exponent and mantissa
  // Normal: rebias the exponent from 15 to 127.
  const uint32_t normal = (em << 13) + ((127u - 15u) << 23);
  // Inf/NaN: all-ones exponent; the mantissa (NaN payload) is kept.
  const uint32_t inf_nan = (em << 13) | 0x7f800000u;
  // Zero/subnormal: value is mantissa * 2^-24, exact in float.
  const float subnormal =
      static_cast<float>(static_cast<int32_t>(em)) * 0x1p-24f;
  uint32_t bits = em >= 0x7c00u ? inf_nan : normal;
  bits = em < 0x0400u ? std::bit_cast<uint32_t>(subnormal) : bits;
  return std::bit_cast<float>(bits | sign);
}

WAVEKV_INLINE uint16_t FloatToHalfBits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  // NaN: quiet it, keep the top payload bits.
  const uint32_t nan = 0x7e00u | ((a >> 13) & 0x3ffu);
  // Normal half: rebias, then round to nearest even on the 13 dropped bits;
  // a carry out of the mantissa correctly bumps the exponent.
  const uint32_t normal =
      (a - ((127u - 15u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
  // Subnormal half (|f| < 2^-14): adding 0.5f (ulp 2^-24) rounds |f| to a
  // multiple of 2^-24 with the FPU's round-to-nearest-even; the low bits are
  // then the half's mantissa (0x400 if it rounded up to the smallest normal).
  const uint32_t subnormal =
      std::bit_cast<uint32_t>(std::bit_cast<float>(a) + 0.5f) - 0x3f000000u;
  uint32_t r = a < 0x38800000u ? subnormal : normal;
  // 65520 = 65504 + half an ulp rounds (to even) to infinity.
  r = a >= 0x477ff000u ? 0x7c00u : r;
  r = a > 0x7f800000u ? nan : r;
  return static_cast<uint16_t>(r | sign);
}

WAVEKV_INLINE float Bf16BitsToFloat(uint32_t b) {
  return std::bit_cast<float>(b << 16);
}

WAVEKV_INLINE uint16_t FloatToBf16Bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t nan = (x >> 16) | 0x0040u;  // quiet, sign and payload kept
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

WAVEKV_INLINE uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

WAVEKV_INLINE void Store16(uint8_t* p, uint16_t v) {
  std::memcpy(p, &v, sizeof(v));
}

WAVEKV_MULTIVERSION
void DecodeHalfPortable(const uint8_t* __restrict src, size_t n,
                        float* __restrict dst) {
  for (size_t i = 0; i < n; ++i) dst[i] = HalfBitsToFloat(Load16(src + 2 * i));
}

WAVEKV_MULTIVERSION
void EncodeHalfPortable(const float* __restrict src, size_t n,
                        uint8_t* __restrict dst) {
  for (size_t i = 0; i < n; ++i) Store16(dst + 2 * i, FloatToHalfBits(src[i]));
}

WAVEKV_MULTIVERSION
void DecodeBf16(const uint8_t* __restrict src, size_t n,
                float* __restrict dst) {
  for (size_t i = 0; i < n; ++i) dst[i] = Bf16BitsToFloat(Load16(src + 2 * i));
}

WAVEKV_MULTIVERSION
void EncodeBf16(const float* __restrict src, size_t n,
                uint8_t* __restrict dst) {
  for (size_t i = 0; i < n; ++i) Store16(dst + 2 * i, FloatToBf16Bits(src[i]));
}

#ifdef WAVEKV_HAVE_F16C_PATH
// F16C converts 8 halves per instruction, exactly as the scalar code (IEEE
// round-to-nearest-even, subnormals kept, NaNs quieted with payload kept).
__attribute__((target("avx,f16c"))) void DecodeHalfF16c(
    const uint8_t* __restrict src, size_t n, float* __restrict dst) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = HalfBitsToFloat(Load16(src + 2 * i));
}

__attribute__((target("avx,f16c"))) void EncodeHalfF16c(
    const float* __restrict src, size_t n, uint8_t* __restrict dst) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), h);
  }
  for (; i < n; ++i) Store16(dst + 2 * i, FloatToHalfBits(src[i]));
}

bool HasF16c() {
  static const bool has = [] {
    __builtin_cpu_init();
    // "avx" also checks that the OS saves YMM state; F16C from CPUID (Clang's
    // __builtin_cpu_supports does not know "f16c").
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __builtin_cpu_supports("avx") &&
           __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  }();
  return has;
}
#endif

}  // namespace

size_t DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
    case DType::kBf16:
      return 2;
    case DType::kFp32:
      return 4;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
      return "fp16";
    case DType::kBf16:
      return "bf16";
    case DType::kFp32:
      return "fp32";
  }
  return "unknown";
}

float HalfToFloat(uint16_t h) { return HalfBitsToFloat(h); }
uint16_t FloatToHalf(float f) { return FloatToHalfBits(f); }
float Bf16ToFloat(uint16_t b) { return Bf16BitsToFloat(b); }
uint16_t FloatToBf16(float f) { return FloatToBf16Bits(f); }

void DecodeToFloat(DType dtype, const uint8_t* src, size_t n, float* dst) {
  switch (dtype) {
    case DType::kFp16:
#ifdef WAVEKV_HAVE_F16C_PATH
      if (HasF16c()) return DecodeHalfF16c(src, n, dst);
#endif
      return DecodeHalfPortable(src, n, dst);
    case DType::kBf16:
      return DecodeBf16(src, n, dst);
    case DType::kFp32:
      if (n > 0) std::memcpy(dst, src, n * sizeof(float));
      return;
  }
}

void EncodeFromFloat(DType dtype, const float* src, size_t n, uint8_t* dst) {
  switch (dtype) {
    case DType::kFp16:
#ifdef WAVEKV_HAVE_F16C_PATH
      if (HasF16c()) return EncodeHalfF16c(src, n, dst);
#endif
      return EncodeHalfPortable(src, n, dst);
    case DType::kBf16:
      return EncodeBf16(src, n, dst);
    case DType::kFp32:
      if (n > 0) std::memcpy(dst, src, n * sizeof(float));
      return;
  }
}

namespace internal_dtype {
// Test hooks: the portable (non-F16C) bulk paths.
void DecodeHalfPortableForTest(const uint8_t* src, size_t n, float* dst) {
  DecodeHalfPortable(src, n, dst);
}
void EncodeHalfPortableForTest(const float* src, size_t n, uint8_t* dst) {
  EncodeHalfPortable(src, n, dst);
}
}  // namespace internal_dtype

}  // namespace wavekv
