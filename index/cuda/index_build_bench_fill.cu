// Synthetic fp16 rows for index_build_bench: a shared per-dimension offset
// plus roughly normal noise (sum of four uniforms), from a counter hash, so
// multi-GiB layers fill at memory speed on the device.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace wavekv::cuda {
namespace {

__device__ __forceinline__ uint32_t Hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

__device__ __forceinline__ float Uniform(uint64_t x) {
  return (Hash(x) >> 8) * (1.0f / 16777216.0f);
}

__global__ void FillKernel(__half* dst, int64_t n, int row, uint64_t seed,
                           float offset_scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i % row);
    const uint64_t base = (seed << 40) ^ (static_cast<uint64_t>(i) << 2);
    const float noise = (Uniform(base) + Uniform(base + 1) + Uniform(base + 2) +
                         Uniform(base + 3) - 2.0f) * 1.7320508f;
    const float offset = offset_scale * (2.0f * Uniform(seed * 7919 + j) - 1.0f);
    dst[i] = __float2half_rn(offset + noise);
  }
}

}  // namespace

// Fills n fp16 elements; `row` elements share one offset pattern. Returns a
// cudaError_t value.
int FillBenchRowsFp16(void* dst, int64_t n, int row, uint64_t seed,
                      float offset_scale, cudaStream_t stream) {
  FillKernel<<<4096, 256, 0, stream>>>(static_cast<__half*>(dst), n, row, seed,
                                       offset_scale);
  return cudaGetLastError();
}

}  // namespace wavekv::cuda
