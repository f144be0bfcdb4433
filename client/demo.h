// The `wavekv demo`: a synthetic long-context session end to end against a
// running server, with every attention output checked.
//
// It creates a session of a model's attention shape (Llama-3-8B's by
// default), appends a structured synthetic prefill layer by layer
// (SyntheticKv), then for each decode step appends one token to every layer
// and, per layer, runs Retrieve -> FetchClusters -> attention
// (client/attention_reference.h) and compares the output with full attention
// computed from the demo's own copy of the K/V. It prints per-step latencies
// and errors and a summary table; EXACT answers that differ from full
// attention, or that do not cover every token exactly once, fail the demo.
//
// Thread-safe: RunDemo may run concurrently with other calls on `client`.
#ifndef WAVEKV_CLIENT_DEMO_H_
#define WAVEKV_CLIENT_DEMO_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/wavekv_client.h"
#include "index/dtype.h"

namespace wavekv {

struct DemoOptions {
  uint32_t num_layers = 4;          // >= 1
  uint64_t context_tokens = 32768;  // prefill length, >= 1
  uint32_t decode_steps = 16;       // >= 0
  uint64_t seed = 1;
  // Retrieval modes to run for every (step, layer), in this order: EXACT,
  // WAVE or both (to compare them side by side). With WAVE the demo first
  // waits (up to index_wait) for the server's background index build;
  // layers still without an index, or a server that cannot serve WAVE, are
  // answered in EXACT and reported so.
  std::vector<v1::RetrieveMode> modes = {v1::RETRIEVE_MODE_EXACT};
  absl::Duration index_wait = absl::Seconds(120);
  // Ask Retrieve for the K/V inline; above the server's inline limit the
  // demo says so and uses FetchClusters instead.
  bool include_kv = false;
  // Leave the session on the server after a successful run (to inspect it
  // with `wavekv list` / `show`); a failed run always closes it.
  bool keep_session = true;
  // Redraw the prefill progress line in place (a terminal).
  bool interactive = false;
  // Attention shape; defaults: Llama-3-8B (GQA 32/8, head_dim 128, fp16).
  uint32_t num_q_heads = 32;
  uint32_t num_kv_heads = 8;
  uint32_t head_dim = 128;
  DType dtype = DType::kFp16;
  std::string label = "wavekv demo";
  // Largest relative error (max |o - o_full| / max |o_full|) an EXACT
  // answer may show before the demo fails.
  double exact_tolerance = 1e-4;

  absl::Status Validate() const;
};

// One Retrieve of one layer at one decode step.
struct DemoSample {
  uint32_t step = 0;
  uint32_t layer = 0;
  v1::RetrieveMode requested = v1::RETRIEVE_MODE_EXACT;
  v1::RetrieveMode mode = v1::RETRIEVE_MODE_EXACT;  // as served
  uint64_t num_tokens = 0;        // tokens of the layer at this step
  uint64_t retrieved_tokens = 0;  // per kv head: retrieval slots + steady
  absl::Duration retrieve, fetch, attention;
  absl::Duration total() const { return retrieve + fetch + attention; }
  double max_abs_error = 0;
  double rel_error = 0;  // max_abs_error / max |full attention|
};

struct DemoReport {
  std::string session_id;  // empty if the session was closed
  uint64_t prefill_bytes = 0;
  absl::Duration prefill_time;  // Append time only (not generation)
  std::vector<absl::Duration> decode_appends;
  std::vector<DemoSample> samples;
  uint64_t wave_fallbacks = 0;  // WAVE calls answered in EXACT instead
};

// Runs the demo, writing its human-readable output to `out`. Fails with the
// server's status on RPC errors and with Internal when a check fails.
absl::StatusOr<DemoReport> RunDemo(WaveKvClient& client,
                                   const DemoOptions& options,
                                   std::ostream& out);

}  // namespace wavekv

#endif  // WAVEKV_CLIENT_DEMO_H_
