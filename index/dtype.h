// Element types of stored keys/values and their conversions to float.
//
// Thread-safe: all functions are pure.
#ifndef WAVEKV_INDEX_DTYPE_H_
#define WAVEKV_INDEX_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/types/span.h"

namespace wavekv {

enum class DType : uint8_t { kFp16 = 1, kBf16 = 2, kFp32 = 3 };

// Bytes per element: 2 for kFp16/kBf16, 4 for kFp32.
size_t DTypeBytes(DType dtype);
std::string_view DTypeName(DType dtype);  // "fp16", "bf16", "fp32"

// Scalar conversions (IEEE binary16 and bfloat16, round-to-nearest-even).
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float Bf16ToFloat(uint16_t b);
uint16_t FloatToBf16(float f);

// Decodes `n` elements of `dtype` from little-endian bytes `src` (which must
// hold n * DTypeBytes(dtype) bytes) into `dst`.
void DecodeToFloat(DType dtype, const uint8_t* src, size_t n, float* dst);
// Encodes `n` floats into `dtype` bytes at `dst` (n * DTypeBytes(dtype)).
void EncodeFromFloat(DType dtype, const float* src, size_t n, uint8_t* dst);

}  // namespace wavekv

#endif  // WAVEKV_INDEX_DTYPE_H_
