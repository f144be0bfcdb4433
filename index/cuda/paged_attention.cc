#include "index/cuda/paged_attention.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"

namespace wavekv::cuda {
namespace {

constexpr int kMaxGroup = 8;  // must match paged_attention.cu

absl::Status CudaError(int code, const char* what) {
  return absl::InternalError(absl::StrCat(
      what, ": ", cudaGetErrorString(static_cast<cudaError_t>(code))));
}

absl::Status ValidateHeadDim(int head_dim) {
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: ", head_dim, " is not supported (64, 128 or 256)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateDtype(ElemType t) {
  if (t != ElemType::kFp16 && t != ElemType::kBf16 && t != ElemType::kFp32) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: unknown value ", static_cast<int>(t)));
  }
  return absl::OkStatus();
}

absl::Status Validate(const PagedAttentionArgs& a) {
  if (absl::Status s = ValidateDtype(a.dtype); !s.ok()) return s;
  if (absl::Status s = ValidateHeadDim(a.head_dim); !s.ok()) return s;
  if (a.num_rows <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_rows: ", a.num_rows, " must be > 0"));
  }
  if (a.group < 1 || a.group > kMaxGroup) {
    return absl::InvalidArgumentError(
        absl::StrCat("group: ", a.group,
                     " q heads per kv head, must be in [1, ", kMaxGroup, "]"));
  }
  if (a.pages_per_row <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("pages_per_row: ", a.pages_per_row, " must be > 0"));
  }
  if (a.max_splits <= 0 || a.num_splits < 0 || a.num_splits > a.max_splits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_splits: ", a.num_splits,
        " must be in [0, max_splits=", a.max_splits, "] with max_splits >= 1"));
  }
  if ((a.tail_max == nullptr) != (a.tail_den == nullptr) ||
      (a.tail_max == nullptr) != (a.tail_num == nullptr)) {
    return absl::InvalidArgumentError(
        "tail_max/tail_den/tail_num: give all three or none");
  }
  if (a.queries == nullptr || a.pages == nullptr ||
      a.split_scratch == nullptr || a.out_max == nullptr ||
      a.out_den == nullptr || a.out_num == nullptr || a.out == nullptr) {
    return absl::InvalidArgumentError(
        "buffers: queries, pages, split_scratch and the outputs are required");
  }
  return absl::OkStatus();
}

absl::Status Validate(const ClusterPagesArgs& a) {
  if (absl::Status s = ValidateDtype(a.dtype); !s.ok()) return s;
  if (absl::Status s = ValidateHeadDim(a.head_dim); !s.ok()) return s;
  if (a.num_rows <= 0 || a.num_clusters < 0 || a.num_selected < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_rows/num_clusters/num_selected: ", a.num_rows, "/", a.num_clusters,
        "/", a.num_selected, " (need num_rows > 0, the others >= 0)"));
  }
  if (a.pages == nullptr ||
      (a.num_selected > 0 &&
       (a.selected == nullptr || a.cluster_sizes == nullptr ||
        a.cluster_offsets == nullptr || a.row_store == nullptr))) {
    return absl::InvalidArgumentError(
        "buffers: pages, selected, cluster_sizes, cluster_offsets and "
        "row_store are required");
  }
  if (a.steady_tokens != nullptr &&
      (a.steady_keys == nullptr || a.steady_values == nullptr)) {
    return absl::InvalidArgumentError(
        "steady_keys/steady_values: required with steady_tokens");
  }
  return absl::OkStatus();
}

}  // namespace

int ChoosePagedSplits(const PagedAttentionArgs& a) {
  static const int sms = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return -1;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) !=
        cudaSuccess) {
      return -1;
    }
    return n;
  }();
  if (sms < 0) return -static_cast<int>(cudaErrorNoDevice);
  const int per_sm = PagedSplitBlocksPerSm(a);
  if (per_sm < 0) return per_sm;
  const int elem = a.dtype == ElemType::kFp32 ? 4 : 2;
  const int64_t tile_tokens = 16384 / (int64_t{a.head_dim} * elem);
  // One full wave of resident blocks over all rows (a partial second wave
  // would leave most SMs idle at its end), at least one tile per split (at
  // small batch the step is latency-bound: more, shorter splits finish
  // sooner).
  const int64_t by_sm =
      std::max<int64_t>(1, int64_t{std::max(per_sm, 1)} * sms / a.num_rows);
  // WAVEKV_PAGED_MIN_TILES=N: at least N tiles per split (diagnostics).
  static const int64_t min_tiles = [] {
    const char* v = std::getenv("WAVEKV_PAGED_MIN_TILES");
    return v != nullptr ? std::max(1, std::atoi(v)) : 1;
  }();
  const int64_t by_len =
      std::max<int64_t>(1, a.tokens_hint / (min_tiles * tile_tokens));
  return static_cast<int>(
      std::min<int64_t>({by_sm, by_len, int64_t{a.max_splits}}));
}

absl::Status LaunchPagedAttention(const PagedAttentionArgs& args,
                                  cudaStream_t stream) {
  if (absl::Status s = Validate(args); !s.ok()) return s;
  int splits = args.num_splits;
  if (splits == 0) {
    splits = ChoosePagedSplits(args);
    if (splits < 0) return CudaError(-splits, "cudaDeviceGetAttribute");
  }
  const int err = LaunchPagedAttentionRaw(args, splits, stream);
  if (err != 0) return CudaError(err, "paged attention launch");
  return absl::OkStatus();
}

absl::Status LaunchClusterPages(const ClusterPagesArgs& args,
                                cudaStream_t stream) {
  if (absl::Status s = Validate(args); !s.ok()) return s;
  const int err = LaunchClusterPagesRaw(args, stream);
  if (err != 0) return CudaError(err, "cluster pages launch");
  return absl::OkStatus();
}

}  // namespace wavekv::cuda
