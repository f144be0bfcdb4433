// Plain (absl-free) declarations shared by the nvcc-compiled kernels and the
// C++ launcher in decode_attention.h. See that header for the contract.
#ifndef WAVEKV_INDEX_CUDA_DECODE_ATTENTION_RAW_H_
#define WAVEKV_INDEX_CUDA_DECODE_ATTENTION_RAW_H_

#include <cstddef>
#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace wavekv::cuda {

enum class ElemType : uint8_t { kFp16 = 1, kBf16 = 2, kFp32 = 3 };

// Device pointers and shape of one decode-attention call. K and V of kv head
// `k` and token `t` start at `keys + k * head_stride + t * token_stride`
// elements (same for values).
struct DecodeAttentionArgs {
  ElemType dtype = ElemType::kFp16;
  int head_dim = 128;  // 64, 128 or 256
  int num_q_heads = 32;
  int num_kv_heads = 8;            // num_q_heads % num_kv_heads == 0
  int64_t num_tokens = 0;          // >= 0; 0 gives empty partials
  int64_t head_stride = 0;         // elements
  int64_t token_stride = 0;        // elements
  float scale = 0.0f;              // softmax scale, e.g. 1/sqrt(head_dim)
  const float* queries = nullptr;  // [num_q_heads][head_dim]
  const void* keys = nullptr;
  const void* values = nullptr;
  int num_splits = 0;  // 0 = choose from num_tokens and the GPU
  // Scratch of SplitScratchFloats(num_q_heads, head_dim, max splits) floats.
  float* split_scratch = nullptr;
  int max_splits = 0;
  // Outputs: per q head max logit, denominator, numerator [head_dim], and the
  // normalised output [head_dim] (0 where the denominator is 0).
  float* out_max = nullptr;
  float* out_den = nullptr;
  float* out_num = nullptr;
  float* out = nullptr;
};

size_t SplitScratchFloats(int num_q_heads, int head_dim, int max_splits);

// Launches the split and merge kernels; returns a cudaError_t value (0 = ok).
// REQUIRES: args validated by LaunchDecodeAttention (decode_attention.h).
int LaunchDecodeAttentionRaw(const DecodeAttentionArgs& args, int num_splits,
                             cudaStream_t stream);

// Number of SMs of the current device, or a negative cudaError_t.
int CurrentDeviceSmCount();

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_DECODE_ATTENTION_RAW_H_
