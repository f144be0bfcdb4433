// EngineGpu: the engine's GPU backend (EngineOptions::gpu_device). It owns
// one CUDA device's index builder (GpuSegmentedKMeans, a layer's kv heads in
// one batch) and retrieval backend (CudaRetrievalBackend: centroids, value
// sums and sizes resident in device memory, appended to as blocks are
// committed), and does the bookkeeping around them:
//  - every call that fails on the GPU is counted, logged (rate limited) and
//    reported to the caller, which redoes it on the CPU (index_build.cc,
//    wave_gpu.cc);
//  - device copies of wave indexes are keyed by the index object: a
//    WaveIndex that is destroyed (session closed, spilled, restored) has its
//    device copy dropped, and a new object gets a new key, so a replaced
//    index is never planned from stale centroids.
// In builds without CUDA (no --config=cuda) Open answers "off" for
// kGpuAuto and InvalidArgument for a device number.
//
// Thread-safe. Builds are serialised (one k-means workspace); retrieval
// plans are serialised by the backend's stream.
#ifndef WAVEKV_KVSTORE_GPU_ENGINE_GPU_H_
#define WAVEKV_KVSTORE_GPU_ENGINE_GPU_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "index/dtype.h"
#include "index/retrieval.h"
#include "index/retrieval_backend.h"
#include "index/wave_index.h"
#include "index/wave_index_params.h"

namespace wavekv {

// What a CUDA device offers the engine (engine_gpu_cuda.cc). Internal.
class GpuDevice {
 public:
  virtual ~GpuDevice() = default;
  // "cuda:0 (NVIDIA H100 80GB HBM3)".
  virtual std::string description() const = 0;
  // Clusters one block of tokens [first_token, first_token + n) of every
  // head: rows[h] (host memory, n tokens each) against indexes[h]. One call
  // at a time.
  virtual absl::StatusOr<std::vector<PreparedBlock>> PrepareBlocks(
      const WaveIndexParams& params, uint64_t first_token,
      absl::Span<const KvRows> rows,
      absl::Span<const WaveIndex* const> indexes) = 0;
  // Makes the device current on the calling thread, then plans. Thread-safe.
  virtual absl::StatusOr<std::vector<RetrievalPlan>> Plan(
      absl::Span<const RetrievalRequest> requests, size_t group_size,
      const WaveIndexParams& params, float scale) = 0;
  virtual void Forget(IndexKey key) = 0;
};

// Whether this binary was built with CUDA (--config=cuda).
bool EngineBuiltWithCuda();

// Opens CUDA device `device` (engine_gpu_cuda.cc; Unimplemented without
// CUDA). Internal.
absl::StatusOr<std::unique_ptr<GpuDevice>> OpenCudaDevice(int device);

// The device to use for EngineOptions::gpu_device `option`: -1 for the CPU
// (kGpuOff, or kGpuAuto without CUDA or a usable GPU), else the device
// number. InvalidArgument for a device number in a build without CUDA or
// beyond the devices present; FailedPrecondition for a device number when
// no GPU is usable (the CUDA error says why).
absl::StatusOr<int> ResolveGpuDevice(int32_t option);

class EngineGpu {
 public:
  // The backend for EngineOptions::gpu_device `option`, or null for the
  // CPU. Errors as ResolveGpuDevice, or the device's when it cannot be
  // opened.
  static absl::StatusOr<std::unique_ptr<EngineGpu>> Open(int32_t option);

  explicit EngineGpu(int device, std::unique_ptr<GpuDevice> impl);
  EngineGpu(const EngineGpu&) = delete;
  EngineGpu& operator=(const EngineGpu&) = delete;

  int device() const { return device_; }
  std::string description() const { return impl_->description(); }

  // GpuDevice::PrepareBlocks, counted: blocks on success, a fallback (and a
  // log line naming `what`) on failure, which the caller redoes on the CPU.
  absl::StatusOr<std::vector<PreparedBlock>> PrepareBlocks(
      const WaveIndexParams& params, uint64_t first_token,
      absl::Span<const KvRows> rows,
      absl::Span<const std::shared_ptr<WaveIndex>> indexes,
      const std::string& what);

  // One index to plan: the head's current index (read during the call
  // only; its layer's reader lock held by the caller) and its group's
  // queries ([group_size][head_dim] fp32).
  struct PlanRequest {
    const std::shared_ptr<WaveIndex>* index = nullptr;
    absl::Span<const float> queries;
    DType dtype = DType::kFp32;
  };
  // Plans on the GPU, counted like PrepareBlocks (a failure is a fallback
  // for the whole call).
  absl::StatusOr<std::vector<RetrievalPlan>> Plan(
      absl::Span<const PlanRequest> requests, size_t group_size,
      const WaveIndexParams& params, float scale);

  // Adds the GPU counters (EngineStats::gpu_*).
  template <typename Stats>
  void AddStats(Stats& stats) const {
    stats.gpu_device = device_;
    stats.gpu_index_blocks += blocks_.load(std::memory_order_relaxed);
    stats.gpu_build_fallbacks +=
        build_fallbacks_.load(std::memory_order_relaxed);
    stats.gpu_retrieve_calls += plans_.load(std::memory_order_relaxed);
    stats.gpu_retrieve_fallbacks +=
        plan_fallbacks_.load(std::memory_order_relaxed);
  }

  // Device copies currently held (for tests).
  size_t resident_indexes() const;

 private:
  struct KeyEntry {
    std::weak_ptr<WaveIndex> index;
    IndexKey key = 0;
  };
  // The key of `index` (alive: the caller holds it), dropping stale keys.
  IndexKey KeyFor(const std::shared_ptr<WaveIndex>& index)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(keys_mu_);
  void LogFallback(std::atomic<uint64_t>& counter, const std::string& what,
                   const absl::Status& status);

  const int device_;
  const std::unique_ptr<GpuDevice> impl_;
  absl::Mutex build_mu_;  // one PrepareBlocks at a time
  mutable absl::Mutex keys_mu_;
  absl::flat_hash_map<const WaveIndex*, KeyEntry> keys_
      ABSL_GUARDED_BY(keys_mu_);
  IndexKey next_key_ ABSL_GUARDED_BY(keys_mu_) = 1;
  size_t sweep_at_ ABSL_GUARDED_BY(keys_mu_) = 1024;
  std::atomic<uint64_t> blocks_{0}, build_fallbacks_{0}, plans_{0},
      plan_fallbacks_{0};
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_GPU_ENGINE_GPU_H_
