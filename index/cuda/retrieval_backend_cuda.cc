#include "index/cuda/retrieval_backend_cuda.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "index/cuda/decode_attention.h"
#include "index/cuda/retrieval.h"

namespace wavekv::cuda {
namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

size_t Align(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Device memory that only grows; contents are dropped on growth unless
// GrowKeep is used.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Free(); }

  void* data() const { return ptr_; }
  size_t size() const { return bytes_; }

  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    Free();
    RETURN_IF_ERROR(CudaStatus(cudaMalloc(&ptr_, bytes), "cudaMalloc"));
    bytes_ = bytes;
    return absl::OkStatus();
  }
  // Grows to `bytes`, keeping the first `keep` bytes.
  absl::Status GrowKeep(size_t bytes, size_t keep, cudaStream_t stream) {
    if (bytes <= bytes_) return absl::OkStatus();
    void* next = nullptr;
    RETURN_IF_ERROR(CudaStatus(cudaMalloc(&next, bytes), "cudaMalloc"));
    if (keep > 0) {
      cudaError_t err =
          cudaMemcpyAsync(next, ptr_, keep, cudaMemcpyDeviceToDevice, stream);
      if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
      if (err != cudaSuccess) {
        cudaFree(next);
        return CudaStatus(err, "index copy on growth");
      }
    }
    Free();
    ptr_ = next;
    bytes_ = bytes;
    return absl::OkStatus();
  }

 private:
  void Free() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Pinned host memory that only grows.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  char* data() const { return static_cast<char*>(ptr_); }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    RETURN_IF_ERROR(CudaStatus(cudaMallocHost(&ptr_, bytes), "cudaMallocHost"));
    bytes_ = bytes;
    return absl::OkStatus();
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

ElemType ToElem(DType d) {
  switch (d) {
    case DType::kFp16:
      return ElemType::kFp16;
    case DType::kBf16:
      return ElemType::kBf16;
    case DType::kFp32:
      return ElemType::kFp32;
  }
  return ElemType::kFp32;
}

// The device copy of one wave index.
struct DeviceIndex {
  DType dtype = DType::kFp32;
  size_t head_dim = 0;
  size_t clusters = 0;  // uploaded
  size_t capacity = 0;  // clusters the buffers hold
  DeviceBuffer centroids, value_sums, sizes;
};

// Per-request offsets inside the output arena (bytes).
struct OutSlots {
  size_t counts, retrieval, estimation, max, den, num;
  uint32_t r, e;
};

class CudaRetrievalBackend final : public RetrievalBackend {
 public:
  explicit CudaRetrievalBackend(cudaStream_t stream) : stream_(stream) {}
  ~CudaRetrievalBackend() override { cudaStreamDestroy(stream_); }

  std::string_view name() const override { return "cuda"; }

  absl::StatusOr<std::vector<RetrievalPlan>> Plan(
      absl::Span<const RetrievalRequest> requests, size_t group_size,
      const WaveIndexParams& params, float scale) override;

  void Forget(IndexKey key) override {
    absl::MutexLock lock(&mu_);
    indexes_.erase(key);
  }

 private:
  absl::Status Sync(DeviceIndex& dev, const WaveIndex& index)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  const cudaStream_t stream_;
  absl::flat_hash_map<IndexKey, std::unique_ptr<DeviceIndex>> indexes_
      ABSL_GUARDED_BY(mu_);
  // Per-call arenas, reused across calls.
  PinnedBuffer host_in_ ABSL_GUARDED_BY(mu_), host_out_ ABSL_GUARDED_BY(mu_);
  DeviceBuffer dev_in_ ABSL_GUARDED_BY(mu_), dev_out_ ABSL_GUARDED_BY(mu_),
      workspace_ ABSL_GUARDED_BY(mu_);
};

absl::Status CudaRetrievalBackend::Sync(DeviceIndex& dev,
                                        const WaveIndex& index) {
  const size_t d = index.head_dim();
  const size_t n = index.num_clusters();
  if (d != dev.head_dim || n < dev.clusters) {
    // Not an extension of what we hold: start over.
    dev.head_dim = d;
    dev.clusters = 0;
  }
  if (n == dev.clusters) return absl::OkStatus();
  const size_t elem = DTypeBytes(dev.dtype);
  if (n > dev.capacity || dev.clusters == 0) {
    const size_t cap = std::max(n, dev.clusters == 0 ? n : 2 * dev.capacity);
    RETURN_IF_ERROR(dev.centroids.GrowKeep(cap * d * elem,
                                           dev.clusters * d * elem, stream_));
    RETURN_IF_ERROR(dev.value_sums.GrowKeep(
        cap * d * sizeof(float), dev.clusters * d * sizeof(float), stream_));
    RETURN_IF_ERROR(dev.sizes.GrowKeep(
        cap * sizeof(uint32_t), dev.clusters * sizeof(uint32_t), stream_));
    dev.capacity = std::max(dev.capacity, cap);
  }
  const size_t first = dev.clusters, count = n - first;
  std::vector<float> rows(count * d);
  for (size_t c = 0; c < count; ++c) {
    const std::vector<float> centroid =
        index.centroid(static_cast<ClusterId>(first + c));
    std::copy(centroid.begin(), centroid.end(), rows.begin() + c * d);
  }
  std::vector<uint8_t> encoded(count * d * elem);
  EncodeFromFloat(dev.dtype, rows.data(), rows.size(), encoded.data());
  // Pageable sources: cudaMemcpyAsync stages them before returning, and the
  // copies are ordered before the kernels on stream_.
  char* cbase = static_cast<char*>(dev.centroids.data());
  char* vbase = static_cast<char*>(dev.value_sums.data());
  char* sbase = static_cast<char*>(dev.sizes.data());
  RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(cbase + first * d * elem, encoded.data(), encoded.size(),
                      cudaMemcpyHostToDevice, stream_),
      "centroid upload"));
  RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(vbase + first * d * sizeof(float),
                                 index.value_sums().data() + first * d,
                                 count * d * sizeof(float),
                                 cudaMemcpyHostToDevice, stream_),
                 "value sum upload"));
  RETURN_IF_ERROR(
      CudaStatus(cudaMemcpyAsync(sbase + first * sizeof(uint32_t),
                                 index.cluster_sizes().data() + first,
                                 count * sizeof(uint32_t),
                                 cudaMemcpyHostToDevice, stream_),
                 "size upload"));
  dev.clusters = n;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RetrievalPlan>> CudaRetrievalBackend::Plan(
    absl::Span<const RetrievalRequest> requests, size_t group_size,
    const WaveIndexParams& params, float scale) {
  for (size_t i = 0; i < requests.size(); ++i) {
    RETURN_IF_ERROR(ValidateRetrievalRequest(requests[i], i, group_size));
  }
  if (group_size > static_cast<size_t>(kMaxRetrievalGroup)) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_size: ", group_size, " exceeds ",
                     kMaxRetrievalGroup, " (CUDA backend)"));
  }
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale: must be finite, got ", scale));
  }
  RETURN_IF_ERROR(params.Validate());
  const int g = static_cast<int>(group_size);
  const size_t n = requests.size();

  absl::MutexLock lock(&mu_);
  // A previous call that failed midway may still be using the arenas.
  RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "stream"));
  std::vector<DeviceIndex*> devs(n);
  for (size_t i = 0; i < n; ++i) {
    const RetrievalRequest& r = requests[i];
    const size_t d = r.index->head_dim();
    if (d != 64 && d != 128 && d != 256) {
      return absl::InvalidArgumentError(
          absl::StrCat("requests[", i, "].index: head_dim ", d,
                       " is not supported by the CUDA backend (64/128/256)"));
    }
    auto it = indexes_.find(r.key);
    if (it != indexes_.end() && it->second->dtype != r.dtype) {
      return absl::InvalidArgumentError(absl::StrCat(
          "requests[", i, "].dtype: ", std::string(DTypeName(r.dtype)),
          " but key ", r.key, " holds ",
          std::string(DTypeName(it->second->dtype)), " (Forget it first)"));
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const RetrievalRequest& r = requests[i];
    std::unique_ptr<DeviceIndex>& slot = indexes_[r.key];
    if (slot == nullptr) {
      slot = std::make_unique<DeviceIndex>();
      slot->dtype = r.dtype;
    }
    RETURN_IF_ERROR(Sync(*slot, *r.index));
    devs[i] = slot.get();
  }

  // Arenas: in = queries + problem descriptors; out = zones and tails;
  // workspace per problem.
  std::vector<OutSlots> out(n);
  std::vector<size_t> q_off(n), ws_off(n);
  size_t in_bytes = 0, out_bytes = 0, ws_bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    const WaveIndex& idx = *requests[i].index;
    const size_t d = idx.head_dim();
    const ZoneBudget b = ComputeZoneBudget(params, idx.num_nonempty_clusters());
    OutSlots& o = out[i];
    o.r = static_cast<uint32_t>(b.retrieval_clusters);
    o.e = static_cast<uint32_t>(b.estimation_clusters);
    if (o.r > kMaxRetrievalClusters) {
      return absl::InvalidArgumentError(absl::StrCat(
          "requests[", i, "]: retrieval zone of ", o.r,
          " clusters exceeds the CUDA backend's ", kMaxRetrievalClusters));
    }
    auto take = [&out_bytes](size_t bytes) {
      const size_t at = out_bytes;
      out_bytes = Align(out_bytes + bytes, 16);
      return at;
    };
    o.counts = take(2 * sizeof(uint32_t));
    o.retrieval = take(o.r * sizeof(uint32_t));
    o.estimation = take(o.e * sizeof(uint32_t));
    o.max = take(group_size * sizeof(float));
    o.den = take(group_size * sizeof(float));
    o.num = take(group_size * d * sizeof(float));
    q_off[i] = in_bytes;
    in_bytes = Align(in_bytes + group_size * d * sizeof(float), 16);
    ws_off[i] = ws_bytes;
    ws_bytes += Align(RetrievalWorkspaceBytes(
                          static_cast<uint32_t>(idx.num_clusters()), g, d),
                      256);
  }
  const size_t problems_off = Align(in_bytes, 256);
  in_bytes = problems_off + n * sizeof(RetrievalProblem);
  RETURN_IF_ERROR(host_in_.Reserve(in_bytes));
  RETURN_IF_ERROR(dev_in_.Reserve(in_bytes));
  RETURN_IF_ERROR(host_out_.Reserve(std::max<size_t>(out_bytes, 16)));
  RETURN_IF_ERROR(dev_out_.Reserve(std::max<size_t>(out_bytes, 16)));
  RETURN_IF_ERROR(workspace_.Reserve(std::max<size_t>(ws_bytes, 256)));

  char* hin = host_in_.data();
  char* din = static_cast<char*>(dev_in_.data());
  char* dout = static_cast<char*>(dev_out_.data());
  char* dws = static_cast<char*>(workspace_.data());
  auto* problems = reinterpret_cast<RetrievalProblem*>(hin + problems_off);
  // Launch groups: (dtype, head_dim) -> request indexes. Problems of one
  // group are contiguous in the descriptor array.
  std::map<std::pair<DType, size_t>, std::vector<size_t>> groups;
  for (size_t i = 0; i < n; ++i) {
    groups[{devs[i]->dtype, requests[i].index->head_dim()}].push_back(i);
  }
  size_t next = 0;
  std::vector<std::pair<size_t, size_t>> ranges;  // [begin, end) per group
  for (const auto& [key, members] : groups) {
    ranges.emplace_back(next, next + members.size());
    for (size_t i : members) {
      const RetrievalRequest& r = requests[i];
      const size_t d = r.index->head_dim();
      std::memcpy(hin + q_off[i], r.queries.data(),
                  group_size * d * sizeof(float));
      const OutSlots& o = out[i];
      RetrievalProblem& p = problems[next++];
      p = RetrievalProblem{};
      p.centroids = devs[i]->centroids.data();
      p.value_sums = static_cast<const float*>(devs[i]->value_sums.data());
      p.sizes = static_cast<const uint32_t*>(devs[i]->sizes.data());
      p.num_clusters = static_cast<uint32_t>(r.index->num_clusters());
      p.retrieval_clusters = o.r;
      p.estimation_clusters = o.e;
      p.queries = reinterpret_cast<const float*>(din + q_off[i]);
      p.workspace = dws + ws_off[i];
      p.out_retrieval = reinterpret_cast<uint32_t*>(dout + o.retrieval);
      p.out_counts = reinterpret_cast<uint32_t*>(dout + o.counts);
      p.out_estimation = reinterpret_cast<uint32_t*>(dout + o.estimation);
      p.out_max = reinterpret_cast<float*>(dout + o.max);
      p.out_den = reinterpret_cast<float*>(dout + o.den);
      p.out_num = reinterpret_cast<float*>(dout + o.num);
    }
  }
  if (n > 0) {
    RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(din, hin, in_bytes, cudaMemcpyHostToDevice, stream_),
        "request upload"));
  }
  size_t gi = 0;
  for (const auto& [key, members] : groups) {
    const auto [begin, end] = ranges[gi++];
    RetrievalArgs a;
    a.centroid_type = ToElem(key.first);
    a.head_dim = static_cast<int>(key.second);
    a.group_size = g;
    a.scale = scale;
    a.num_problems = static_cast<int>(end - begin);
    a.problems = problems + begin;
    a.device_problems =
        reinterpret_cast<const RetrievalProblem*>(din + problems_off) + begin;
    RETURN_IF_ERROR(LaunchRetrieval(a, stream_));
  }
  char* hout = host_out_.data();
  if (n > 0) {
    RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(hout, dout, out_bytes, cudaMemcpyDeviceToHost, stream_),
        "result download"));
  }
  RETURN_IF_ERROR(
      CudaStatus(cudaStreamSynchronize(stream_), "retrieval kernels"));

  std::vector<RetrievalPlan> plans(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t d = requests[i].index->head_dim();
    const OutSlots& o = out[i];
    const auto* counts = reinterpret_cast<const uint32_t*>(hout + o.counts);
    if (counts[0] != o.r || counts[1] != o.e) {
      return absl::InternalError(
          absl::StrCat("requests[", i, "]: device zones of ", counts[0], "+",
                       counts[1], " clusters, expected ", o.r, "+", o.e));
    }
    const auto* ret = reinterpret_cast<const uint32_t*>(hout + o.retrieval);
    const auto* est = reinterpret_cast<const uint32_t*>(hout + o.estimation);
    RetrievalPlan& plan = plans[i];
    plan.retrieval_clusters.assign(ret, ret + o.r);
    plan.estimation_clusters.assign(est, est + o.e);
    const auto* mx = reinterpret_cast<const float*>(hout + o.max);
    const auto* den = reinterpret_cast<const float*>(hout + o.den);
    const auto* num = reinterpret_cast<const float*>(hout + o.num);
    plan.tail.resize(group_size);
    for (size_t h = 0; h < group_size; ++h) {
      AttentionPartial& t = plan.tail[h];
      t.max_logit = mx[h];
      t.denominator = den[h];
      t.numerator.assign(num + h * d, num + (h + 1) * d);
    }
  }
  return plans;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RetrievalBackend>> MakeCudaRetrievalBackend() {
  RETURN_IF_ERROR(CheckCudaDevice());
  cudaStream_t stream = nullptr;
  RETURN_IF_ERROR(CudaStatus(cudaStreamCreate(&stream), "cudaStreamCreate"));
  return std::unique_ptr<RetrievalBackend>(new CudaRetrievalBackend(stream));
}

}  // namespace wavekv::cuda
