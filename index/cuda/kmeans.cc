#include "index/cuda/kmeans.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <limits>

#include "absl/strings/str_cat.h"

namespace wavekv::cuda {
namespace {

absl::Status CudaError(cudaError_t err, const char* what) {
  return absl::InternalError(
      absl::StrCat("kmeans: ", what, ": ", cudaGetErrorString(err)));
}

size_t Align(size_t x) { return (x + 255) / 256 * 256; }

uint32_t TotalClusters(const GpuKMeansPlan& plan) {
  uint64_t k = 0;
  for (const SegmentPlan& s : plan.segments) k += s.num_clusters;
  return static_cast<uint32_t>(k);
}

// Offsets of every array inside the one workspace allocation.
struct Layout {
  size_t problems, segments, seg_tiles, all_tiles, mean_partials, mean, xhat,
      cent, keys_in, keys_out, vals_in, offsets, flags, seg_flags, update_jobs,
      stat_jobs, assignment, slot_tokens, sizes, centroids, value_sums,
      cub_temp, cub_bytes, total;
};

Layout MakeLayout(int num_problems, uint32_t n, uint32_t k, int d,
                  int num_segments, size_t seg_tiles, size_t all_tiles,
                  size_t update_jobs, size_t stat_jobs, int end_bit) {
  const size_t p = num_problems;
  const size_t items = p * n, groups = p * k;
  const size_t chunks = (n + kMeanChunkRows - 1) / kMeanChunkRows;
  Layout l{};
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += Align(bytes);
    return here;
  };
  l.problems = take(p * sizeof(KMeansProblem));
  l.segments = take(num_segments * sizeof(KMeansSegment));
  l.seg_tiles = take(seg_tiles * sizeof(AssignTile));
  l.all_tiles = take(all_tiles * sizeof(AssignTile));
  l.mean_partials = take(p * chunks * d * sizeof(double));
  l.mean = take(p * d * sizeof(float));
  l.xhat = take(items * d * sizeof(uint16_t));
  l.cent = take(groups * d * sizeof(uint16_t));
  l.keys_in = take(items * sizeof(uint32_t));
  l.keys_out = take(items * sizeof(uint32_t));
  l.vals_in = take(items * sizeof(uint32_t));
  l.offsets = take((groups + 1) * sizeof(uint32_t));
  l.flags = take(2 * sizeof(int));
  l.seg_flags = take(3 * p * num_segments * sizeof(int));
  l.update_jobs = take(update_jobs * sizeof(AssignTile));
  l.stat_jobs = take(stat_jobs * sizeof(AssignTile));
  l.assignment = take(items * sizeof(uint32_t));
  l.slot_tokens = take(items * sizeof(uint32_t));
  l.sizes = take(groups * sizeof(uint32_t));
  l.centroids = take(groups * d * sizeof(float));
  l.value_sums = take(groups * d * sizeof(float));
  l.cub_bytes = KMeansSortTempBytes(static_cast<int64_t>(items), end_bit);
  l.cub_temp = take(std::max<size_t>(l.cub_bytes, 1));
  l.total = at;
  return l;
}

std::vector<AssignTile> SegmentTiles(const GpuKMeansPlan& plan,
                                     uint32_t rows = kAssignRows) {
  std::vector<AssignTile> tiles;
  uint32_t first = 0, seg = 0;
  for (const SegmentPlan& s : plan.segments) {
    for (uint64_t r = s.begin; r < s.end; r += rows) {
      tiles.push_back(
          {static_cast<uint32_t>(r),
           static_cast<uint32_t>(std::min<uint64_t>(s.end, r + rows)), first,
           first + s.num_clusters, seg});
    }
    first += s.num_clusters;
    ++seg;
  }
  return tiles;
}

// Centroid-stationary scoring jobs: chunks of kStationaryRows rows of a
// segment, against the segment's clusters.
std::vector<AssignTile> StationaryJobs(const GpuKMeansPlan& plan) {
  return SegmentTiles(plan, kStationaryRows);
}

// Fused-update jobs: (segment, chunk of <= kFusedClusters clusters).
std::vector<AssignTile> UpdateJobs(const GpuKMeansPlan& plan) {
  std::vector<AssignTile> jobs;
  uint32_t first = 0, seg = 0;
  for (const SegmentPlan& s : plan.segments) {
    for (uint32_t c = 0; c < s.num_clusters; c += kFusedClusters) {
      jobs.push_back(
          {static_cast<uint32_t>(s.begin), static_cast<uint32_t>(s.end),
           first + c,
           first + std::min<uint32_t>(s.num_clusters, c + kFusedClusters),
           seg});
    }
    first += s.num_clusters;
    ++seg;
  }
  return jobs;
}

uint64_t MaxSegmentRows(const GpuKMeansPlan& plan) {
  uint64_t m = 0;
  for (const SegmentPlan& s : plan.segments) m = std::max(m, s.end - s.begin);
  return m;
}

std::vector<AssignTile> AllTiles(uint32_t n, uint32_t k,
                                 uint32_t rows = kAssignRows) {
  std::vector<AssignTile> tiles;
  for (uint64_t r = 0; r < n; r += rows) {
    tiles.push_back({static_cast<uint32_t>(r),
                     static_cast<uint32_t>(std::min<uint64_t>(n, r + rows)), 0,
                     k});
  }
  return tiles;
}

struct EventMarks {
  cudaStream_t stream;
  std::vector<std::pair<int, cudaEvent_t>> events;
  cudaError_t error = cudaSuccess;
};

void RecordMark(void* ctx, int phase) {
  auto* m = static_cast<EventMarks*>(ctx);
  cudaEvent_t e;
  cudaError_t err = cudaEventCreate(&e);
  if (err == cudaSuccess) err = cudaEventRecord(e, m->stream);
  if (err != cudaSuccess) {
    m->error = err;
    return;
  }
  m->events.push_back({phase, e});
}

}  // namespace

GpuSegmentedKMeans::~GpuSegmentedKMeans() {
  if (buffer_ != nullptr) cudaFree(buffer_);
}

absl::Status GpuSegmentedKMeans::Validate(
    const GpuKMeansPlan& plan, absl::Span<const KMeansProblem> problems) {
  if (plan.head_dim != 64 && plan.head_dim != 128 && plan.head_dim != 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: ", plan.head_dim, " is not supported (64, 128 or 256)"));
  }
  if (plan.dtype != ElemType::kFp16 && plan.dtype != ElemType::kBf16 &&
      plan.dtype != ElemType::kFp32) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: unknown value ", static_cast<int>(plan.dtype)));
  }
  if (plan.iterations < 1 || plan.iterations > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("iterations: must be in [1, 100], got ", plan.iterations));
  }
  if (plan.num_tokens == 0) {
    return absl::InvalidArgumentError("num_tokens: must be > 0");
  }
  if (plan.scorer != KMeansScorer::kAuto &&
      plan.scorer != KMeansScorer::kMmaSync &&
      plan.scorer != KMeansScorer::kWgmma &&
      plan.scorer != KMeansScorer::kWgmmaStationary) {
    return absl::InvalidArgumentError(
        absl::StrCat("scorer: unknown value ", static_cast<int>(plan.scorer)));
  }
  uint64_t expect = 0, clusters = 0;
  for (size_t s = 0; s < plan.segments.size(); ++s) {
    const SegmentPlan& seg = plan.segments[s];
    if (seg.begin != expect || seg.end <= seg.begin ||
        seg.end > plan.num_tokens || seg.num_clusters == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "segments[", s, "]: [", seg.begin, ", ", seg.end, ") with ",
          seg.num_clusters, " clusters does not continue the tiling of [0, ",
          plan.num_tokens, ") at ", expect, " with >= 1 cluster"));
    }
    expect = seg.end;
    clusters += seg.num_clusters;
  }
  if (expect != plan.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("segments: cover [0, ",
                                                   expect, "), expected [0, ",
                                                   plan.num_tokens, ")"));
  }
  if (problems.empty() || problems.size() > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("problems: need 1 to 65535, got ", problems.size()));
  }
  const uint64_t p = problems.size();
  if (p * plan.num_tokens >
          static_cast<uint64_t>(std::numeric_limits<int32_t>::max()) ||
      p * clusters >= std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "problems: ", p, " x ", plan.num_tokens, " tokens x ", clusters,
        " clusters exceeds one launch (< 2^31 tokens, < 2^32 clusters)"));
  }
  for (size_t i = 0; i < problems.size(); ++i) {
    if (problems[i].keys == nullptr || problems[i].values == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("problems[", i, "].keys/values: null"));
    }
    if (problems[i].row_stride < plan.head_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("problems[", i, "].row_stride: ", problems[i].row_stride,
                       " elements is less than head_dim ", plan.head_dim));
    }
  }
  return absl::OkStatus();
}

absl::Status GpuSegmentedKMeans::Run(const GpuKMeansPlan& plan,
                                     absl::Span<const KMeansProblem> problems,
                                     cudaStream_t stream,
                                     KMeansPhaseTimes* times) {
  if (absl::Status s = Validate(plan, problems); !s.ok()) return s;
  has_result_ = false;
  const int np = static_cast<int>(problems.size());
  const uint32_t n = plan.num_tokens;
  const uint32_t k = TotalClusters(plan);
  const int d = plan.head_dim;
  const uint64_t groups = static_cast<uint64_t>(np) * k;
  const int end_bit = std::max(1, static_cast<int>(std::bit_width(groups - 1)));
  bool wgmma = false, stationary = false;
  if (plan.scorer == KMeansScorer::kWgmma ||
      plan.scorer == KMeansScorer::kWgmmaStationary) {
    if (!KMeansWgmmaAvailable()) {
      return absl::FailedPreconditionError(
          "scorer: wgmma needs an sm_90a build on a compute capability 9.0 "
          "GPU");
    }
    wgmma = true;
    stationary = plan.scorer == KMeansScorer::kWgmmaStationary;
  } else if (plan.scorer == KMeansScorer::kAuto) {
    wgmma = stationary = KMeansWgmmaAvailable();
  }
  const std::vector<AssignTile> seg_tiles = SegmentTiles(plan);
  const std::vector<AssignTile> all_tiles = AllTiles(n, k);
  const bool fused =
      plan.fused_update && MaxSegmentRows(plan) <= kFusedMaxSegmentRows;
  const std::vector<AssignTile> jobs =
      fused ? UpdateJobs(plan) : std::vector<AssignTile>{};
  int cent_tiles = 0;
  if (stationary && fused) {
    uint32_t max_k = 0;
    for (const SegmentPlan& s : plan.segments) {
      max_k = std::max(max_k, s.num_clusters);
    }
    cent_tiles = static_cast<int>((max_k + 127) / 128);
    if (cent_tiles > KMeansStationaryMaxCentTiles(d)) cent_tiles = 0;
  }
  const std::vector<AssignTile> stat_jobs =
      cent_tiles > 0 ? StationaryJobs(plan) : std::vector<AssignTile>{};

  if (seg_tiles.size() > std::numeric_limits<int32_t>::max() ||
      all_tiles.size() > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("num_tokens: too many tiles");
  }
  const Layout l =
      MakeLayout(np, n, k, d, plan.segments.size(), seg_tiles.size(),
                 all_tiles.size(), jobs.size(), stat_jobs.size(), end_bit);
  if (l.cub_bytes == 0) {
    return absl::InternalError("kmeans: CUB sort size query failed");
  }
  if (l.total > capacity_) {
    if (buffer_ != nullptr) {
      cudaFree(buffer_);
      buffer_ = nullptr;
      capacity_ = 0;
    }
    cudaError_t err = cudaMalloc(&buffer_, l.total);
    if (err != cudaSuccess) {
      buffer_ = nullptr;
      cudaGetLastError();  // clear the (non-sticky) allocation error
      return absl::ResourceExhaustedError(
          absl::StrCat("kmeans: cannot allocate ", l.total,
                       " bytes of GPU workspace: ", cudaGetErrorString(err)));
    }
    capacity_ = l.total;
  }
  char* base = static_cast<char*>(buffer_);
  std::vector<KMeansSegment> segs;
  uint32_t first = 0;
  for (const SegmentPlan& s : plan.segments) {
    segs.push_back({static_cast<uint32_t>(s.begin),
                    static_cast<uint32_t>(s.end), first, s.num_clusters});
    first += s.num_clusters;
  }
  // Synchronous copies: the host vectors die with this call.
  auto upload = [&](size_t off, const void* src, size_t bytes) {
    return cudaMemcpyAsync(base + off, src, bytes, cudaMemcpyHostToDevice,
                           stream);
  };
  cudaError_t err = upload(l.problems, problems.data(),
                           problems.size() * sizeof(KMeansProblem));
  if (err == cudaSuccess) {
    err = upload(l.segments, segs.data(), segs.size() * sizeof(KMeansSegment));
  }
  if (err == cudaSuccess) {
    err = upload(l.seg_tiles, seg_tiles.data(),
                 seg_tiles.size() * sizeof(AssignTile));
  }
  if (err == cudaSuccess) {
    err = upload(l.all_tiles, all_tiles.data(),
                 all_tiles.size() * sizeof(AssignTile));
  }
  if (err == cudaSuccess && !jobs.empty()) {
    err = upload(l.update_jobs, jobs.data(), jobs.size() * sizeof(AssignTile));
  }
  if (err == cudaSuccess && !stat_jobs.empty()) {
    err = upload(l.stat_jobs, stat_jobs.data(),
                 stat_jobs.size() * sizeof(AssignTile));
  }
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) return CudaError(err, "uploading the plan");

  KMeansRawArgs& a = args_;
  a = KMeansRawArgs{};
  a.dtype = plan.dtype;
  a.head_dim = d;
  a.num_problems = np;
  a.num_tokens = n;
  a.num_clusters = k;
  a.num_segments = static_cast<int>(segs.size());
  a.iterations = static_cast<int>(plan.iterations);
  a.end_bit = end_bit;
  a.fused_update = fused;
  a.wgmma = wgmma;
  a.stationary_cent_tiles = cent_tiles;
  a.stationary_jobs = reinterpret_cast<const AssignTile*>(base + l.stat_jobs);
  a.num_stationary_jobs = static_cast<int>(stat_jobs.size());

  a.update_jobs = reinterpret_cast<const AssignTile*>(base + l.update_jobs);
  a.num_update_jobs = static_cast<int>(jobs.size());
  a.max_segment_rows = static_cast<uint32_t>(MaxSegmentRows(plan));
  a.seg_flags = reinterpret_cast<int*>(base + l.seg_flags);
  a.problems = reinterpret_cast<const KMeansProblem*>(base + l.problems);
  a.segments = reinterpret_cast<const KMeansSegment*>(base + l.segments);
  a.seg_tiles = reinterpret_cast<const AssignTile*>(base + l.seg_tiles);
  a.num_seg_tiles = static_cast<int>(seg_tiles.size());
  a.all_tiles = reinterpret_cast<const AssignTile*>(base + l.all_tiles);
  a.num_all_tiles = static_cast<int>(all_tiles.size());
  a.mean_partials = reinterpret_cast<double*>(base + l.mean_partials);
  a.mean = reinterpret_cast<float*>(base + l.mean);
  a.xhat = reinterpret_cast<uint16_t*>(base + l.xhat);
  a.cent = reinterpret_cast<uint16_t*>(base + l.cent);
  a.sort_keys_in = reinterpret_cast<uint32_t*>(base + l.keys_in);
  a.sort_keys_out = reinterpret_cast<uint32_t*>(base + l.keys_out);
  a.sort_vals_in = reinterpret_cast<uint32_t*>(base + l.vals_in);
  a.offsets = reinterpret_cast<uint32_t*>(base + l.offsets);
  a.cub_temp = base + l.cub_temp;
  a.cub_temp_bytes = l.cub_bytes;
  a.flags = reinterpret_cast<int*>(base + l.flags);
  a.assignment = reinterpret_cast<uint32_t*>(base + l.assignment);
  a.slot_tokens = reinterpret_cast<uint32_t*>(base + l.slot_tokens);
  a.sizes = reinterpret_cast<uint32_t*>(base + l.sizes);
  a.centroids = reinterpret_cast<float*>(base + l.centroids);
  a.value_sums = reinterpret_cast<float*>(base + l.value_sums);

  EventMarks marks{stream, {}, cudaSuccess};
  if (times != nullptr) {
    a.mark = &RecordMark;
    a.mark_ctx = &marks;
    RecordMark(&marks, -1);
  }
  err = static_cast<cudaError_t>(LaunchKMeansRaw(a, stream));
  a.mark = nullptr;
  a.mark_ctx = nullptr;
  absl::Status status = err == cudaSuccess
                            ? absl::OkStatus()
                            : CudaError(err, "launching the pipeline");
  if (times != nullptr) {
    *times = KMeansPhaseTimes{};
    if (status.ok() && marks.error != cudaSuccess) {
      status = CudaError(marks.error, "recording events");
    }
    if (status.ok()) {
      err = cudaStreamSynchronize(stream);
      if (err != cudaSuccess) status = CudaError(err, "running the pipeline");
    }
    for (size_t i = 1; status.ok() && i < marks.events.size(); ++i) {
      float ms = 0.f;
      err = cudaEventElapsedTime(&ms, marks.events[i - 1].second,
                                 marks.events[i].second);
      if (err != cudaSuccess) {
        status = CudaError(err, "reading events");
        break;
      }
      times->ms[marks.events[i].first] += ms;
      times->total_ms += ms;
    }
    for (auto& [phase, e] : marks.events) cudaEventDestroy(e);
  }
  has_result_ = status.ok();
  return status;
}

absl::StatusOr<std::vector<GpuKMeansResult>> GpuSegmentedKMeans::CopyResults(
    cudaStream_t stream) const {
  if (!has_result_) {
    return absl::FailedPreconditionError("kmeans: no successful Run");
  }
  const KMeansRawArgs& a = args_;
  const size_t p = a.num_problems, n = a.num_tokens, k = a.num_clusters,
               d = a.head_dim;
  int flags[2] = {0, 0};
  std::vector<float> cent(p * k * d), vs(p * k * d);
  std::vector<uint32_t> sizes(p * k), assign(p * n), slots(p * n);
  struct Copy {
    void* dst;
    const void* src;
    size_t bytes;
  };
  const Copy copies[] = {
      {flags, a.flags, sizeof(flags)},
      {cent.data(), a.centroids, cent.size() * sizeof(float)},
      {vs.data(), a.value_sums, vs.size() * sizeof(float)},
      {sizes.data(), a.sizes, sizes.size() * sizeof(uint32_t)},
      {assign.data(), a.assignment, assign.size() * sizeof(uint32_t)},
      {slots.data(), a.slot_tokens, slots.size() * sizeof(uint32_t)},
  };
  for (const Copy& c : copies) {
    cudaError_t err =
        cudaMemcpyAsync(c.dst, c.src, c.bytes, cudaMemcpyDeviceToHost, stream);
    if (err != cudaSuccess) return CudaError(err, "copying results");
  }
  if (cudaError_t err = cudaStreamSynchronize(stream); err != cudaSuccess) {
    return CudaError(err, "copying results");
  }
  if (flags[0] != 0) {
    return absl::InvalidArgumentError("keys: non-finite value");
  }
  if (flags[1] != 0) {
    return absl::InvalidArgumentError("values: non-finite value");
  }
  std::vector<GpuKMeansResult> out(p);
  for (size_t i = 0; i < p; ++i) {
    GpuKMeansResult& r = out[i];
    r.num_clusters = k;
    r.dim = d;
    r.centroids.assign(cent.begin() + i * k * d,
                       cent.begin() + (i + 1) * k * d);
    r.value_sums.assign(vs.begin() + i * k * d, vs.begin() + (i + 1) * k * d);
    r.sizes.assign(sizes.begin() + i * k, sizes.begin() + (i + 1) * k);
    r.assignment.assign(assign.begin() + i * n, assign.begin() + (i + 1) * n);
    r.slot_tokens.assign(slots.begin() + i * n, slots.begin() + (i + 1) * n);
  }
  return out;
}

}  // namespace wavekv::cuda
