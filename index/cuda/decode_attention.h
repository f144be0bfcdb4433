// GPU decode attention (split-K flash-decoding) over one kv-head-major K/V
// store, producing per q head the partial softmax triple (max logit,
// denominator, numerator) so the result can be merged with other partials
// (steady zone, estimated tail) exactly like the CPU reference in
// index/attention.h.
//
// Thread-safety: the launcher is stateless; calls on different streams may
// run concurrently. Buffers must not be shared between in-flight calls.
#ifndef WAVEKV_INDEX_CUDA_DECODE_ATTENTION_H_
#define WAVEKV_INDEX_CUDA_DECODE_ATTENTION_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "index/cuda/decode_attention_raw.h"

namespace wavekv::cuda {

// Enqueues the kernels on `stream`. InvalidArgument on a bad shape (message
// names the field); Internal with the CUDA error string on a launch failure.
absl::Status LaunchDecodeAttention(const DecodeAttentionArgs& args,
                                   cudaStream_t stream);

// "no GPU" style message if no usable device is present, OK otherwise.
absl::Status CheckCudaDevice();

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_DECODE_ATTENTION_H_
