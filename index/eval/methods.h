// The methods the accuracy harness compares, over one Workload (one kv
// head): each picks the set of tokens attended exactly for a decode-step
// query group, optionally with an estimated tail.
//
//   wave          WaveIndex + PlanRetrieval (DESIGN.md, "The algorithm"):
//                 steady zone + retrieval zone exactly, estimation zone as
//                 the tail statistics.
//   wave-no-tail  the same exact set, tail dropped (what estimation adds).
//   streaming     StreamingLLM: the first sink_tokens + the most recent
//                 tokens, to the budget.
//   quest         Quest: pages of quest_page_tokens tokens scored by the
//                 per-channel min/max upper bound Σ_j max(q_j min_j,
//                 q_j max_j) · scale, plus the same steady zone as wave;
//                 whole pages in score order until the budget is reached.
//   random        the wave index's clusters in a random (seeded) order, plus
//                 the steady zone, to the budget.
//   oracle        (reference, not a baseline) the budget's tokens with the
//                 largest exact softmax probability summed over the group:
//                 the most softmax mass an exact set of that size can hold
//                 (it needs the full attention it approximates).
//
// Budget: the number of exactly attended tokens of wave (steady + retrieval
// zone) for the same query group. Page- and cluster-granular methods take
// whole pages/clusters until they reach it, so they get at least the budget
// (at most one page or cluster more). Every method picks ONE set per GQA
// group (K/V are shared by the group); group scores are Σ_h softmax_h(·),
// the rule PlanRetrieval uses for clusters.
//
// Thread-safe: a built MethodSuite is immutable; its const methods may run
// concurrently.
#ifndef WAVEKV_INDEX_EVAL_METHODS_H_
#define WAVEKV_INDEX_EVAL_METHODS_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/attention.h"
#include "index/eval/workload.h"
#include "index/wave_index.h"
#include "index/wave_index_params.h"

namespace wavekv {
namespace eval {

enum class Method {
  kWave,
  kWaveNoTail,
  kStreamingLlm,
  kQuest,
  kRandomClusters,
  kOracleTopK,
};
inline constexpr Method kAllMethods[] = {
    Method::kWave,  Method::kWaveNoTail,     Method::kStreamingLlm,
    Method::kQuest, Method::kRandomClusters, Method::kOracleTopK};

// "wave", "wave-no-tail", "streaming", "quest", "random", "oracle".
std::string_view MethodName(Method method);
// Inverse of MethodName; InvalidArgument naming the unknown name.
absl::StatusOr<Method> ParseMethod(std::string_view name);

struct MethodsOptions {
  // WAVE's index parameters (defaults: DESIGN.md). The steady zone
  // (sink_tokens + recent_tokens) is shared by wave, quest and random;
  // streaming keeps sink_tokens sinks.
  WaveIndexParams index;
  // Quest page size in tokens. 1..4096.
  uint32_t quest_page_tokens = 16;
  // Seed of the random-cluster order.
  uint64_t seed = 1;
  // Threads for the index build. >= 1.
  int num_threads = 1;
  // The prefill is indexed in blocks of at most this many segments (0: one
  // block, whose final k-means pass assigns every key against all of the
  // head's centroids, as DESIGN.md states it; kvstore's engine builds in
  // blocks of 8 segments to keep the build linear). 0..1024.
  uint32_t max_block_segments = 0;

  absl::Status Validate() const;
};

// What a method attends.
struct Selection {
  // Token positions attended exactly: sorted, unique.
  std::vector<uint64_t> tokens;
  // Estimated partial softmax per query head (wave only; empty otherwise).
  std::vector<AttentionPartial> tail;
};

class MethodSuite {
 public:
  // Builds what the methods need over `workload`: the wave index (the
  // prefill blocks NextIndexBlock gives, cut to max_block_segments) and
  // Quest's page bounds.
  // InvalidArgument on bad options; errors of WaveIndex::AddBlock.
  // REQUIRES: `workload` outlives the suite.
  static absl::StatusOr<MethodSuite> Build(const Workload& workload,
                                           const MethodsOptions& options);

  MethodSuite(MethodSuite&&) = default;

  const WaveIndex& index() const { return index_; }
  double index_build_seconds() const { return index_build_seconds_; }
  double quest_build_seconds() const { return quest_build_seconds_; }
  // Tokens outside the index: sinks, recent window (always exact).
  const std::vector<uint64_t>& steady_tokens() const { return steady_; }

  // WAVE for `queries` ([group_size][head_dim]): steady + retrieval zone,
  // with the estimation zone's tail when `with_tail`. Errors of
  // PlanRetrieval.
  absl::StatusOr<Selection> Wave(absl::Span<const float> queries,
                                 bool with_tail) const;
  // StreamingLLM at `budget` tokens.
  Selection StreamingLlm(uint64_t budget) const;
  // Quest at (at least) `budget` tokens. REQUIRES: queries of the group.
  Selection Quest(absl::Span<const float> queries, uint64_t budget) const;
  // Quest's score of page `page` for one query head ([head_dim]): the upper
  // bound scale · Σ_j max(q_j · min_j, q_j · max_j) of q·k · scale over the
  // page's keys. REQUIRES: page < num_pages().
  double QuestUpperBound(const float* query, size_t page) const;
  size_t num_pages() const;
  // Random clusters at (at least) `budget` tokens; `draw` picks the order
  // (with options.seed).
  Selection RandomClusters(uint64_t budget, uint64_t draw) const;
  // The `budget` tokens of highest `scores` ([num_tokens]); ties to the
  // lower position.
  static Selection TopTokens(absl::Span<const double> scores, uint64_t budget);

 private:
  MethodSuite(const Workload& workload, const MethodsOptions& options);

  // Adds the tokens of steady_ to `selected` (a [num_tokens] mask) and
  // returns their count.
  uint64_t MarkSteady(std::vector<uint8_t>& selected) const;
  static std::vector<uint64_t> MaskToTokens(const std::vector<uint8_t>& mask);

  const Workload* workload_;
  MethodsOptions options_;
  WaveIndex index_;
  std::vector<uint64_t> steady_;
  // Quest: per page, per channel min and max of the keys.
  std::vector<float> page_min_, page_max_;  // [num_pages][head_dim]
  double index_build_seconds_ = 0;
  double quest_build_seconds_ = 0;
};

}  // namespace eval
}  // namespace wavekv

#endif  // WAVEKV_INDEX_EVAL_METHODS_H_
