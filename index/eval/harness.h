// The accuracy harness: runs synthetic workloads (workload.h) with known
// answers through WAVE and the baselines (methods.h) at equal budget, and
// measures against exact attention:
//   - relative L2 error of the attention output, ||o - o*|| / ||o*||,
//     averaged over the query heads of the group;
//   - softmax mass covered: the share of the exact softmax on the tokens a
//     method attends exactly (averaged over heads);
//   - needle hits: a (query head, targeted needle) pair is a hit when every
//     token of the needle is attended exactly;
//   - timing: each method's selection time per probe (for wave: ranking,
//     zones and tail statistics), and the one-off builds.
// Exact attention and every method's exact part are computed in double from
// the same logits; the wave tail comes from PlanRetrieval (fp32).
//
// Example:
//   HarnessOptions options;
//   options.contexts = {4096, 32768};
//   absl::StatusOr<EvalReport> report = RunEval(options, nullptr);
//   std::cout << RenderMarkdown(*report);  // report.h
//
// Thread-safe: RunEval may run concurrently with itself (it shares no
// state); the progress callback is called from the calling thread only.
#ifndef WAVEKV_INDEX_EVAL_HARNESS_H_
#define WAVEKV_INDEX_EVAL_HARNESS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "index/eval/methods.h"
#include "index/eval/workload.h"

namespace wavekv {
namespace eval {

struct HarnessOptions {
  // Context lengths to run, in tokens; each must be a valid
  // WorkloadOptions::num_tokens. Non-empty.
  std::vector<uint64_t> contexts = {4096, 32768};
  // The workload template: num_tokens and seed are set per run (the seed
  // is derived from `seed`, the context and the kv head).
  WorkloadOptions workload;
  // Methods' options (the wave index parameters, Quest's page size).
  MethodsOptions methods;
  // Independent contexts (kv heads) per context length. 1..64.
  uint32_t kv_heads = 1;
  uint64_t seed = 1;
  // Methods to run, in table order. Must include wave (it sets the budget).
  std::vector<Method> method_list = {std::begin(kAllMethods),
                                     std::end(kAllMethods)};
  // Threads for generation, index build and exact attention. >= 1.
  int num_threads = 1;

  absl::Status Validate() const;
};

// One method on one probe (averages over the group's query heads).
struct MethodScore {
  double rel_l2_error = 0;
  double mass_covered = 0;
  uint32_t needle_hits = 0;
  uint32_t needle_targets = 0;
  uint64_t exact_tokens = 0;
  double select_seconds = 0;
};

struct ProbeResult {
  uint64_t context_tokens = 0;
  uint32_t kv_head = 0;
  std::string probe;
  ProbeKind kind = ProbeKind::kBackground;
  double depth_percent = -1;
  // Exact softmax mass on the steady zone and on the planted needles
  // targeted (averaged over heads): how the workload's attention looks.
  double steady_mass = 0;
  double needle_mass = 0;
  // Parallel to EvalReport::methods.
  std::vector<MethodScore> scores;
};

// Aggregates of one method over all probes of one context length.
struct MethodSummary {
  Method method = Method::kWave;
  double mean_exact_tokens = 0;
  double rel_l2_error = 0;             // all probes
  double rel_l2_error_needle = 0;      // needle probes (any kind)
  double rel_l2_error_background = 0;  // background probes
  double mass_covered = 0;
  uint32_t needle_hits = 0;
  uint32_t needle_targets = 0;
  double mean_select_ms = 0;
};

struct ContextSummary {
  uint64_t context_tokens = 0;
  // Means over kv heads.
  double clusters = 0;
  double generate_seconds = 0;
  double index_build_seconds = 0;
  double quest_build_seconds = 0;
  // Exact attention of one probe (all heads of the group), mean.
  double exact_ms = 0;
  double steady_mass = 0;              // mean over probes
  std::vector<MethodSummary> methods;  // parallel to EvalReport::methods
};

struct EvalReport {
  HarnessOptions options;
  std::vector<Method> methods;
  std::vector<ProbeResult> probes;
  std::vector<ContextSummary> contexts;
  double total_seconds = 0;
};

struct EvalProgress {
  uint64_t context_tokens = 0;
  uint32_t kv_head = 0;
  std::string_view stage;      // "generate", "index", "probes", "done"
  size_t done = 0;             // steps of the stage done
  size_t total = 0;            // steps of the stage
  double elapsed_seconds = 0;  // since RunEval started
};
using ProgressFn = std::function<void(const EvalProgress&)>;

// Runs every context length × kv head × probe × method. InvalidArgument on
// bad options; errors of the workload and methods otherwise. `progress`
// may be empty.
absl::StatusOr<EvalReport> RunEval(const HarnessOptions& options,
                                   const ProgressFn& progress);

}  // namespace eval
}  // namespace wavekv

#endif  // WAVEKV_INDEX_EVAL_HARNESS_H_
