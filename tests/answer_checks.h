// Checks of wavekv.v1 answers against the K/V a test appended (KvPattern):
// EXACT Retrieve results (slot ranges cover every token once; inline K/V
// rows are the appended rows, keys and values of the same token side by
// side) and FetchClusters streams (chunk order and sizes, positions, bytes).
//
// Each check returns OK or an error describing the first mismatch, so it
// can run on any thread (gtest assertions stay in the test body).
//
// Thread-safe: pure functions.
#ifndef WAVEKV_TESTS_ANSWER_CHECKS_H_
#define WAVEKV_TESTS_ANSWER_CHECKS_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/wavekv/v1/wavekv.pb.h"
#include "tests/kv_pattern.h"

namespace wavekv::testing {

// The K/V of one kv head in SlotRange order, with each slot's token.
struct HeadData {
  uint32_t kv_head = 0;
  std::string keys;
  std::string values;
  std::vector<uint64_t> positions;
};

// Checks one SessionResult of a RETRIEVE_MODE_EXACT call (or a WAVE call
// served as EXACT) at `layer`: mode EXACT; one KvHeadResult per
// kv head in order, no tail, no steady ranges, ranges of cluster_id 0 and
// >= 1 slot that do not overlap and hold num_tokens slots in all; with
// `include_kv`, keys/values of exactly those slots whose rows are the
// appended rows of tokens 0..num_tokens-1, each token once, the value row
// beside its key row (without it: no inline bytes). Returns the per-head
// data (positions recovered from the rows; empty without include_kv).
absl::StatusOr<std::vector<HeadData>> CheckExactResult(
    const v1::SessionResult& result, const KvPattern& pattern, uint32_t layer,
    bool include_kv);

// Checks one SessionResult served in RETRIEVE_MODE_WAVE at `layer`:
// indexed_tokens <= num_tokens; steady ranges disjoint inside
// [0, num_tokens) that, with the indexed tokens, account for every token;
// one KvHeadResult per kv head in order, each with one TailStats per q head
// of its GQA group (numerator of head_dim FP32 values, all finite;
// denominator >= 0; an empty zone is max_logit -inf, denominator 0, zero
// numerator) and disjoint retrieval ranges of >= 1 slot holding at most
// indexed_tokens slots. With `include_kv`, the inline rows are appended rows
// of indexed (non-steady) tokens, each once, value beside key. Returns the
// per-head data (empty without include_kv).
//
// With the call's `query` (FP32 [num_q_heads][head_dim]) the tails are
// also checked against bounds that hold for any clustering whose centroid
// is its members' mean (DESIGN.md): for q head i of kv head h = i / group,
// max_logit lies within the range of q.k/sqrt(head_dim) over the indexed
// tokens; 1 <= denominator <= indexed tokens not retrieved (the top
// estimated cluster is never empty); numerator/denominator, a convex
// combination of cluster mean values, lies coordinate-wise within the
// indexed tokens' value range.
absl::StatusOr<std::vector<HeadData>> CheckWaveResult(
    const v1::SessionResult& result, const KvPattern& pattern, uint32_t layer,
    bool include_kv, const std::string& query = "");

// The token positions of `result.steady`, as a mask of num_tokens entries.
std::vector<bool> SteadyMask(const v1::SessionResult& result);

// Checks a drained FetchClusters stream for `request` against `pattern`:
// ranges arrive in request order, each cut into consecutive chunks of
// matching kv_head/cluster_id/first_slot whose num_slots add up; each chunk
// has num_slots positions (all < `position_limit`) and num_slots rows of
// keys and values, K+V at most the effective max_chunk_bytes (0 = 1 MiB);
// every row equals the appended row of its position. Returns the
// reassembled data per requested head, in request order.
// With `complete` false, the stream may stop early (a prefix of the
// chunks is checked: an RPC that failed mid-stream).
absl::StatusOr<std::vector<HeadData>> CheckFetchedChunks(
    const v1::FetchClustersRequest& request,
    const std::vector<v1::ClusterChunk>& chunks, const KvPattern& pattern,
    uint64_t position_limit = std::numeric_limits<uint64_t>::max(),
    bool complete = true);

// A FetchClustersRequest for every retrieval range of `result` (one
// HeadSlots per kv head that has ranges; none if no head has any), at
// `layer`, with the result's layout_epoch.
v1::FetchClustersRequest FetchRequestFor(const v1::SessionResult& result,
                                         uint32_t layer,
                                         uint32_t max_chunk_bytes);

}  // namespace wavekv::testing

#endif  // WAVEKV_TESTS_ANSWER_CHECKS_H_
