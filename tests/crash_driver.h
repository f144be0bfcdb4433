// Crash driver: kill -9 the real wavekv-server at random moments while
// client threads append, restart it on the same data directory, and check
// every promise DESIGN.md makes about what survives (the pattern of
// RocksDB's crash test, "Reliability and security promises"):
//  * every token acknowledged as durable (SYNC replies; ASYNC below the
//    reported durable_tokens watermark) is back, byte for byte;
//  * every layer of a session holds the same number of tokens (an Append
//    carrying several layers is applied whole or not at all);
//  * nothing beyond what was sent exists, and tokens that were sent but not
//    acknowledged either are absent or equal what was sent (never garbage);
//  * the durable watermark never goes back, and WAVE retrieval works once
//    the recovered index is ready.
// What was acknowledged lives in a state file (crash_state.h) rewritten
// atomically while the writers run; verification reads it back.
//
// One round: start (or restart) the server, verify every recorded session,
// close full sessions and create new ones up to `sessions`, start the
// writer threads (prefill chunks and one-token decode steps, mixed), wait a
// random delay from the seeded generator, SIGKILL the server, join the
// writers, save the state. After the last round the server is restarted and
// verified once more, then stopped with SIGTERM and restarted, and then
// every acknowledged token (any durability the drain persists) must be
// there.
//
// Thread-safe: RunCrashRounds may run in one thread at a time per data
// directory; it starts its own writer threads. Start it from a thread that
// outlives the servers it spawns (ServerProcess uses PR_SET_PDEATHSIG).
#ifndef WAVEKV_TESTS_CRASH_DRIVER_H_
#define WAVEKV_TESTS_CRASH_DRIVER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/wavekv/v1/wavekv.pb.h"

namespace wavekv::testing {

// 2 layers, 4 q heads, 2 kv heads, head_dim 64, FP16.
v1::ModelShape DefaultCrashShape();

struct CrashDriverOptions {
  // Seeds kill delays, chunk sizes, op mix and the sessions' K/V patterns.
  uint64_t seed = 1;
  // Kill -9 rounds. >= 1.
  uint32_t rounds = 20;
  // Live sessions written concurrently. 1..256.
  uint32_t sessions = 6;
  // Writer threads; session i belongs to thread i % writer_threads. >= 1.
  uint32_t writer_threads = 3;
  // Every `async_every`-th session is ASYNC, every `none_every`-th NONE
  // (NONE wins when both divide), the rest SYNC; 0 = never.
  uint32_t async_every = 3;
  uint32_t none_every = 5;
  // Server data directory, reused by every restart. Required.
  std::string data_dir;
  // State file; empty = "<data_dir>.crash-state". If it exists when the run
  // starts, the run resumes from it (verifying first).
  std::string state_file;
  // Uniform range of the delay between starting the writers and SIGKILL.
  absl::Duration min_kill_delay = absl::Milliseconds(30);
  absl::Duration max_kill_delay = absl::Milliseconds(600);
  // Tokens per layer at which a session counts as full: it is closed (after
  // verification) and replaced by a new one.
  uint64_t max_session_tokens = 3072;
  // Prefill Append size range (tokens per layer per request); a session
  // prefills up to a random target in [prefill_min_tokens,
  // prefill_max_tokens] and then decodes one token per request.
  uint32_t min_chunk_tokens = 8;
  uint32_t max_chunk_tokens = 192;
  uint64_t prefill_min_tokens = 128;
  uint64_t prefill_max_tokens = 1536;
  // Shape of every session.
  v1::ModelShape shape = DefaultCrashShape();
  // WAVE check: sessions with at least this many tokens are retrieved in
  // WAVE mode after each restart (one per round, all after the last), once
  // their index is READY (waiting at most index_ready_timeout).
  uint64_t wave_min_tokens = 512;
  absl::Duration index_ready_timeout = absl::Seconds(30);
  // Extra server flags.
  std::vector<std::string> server_args;
  // Called after every round with a one-line summary (progress).
  std::function<void(const std::string&)> progress;

  // InvalidArgument naming the field and the value.
  absl::Status Validate() const;
};

struct CrashReport {
  uint32_t rounds = 0;                // rounds run (kills)
  uint64_t appends_acked = 0;         // over all rounds
  uint64_t prefill_appends = 0;       // of which prefill chunks
  uint64_t decode_appends = 0;        // of which one-token decode steps
  uint64_t appends_refused = 0;       // RESOURCE_EXHAUSTED (memory budget)
  uint64_t kills_during_prefill = 0;  // a prefill Append was in flight
  uint64_t kills_during_decode = 0;   // a decode Append was in flight
  uint64_t sessions_verified = 0;     // session checks after restarts
  uint64_t tokens_verified = 0;       // token rows compared (all layers)
  uint64_t unacked_tokens_found = 0;  // present beyond the acknowledgement
  uint64_t lost_volatile_tokens = 0;  // acked, not durable, gone (allowed)
  uint64_t wave_checks = 0;           // WAVE retrievals checked
  uint64_t sessions_created = 0;
  absl::Duration restart_time;  // sum of server start + recovery times
  absl::Duration max_restart_time;
  absl::Duration total_time;

  std::string ToString() const;
};

// Runs the rounds. Returns the first violated promise (DataLoss for lost or
// wrong data, Internal for unexpected errors, each naming the round and the
// session) or the report.
absl::StatusOr<CrashReport> RunCrashRounds(const CrashDriverOptions& options);

}  // namespace wavekv::testing

#endif  // WAVEKV_TESTS_CRASH_DRIVER_H_
