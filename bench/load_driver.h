// The load run of wavekv-load: N sessions x M client threads for a bounded
// time against a wavekv-server on loopback (started here, or an existing
// one), with a mix of appends (prefill chunks and one-token decode steps over
// every layer) and batched retrievals (WAVE and EXACT), and the server's
// resident memory (/proc/<pid>/status) and memory metrics sampled over time.
//
// Each session is appended to by one thread only (session i by thread
// i % threads: appends of one session are ordered), every thread retrieves
// from any session. Before the timed phase every session is prefilled to
// `prefill_tokens`; those appends are reported as their own row.
//
// Thread-safe: RunLoad runs its own threads; call it from one thread (it
// may start the server, which must outlive nothing but that thread).
#ifndef WAVEKV_BENCH_LOAD_DRIVER_H_
#define WAVEKV_BENCH_LOAD_DRIVER_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/wavekv/v1/wavekv.pb.h"

namespace wavekv::bench {

struct LoadOptions {
  // An existing server "127.0.0.1:PORT" (loopback only); empty = start one
  // with `server_args` (and --memory_budget when memory_budget_bytes > 0).
  std::string target;
  // For a targeted server: its pid (RSS sampling; 0 = none) and metrics
  // port (0 = none).
  pid_t server_pid = 0;
  int metrics_port = 0;
  std::vector<std::string> server_args;
  uint64_t memory_budget_bytes = 0;  // started server only; 0 = its default

  uint32_t sessions = 8;  // 1..4096
  uint32_t threads = 4;   // 1..256
  // Timed phase; 1 s .. 1 h.
  absl::Duration duration = absl::Seconds(10);
  // Stop earlier after this many operations in the timed phase; 0 = none.
  uint64_t max_ops = 0;
  // Tokens per layer each session is prefilled with before the timed phase.
  uint64_t prefill_tokens = 2048;
  // Tokens per layer of a prefill Append request.
  uint32_t chunk_tokens = 256;
  // Timed phase mix: a retrieval with probability retrieve_fraction (WAVE
  // with probability wave_fraction, else EXACT), otherwise an append (a
  // prefill chunk with probability prefill_fraction, else a decode step).
  double retrieve_fraction = 0.5;
  double wave_fraction = 0.7;
  double prefill_fraction = 0.05;
  // Sessions per Retrieve call (one layer, random sessions). >= 1.
  uint32_t batch_sessions = 4;
  // Retrieve include_kv (the retrieval zone's K/V inline).
  bool include_kv = true;
  // Sessions stop growing at this many tokens per layer.
  uint64_t max_session_tokens = 32768;
  v1::Durability durability = v1::DURABILITY_NONE;
  v1::ModelShape shape;  // default: 4 layers, 8 q / 2 kv heads, d 128, FP16
  uint64_t seed = 1;
  // Memory sampling and progress line intervals.
  absl::Duration sample_interval = absl::Milliseconds(250);
  absl::Duration progress_interval = absl::Seconds(2);
  std::function<void(const std::string&)> progress;

  LoadOptions();
  // InvalidArgument naming the field and the value.
  absl::Status Validate() const;
};

// One sample of the server's memory.
struct MemorySample {
  absl::Duration at;          // since the start of the run
  uint64_t rss_bytes = 0;     // VmRSS (0 without a pid)
  uint64_t kv_bytes = 0;      // wavekv_memory_bytes (0 without metrics)
  uint64_t stored_bytes = 0;  // K/V bytes acknowledged so far (all sessions)
};

struct OpRow {
  std::string op;  // "append.prefill", "retrieve.wave", ...
  uint64_t ok = 0;
  uint64_t errors = 0;
  std::map<std::string, uint64_t> errors_by_code;
  std::map<std::string, std::string> first_messages;  // per code
  double ops_per_s = 0;
  double mib_per_s = 0;  // K/V payload sent (appends) or received (retrieve)
  absl::Duration p50, p99, max, mean;
};

struct LoadReport {
  std::string command_line;  // filled by the caller
  std::string target;
  pid_t server_pid = 0;
  uint32_t sessions = 0, threads = 0;
  absl::Duration setup_time;       // session creation + prefill
  absl::Duration timed;            // the timed phase as run
  std::vector<OpRow> rows;         // setup prefill first, then the timed ops
  uint64_t wave_served_exact = 0;  // WAVE results served as EXACT (no index)
  std::vector<MemorySample> memory;
  uint64_t idle_rss_bytes = 0;  // before the first session
  uint64_t max_rss_bytes = 0;
  uint64_t stored_bytes = 0;         // K/V bytes held at the end (all sessions)
  uint64_t memory_budget_bytes = 0;  // server's wavekv_memory_budget_bytes
  uint64_t max_kv_bytes = 0;         // max wavekv_memory_bytes seen
  // Counter deltas over the run; negative when the server does not export
  // wavekv_spills_total / wavekv_restores_total.
  double spills = -1, restores = -1;
};

absl::StatusOr<LoadReport> RunLoad(const LoadOptions& options);

// The summary: an op table (throughput, p50/p99/max latency, errors by
// code), memory (idle/max RSS, budget, K/V bytes, spills), and RSS over time
// (at most `max_memory_rows` evenly spaced samples). `markdown` prints the
// tables as Markdown.
void PrintLoadReport(LoadReport& report, bool markdown, int max_memory_rows,
                     std::ostream& out);

}  // namespace wavekv::bench

#endif  // WAVEKV_BENCH_LOAD_DRIVER_H_
