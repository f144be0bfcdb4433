// Admission kernel of the wave buffer: copies missed clusters' pieces from
// pinned host memory (zero-copy reads by GPU threads) into their device
// slots, and applies the slot-table writes. Runs on the buffer's own stream,
// overlapped with the attention of later layers.
#include <cuda_runtime.h>

#include <cstdint>

#include "index/cuda/paged_attention_raw.h"
#include "index/cuda/wave_buffer_raw.h"

namespace wavekv::cuda {
namespace {

constexpr int kThreads = 256;

// Index into the segmented array of the i-th element over all segments.
__device__ __forceinline__ int SegmentIndex(int i, const int* begin,
                                            const int* count, int segments) {
  int s = 0;
  while (s + 1 < segments && i >= count[s]) i -= count[s++];
  return begin[s] + i;
}

__global__ void __launch_bounds__(kThreads) AdmitKernel(AdmitArgs a) {
  const int chunks_per_tok = a.row_bytes / 16;
  for (int c = blockIdx.x; c < a.num_copies; c += gridDim.x) {
    const SlotCopy cp =
        a.copies[SegmentIndex(c, a.copy_begin, a.copy_count, a.num_segments)];
    const int n = cp.num_tokens * chunks_per_tok;
    const uint4* sk = static_cast<const uint4*>(cp.src_keys);
    const uint4* sv = static_cast<const uint4*>(cp.src_values);
    uint4* dk = static_cast<uint4*>(cp.dst);
    uint4* dv = dk + kSlotTokens * chunks_per_tok;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const uint4 k = sk[i];
      const uint4 v = sv[i];
      dk[i] = k;
      dv[i] = v;
    }
  }
  const int stride = gridDim.x * kThreads;
  for (int i = blockIdx.x * kThreads + threadIdx.x; i < a.num_writes;
       i += stride) {
    const SlotTableWrite w =
        a.writes[SegmentIndex(i, a.write_begin, a.write_count, a.num_segments)];
    (w.table == 0 ? a.slot_ids : a.slot_list)[w.index] = w.value;
  }
}

}  // namespace

int LaunchAdmitRaw(const AdmitArgs& args, cudaStream_t stream) {
  if (args.num_copies == 0 && args.num_writes == 0) return 0;
  if (args.num_segments < 1 || args.num_segments > kMaxAdmitSegments) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  int blocks = args.num_copies > args.num_writes / kThreads
                   ? args.num_copies
                   : args.num_writes / kThreads + 1;
  if (blocks > 1024) blocks = 1024;
  if (blocks < 1) blocks = 1;
  AdmitKernel<<<blocks, kThreads, 0, stream>>>(args);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wavekv::cuda
