// Split-K partials of flash-decoding and their log-sum-exp merge, shared by
// decode_attention.cu and paged_attention.cu (nvcc only; not a public
// header).
//
// Scratch layout (SplitScratchFloats floats): one partial per (q head,
// split) at scratch + (q_head * max_splits + split) * (head_dim + 2):
// [max logit, denominator, numerator[head_dim]]. A split that saw no token
// has denominator 0 and numerator 0 (its max is ignored).
#ifndef WAVEKV_INDEX_CUDA_SPLIT_MERGE_CUH_
#define WAVEKV_INDEX_CUDA_SPLIT_MERGE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace wavekv::cuda {

__device__ __forceinline__ float* SplitPartial(float* scratch, int head_dim,
                                               int q_head, int split,
                                               int max_splits) {
  return scratch +
         (static_cast<int64_t>(q_head) * max_splits + split) * (head_dim + 2);
}

// Outputs of the merge for q head h: max logit, denominator, numerator
// [D] and normalised output [D] (0 where the denominator is 0; the max is
// -inf then). The tail triple (max, den, num[D]) is optional: all null or
// none; a tail with den 0 is empty.
struct MergeIo {
  const float* scratch;
  int max_splits;
  int num_splits;
  const float* tail_max;
  const float* tail_den;
  const float* tail_num;
  float* out_max;
  float* out_den;
  float* out_num;
  float* out;
};

// Splits weighed per round of MergeSplits (shared memory: 4 bytes each).
inline constexpr int kMergeChunk = 256;

// Merges q head h's splits (and tail). Called by all threads of a block
// (blockDim.x a multiple of 32, at most 1024), with barriers inside. Split
// statistics are read by one thread per split and the numerators with
// independent loads, so the merge costs a few memory round trips however
// many splits there are.
template <int D>
__device__ __forceinline__ void MergeSplits(const MergeIo& io, int h) {
  __shared__ float s_red[32];
  __shared__ float s_w[kMergeChunk];
  const int tid = threadIdx.x;
  const int nt = blockDim.x;
  const int warp = tid / 32, lane = tid % 32, warps = nt / 32;
  float* scratch = const_cast<float*>(io.scratch);
  // Block-wide reduction (max or sum) of one value per thread.
  auto reduce = [&](float v, bool is_max) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const float o = __shfl_xor_sync(0xffffffffu, v, off);
      v = is_max ? fmaxf(v, o) : v + o;
    }
    __syncthreads();  // s_red is free
    if (lane == 0) s_red[warp] = v;
    __syncthreads();
    v = is_max ? -INFINITY : 0.f;
    for (int w = 0; w < warps; ++w)
      v = is_max ? fmaxf(v, s_red[w]) : v + s_red[w];
    return v;
  };
  const bool tail = io.tail_den != nullptr && io.tail_den[h] > 0.f;
  float mx = tail ? io.tail_max[h] : -INFINITY;
  for (int s = tid; s < io.num_splits; s += nt) {
    const float* slot = SplitPartial(scratch, D, h, s, io.max_splits);
    if (slot[1] > 0.f) mx = fmaxf(mx, slot[0]);
  }
  const float mm = reduce(mx, true);
  float den_part = 0.f;
  float num[(D + 31) / 32] = {};  // this thread's dims d = tid + k * nt
  for (int base = 0; base < io.num_splits; base += kMergeChunk) {
    const int n = min(kMergeChunk, io.num_splits - base);
    __syncthreads();  // s_w of the previous round is consumed
    for (int j = tid; j < n; j += nt) {
      const float* slot = SplitPartial(scratch, D, h, base + j, io.max_splits);
      const float den = slot[1];
      const float w = den > 0.f ? __expf(slot[0] - mm) : 0.f;
      s_w[j] = w;
      den_part += den * w;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < (D + 31) / 32; ++k) {
      const int d = tid + k * nt;
      if (d >= D) break;
      float acc = 0.f;
#pragma unroll 8
      for (int j = 0; j < n; ++j) {
        // A split without tokens has weight 0 and numerator 0.
        acc += SplitPartial(scratch, D, h, base + j, io.max_splits)[2 + d] *
               s_w[j];
      }
      num[k] += acc;
    }
  }
  float den = reduce(den_part, false);
  const float tail_w = tail ? __expf(io.tail_max[h] - mm) : 0.f;
  if (tail) den += io.tail_den[h] * tail_w;
#pragma unroll
  for (int k = 0; k < (D + 31) / 32; ++k) {
    const int d = tid + k * nt;
    if (d >= D) break;
    float v = num[k];
    if (tail) v += io.tail_num[static_cast<int64_t>(h) * D + d] * tail_w;
    io.out_num[static_cast<int64_t>(h) * D + d] = v;
    io.out[static_cast<int64_t>(h) * D + d] = den > 0.f ? v / den : 0.f;
  }
  if (tid == 0) {
    io.out_max[h] = den > 0.f ? mm : -INFINITY;
    io.out_den[h] = den;
  }
}

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_SPLIT_MERGE_CUH_
