#include "index/cuda/retrieval.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv::cuda {
namespace {

bool Aligned(const void* p, uintptr_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

absl::Status ValidateProblem(const RetrievalArgs& a, int i) {
  const RetrievalProblem& p = a.problems[i];
  const std::string field = absl::StrCat("problems[", i, "]");
  auto missing = [&](const char* name) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".", name, ": null"));
  };
  if (p.workspace == nullptr) return missing("workspace");
  if (!Aligned(p.workspace, 256)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".workspace: must be 256-byte aligned"));
  }
  if (p.queries == nullptr) return missing("queries");
  if (p.out_counts == nullptr) return missing("out_counts");
  if (p.out_max == nullptr) return missing("out_max");
  if (p.out_den == nullptr) return missing("out_den");
  if (p.out_num == nullptr) return missing("out_num");
  if (p.retrieval_clusters > 0 && p.out_retrieval == nullptr) {
    return missing("out_retrieval");
  }
  if (p.retrieval_clusters > kMaxRetrievalClusters) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".retrieval_clusters: ", p.retrieval_clusters,
                     " exceeds ", kMaxRetrievalClusters));
  }
  if (p.num_clusters > 0) {
    if (p.centroids == nullptr) return missing("centroids");
    if (p.value_sums == nullptr) return missing("value_sums");
    if (p.sizes == nullptr) return missing("sizes");
    if (!Aligned(p.centroids, 16) || !Aligned(p.value_sums, 16)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".centroids/value_sums: must be 16-byte aligned"));
    }
  }
  // Score keys are packed as 16-bit counts per 16384 ids and the cluster
  // ids as 32 bits: far beyond any index (1M tokens ~ 65536 clusters).
  if (p.num_clusters > (1u << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".num_clusters: ", p.num_clusters, " exceeds 2^30"));
  }
  return absl::OkStatus();
}

absl::Status Validate(const RetrievalArgs& a) {
  if (a.centroid_type != ElemType::kFp16 &&
      a.centroid_type != ElemType::kBf16 &&
      a.centroid_type != ElemType::kFp32) {
    return absl::InvalidArgumentError("centroid_type: unknown element type");
  }
  if (a.head_dim != 64 && a.head_dim != 128 && a.head_dim != 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: ", a.head_dim, " is not supported (64, 128 or 256)"));
  }
  if (a.group_size < 1 || a.group_size > kMaxRetrievalGroup) {
    return absl::InvalidArgumentError(absl::StrCat("group_size: ", a.group_size,
                                                   " must be in [1, ",
                                                   kMaxRetrievalGroup, "]"));
  }
  if (!std::isfinite(a.scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale: must be finite, got ", a.scale));
  }
  if (a.num_problems < 0 || a.num_problems > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_problems: ", a.num_problems, " must be in [0, 65535]"));
  }
  if (a.num_problems > 0 &&
      (a.problems == nullptr || a.device_problems == nullptr)) {
    return absl::InvalidArgumentError(
        "problems/device_problems: null with num_problems > 0");
  }
  for (int i = 0; i < a.num_problems; ++i) {
    if (absl::Status s = ValidateProblem(a, i); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CudaStatus(const char* what, int err) {
  if (err == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(
      what, ": ", cudaGetErrorString(static_cast<cudaError_t>(err))));
}

}  // namespace

absl::Status LaunchRetrieval(const RetrievalArgs& args, cudaStream_t stream) {
  if (absl::Status s = Validate(args); !s.ok()) return s;
  if (args.num_problems == 0) return absl::OkStatus();
  return CudaStatus("retrieval launch", LaunchRetrievalRaw(args, stream));
}

absl::Status LaunchRetrieval(const RetrievalArgs& args, cudaStream_t stream,
                             const RetrievalTailFork& fork) {
  if (fork.tail_stream == nullptr) {
    return absl::InvalidArgumentError("fork.tail_stream: null");
  }
  if (fork.selected == nullptr || fork.tail_done == nullptr) {
    return absl::InvalidArgumentError("fork.selected/tail_done: null");
  }
  if (absl::Status s = Validate(args); !s.ok()) return s;
  if (args.num_problems > 0) {
    RETURN_IF_ERROR(
        CudaStatus("retrieval launch", LaunchRetrievalSelectRaw(args, stream)));
  }
  RETURN_IF_ERROR(
      CudaStatus("retrieval fork", cudaEventRecord(fork.selected, stream)));
  RETURN_IF_ERROR(CudaStatus(
      "retrieval fork", cudaStreamWaitEvent(fork.tail_stream, fork.selected)));
  if (args.num_problems > 0) {
    RETURN_IF_ERROR(CudaStatus("retrieval tail launch",
                               LaunchRetrievalTailRaw(args, fork.tail_stream)));
  }
  return CudaStatus("retrieval join",
                    cudaEventRecord(fork.tail_done, fork.tail_stream));
}

}  // namespace wavekv::cuda
