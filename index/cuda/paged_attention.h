// GPU exact attention over a paged KV store: the steady zone and the
// retrieved clusters of the wave index (DESIGN.md, tripartite attention,
// steps 2 and 5), split-K flash-decoding with a log-sum-exp merge, merged
// with the estimated tail triple into the output.
//
// Each row (one kv head of one session) owns a fixed number of pages; a page
// is a run of tokens whose keys and values live in device memory, in mapped
// pinned host memory (read by GPU threads directly: zero-copy over PCIe), or
// in wave-buffer slots (index/cuda/wave_buffer.h). LaunchClusterPages builds
// such a table on the device from ranked cluster ids, so a decode step needs
// no host round trip between selection and attention.
//
// Results equal the CPU reference (index/attention.h PartialAttention over
// the union of the pages' tokens, MergeInto with the tail, Finalize) within
// float rounding (paged_attention_test.cc states the tolerances).
//
// Launches: on sm_90 and later the page-table, split and merge kernels go
// out with programmatic dependent launch on streams other than the legacy
// default stream: each lets the next kernel's blocks be scheduled early and
// waits for the previous kernel to finish before it touches memory, so the
// launch gaps are hidden (in CUDA graphs too). Callers see ordinary stream
// order. WAVEKV_PAGED_NO_PDL=1 in the environment turns it off.
//
// Thread-safety: the launchers are stateless; calls on different streams may
// run concurrently. Buffers must not be shared between in-flight calls.
#ifndef WAVEKV_INDEX_CUDA_PAGED_ATTENTION_H_
#define WAVEKV_INDEX_CUDA_PAGED_ATTENTION_H_

#include "absl/status/status.h"
#include "index/cuda/paged_attention_raw.h"

namespace wavekv::cuda {

// Enqueues the split and merge kernels on `stream`. InvalidArgument (naming
// the field) on a bad shape or a missing buffer; Internal with the CUDA error
// string if a launch fails. Page contents are not validated (they are device
// data): pages must follow the layout documented in KvPage.
absl::Status LaunchPagedAttention(const PagedAttentionArgs& args,
                                  cudaStream_t stream);

// Enqueues the page-table build (one block per row). Same error contract.
// Selected ids outside [0, num_clusters) and empty clusters give empty pages:
// nothing is attended twice and nothing is read out of bounds.
absl::Status LaunchClusterPages(const ClusterPagesArgs& args,
                                cudaStream_t stream);

// The split count LaunchPagedAttention uses for num_splits == 0: one full
// wave of resident blocks over the GPU's SMs, at least one tile (16 KiB of
// keys) per split by tokens_hint.
// Negative cudaError_t value if the device cannot be queried.
int ChoosePagedSplits(const PagedAttentionArgs& args);

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_PAGED_ATTENTION_H_
