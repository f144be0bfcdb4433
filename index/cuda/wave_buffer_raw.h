// Plain (absl-free) declarations shared by the wave buffer's admission kernel
// and index/cuda/wave_buffer.cc. See wave_buffer.h for the contract.
#ifndef WAVEKV_INDEX_CUDA_WAVE_BUFFER_RAW_H_
#define WAVEKV_INDEX_CUDA_WAVE_BUFFER_RAW_H_

#include <cstdint>

#include "index/cuda/decode_attention_raw.h"  // cudaStream_t

namespace wavekv::cuda {

// Copy `num_tokens` (<= kSlotTokens) keys and values into one slot: keys to
// dst[0 .. num_tokens), values to dst[kSlotTokens ..) (rows of head_dim).
struct SlotCopy {
  const void* src_keys = nullptr;  // mapped pinned host (zero-copy read)
  const void* src_values = nullptr;
  void* dst = nullptr;  // device slot
  int32_t num_tokens = 0;
  int32_t reserved = 0;
};

// table[index] = value; table 0 = slot ids, 1 = cluster slot lists.
struct SlotTableWrite {
  int64_t index = 0;
  int32_t value = 0;
  int32_t table = 0;
};

// Copies and writes come in up to kMaxAdmitSegments segments (one per
// bookkeeping thread, each filled in place by its thread): copies
// [copy_begin[s], copy_begin[s] + copy_count[s]) of `copies`, likewise for
// writes, segments in order.
constexpr int kMaxAdmitSegments = 16;

struct AdmitArgs {
  int row_bytes = 0;  // head_dim * element bytes, a multiple of 16
  const SlotCopy* copies = nullptr;  // may live in mapped pinned host memory
  const SlotTableWrite* writes = nullptr;
  int num_segments = 0;
  int copy_begin[kMaxAdmitSegments] = {};
  int copy_count[kMaxAdmitSegments] = {};
  int write_begin[kMaxAdmitSegments] = {};
  int write_count[kMaxAdmitSegments] = {};
  int num_copies = 0;  // sums of the counts
  int num_writes = 0;
  int32_t* slot_ids = nullptr;
  int32_t* slot_list = nullptr;
};

// Enqueues the admission kernel; returns a cudaError_t value (0 = ok).
int LaunchAdmitRaw(const AdmitArgs& args, cudaStream_t stream);

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_WAVE_BUFFER_RAW_H_
