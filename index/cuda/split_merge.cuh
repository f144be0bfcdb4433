// Split-K partials of flash-decoding and their log-sum-exp merge, shared by
// decode_attention.cu and paged_attention.cu (nvcc only; not a public
// header).
//
// Scratch layout (SplitScratchFloats floats): one partial per (q head,
// split) at scratch + (q_head * max_splits + split) * (head_dim + 2):
// [max logit, denominator, numerator[head_dim]]. A split that saw no token
// has denominator 0 (its max is ignored).
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

// Merges q head h's splits (and tail). Called by all threads of a block
// (any block size); no block synchronisation inside.
template <int D>
__device__ __forceinline__ void MergeSplits(const MergeIo& io, int h) {
  const bool tail = io.tail_den != nullptr && io.tail_den[h] > 0.f;
  float* scratch = const_cast<float*>(io.scratch);
  float mm = -INFINITY;
  for (int s = 0; s < io.num_splits; ++s) {
    const float* slot = SplitPartial(scratch, D, h, s, io.max_splits);
    if (slot[1] > 0.f) mm = fmaxf(mm, slot[0]);
  }
  if (tail) mm = fmaxf(mm, io.tail_max[h]);
  const float tail_w = tail ? __expf(io.tail_max[h] - mm) : 0.f;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float den = 0.f, num = 0.f;
    for (int s = 0; s < io.num_splits; ++s) {
      const float* slot = SplitPartial(scratch, D, h, s, io.max_splits);
      if (slot[1] == 0.f) continue;
      const float w = __expf(slot[0] - mm);
      den += slot[1] * w;
      num += slot[2 + d] * w;
    }
    if (tail) {
      den += io.tail_den[h] * tail_w;
      num += io.tail_num[static_cast<int64_t>(h) * D + d] * tail_w;
    }
    io.out_num[static_cast<int64_t>(h) * D + d] = num;
    io.out[static_cast<int64_t>(h) * D + d] = den > 0.f ? num / den : 0.f;
    if (d == 0) {
      io.out_max[h] = den > 0.f ? mm : -INFINITY;
      io.out_den[h] = den;
    }
  }
}

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_SPLIT_MERGE_CUH_
