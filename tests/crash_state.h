// The crash test's record of what the server acknowledged (DESIGN.md,
// "Reliability and security promises"; the pattern of RocksDB's crash test):
// per session, the K/V pattern seed, the durability level, how many tokens
// were sent, acknowledged and reported durable. The driver rewrites the file
// atomically (write a temporary file, fsync, rename, fsync the directory)
// whenever it changes, so a reader — the same driver after a restart, or a
// soak run resumed later — always finds one complete version, never a torn
// one.
//
// File format (text, one record per line):
//   wavekv-crash-state 1
//   seed <driver seed>
//   round <rounds completed>
//   next_ordinal <sessions created so far>
//   shape <layers> <q heads> <kv heads> <head_dim> <dtype number>
//   session <id> <pattern seed> <durability number> <sent> <acked> <durable>
//
// Thread-safe: pure functions; callers serialise writers of one path.
#ifndef WAVEKV_TESTS_CRASH_STATE_H_
#define WAVEKV_TESTS_CRASH_STATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/wavekv/v1/wavekv.pb.h"

namespace wavekv::testing {

// One session the driver writes to.
struct SessionRecord {
  std::string session_id;
  // KvPattern seed of the session's K/V.
  uint64_t pattern_seed = 0;
  v1::Durability durability = v1::DURABILITY_NONE;
  // Highest end token of any Append sent (acknowledged or not): nothing at
  // or beyond it may exist after a restart.
  uint64_t sent_tokens = 0;
  // num_tokens of the last acknowledged Append (or of the recovered
  // session).
  uint64_t acked_tokens = 0;
  // Highest durable_tokens the server reported (AppendResponse or
  // SessionInfo): every token below it must survive kill -9.
  uint64_t durable_tokens = 0;
};

struct ExpectedState {
  uint64_t seed = 0;
  uint32_t rounds_done = 0;
  // Sessions created so far (names the next session's pattern seed).
  uint64_t next_ordinal = 0;
  v1::ModelShape shape;
  std::vector<SessionRecord> sessions;
};

// The file text of `state`. InvalidArgument if a session id is empty or
// holds whitespace.
absl::StatusOr<std::string> SerializeExpectedState(const ExpectedState& state);

// Parses SerializeExpectedState's text. InvalidArgument naming the line on
// any malformed input.
absl::StatusOr<ExpectedState> ParseExpectedState(absl::string_view text);

// Writes `state` to `path` atomically: `path`.tmp, fsync, rename, fsync of
// the directory. Internal with the failing call and errno text.
absl::Status SaveExpectedState(const std::string& path,
                               const ExpectedState& state);

// Reads and parses `path`. NotFound if it does not exist.
absl::StatusOr<ExpectedState> LoadExpectedState(const std::string& path);

}  // namespace wavekv::testing

#endif  // WAVEKV_TESTS_CRASH_STATE_H_
