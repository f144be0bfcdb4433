// The CUDA half of EngineGpu (built only with --config=cuda): device
// selection, the layer build through PrepareBlocksOnGpu and retrieval
// through CudaRetrievalBackend, each call on the engine's device.
#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "index/cuda/decode_attention.h"
#include "index/cuda/index_build.h"
#include "index/cuda/kmeans.h"
#include "index/cuda/retrieval_backend_cuda.h"
#include "kvstore/gpu/engine_gpu.h"

namespace wavekv {
namespace {

absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

class CudaGpuDevice final : public GpuDevice {
 public:
  CudaGpuDevice(int device, std::string name, cudaStream_t stream,
                std::unique_ptr<RetrievalBackend> retrieval)
      : device_(device),
        name_(std::move(name)),
        stream_(stream),
        retrieval_(std::move(retrieval)) {}
  ~CudaGpuDevice() override {
    cudaSetDevice(device_);
    if (kv_ != nullptr) cudaFree(kv_);
    cudaStreamDestroy(stream_);
  }

  std::string description() const override {
    return absl::StrCat("cuda:", device_, " (", name_, ")");
  }

  absl::StatusOr<std::vector<PreparedBlock>> PrepareBlocks(
      const WaveIndexParams& params, uint64_t first_token,
      absl::Span<const KvRows> rows,
      absl::Span<const WaveIndex* const> indexes) override {
    RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
    if (rows.empty()) return std::vector<PreparedBlock>();
    const KvRows& r0 = rows[0];
    const size_t d = r0.head_dim;
    if (d != 64 && d != 128 && d != 256) {
      return absl::InvalidArgumentError(absl::StrCat(
          "head_dim: ", d, " is not supported on the GPU (64/128/256)"));
    }
    const size_t elem = DTypeBytes(r0.dtype);
    const size_t head_bytes = r0.num_tokens * d * elem;
    const size_t need = 2 * rows.size() * head_bytes;
    if (need > kv_bytes_) {
      if (kv_ != nullptr) cudaFree(kv_);
      kv_ = nullptr;
      kv_bytes_ = 0;
      if (cudaMalloc(&kv_, need) != cudaSuccess) {
        cudaGetLastError();
        return absl::ResourceExhaustedError(
            absl::StrCat("cudaMalloc of ", need, " bytes for the block's K/V"));
      }
      kv_bytes_ = need;
    }
    auto* base = static_cast<uint8_t*>(kv_);
    std::vector<cuda::KMeansProblem> problems(rows.size());
    for (size_t h = 0; h < rows.size(); ++h) {
      const KvRows& r = rows[h];
      if (r.dtype != r0.dtype || r.head_dim != d ||
          r.num_tokens != r0.num_tokens) {
        return absl::InvalidArgumentError(
            absl::StrCat("rows[", h, "]: shape differs from rows[0]"));
      }
      uint8_t* k = base + 2 * h * head_bytes;
      uint8_t* v = k + head_bytes;
      RETURN_IF_ERROR(CudaStatus(
          cudaMemcpy2DAsync(k, d * elem, r.keys, r.row_stride_bytes, d * elem,
                            r.num_tokens, cudaMemcpyHostToDevice, stream_),
          "key upload"));
      RETURN_IF_ERROR(CudaStatus(
          cudaMemcpy2DAsync(v, d * elem, r.values, r.row_stride_bytes, d * elem,
                            r.num_tokens, cudaMemcpyHostToDevice, stream_),
          "value upload"));
      problems[h] = {k, v, static_cast<int64_t>(d)};
    }
    return cuda::PrepareBlocksOnGpu(kmeans_, params, r0.dtype,
                                    static_cast<int>(d), first_token,
                                    r0.num_tokens, problems, indexes, stream_);
  }

  absl::StatusOr<std::vector<RetrievalPlan>> Plan(
      absl::Span<const RetrievalRequest> requests, size_t group_size,
      const WaveIndexParams& params, float scale) override {
    RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
    return retrieval_->Plan(requests, group_size, params, scale);
  }

  void Forget(IndexKey key) override { retrieval_->Forget(key); }

 private:
  const int device_;
  const std::string name_;
  const cudaStream_t stream_;  // builds
  const std::unique_ptr<RetrievalBackend> retrieval_;
  cuda::GpuSegmentedKMeans kmeans_;
  void* kv_ = nullptr;  // the block's K/V, [head][K rows, V rows]
  size_t kv_bytes_ = 0;
};

}  // namespace

bool EngineBuiltWithCuda() { return true; }

absl::StatusOr<int> ResolveGpuDevice(int32_t option) {
  if (option == -1) return -1;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (option < 0) return -1;  // auto: the CPU
    return absl::FailedPreconditionError(absl::StrCat(
        "gpu_device: ", option, " asks for a GPU, but none is usable (",
        err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device", ")"));
  }
  if (option < 0) return 0;
  if (option >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpu_device: ", option, " is out of range 0..", count - 1,
                     " (", count, " CUDA devices)"));
  }
  return option;
}

absl::StatusOr<std::unique_ptr<GpuDevice>> OpenCudaDevice(int device) {
  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  cudaDeviceProp prop;
  RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, device),
                             "cudaGetDeviceProperties"));
  ASSIGN_OR_RETURN(std::unique_ptr<RetrievalBackend> retrieval,
                   cuda::MakeCudaRetrievalBackend());
  cudaStream_t stream = nullptr;
  RETURN_IF_ERROR(CudaStatus(cudaStreamCreate(&stream), "cudaStreamCreate"));
  return std::unique_ptr<GpuDevice>(std::make_unique<CudaGpuDevice>(
      device, std::string(prop.name), stream, std::move(retrieval)));
}

}  // namespace wavekv
