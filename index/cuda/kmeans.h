// Segmented spherical k-means on the GPU, batched over many problems (e.g.
// every (layer, kv head) of a block): the same algorithm and output
// structure as the CPU reference (index/kmeans.h, index/wave_index.cc):
//   - per-problem mean-centring; per segment, init from evenly spaced keys
//     and `iterations` rounds of assign-by-max-inner-product against the
//     segment's normalised centroids + normalised member means (an empty or
//     zero-sum cluster keeps its centroid); a last assignment of every key
//     against all centroids of its problem; stored centroid = member mean of
//     the original keys, value sum = Σ v, size as uint32; members listed
//     cluster-major, in token order within a cluster. Empty clusters are
//     legal (size 0, zero centroid and value sum, no members).
//   - Scoring uses fp16 tensor cores on unit-length centred keys and unit
//     centroids with fp32 accumulation, so on near-ties a key can pick a
//     different cluster than the CPU's fp32 scoring; member sums and the
//     final statistics are computed as on the CPU (fp32 / double, token
//     order). Results are deterministic: no floating-point atomics; the
//     cluster order comes from a stable sort by cluster.
//   - A segment whose assignment stops changing is converged and skips its
//     remaining in-segment iterations (its centroids are a fixed point), as
//     the CPU reference does: results equal those of running every
//     iteration.
//   - Implementation choices (GpuKMeansPlan::fused_update, ::scorer) change
//     speed only: the fused update gives the same bits as the global sort;
//     wgmma and mma.sync both accumulate fp16 products in fp32 (a near-tie
//     may in principle round differently between the two scorers).
//
// Example:
//   GpuSegmentedKMeans km;
//   RETURN_IF_ERROR(km.Run(plan, problems, stream));
//   ASSIGN_OR_RETURN(std::vector<GpuKMeansResult> out, km.CopyResults(stream));
//
// Not thread-safe: one Run at a time per object; device results stay valid
// until the next Run.
#ifndef WAVEKV_INDEX_CUDA_KMEANS_H_
#define WAVEKV_INDEX_CUDA_KMEANS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/cuda/kmeans_raw.h"
#include "index/wave_index_params.h"

namespace wavekv::cuda {

// Shape shared by every problem of one Run.
struct GpuKMeansPlan {
  ElemType dtype = ElemType::kFp16;
  int head_dim = 128;                 // 64, 128 or 256
  uint32_t num_tokens = 0;            // per problem, > 0
  std::vector<SegmentPlan> segments;  // must tile [0, num_tokens)
  uint32_t iterations = 9;            // 1..100
  // In-segment update: per-segment counting sort in shared memory, one
  // kernel per iteration, with the early stop (segments of at most
  // kFusedMaxSegmentRows tokens; longer ones use the global sort).
  bool fused_update = true;
  // kAuto: kWgmmaStationary where KMeansWgmmaAvailable(), else mma.sync. A
  // wgmma scorer where it is not available is FailedPrecondition.
  KMeansScorer scorer = KMeansScorer::kAuto;
};

// One problem's results, copied to the host.
struct GpuKMeansResult {
  size_t num_clusters = 0;
  size_t dim = 0;
  std::vector<float> centroids;       // [num_clusters][dim]
  std::vector<float> value_sums;      // [num_clusters][dim]
  std::vector<uint32_t> sizes;        // [num_clusters]
  std::vector<uint32_t> assignment;   // [num_tokens]
  std::vector<uint32_t> slot_tokens;  // [num_tokens], cluster-major
};

// Milliseconds per phase (KMeansPhase) of the last timed Run, from CUDA
// events; total = whole Run.
struct KMeansPhaseTimes {
  std::array<float, kNumKMeansPhases> ms{};
  float total_ms = 0.f;
};

class GpuSegmentedKMeans {
 public:
  GpuSegmentedKMeans() = default;
  ~GpuSegmentedKMeans();
  GpuSegmentedKMeans(const GpuSegmentedKMeans&) = delete;
  GpuSegmentedKMeans& operator=(const GpuSegmentedKMeans&) = delete;

  // Checks `plan` and `problems` without touching the GPU: InvalidArgument
  // naming the field (head_dim, dtype, num_tokens, segments[i], iterations,
  // scorer, problems[i].keys/values/row_stride, or a size limit).
  static absl::Status Validate(const GpuKMeansPlan& plan,
                               absl::Span<const KMeansProblem> problems);

  // Enqueues on `stream` the clustering of every problem (device pointers).
  // Grows the device workspace when needed (cudaMalloc; ResourceExhausted
  // if that fails). With `times`, records CUDA events between phases and
  // waits for the stream before returning. Internal on a CUDA error.
  absl::Status Run(const GpuKMeansPlan& plan,
                   absl::Span<const KMeansProblem> problems,
                   cudaStream_t stream, KMeansPhaseTimes* times = nullptr);

  // Waits for `stream` and copies the last Run's results to the host, one
  // per problem. InvalidArgument if a key or value was not finite.
  // FailedPrecondition without a successful Run.
  absl::StatusOr<std::vector<GpuKMeansResult>> CopyResults(
      cudaStream_t stream) const;

  // Device views of the last Run ([problem][...] as in KMeansRawArgs).
  const float* device_centroids() const { return args_.centroids; }
  const float* device_value_sums() const { return args_.value_sums; }
  const uint32_t* device_sizes() const { return args_.sizes; }
  const uint32_t* device_slot_tokens() const { return args_.slot_tokens; }
  const uint32_t* device_assignment() const { return args_.assignment; }
  size_t workspace_bytes() const { return capacity_; }
  // Scorer and update of the last successful Run.
  bool used_wgmma() const { return args_.wgmma; }
  bool used_stationary_scorer() const {
    return args_.stationary_cent_tiles > 0;
  }
  bool used_fused_update() const { return args_.fused_update; }

 private:
  void* buffer_ = nullptr;  // one cudaMalloc holding everything
  size_t capacity_ = 0;
  bool has_result_ = false;
  KMeansRawArgs args_;
};

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_KMEANS_H_
