#include "index/cuda/decode_attention.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace wavekv::cuda {
namespace {

constexpr int kMaxGroup = 8;  // must match decode_attention.cu

absl::Status CudaError(int code, const char* what) {
  return absl::InternalError(absl::StrCat(
      what, ": ", cudaGetErrorString(static_cast<cudaError_t>(code))));
}

absl::Status Validate(const DecodeAttentionArgs& a) {
  if (a.head_dim != 64 && a.head_dim != 128 && a.head_dim != 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: ", a.head_dim, " is not supported (64, 128 or 256)"));
  }
  if (a.num_kv_heads <= 0 || a.num_q_heads <= 0 ||
      a.num_q_heads % a.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_q_heads: ", a.num_q_heads,
        " must be a positive multiple of num_kv_heads ", a.num_kv_heads));
  }
  if (a.num_q_heads / a.num_kv_heads > kMaxGroup) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_q_heads: GQA group of ",
                     a.num_q_heads / a.num_kv_heads, " exceeds ", kMaxGroup));
  }
  if (a.num_tokens < 0) {
    return absl::InvalidArgumentError("num_tokens: must be >= 0");
  }
  if (a.token_stride % 8 != 0 || a.head_stride % 8 != 0) {
    return absl::InvalidArgumentError(
        "token_stride/head_stride: must be multiples of 8 elements (16-byte "
        "vector loads)");
  }
  if (a.max_splits <= 0 || a.num_splits < 0 || a.num_splits > a.max_splits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_splits: ", a.num_splits,
        " must be in [0, max_splits=", a.max_splits, "] with max_splits >= 1"));
  }
  if (a.queries == nullptr || a.split_scratch == nullptr ||
      a.out_max == nullptr || a.out_den == nullptr || a.out_num == nullptr ||
      a.out == nullptr || (a.num_tokens > 0 && (!a.keys || !a.values))) {
    return absl::InvalidArgumentError("buffers: a required pointer is null");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckCudaDevice() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("no GPU: ", cudaGetErrorString(err)));
  }
  if (count == 0) return absl::UnavailableError("no GPU: no CUDA device");
  return absl::OkStatus();
}

absl::Status LaunchDecodeAttention(const DecodeAttentionArgs& args,
                                   cudaStream_t stream) {
  if (absl::Status s = Validate(args); !s.ok()) return s;
  int splits = args.num_splits;
  if (splits == 0) {
    const int sms = CurrentDeviceSmCount();
    if (sms < 0) return CudaError(-sms, "cudaDeviceGetAttribute");
    // Enough blocks for a few waves, at least 256 tokens per split.
    const int64_t by_sm = std::max<int64_t>(1, 8 * sms / args.num_kv_heads);
    const int64_t by_len = std::max<int64_t>(1, args.num_tokens / 256);
    splits =
        static_cast<int>(std::min<int64_t>({by_sm, by_len, args.max_splits}));
  }
  const int err = LaunchDecodeAttentionRaw(args, splits, stream);
  if (err != 0) return CudaError(err, "decode attention launch");
  return absl::OkStatus();
}

}  // namespace wavekv::cuda
