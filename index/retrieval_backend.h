// One interface for retrieval planning (ranking, zones, tail statistics;
// see retrieval.h) with a CPU and a CUDA implementation, so a caller
// switches backends by changing one constructor and one test suite checks
// both (retrieval_backend_test.cc).
//
//  - CpuRetrievalBackend: PlanRetrieval on each request. Stateless.
//  - CudaRetrievalBackend (index/cuda/retrieval_backend_cuda.h, only in
//    --config=cuda builds): keeps a device copy of every index it has seen
//    (centroids in the session dtype, value sums fp32, sizes uint32) and
//    updates it incrementally: wave-index clusters never change once
//    appended, so a later Plan on the same key uploads only the clusters
//    appended since. A caller that *replaces* an index under a key (rebuild,
//    restore) calls Forget(key) first.
//
// Example:
//   std::unique_ptr<RetrievalBackend> backend = ...;
//   std::vector<RetrievalRequest> reqs = {{.key = k, .index = &idx,
//                                          .queries = q, .dtype = dt}};
//   ASSIGN_OR_RETURN(std::vector<RetrievalPlan> plans,
//                    backend->Plan(reqs, group_size, params, scale));
#ifndef WAVEKV_INDEX_RETRIEVAL_BACKEND_H_
#define WAVEKV_INDEX_RETRIEVAL_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/dtype.h"
#include "index/retrieval.h"
#include "index/wave_index.h"
#include "index/wave_index_params.h"

namespace wavekv {

// Names one wave index inside a backend, e.g. (session, layer, kv head)
// packed by the caller. Keys of different indexes must differ.
using IndexKey = uint64_t;

struct RetrievalRequest {
  IndexKey key = 0;
  // The index's current state; read during Plan only.
  const WaveIndex* index = nullptr;
  // The GQA group's query heads, [group_size][head_dim] fp32.
  absl::Span<const float> queries;
  // The session's K/V dtype: the CUDA backend stores centroids in it
  // (fp16/bf16; fp32 keeps fp32). Fixed per key until Forget.
  DType dtype = DType::kFp32;
};

class RetrievalBackend {
 public:
  virtual ~RetrievalBackend() = default;

  // "cpu" or "cuda".
  virtual std::string_view name() const = 0;

  // One plan per request, in order, with the contract of PlanRetrieval
  // (zone sizes from ComputeZoneBudget(params, non-empty clusters);
  // retrieval zone best first, ties to the lower id; estimation zone in id
  // order; empty clusters never selected). InvalidArgument (nothing
  // planned) if a request is invalid: null index, queries not
  // group_size x head_dim finite floats, non-finite scale, invalid params,
  // or a dtype different from the one a key was first seen with.
  virtual absl::StatusOr<std::vector<RetrievalPlan>> Plan(
      absl::Span<const RetrievalRequest> requests, size_t group_size,
      const WaveIndexParams& params, float scale) = 0;

  // Drops what the backend holds for `key` (no-op if nothing).
  virtual void Forget(IndexKey key) = 0;
};

// The request checks shared by every backend (see Plan). `i` names the
// request in messages ("requests[3].queries: ...").
absl::Status ValidateRetrievalRequest(const RetrievalRequest& request, size_t i,
                                      size_t group_size);

// PlanRetrieval per request. Thread-safe.
class CpuRetrievalBackend final : public RetrievalBackend {
 public:
  std::string_view name() const override { return "cpu"; }
  absl::StatusOr<std::vector<RetrievalPlan>> Plan(
      absl::Span<const RetrievalRequest> requests, size_t group_size,
      const WaveIndexParams& params, float scale) override;
  void Forget(IndexKey) override {}
};

}  // namespace wavekv

#endif  // WAVEKV_INDEX_RETRIEVAL_BACKEND_H_
