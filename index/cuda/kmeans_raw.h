// Plain (absl-free) declarations shared by the nvcc-compiled k-means kernels
// (kmeans.cu) and the C++ launcher (kmeans.h). See kmeans.h for the
// contract; nothing here validates its arguments.
#ifndef WAVEKV_INDEX_CUDA_KMEANS_RAW_H_
#define WAVEKV_INDEX_CUDA_KMEANS_RAW_H_

#include <cstddef>
#include <cstdint>

#include "index/cuda/decode_attention_raw.h"  // ElemType, cudaStream_t

namespace wavekv::cuda {

// One clustering problem: the keys and values of one (layer, kv head) block.
// Token t's key starts at keys + t * row_stride elements (likewise values).
struct KMeansProblem {
  const void* keys = nullptr;
  const void* values = nullptr;
  int64_t row_stride = 0;  // elements
};

// One segment of the shared plan: rows [begin, end), clusters
// [first_cluster, first_cluster + num_clusters).
struct KMeansSegment {
  uint32_t begin = 0, end = 0;
  uint32_t first_cluster = 0, num_clusters = 0;
};

// Rows [row_begin, row_end) (at most kAssignRows) scored against centroids
// [cent_begin, cent_end) of the same problem; `segment` is the plan segment
// of an in-segment tile. The fused update uses the same record for one
// (segment, chunk of at most kFusedClusters clusters) job: rows = the
// segment, cents = the chunk's clusters.
struct AssignTile {
  uint32_t row_begin = 0, row_end = 0;
  uint32_t cent_begin = 0, cent_end = 0;
  uint32_t segment = 0;
};

constexpr int kAssignRows = 128;
constexpr int kMeanChunkRows = 512;
// Fused in-segment update: clusters per block, and the longest segment it
// takes (its counting sort lives in shared memory, 4 bytes per token).
constexpr int kFusedClusters = 64;
constexpr uint32_t kFusedMaxSegmentRows = 32768;

// Scoring kernels: mma.sync (sm_80 and up) or wgmma (sm_90a builds on a
// compute capability 9.0 GPU, see KMeansWgmmaAvailable), 128-key tiles.
// kWgmmaStationary scores the in-segment iterations with the segment's
// centroids resident in shared memory (where they fit, with the fused
// update) and the final pass as kWgmma. All give the same bits.
enum class KMeansScorer : int {
  kAuto = 0,  // kWgmmaStationary where wgmma runs, else kMmaSync
  kMmaSync = 1,
  kWgmma = 2,
  kWgmmaStationary = 3,
};
// Centroid-stationary scorer: rows per block (a chunk of one segment), and
// how many 128-centroid tiles of head_dim d fit in shared memory beside
// two 128-row key stages (sm_90: 227 KiB per block).
constexpr uint32_t kStationaryRows = 2048;
constexpr int KMeansStationaryMaxCentTiles(int d) {
  return (232448 - 1024 - 2 * 128 * d * 2) / (128 * d * 2);
}

// Phases reported to KMeansRawArgs::mark after their kernels are enqueued.
enum KMeansPhase : int {
  kPhaseCentre = 0,  // mean, centring + normalising, initial centroids
  kPhaseAssign = 1,  // in-segment scoring + argmax (all iterations)
  kPhaseSort = 2,    // stable sort by cluster + boundaries (iterations)
  kPhaseUpdate = 3,  // centroid means + normalisation (iterations)
  kPhaseFinalAssign = 4,
  kPhaseFinalSort = 5,
  kPhaseStats = 6,  // sizes, centroids, value sums
  kNumKMeansPhases = 7,
};

struct KMeansRawArgs {
  ElemType dtype = ElemType::kFp16;
  int head_dim = 128;
  int num_problems = 0;
  uint32_t num_tokens = 0;    // per problem, > 0
  uint32_t num_clusters = 0;  // per problem (all segments)
  int num_segments = 0;
  int iterations = 0;
  int end_bit = 0;  // bits of num_problems * num_clusters (sort width)
  // In-segment update: true = fused per-segment counting sort + sums with
  // the early stop (segments <= kFusedMaxSegmentRows); false = global radix
  // sort + one warp per cluster, every iteration. Same results either way.
  bool fused_update = true;
  bool wgmma = false;  // score with WgmmaAssignKernel (caller checked it)
  // > 0: in-segment scoring with WgmmaStationaryKernel, shared memory for
  // this many 128-centroid tiles (the largest segment's).
  int stationary_cent_tiles = 0;

  // Device arrays.
  const KMeansProblem* problems = nullptr;  // [num_problems]
  const KMeansSegment* segments = nullptr;  // [num_segments]
  const AssignTile* seg_tiles = nullptr;    // in-segment scoring tiles
  int num_seg_tiles = 0;
  const AssignTile* all_tiles = nullptr;  // final scoring tiles
  int num_all_tiles = 0;
  const AssignTile* update_jobs = nullptr;      // fused update jobs
  const AssignTile* stationary_jobs = nullptr;  // (segment rows chunk)
  int num_stationary_jobs = 0;
  int num_update_jobs = 0;
  uint32_t max_segment_rows = 0;

  // Workspace (device), see KMeansWorkspaceLayout in kmeans.cc.
  double* mean_partials = nullptr;    // [P][chunks][D]
  float* mean = nullptr;              // [P][D]
  uint16_t* xhat = nullptr;           // [P][n][D] fp16, unit centred keys
  uint16_t* cent = nullptr;           // [P][K][D] fp16, unit centroids
  uint32_t* sort_keys_in = nullptr;   // [P*n]
  uint32_t* sort_keys_out = nullptr;  // [P*n]
  uint32_t* sort_vals_in = nullptr;   // [P*n], token within problem
  uint32_t* offsets = nullptr;        // [P*K + 1]
  void* cub_temp = nullptr;
  size_t cub_temp_bytes = 0;
  int* flags = nullptr;  // [2]: non-finite key, non-finite value
  // [3][P * S] (fused update): changed-in-iteration (two, by parity) and
  // converged, per (problem, segment).
  int* seg_flags = nullptr;

  // Outputs (device).
  uint32_t* assignment = nullptr;   // [P][n]
  uint32_t* slot_tokens = nullptr;  // [P][n], cluster-major
  uint32_t* sizes = nullptr;        // [P][K]
  float* centroids = nullptr;       // [P][K][D]
  float* value_sums = nullptr;      // [P][K][D]

  // Optional: called on the host after each phase's kernels are enqueued.
  void (*mark)(void* ctx, int phase) = nullptr;
  void* mark_ctx = nullptr;
};

// Bytes of CUB temporary storage for sorting `num_items` pairs.
size_t KMeansSortTempBytes(int64_t num_items, int end_bit);

// Enqueues the whole pipeline; returns a cudaError_t value (0 = ok).
int LaunchKMeansRaw(const KMeansRawArgs& args, cudaStream_t stream);

// Whether the wgmma scorer runs on the current device (this build holds
// sm_90a code and the device loaded it). Probes once per process with a
// tiny kernel; false on any error.
bool KMeansWgmmaAvailable();

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_KMEANS_RAW_H_
