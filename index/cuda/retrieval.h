// GPU retrieval planning for one decode step (DESIGN.md, "Tripartite
// attention"; the CPU reference is PlanRetrieval in index/retrieval.h),
// batched over (session, kv head) problems:
//   1. scoring: l_hc = q_h · C_c * scale for each query head h of the GQA
//      group (empty clusters: -inf); group score
//      score_c = Σ_h e^{l_hc - M_h} / Σ_c' e^{l_hc' - M_h};
//   2. selection: the retrieval zone (top retrieval_clusters non-empty
//      clusters by (score desc, id asc), output best first) and the
//      estimation zone (the next estimation_clusters, id order), by a radix
//      select over the score bits with ties broken exactly like the CPU;
//   3. tail estimation: per query head over the estimation zone
//      (max logit, Σ s_c e^{l_c - m}, Σ e^{l_c - m} VS_c).
// Everything stays in device memory; nothing synchronises the host.
//
// Storage types (chosen by the caller per launch, the CUDA backend uses):
//  - centroids in the session's dtype (fp16/bf16; fp32 for fp32 sessions):
//    they are read in full every step and dominate the bytes moved, and
//    rounding a mean of 16-bit keys to 16 bits changes logits by < 2^-8
//    relative, which only reorders near-ties;
//  - value sums fp32 (sums of up to thousands of values: 16 bits would lose
//    the tail's precision, RETROINFER-NOTES 6.7) — only the estimation
//    zone's rows are read;
//  - sizes uint32 (exact; never 16-bit floats).
// All arithmetic is fp32.
//
// Example:
//   std::vector<RetrievalProblem> ps(n);  // fill pointers and budgets
//   cudaMemcpyAsync(dev_ps, ps.data(), n * sizeof(RetrievalProblem),
//                   cudaMemcpyHostToDevice, stream);
//   RetrievalArgs a{.centroid_type = ElemType::kFp16, .head_dim = 128,
//                   .group_size = 4, .scale = 1 / sqrtf(128),
//                   .num_problems = n, .problems = ps.data(),
//                   .device_problems = dev_ps};
//   RETURN_IF_ERROR(LaunchRetrieval(a, stream));
//
// Thread-safety: the launcher is stateless; calls on different streams may
// run concurrently if they share no workspace or outputs.
#ifndef WAVEKV_INDEX_CUDA_RETRIEVAL_H_
#define WAVEKV_INDEX_CUDA_RETRIEVAL_H_

#include "absl/status/status.h"
#include "index/cuda/retrieval_raw.h"

typedef struct CUevent_st* cudaEvent_t;  // as in cuda_runtime.h

namespace wavekv::cuda {

// Enqueues scoring, selection and tail kernels for every problem on
// `stream`. InvalidArgument (naming the field, e.g. "problems[3].workspace:
// null") on a bad shape, budget over kMaxRetrievalClusters, missing pointer
// or misaligned workspace; Internal with the CUDA error string on a launch
// failure. num_problems == 0 does nothing.
absl::Status LaunchRetrieval(const RetrievalArgs& args, cudaStream_t stream);

// Runs the tail estimation (step 3) on a second stream, so that the caller
// can overlap it with the exact attention over the retrieval zone, which
// needs only the selection. All three handles are the caller's (events
// created with cudaEventDisableTiming; graph capture turns them into a fork
// and a join).
struct RetrievalTailFork {
  cudaStream_t tail_stream = nullptr;
  // Recorded on `stream` once the selection is enqueued; tail_stream waits.
  cudaEvent_t selected = nullptr;
  // Recorded on tail_stream after the tail: wait on it before reading
  // out_estimation or the tail partials (out_max, out_den, out_num).
  cudaEvent_t tail_done = nullptr;
};

// As above, with the tail on `fork.tail_stream`: on return, work enqueued on
// `stream` sees out_retrieval and out_counts; the rest is complete at
// `fork.tail_done`. InvalidArgument naming the field if a handle is null.
absl::Status LaunchRetrieval(const RetrievalArgs& args, cudaStream_t stream,
                             const RetrievalTailFork& fork);

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_RETRIEVAL_H_
