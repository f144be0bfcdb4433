// Wave-index blocks built on the GPU: the GPU counterpart of
// WaveIndex::PrepareBlock (index/wave_index.h) for many (layer, kv head)
// indexes at once. Each problem's block is clustered by GpuSegmentedKMeans
// under PlanSegments(params, num_tokens) and returned as a PreparedBlock
// that the caller commits with WaveIndex::CommitBlock, exactly as a
// CPU-prepared block (same segment plan, same slot order, same statistics;
// see kmeans.h for where the GPU may assign a near-tie differently).
// Prefill blocks and decode updates (update_tokens new tokens ->
// update_tokens / cluster_size clusters) take the same path.
//
// Example (one layer's block, [tokens][kv_heads][head_dim] on the GPU):
//   std::vector<KMeansProblem> problems =
//       LayerHeadProblems(d_keys, d_values, DType::kFp16, kv_heads, 128);
//   ASSIGN_OR_RETURN(std::vector<PreparedBlock> blocks,
//                    PrepareBlocksOnGpu(km, params, DType::kFp16, 128,
//                                       first_token, n, problems, indexes,
//                                       stream));
//   for (size_t h = 0; h < blocks.size(); ++h)
//     ASSIGN_OR_RETURN(BlockLayout layout,
//                      index[h].CommitBlock(std::move(blocks[h])));
//
// Not thread-safe with respect to `kmeans` (one call at a time per object);
// the indexes are only read.
#ifndef WAVEKV_INDEX_CUDA_INDEX_BUILD_H_
#define WAVEKV_INDEX_CUDA_INDEX_BUILD_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/cuda/kmeans.h"
#include "index/dtype.h"
#include "index/wave_index.h"
#include "index/wave_index_params.h"

namespace wavekv::cuda {

// Problems for every kv head of one layer buffer laid out as
// [tokens][num_kv_heads][head_dim] (device pointers to the block's first
// token): head h starts at h * head_dim elements, rows num_kv_heads *
// head_dim elements apart.
std::vector<KMeansProblem> LayerHeadProblems(const void* keys,
                                             const void* values, DType dtype,
                                             int num_kv_heads, int head_dim);

// Clusters tokens [first_token, first_token + num_tokens) of every problem
// on the GPU and returns one PreparedBlock per problem, prepared against
// indexes[i] (its base_clusters/base_slots). Errors, with nothing changed:
// InvalidArgument for bad params, a head_dim of an index that differs, a
// size mismatch between problems and indexes, bad problems (see
// GpuSegmentedKMeans::Validate) or non-finite keys/values;
// FailedPrecondition if a non-empty index does not end at first_token;
// ResourceExhausted/Internal from the GPU. num_tokens == 0 gives empty
// blocks without touching the GPU. Waits for `stream`.
absl::StatusOr<std::vector<PreparedBlock>> PrepareBlocksOnGpu(
    GpuSegmentedKMeans& kmeans, const WaveIndexParams& params, DType dtype,
    int head_dim, uint64_t first_token, uint64_t num_tokens,
    absl::Span<const KMeansProblem> problems,
    absl::Span<const WaveIndex* const> indexes, cudaStream_t stream);

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_INDEX_BUILD_H_
