#include "index/cuda/index_build.h"

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv::cuda {

std::vector<KMeansProblem> LayerHeadProblems(const void* keys,
                                             const void* values, DType dtype,
                                             int num_kv_heads, int head_dim) {
  const size_t elem = DTypeBytes(dtype);
  std::vector<KMeansProblem> out;
  for (int h = 0; h < num_kv_heads; ++h) {
    const size_t off = static_cast<size_t>(h) * head_dim * elem;
    out.push_back({static_cast<const uint8_t*>(keys) + off,
                   static_cast<const uint8_t*>(values) + off,
                   static_cast<int64_t>(num_kv_heads) * head_dim});
  }
  return out;
}

absl::StatusOr<std::vector<PreparedBlock>> PrepareBlocksOnGpu(
    GpuSegmentedKMeans& kmeans, const WaveIndexParams& params, DType dtype,
    int head_dim, uint64_t first_token, uint64_t num_tokens,
    absl::Span<const KMeansProblem> problems,
    absl::Span<const WaveIndex* const> indexes, cudaStream_t stream) {
  RETURN_IF_ERROR(params.Validate());
  if (indexes.size() != problems.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "indexes: ", indexes.size(), " for ", problems.size(), " problems"));
  }
  for (size_t i = 0; i < indexes.size(); ++i) {
    const WaveIndex* index = indexes[i];
    if (index == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("indexes[", i, "]: null"));
    }
    if (index->head_dim() != static_cast<size_t>(head_dim)) {
      return absl::InvalidArgumentError(
          absl::StrCat("head_dim: indexes[", i, "] has ", index->head_dim(),
                       ", rows have ", head_dim));
    }
    if (num_tokens > 0 && index->num_slots() > 0 &&
        first_token != index->end_token()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "indexes[", i, "] covers tokens [", index->begin_token(), ", ",
          index->end_token(), "); a new block must start at ",
          index->end_token(), ", got ", first_token));
    }
  }
  std::vector<PreparedBlock> blocks(problems.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks[i].first_token = first_token;
    blocks[i].base_clusters = indexes[i]->num_clusters();
    blocks[i].base_slots = indexes[i]->num_slots();
  }
  if (num_tokens == 0) return blocks;
  if (num_tokens > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_tokens: ", num_tokens, " exceeds one GPU block"));
  }
  GpuKMeansPlan plan;
  plan.dtype = static_cast<ElemType>(dtype);
  plan.head_dim = head_dim;
  plan.num_tokens = static_cast<uint32_t>(num_tokens);
  plan.segments = PlanSegments(params, num_tokens);
  plan.iterations = params.kmeans_iterations;
  for (size_t i = 0; i < indexes.size(); ++i) {
    uint64_t new_clusters = 0;
    for (const SegmentPlan& s : plan.segments) new_clusters += s.num_clusters;
    if (indexes[i]->num_clusters() + new_clusters >
        std::numeric_limits<ClusterId>::max()) {
      return absl::ResourceExhaustedError("index: too many clusters");
    }
  }
  RETURN_IF_ERROR(kmeans.Run(plan, problems, stream));
  ASSIGN_OR_RETURN(std::vector<GpuKMeansResult> results,
                   kmeans.CopyResults(stream));
  for (size_t i = 0; i < blocks.size(); ++i) {
    GpuKMeansResult& r = results[i];
    PreparedBlock& b = blocks[i];
    b.centroids = std::move(r.centroids);
    b.value_sums = std::move(r.value_sums);
    b.sizes = std::move(r.sizes);
    b.slot_tokens.resize(r.slot_tokens.size());
    for (size_t s = 0; s < r.slot_tokens.size(); ++s) {
      b.slot_tokens[s] = first_token + r.slot_tokens[s];
    }
  }
  return blocks;
}

}  // namespace wavekv::cuda
