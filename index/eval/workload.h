// Workload: a deterministic synthetic long context of one kv head, with the
// structure of real attention and known answers, for the accuracy harness
// (harness.h).
//
// Keys (pre-RoPE, per token t):
//   k = head offset (a per-head mean, plus `outlier_channels` large channels
//       in the lowest-frequency RoPE pairs, as real keys have: why the wave
//       index mean-centres keys)
//     + the centre of the token's topic (topics come in runs of about
//       topic_run_tokens tokens; centres lean on the low-frequency pairs,
//       which carry semantic content in real models)
//     + key_noise * N(0, I);
// the first `attention_sinks` tokens get a large sink direction instead of
// a topic, and needle tokens a large needle direction. Then RoPE rotates
// every key by its position (theta rope_theta, Llama's rotate-half pairing:
// channel j pairs with j + d/2 at frequency theta^(-2j/d)), and K/V are
// rounded through `dtype`. Values: the topic's value mean + N(0, I); sinks
// near zero; every token of a needle carries the needle's distinctive value
// (needle_value_gain * N(0, I)).
//
// Probes are decode-step queries of one GQA group (group_size q heads) at
// position num_tokens, in post-RoPE space:
//   - a background part: RoPE(num_tokens) of a mixture of topic centres
//     (the current topic and two others), shared by the group with a
//     per-head perturbation and a per-head gain (correlated q heads); RoPE
//     makes its match decay with distance, as in real models;
//   - a sink part, along the sink tokens' keys, sized so that the sinks
//     carry sink_mass against the rest of the context (attention sinks);
//   - per targeted needle, a part along that needle's keys, sized so that
//     the needle carries needle_mass against the rest of the context, sinks
//     included (planted needle; the known answer is its token positions).
//   The parts' gains are solved jointly against the exact logits, so a
//   background probe's sinks hold sink_mass of the softmax, a single needle
//   needle_mass, and each of k needles of one head needle_mass/(1 -
//   needle_mass) times the rest (1/(k+1) each at 0.5).
// Kinds: one single-needle probe per depth in needle_depths; a multi-needle
// probe (every head targets all needles at multi_needle_depths); a
// multi-query probe (head h targets needle h mod k of the same set); and
// background_probes probes without a needle. All needles of all probes are
// planted in the one context (each probe's needles are its targets; the
// others are distractors).
//
// Thread-safe: a Workload is immutable after Generate.
#ifndef WAVEKV_INDEX_EVAL_WORKLOAD_H_
#define WAVEKV_INDEX_EVAL_WORKLOAD_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "index/dtype.h"

namespace wavekv {
namespace eval {

struct WorkloadOptions {
  // Context length in tokens; the probes' query sits at this position.
  // 1024..1<<26.
  uint64_t num_tokens = 4096;
  // Even, 8..1024.
  uint32_t head_dim = 128;
  // Query heads per kv head. 1..64.
  uint32_t group_size = 4;
  // K/V are rounded through this dtype (what a store would hold).
  DType dtype = DType::kFp16;
  // RoPE base. > 1.
  double rope_theta = 500000.0;
  uint64_t seed = 1;

  // Topical structure. num_topics >= 1; topic_run_tokens >= 1.
  uint32_t num_topics = 256;
  uint32_t topic_run_tokens = 64;
  // Std of a key around its topic centre (centres have std ~1). >= 0.
  float key_noise = 0.6f;
  // Large constant channels of the head offset, in the lowest-frequency
  // RoPE pairs. 0..head_dim.
  uint32_t outlier_channels = 4;
  float outlier_magnitude = 6.0f;

  // Tokens at the start with the sink key. 1..16.
  uint32_t attention_sinks = 1;
  // Share of the softmax the sinks get in every probe. [0, 0.9].
  float sink_mass = 0.3f;

  // Depths in percent of the document (0 = right after the sinks, 100 =
  // ending at the last token) of the single needles, and of the needle set
  // of the multi-needle and multi-query probes (empty: no such probes).
  // Needles must not overlap. Each in [0, 100].
  std::vector<double> needle_depths = {0,  10, 20, 30, 40, 50,
                                       60, 70, 80, 90, 100};
  std::vector<double> multi_needle_depths = {15, 35, 55, 75};
  // Consecutive tokens of one needle. 1..256.
  uint32_t needle_tokens = 16;
  // Norm of a needle key along its direction, in units of sqrt(128) (the
  // same for every head_dim, so that lifting a needle's logits by a given
  // amount disturbs the other logits alike). > 0.
  float needle_key_gain = 1.5f;
  // Share of the softmax a targeted needle gets against the rest. (0, 1).
  float needle_mass = 0.5f;
  float needle_value_gain = 3.0f;

  // Probes without a needle. 0..64.
  uint32_t background_probes = 4;
  // Gain of the background query part (heads range over 0.6x..1.4x; scaled
  // by sqrt(128 / head_dim), so logits spread alike for every head_dim).
  // >= 0.
  float query_gain = 1.0f;

  // OK, or InvalidArgument naming the field and value.
  absl::Status Validate() const;
};

// A planted needle: tokens [first_token, first_token + num_tokens).
struct Needle {
  uint64_t first_token = 0;
  uint32_t num_tokens = 0;
  double depth_percent = 0;
};

enum class ProbeKind { kSingleNeedle, kMultiNeedle, kMultiQuery, kBackground };
std::string_view ProbeKindName(ProbeKind kind);

struct Probe {
  ProbeKind kind = ProbeKind::kBackground;
  std::string name;  // e.g. "needle@30%", "multi-needle", "background#2"
  // Single-needle probes: the needle's depth; -1 otherwise.
  double depth_percent = -1;
  // [group_size][head_dim], post-RoPE, fp32.
  std::vector<float> queries;
  // Per query head: indices into Workload::needles() it targets (the known
  // answer: those needles' tokens should be attended).
  std::vector<std::vector<uint32_t>> head_targets;
};

class Workload {
 public:
  // Generates the context and its probes, using up to `num_threads` threads
  // (same result for any count). InvalidArgument if options are invalid or
  // needles overlap each other or the sinks.
  static absl::StatusOr<Workload> Generate(const WorkloadOptions& options,
                                           int num_threads = 1);

  Workload(Workload&&) = default;
  Workload& operator=(Workload&&) = default;

  const WorkloadOptions& options() const { return options_; }
  uint64_t num_tokens() const { return options_.num_tokens; }
  size_t head_dim() const { return options_.head_dim; }
  size_t group_size() const { return options_.group_size; }
  // [num_tokens][head_dim] post-RoPE keys and values, fp32 holding values
  // exactly representable in options().dtype.
  absl::Span<const float> keys() const { return keys_; }
  absl::Span<const float> values() const { return values_; }
  const std::vector<Needle>& needles() const { return needles_; }
  const std::vector<Probe>& probes() const { return probes_; }

 private:
  Workload() = default;

  WorkloadOptions options_;
  std::vector<float> keys_;
  std::vector<float> values_;
  std::vector<Needle> needles_;
  std::vector<Probe> probes_;
};

// Rotates x ([dim], dim even) in place by RoPE at `position`: each pair
// (x_j, x_{j+dim/2}) by the angle position * theta^(-2j/dim). Angles are
// computed in double, so positions up to 2^26 stay accurate.
void ApplyRope(float* x, size_t dim, uint64_t position, double theta);

// First token of a needle of `num_tokens` tokens at `depth_percent` of a
// document [doc_begin, doc_end).
uint64_t NeedleFirstToken(uint64_t doc_begin, uint64_t doc_end,
                          uint32_t num_tokens, double depth_percent);

}  // namespace eval
}  // namespace wavekv

#endif  // WAVEKV_INDEX_EVAL_WORKLOAD_H_
