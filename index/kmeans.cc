#include "index/kmeans.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "index/panel_matrix.h"
#include "index/parallel.h"
#include "index/simd.h"

namespace wavekv {
namespace {

// Keys per assignment task: large enough to amortise task hand-out, small
// enough to balance two cores on one segment.
constexpr size_t kChunkKeys = 512;

// Scales v to unit length; a zero (or non-finite-norm) vector is left as is.
WAVEKV_MULTIVERSION
void NormaliseInPlace(float* v, size_t dim) {
  const float norm = std::sqrt(simd::Dot(v, v, dim));
  if (norm > 0.0f && std::isfinite(norm)) simd::Scale(1.0f / norm, v, dim);
}

WAVEKV_MULTIVERSION
void AddRow(const float* __restrict x, float* __restrict acc, size_t dim) {
  for (size_t j = 0; j < dim; ++j) acc[j] += x[j];
}

// State of one segment during the in-segment iterations.
struct SegmentState {
  size_t begin = 0, end = 0;
  size_t first_cluster = 0, num_clusters = 0;
  PanelMatrix centroids;             // normalised
  std::vector<uint32_t> assignment;  // local cluster ids, [end - begin]
  bool converged = false;
};

// Recomputes a segment's normalised centroids from its assignment. Returns
// nothing; empty clusters keep their centroid.
void UpdateSegmentCentroids(const float* centred, size_t dim,
                            SegmentState& seg) {
  std::vector<float> sums(seg.num_clusters * dim, 0.0f);
  std::vector<uint32_t> counts(seg.num_clusters, 0);
  for (size_t i = seg.begin; i < seg.end; ++i) {
    const uint32_t c = seg.assignment[i - seg.begin];
    AddRow(centred + i * dim, sums.data() + c * dim, dim);
    ++counts[c];
  }
  for (size_t c = 0; c < seg.num_clusters; ++c) {
    if (counts[c] == 0) continue;
    float* s = sums.data() + c * dim;
    // Spherical k-means: only the direction of the mean matters.
    const float norm = std::sqrt(simd::Dot(s, s, dim));
    if (!(norm > 0.0f) || !std::isfinite(norm)) continue;
    NormaliseInPlace(s, dim);
    seg.centroids.SetRow(c, s);
  }
}

absl::Status ValidatePlan(size_t num_keys, size_t dim,
                          absl::Span<const SegmentPlan> segments,
                          uint32_t iterations) {
  if (dim == 0) return absl::InvalidArgumentError("kmeans: dim must be > 0");
  if (iterations == 0) {
    return absl::InvalidArgumentError("kmeans: iterations must be > 0");
  }
  if (num_keys == 0) return absl::OkStatus();
  uint64_t expect = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    const SegmentPlan& seg = segments[s];
    if (seg.begin != expect || seg.end <= seg.begin || seg.end > num_keys) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kmeans: segments[", s, "] = [", seg.begin, ", ", seg.end,
          ") does not continue the tiling of [0, ", num_keys, ") at ", expect));
    }
    if (seg.num_clusters == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("kmeans: segments[", s, "].num_clusters must be > 0"));
    }
    expect = seg.end;
  }
  if (expect != num_keys) {
    return absl::InvalidArgumentError(
        absl::StrCat("kmeans: segments cover [0, ", expect, "), expected [0, ",
                     num_keys, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<KMeansResult> SegmentedSphericalKMeans(
    const float* keys, size_t num_keys, size_t dim,
    absl::Span<const SegmentPlan> segments, uint32_t iterations,
    int num_threads) {
  RETURN_IF_ERROR(ValidatePlan(num_keys, dim, segments, iterations));
  KMeansResult result;
  result.dim = dim;
  if (num_keys == 0) return result;

  // 1. Centre on the mean key (accumulated in double, in key order).
  std::vector<double> mean_d(dim, 0.0);
  for (size_t i = 0; i < num_keys; ++i) {
    for (size_t j = 0; j < dim; ++j) mean_d[j] += keys[i * dim + j];
  }
  std::vector<float> mean(dim);
  for (size_t j = 0; j < dim; ++j) mean[j] = mean_d[j] / num_keys;
  std::vector<float> centred(num_keys * dim);
  for (size_t i = 0; i < num_keys; ++i) {
    for (size_t j = 0; j < dim; ++j) {
      centred[i * dim + j] = keys[i * dim + j] - mean[j];
    }
  }

  // 2. In-segment iterations.
  std::vector<SegmentState> segs(segments.size());
  size_t total_clusters = 0;
  std::vector<float> row(dim);
  for (size_t s = 0; s < segments.size(); ++s) {
    SegmentState& seg = segs[s];
    seg.begin = segments[s].begin;
    seg.end = segments[s].end;
    seg.first_cluster = total_clusters;
    seg.num_clusters = segments[s].num_clusters;
    total_clusters += seg.num_clusters;
    seg.centroids = PanelMatrix(dim);
    seg.centroids.Reserve(seg.num_clusters);
    seg.assignment.assign(seg.end - seg.begin, 0);
    const size_t n = seg.end - seg.begin;
    for (size_t c = 0; c < seg.num_clusters; ++c) {
      // Evenly spaced keys, taken mid-stride: floor(c*n/k + n/(2k)).
      const size_t pick = seg.begin + (2 * c * n + n) / (2 * seg.num_clusters);
      std::memcpy(row.data(), centred.data() + pick * dim, dim * sizeof(float));
      NormaliseInPlace(row.data(), dim);
      seg.centroids.AppendRow(row.data());
    }
  }
  struct Chunk {
    size_t segment, begin, end;
  };
  std::vector<Chunk> chunks;
  for (size_t s = 0; s < segs.size(); ++s) {
    for (size_t b = segs[s].begin; b < segs[s].end; b += kChunkKeys) {
      chunks.push_back({s, b, std::min(segs[s].end, b + kChunkKeys)});
    }
  }
  std::vector<uint32_t> best(num_keys);
  for (uint32_t it = 0; it < iterations; ++it) {
    ParallelFor(chunks.size(), num_threads, [&](size_t t) {
      const Chunk& ch = chunks[t];
      if (segs[ch.segment].converged) return;
      ArgmaxInnerProduct(centred.data() + ch.begin * dim, ch.end - ch.begin,
                         segs[ch.segment].centroids, best.data() + ch.begin,
                         nullptr);
    });
    ParallelFor(segs.size(), num_threads, [&](size_t s) {
      SegmentState& seg = segs[s];
      if (seg.converged) return;
      const uint32_t* fresh = best.data() + seg.begin;
      // Unchanged assignments give unchanged centroids: a fixed point, so
      // stopping early gives the same result as running all iterations.
      if (it > 0 &&
          std::equal(seg.assignment.begin(), seg.assignment.end(), fresh)) {
        seg.converged = true;
        return;
      }
      std::copy(fresh, fresh + (seg.end - seg.begin), seg.assignment.begin());
      UpdateSegmentCentroids(centred.data(), dim, seg);
    });
  }

  // 3. Global assignment against every segment's centroids.
  PanelMatrix all(dim);
  all.Reserve(total_clusters);
  for (const SegmentState& seg : segs) {
    for (size_t c = 0; c < seg.num_clusters; ++c) {
      seg.centroids.CopyRow(c, row.data());
      all.AppendRow(row.data());
    }
  }
  segs.clear();
  result.assignment.resize(num_keys);
  const size_t num_chunks = (num_keys + kChunkKeys - 1) / kChunkKeys;
  ParallelFor(num_chunks, num_threads, [&](size_t t) {
    const size_t b = t * kChunkKeys;
    const size_t e = std::min(num_keys, b + kChunkKeys);
    ArgmaxInnerProduct(centred.data() + b * dim, e - b, all,
                       result.assignment.data() + b, nullptr);
  });

  // Unnormalised member means in the original space (double sums of the
  // original keys, in key order).
  result.num_clusters = total_clusters;
  result.sizes.assign(total_clusters, 0);
  std::vector<double> sums(total_clusters * dim, 0.0);
  for (size_t i = 0; i < num_keys; ++i) {
    const uint32_t c = result.assignment[i];
    ++result.sizes[c];
    double* acc = sums.data() + c * dim;
    const float* k = keys + i * dim;
    for (size_t j = 0; j < dim; ++j) acc[j] += k[j];
  }
  result.centroids.assign(total_clusters * dim, 0.0f);
  for (size_t c = 0; c < total_clusters; ++c) {
    if (result.sizes[c] == 0) continue;
    const double inv = 1.0 / result.sizes[c];
    for (size_t j = 0; j < dim; ++j) {
      result.centroids[c * dim + j] =
          static_cast<float>(sums[c * dim + j] * inv);
    }
  }
  return result;
}

}  // namespace wavekv
