// Split-K flash-decoding kernels (see decode_attention.h for the contract).
//
// Split kernel: grid (num_splits, num_kv_heads); each block serves the whole
// GQA group of one kv head, so every K/V byte of its token chunk is read
// from memory once. A token's head_dim elements are read by a group of
// kLanes = head_dim / 8 threads (16-byte loads of 8 half/bf16 elements);
// a warp covers 32 / kLanes tokens per step. Each thread keeps an online
// softmax (running max, denominator, its 8 numerator dims) per q head of the
// group; the block then reduces across token groups in shared memory and
// writes one partial per (q head, split). Merge kernel: one block per q head
// combines the splits with a log-sum-exp rescale.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "index/cuda/decode_attention_raw.h"
#include "index/cuda/split_merge.cuh"
#include "index/cuda/vec_load.cuh"

namespace wavekv::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxGroup = 8;  // q heads per kv head served by one block

// G: q heads per kv head this instantiation holds (>= the real group).
// Each thread issues the K and V loads of kUnroll tokens before using them,
// so several 16-byte loads per thread are in flight.
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads)
    SplitKernel(DecodeAttentionArgs a, int num_splits, int64_t chunk) {
  constexpr int kLanes = D / 8;                  // threads per token
  constexpr int kTokGroups = kThreads / kLanes;  // tokens per block step
  constexpr int kUnroll = G <= 4 ? 4 : 2;
  const int kv = blockIdx.y;
  const int split = blockIdx.x;
  const int group = a.num_q_heads / a.num_kv_heads;
  const int lane = threadIdx.x % kLanes;
  const int tg = threadIdx.x / kLanes;
  const int64_t begin = split * chunk;
  const int64_t end = min(a.num_tokens, begin + chunk);

  float q[G][8];
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -FLT_MAX;
    l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      acc[h][i] = 0.f;
      q[h][i] = h < group
                    ? a.queries[(kv * group + h) * D + lane * 8 + i] * a.scale
                    : 0.f;
    }
  }

  const char* kbase = static_cast<const char*>(a.keys) +
                      (kv * a.head_stride + lane * 8) * sizeof(T);
  const char* vbase = static_cast<const char*>(a.values) +
                      (kv * a.head_stride + lane * 8) * sizeof(T);
  // Every thread runs the same number of iterations: the shuffles below
  // need the whole warp, so a token past `end` loads nothing and is masked.
  for (int64_t base = begin; base < end; base += kTokGroups * kUnroll) {
    float k[kUnroll][8], v[kUnroll][8];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t t = base + u * kTokGroups + tg;
      valid[u] = t < end;
      if (valid[u]) {
        Load8AsFloat<T>(kbase + t * a.token_stride * sizeof(T), k[u]);
        Load8AsFloat<T>(vbase + t * a.token_stride * sizeof(T), v[u]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) k[u][i] = v[u][i] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int h = 0; h < G; ++h) {
        if (h >= group) break;  // uniform across the block
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s += q[h][i] * k[u][i];
#pragma unroll
        for (int off = kLanes / 2; off > 0; off /= 2)
          s += __shfl_xor_sync(0xffffffffu, s, off, kLanes);
        if (!valid[u]) continue;
        const float m_new = fmaxf(m[h], s);
        const float corr = __expf(m[h] - m_new);
        const float p = __expf(s - m_new);
        l[h] = l[h] * corr + p;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[h][i] = acc[h][i] * corr + p * v[u][i];
        m[h] = m_new;
      }
    }
  }

  // Block reduction across token groups, one q head at a time.
  __shared__ float s_m[kTokGroups];
  __shared__ float s_l[kTokGroups];
  __shared__ float s_acc[kTokGroups][D];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (h >= group) break;  // uniform across the block
    if (lane == 0) {
      s_m[tg] = m[h];
      s_l[tg] = l[h];
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) s_acc[tg][lane * 8 + i] = acc[h][i];
    __syncthreads();
    float* slot =
        SplitPartial(a.split_scratch, D, kv * group + h, split, a.max_splits);
    for (int d = threadIdx.x; d < D; d += kThreads) {
      float mm = -FLT_MAX;
      for (int g = 0; g < kTokGroups; ++g) mm = fmaxf(mm, s_m[g]);
      float den = 0.f, num = 0.f;
      for (int g = 0; g < kTokGroups; ++g) {
        if (s_l[g] == 0.f) continue;
        const float w = __expf(s_m[g] - mm);
        den += s_l[g] * w;
        num += s_acc[g][d] * w;
      }
      slot[2 + d] = num;
      if (d == 0) {
        slot[0] = den > 0.f ? mm : -INFINITY;
        slot[1] = den;
      }
    }
    __syncthreads();
  }
}

template <int D>
__global__ void MergeKernel(DecodeAttentionArgs a, int num_splits) {
  MergeSplits<D>({a.split_scratch, a.max_splits, num_splits, nullptr, nullptr,
                  nullptr, a.out_max, a.out_den, a.out_num, a.out},
                 blockIdx.x);
}

template <typename T, int D>
int Launch(const DecodeAttentionArgs& a, int num_splits, cudaStream_t stream) {
  const int64_t chunk = (a.num_tokens + num_splits - 1) / num_splits;
  const int64_t c = chunk > 0 ? chunk : 1;
  dim3 grid(num_splits, a.num_kv_heads);
  const int group = a.num_q_heads / a.num_kv_heads;
  if (group <= 1) {
    SplitKernel<T, D, 1><<<grid, kThreads, 0, stream>>>(a, num_splits, c);
  } else if (group <= 2) {
    SplitKernel<T, D, 2><<<grid, kThreads, 0, stream>>>(a, num_splits, c);
  } else if (group <= 4) {
    SplitKernel<T, D, 4><<<grid, kThreads, 0, stream>>>(a, num_splits, c);
  } else {
    SplitKernel<T, D, kMaxGroup>
        <<<grid, kThreads, 0, stream>>>(a, num_splits, c);
  }
  constexpr int kMergeThreads = D < 128 ? D : 128;
  MergeKernel<D><<<a.num_q_heads, kMergeThreads, 0, stream>>>(a, num_splits);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LaunchTyped(const DecodeAttentionArgs& a, int num_splits,
                cudaStream_t stream) {
  switch (a.head_dim) {
    case 64:
      return Launch<T, 64>(a, num_splits, stream);
    case 128:
      return Launch<T, 128>(a, num_splits, stream);
    case 256:
      return Launch<T, 256>(a, num_splits, stream);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace

size_t SplitScratchFloats(int num_q_heads, int head_dim, int max_splits) {
  return static_cast<size_t>(num_q_heads) * max_splits * (head_dim + 2);
}

int LaunchDecodeAttentionRaw(const DecodeAttentionArgs& args, int num_splits,
                             cudaStream_t stream) {
  switch (args.dtype) {
    case ElemType::kFp16:
      return LaunchTyped<__half>(args, num_splits, stream);
    case ElemType::kBf16:
      return LaunchTyped<__nv_bfloat16>(args, num_splits, stream);
    case ElemType::kFp32:
      return LaunchTyped<float>(args, num_splits, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int CurrentDeviceSmCount() {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return -static_cast<int>(err);
  int sms = 0;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return -static_cast<int>(err);
  return sms;
}

}  // namespace wavekv::cuda
