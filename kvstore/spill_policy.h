// Spill victim choice: which resident sessions to move to disk when a
// memory reservation does not fit (DESIGN.md, "Memory is bounded").
//
// Order (SpillOrder):
//  1. Never a busy session (an operation in flight, an index build pending,
//     a restore running) and never one holding no memory.
//  2. Tenants above their fair share first: the fair share is the resident
//     bytes of all sessions divided by the number of tenants holding any.
//     While some tenant is above it, the next victim is the least recently
//     used session of the tenant furthest above (ties: the smaller tenant
//     id), and that tenant's use drops by the victim's bytes.
//  3. Then least recently used first, over all tenants.
//  Ties of last access go to the smaller session id, so the order is
//  deterministic.
//
// The order covers every eligible candidate: a caller spills victims in
// turn until it has freed what it needs, skipping any that turned busy.
//
// Thread-safe: pure functions.
#ifndef WAVEKV_KVSTORE_SPILL_POLICY_H_
#define WAVEKV_KVSTORE_SPILL_POLICY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "kvstore/types.h"

namespace wavekv {

struct SpillCandidate {
  std::string session_id;
  TenantId tenant;
  uint64_t memory_bytes = 0;  // resident bytes spilling would free
  int64_t last_access_unix_ms = 0;
  bool busy = false;
};

// Indexes into `candidates` in the order to spill them (see above).
std::vector<size_t> SpillOrder(absl::Span<const SpillCandidate> candidates);

// The prefix of SpillOrder whose bytes first reach `need_bytes` (all of
// it if they never do).
std::vector<size_t> ChooseSpillVictims(
    absl::Span<const SpillCandidate> candidates, uint64_t need_bytes);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_SPILL_POLICY_H_
