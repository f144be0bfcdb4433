// 8-element vector loads of K/V or centroid rows, converted to float: one
// 16-byte load for fp16 / bf16, two for fp32. Shared by the attention and
// retrieval kernels (nvcc only; not a public header).
//
//   float k[8];
//   Load8AsFloat<__half>(row + lane * 8 * sizeof(__half), k);
//
// REQUIRES: `p` 16-byte aligned.
#ifndef WAVEKV_INDEX_CUDA_VEC_LOAD_CUH_
#define WAVEKV_INDEX_CUDA_VEC_LOAD_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace wavekv::cuda {

// 8 packed fp16 / bf16 values (one uint4) to float.
__device__ __forceinline__ void Convert8(const uint4& raw, __half, float* out) {
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void Convert8(const uint4& raw, __nv_bfloat16,
                                         float* out) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void Store8(const float4& a, const float4& b,
                                       float* out) {
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
  out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// Plain loads: any address space (shared memory, device memory, mapped
// pinned host memory).
template <typename T>
__device__ __forceinline__ void Load8AsFloat(const void* p, float* out) {
  Convert8(*static_cast<const uint4*>(p), T{}, out);
}

template <>
__device__ __forceinline__ void Load8AsFloat<float>(const void* p, float* out) {
  const float4* f = static_cast<const float4*>(p);
  Store8(f[0], f[1], out);
}

// Read-only-cache loads (__ldg): global memory that no thread writes while
// the kernel runs.
template <typename T>
__device__ __forceinline__ void Load8AsFloatReadOnly(const void* p,
                                                     float* out) {
  Convert8(__ldg(static_cast<const uint4*>(p)), T{}, out);
}

template <>
__device__ __forceinline__ void Load8AsFloatReadOnly<float>(const void* p,
                                                            float* out) {
  const float4* f = static_cast<const float4*>(p);
  Store8(__ldg(f), __ldg(f + 1), out);
}

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_VEC_LOAD_CUH_
