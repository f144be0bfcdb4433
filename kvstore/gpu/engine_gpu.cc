#include "kvstore/gpu/engine_gpu.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv {

#ifndef WAVEKV_WITH_CUDA
bool EngineBuiltWithCuda() { return false; }

absl::StatusOr<int> ResolveGpuDevice(int32_t option) {
  if (option < 0) return -1;  // off, or auto: this build has no CUDA
  return absl::InvalidArgumentError(absl::StrCat(
      "gpu_device: ", option,
      " asks for a GPU, but this build has no CUDA support (build with "
      "--config=cuda, or use -1/off or -2/auto)"));
}

absl::StatusOr<std::unique_ptr<GpuDevice>> OpenCudaDevice(int device) {
  return absl::UnimplementedError(
      absl::StrCat("gpu_device: ", device, ": built without CUDA"));
}
#endif  // WAVEKV_WITH_CUDA

absl::StatusOr<std::unique_ptr<EngineGpu>> EngineGpu::Open(int32_t option) {
  ASSIGN_OR_RETURN(const int device, ResolveGpuDevice(option));
  if (device < 0) return std::unique_ptr<EngineGpu>();
  ASSIGN_OR_RETURN(std::unique_ptr<GpuDevice> impl, OpenCudaDevice(device));
  return std::make_unique<EngineGpu>(device, std::move(impl));
}

EngineGpu::EngineGpu(int device, std::unique_ptr<GpuDevice> impl)
    : device_(device), impl_(std::move(impl)) {}

void EngineGpu::LogFallback(std::atomic<uint64_t>& counter,
                            const std::string& what,
                            const absl::Status& status) {
  const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed) + 1;
  // The first ten, then every thousandth: a persistent failure stays
  // visible without flooding the log.
  if (n <= 10 || n % 1000 == 0) {
    const std::string message = status.ToString();
    ABSL_RAW_LOG(WARNING,
                 "wavekv: GPU %s failed, redone on the CPU (fallback #%llu): "
                 "%s",
                 what.c_str(), static_cast<unsigned long long>(n),
                 message.c_str());
  }
}

absl::StatusOr<std::vector<PreparedBlock>> EngineGpu::PrepareBlocks(
    const WaveIndexParams& params, uint64_t first_token,
    absl::Span<const KvRows> rows,
    absl::Span<const std::shared_ptr<WaveIndex>> indexes,
    const std::string& what) {
  std::vector<const WaveIndex*> raw;
  raw.reserve(indexes.size());
  for (const std::shared_ptr<WaveIndex>& index : indexes) {
    raw.push_back(index.get());
  }
  absl::StatusOr<std::vector<PreparedBlock>> blocks;
  {
    absl::MutexLock lock(&build_mu_);
    blocks = impl_->PrepareBlocks(params, first_token, rows, raw);
  }
  if (blocks.ok()) {
    blocks_.fetch_add(blocks->size(), std::memory_order_relaxed);
  } else {
    LogFallback(build_fallbacks_, what, blocks.status());
  }
  return blocks;
}

IndexKey EngineGpu::KeyFor(const std::shared_ptr<WaveIndex>& index) {
  if (keys_.size() >= sweep_at_) {
    // Drop the device copies of indexes that no longer exist.
    for (auto it = keys_.begin(); it != keys_.end();) {
      if (it->second.index.expired()) {
        impl_->Forget(it->second.key);
        keys_.erase(it++);
      } else {
        ++it;
      }
    }
    sweep_at_ = std::max<size_t>(1024, 2 * keys_.size());
  }
  KeyEntry& entry = keys_[index.get()];
  if (entry.key != 0 && !entry.index.expired()) return entry.key;
  // New, or another object at the address of a destroyed one.
  if (entry.key != 0) impl_->Forget(entry.key);
  entry.index = index;
  entry.key = next_key_++;
  return entry.key;
}

absl::StatusOr<std::vector<RetrievalPlan>> EngineGpu::Plan(
    absl::Span<const PlanRequest> requests, size_t group_size,
    const WaveIndexParams& params, float scale) {
  std::vector<RetrievalRequest> reqs(requests.size());
  {
    absl::MutexLock lock(&keys_mu_);
    for (size_t i = 0; i < requests.size(); ++i) {
      const std::shared_ptr<WaveIndex>& index = *requests[i].index;
      reqs[i].key = KeyFor(index);
      reqs[i].index = index.get();
      reqs[i].queries = requests[i].queries;
      reqs[i].dtype = requests[i].dtype;
    }
  }
  absl::StatusOr<std::vector<RetrievalPlan>> plans =
      impl_->Plan(reqs, group_size, params, scale);
  if (plans.ok()) {
    plans_.fetch_add(1, std::memory_order_relaxed);
  } else {
    LogFallback(plan_fallbacks_, "retrieval planning", plans.status());
  }
  return plans;
}

size_t EngineGpu::resident_indexes() const {
  absl::MutexLock lock(&keys_mu_);
  return keys_.size();
}

}  // namespace wavekv
