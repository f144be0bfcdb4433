// Test helpers for the GPU k-means tests: device buffers, synthetic keys
// (well separated, or random) and the CPU reference of one problem.
#ifndef WAVEKV_INDEX_CUDA_KMEANS_TEST_UTIL_H_
#define WAVEKV_INDEX_CUDA_KMEANS_TEST_UTIL_H_

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "index/dtype.h"
#include "index/kmeans.h"
#include "index/wave_index_params.h"

namespace wavekv::cuda::testing {

// RAII device memory (nullptr data() if cudaMalloc failed).
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    if (cudaMalloc(&ptr_, bytes == 0 ? 16 : bytes) != cudaSuccess) {
      ptr_ = nullptr;
    }
  }
  DeviceBuffer(const void* host, size_t bytes) : DeviceBuffer(bytes) {
    if (ptr_ != nullptr && bytes > 0) {
      cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice);
    }
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

// Keys of `n` tokens ([n][d] floats) that form well separated clusters under
// `segments`: each segment has num_clusters true centres (random directions,
// norm 8), every token is its centre plus N(0, 0.25^2) noise, and the token
// at each evenly spaced initial pick belongs to a different centre, so the
// clustering is unambiguous. With `constant_first_segment`, every key of
// segment 0 is one and the same vector: all its keys then pick the same
// cluster and the segment's other clusters stay empty.
inline std::vector<float> SeparatedKeys(
    const std::vector<SegmentPlan>& segments, size_t n, size_t d, uint32_t seed,
    bool constant_first_segment = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> keys(n * d);
  for (size_t s = 0; s < segments.size(); ++s) {
    const SegmentPlan& seg = segments[s];
    const size_t k = seg.num_clusters, m = seg.end - seg.begin;
    std::vector<float> centres(k * d);
    for (size_t c = 0; c < k; ++c) {
      double norm = 0;
      for (size_t j = 0; j < d; ++j) {
        centres[c * d + j] = normal(rng);
        norm += centres[c * d + j] * centres[c * d + j];
      }
      for (size_t j = 0; j < d; ++j) {
        centres[c * d + j] *= 8.0 / std::sqrt(norm);
      }
    }
    std::uniform_int_distribution<size_t> pick_label(0, k - 1);
    std::vector<size_t> label(m);
    for (size_t i = 0; i < m; ++i) label[i] = pick_label(rng);
    for (size_t c = 0; c < k; ++c) label[(2 * c * m + m) / (2 * k)] = c;
    const bool constant = constant_first_segment && s == 0;
    for (size_t i = 0; i < m; ++i) {
      const size_t c = constant ? 0 : label[i];
      for (size_t j = 0; j < d; ++j) {
        keys[(seg.begin + i) * d + j] =
            centres[c * d + j] + (constant ? 0.f : 0.25f * normal(rng));
      }
    }
  }
  return keys;
}

// [n][d] floats: N(0, 1) plus a shared offset per dimension (keys after
// RoPE have a strong common component).
inline std::vector<float> RandomRows(size_t n, size_t d, uint32_t seed,
                                     float offset_scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> offset(d);
  for (float& x : offset) x = offset_scale * normal(rng);
  std::vector<float> rows(n * d);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < d; ++j) rows[i * d + j] = offset[j] + normal(rng);
  }
  return rows;
}

// Rounds floats through `dtype` (what the GPU will read).
inline std::vector<float> RoundTrip(DType dtype, const std::vector<float>& x) {
  std::vector<uint8_t> bytes(x.size() * DTypeBytes(dtype));
  EncodeFromFloat(dtype, x.data(), x.size(), bytes.data());
  std::vector<float> out(x.size());
  DecodeToFloat(dtype, bytes.data(), x.size(), out.data());
  return out;
}

// Interleaves per-problem [n][d] float rows into one [n][P][d] buffer of
// `dtype` bytes (a layer buffer with P kv heads).
inline std::vector<uint8_t> Interleave(
    DType dtype, const std::vector<std::vector<float>>& per_problem, size_t n,
    size_t d) {
  const size_t p = per_problem.size(), elem = DTypeBytes(dtype);
  std::vector<uint8_t> out(n * p * d * elem);
  for (size_t i = 0; i < p; ++i) {
    for (size_t t = 0; t < n; ++t) {
      EncodeFromFloat(dtype, per_problem[i].data() + t * d, d,
                      out.data() + ((t * p + i) * d) * elem);
    }
  }
  return out;
}

// CPU reference of one problem: the k-means of index/kmeans.h plus value
// sums (double, token order) and the cluster-major slot order, as
// WaveIndex::PrepareBlock computes them.
struct CpuReference {
  KMeansResult km;
  std::vector<float> value_sums;
  std::vector<uint32_t> slot_tokens;
};

inline CpuReference CpuCluster(const std::vector<float>& keys,
                               const std::vector<float>& values, size_t n,
                               size_t d,
                               const std::vector<SegmentPlan>& segments,
                               uint32_t iterations) {
  CpuReference ref;
  ref.km =
      *SegmentedSphericalKMeans(keys.data(), n, d, segments, iterations, 4);
  const size_t k = ref.km.num_clusters;
  std::vector<double> vs(k * d, 0.0);
  std::vector<uint64_t> cursor(k, 0);
  for (size_t c = 1; c < k; ++c)
    cursor[c] = cursor[c - 1] + ref.km.sizes[c - 1];
  ref.slot_tokens.resize(n);
  for (size_t t = 0; t < n; ++t) {
    const uint32_t c = ref.km.assignment[t];
    ref.slot_tokens[cursor[c]++] = t;
    for (size_t j = 0; j < d; ++j) vs[c * d + j] += values[t * d + j];
  }
  ref.value_sums.assign(vs.begin(), vs.end());
  return ref;
}

}  // namespace wavekv::cuda::testing

#endif  // WAVEKV_INDEX_CUDA_KMEANS_TEST_UTIL_H_
