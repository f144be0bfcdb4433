#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "bench/decode_attention_kernels.h"

namespace wavekv::bench {
namespace {

__device__ __forceinline__ uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Standard normal from a 64-bit hash (Box-Muller, one output).
__device__ __forceinline__ float Normal(uint64_t h) {
  const float u1 = ((h >> 40) + 1) * (1.0f / 16777217.0f);
  const float u2 = ((h >> 16) & 0xFFFFFF) * (1.0f / 16777216.0f);
  return sqrtf(-2.f * __logf(u1)) * __cosf(6.2831853f * u2);
}

__global__ void FillHalfKernel(__half* dst, size_t n, float sd, uint64_t seed) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dst[i] = __float2half(sd * Normal(Mix(seed ^ Mix(i))));
  }
}

__global__ void FillFloatKernel(float* dst, size_t n, float mean, float sd,
                                uint64_t seed) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    dst[i] = mean + sd * Normal(Mix(seed ^ Mix(i)));
  }
}

// One block per head, blockDim.x == head_dim (<= 1024).
__global__ void WalkKernel(float* q, int d, float step, uint64_t seed,
                           uint64_t counter) {
  __shared__ float red[2][32];
  const int h = blockIdx.x, i = threadIdx.x;
  float* row = q + size_t(h) * d;
  const float x = row[i];
  const float e =
      Normal(Mix(seed ^ Mix((counter << 20) ^ (uint64_t(h) << 10) ^ i)));
  float xx = x * x, ee = e * e;
  for (int off = 16; off > 0; off /= 2) {
    xx += __shfl_xor_sync(0xffffffffu, xx, off);
    ee += __shfl_xor_sync(0xffffffffu, ee, off);
  }
  if (i % 32 == 0) {
    red[0][i / 32] = xx;
    red[1][i / 32] = ee;
  }
  __syncthreads();
  float nx = 0, ne = 0;
  for (int w = 0; w < (d + 31) / 32; ++w) {
    nx += red[0][w];
    ne += red[1][w];
  }
  const float norm = sqrtf(nx);
  const float y = x + step * norm * e * rsqrtf(ne);
  // Renormalise: second reduction over y.
  float yy = y * y;
  for (int off = 16; off > 0; off /= 2)
    yy += __shfl_xor_sync(0xffffffffu, yy, off);
  __syncthreads();
  if (i % 32 == 0) red[0][i / 32] = yy;
  __syncthreads();
  float ny = 0;
  for (int w = 0; w < (d + 31) / 32; ++w) ny += red[0][w];
  row[i] = y * norm * rsqrtf(ny);
}

}  // namespace

int FillNormalHalf(void* dst, size_t count, float sd, uint64_t seed,
                   cudaStream_t stream) {
  FillHalfKernel<<<4096, 256, 0, stream>>>(static_cast<__half*>(dst), count, sd,
                                           seed);
  return static_cast<int>(cudaGetLastError());
}

int FillNormalFloat(float* dst, size_t count, float mean, float sd,
                    uint64_t seed, cudaStream_t stream) {
  FillFloatKernel<<<4096, 256, 0, stream>>>(dst, count, mean, sd, seed);
  return static_cast<int>(cudaGetLastError());
}

int QueryWalk(float* q, int num_heads, int head_dim, float step, uint64_t seed,
              uint64_t counter, cudaStream_t stream) {
  WalkKernel<<<num_heads, head_dim, 0, stream>>>(q, head_dim, step, seed,
                                                 counter);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wavekv::bench
