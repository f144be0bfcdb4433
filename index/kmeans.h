// Segmented spherical k-means over the fp32 keys of one kv head
// (DESIGN.md, "Wave index"; RETROINFER-NOTES.md 1.3-1.5):
//   1. centre the keys on their mean;
//   2. per segment, initialise its clusters from evenly spaced keys and run
//      `iterations` rounds of: assign each key to the normalised centroid of
//      its segment with the largest inner product, recompute the member
//      means, normalise (an empty cluster keeps its centroid);
//   3. assign every key against the normalised centroids of *all* segments
//      and store each cluster's unnormalised member mean, in the original
//      (uncentred) space, so the centroid is exactly the mean of its keys.
// Empty clusters are legal: size 0 and a zero centroid.
//
// Results are deterministic and independent of num_threads (every key's
// assignment is computed independently; sums run in a fixed order).
//
// Thread-safe: pure function.
#ifndef WAVEKV_INDEX_KMEANS_H_
#define WAVEKV_INDEX_KMEANS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/wave_index_params.h"

namespace wavekv {

struct KMeansResult {
  size_t num_clusters = 0;
  size_t dim = 0;
  // [num_clusters][dim]: member mean in the original space; zeros if empty.
  std::vector<float> centroids;
  std::vector<uint32_t> sizes;       // [num_clusters]
  std::vector<uint32_t> assignment;  // [num_keys]: cluster of each key
};

// Clusters `num_keys` keys ([num_keys][dim] fp32, contiguous). `segments`
// must tile [0, num_keys) in order, each with num_clusters >= 1; cluster ids
// are numbered segment by segment. InvalidArgument on a bad segment plan,
// dim == 0 or iterations == 0. num_keys == 0 gives an empty result.
absl::StatusOr<KMeansResult> SegmentedSphericalKMeans(
    const float* keys, size_t num_keys, size_t dim,
    absl::Span<const SegmentPlan> segments, uint32_t iterations,
    int num_threads);

}  // namespace wavekv

#endif  // WAVEKV_INDEX_KMEANS_H_
