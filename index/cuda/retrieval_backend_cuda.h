// The CUDA implementation of RetrievalBackend (index/retrieval_backend.h):
// each index's centroids (session dtype), value sums (fp32) and sizes
// (uint32) live in device memory, appended to incrementally, and Plan runs
// LaunchRetrieval (retrieval.h) over the whole batch, one launch per
// (dtype, head_dim) present, then copies the zones and tails back with one
// synchronisation per call.
//
// Thread-safe (one mutex: calls are serialised on the backend's stream).
#ifndef WAVEKV_INDEX_CUDA_RETRIEVAL_BACKEND_CUDA_H_
#define WAVEKV_INDEX_CUDA_RETRIEVAL_BACKEND_CUDA_H_

#include <memory>

#include "absl/status/statusor.h"
#include "index/retrieval_backend.h"

namespace wavekv::cuda {

// Unavailable ("no GPU: ...") where no CUDA device is usable.
absl::StatusOr<std::unique_ptr<RetrievalBackend>> MakeCudaRetrievalBackend();

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_RETRIEVAL_BACKEND_CUDA_H_
