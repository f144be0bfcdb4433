// The answer of one (session, layer, kv head) to Retrieve: the slot ranges
// to attend exactly, the tail statistics of WAVE mode, and the inline K/V.
// Internal to the engine (retrieve.cc); the functions read a HeadStore
// whose layer reader lock the caller holds.
//
// Thread-safe: pure functions over const stores (several may run at once
// under one reader lock).
#ifndef WAVEKV_KVSTORE_HEAD_ANSWER_H_
#define WAVEKV_KVSTORE_HEAD_ANSWER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "index/retrieval.h"
#include "index/wave_index.h"
#include "index/wave_index_params.h"
#include "kvstore/session.h"
#include "kvstore/types.h"

namespace wavekv {

// EXACT mode: every token of [0, num_tokens) exactly once. Nothing indexed:
// one token-order range {0, 0, n}. Otherwise, in this order, the tokens
// before the index ([0, indexed.begin), if any), the whole cluster store
// (one range from kClusterSlotBase) and the tokens after it
// ([indexed.end, num_tokens), if any). cluster_id is 0 throughout.
std::vector<SlotRange> ExactRanges(const HeadStore& head, uint64_t num_tokens,
                                   TokenSpan indexed);

// WAVE mode: ranks the head's clusters for the g query heads of its group
// (`queries`, [g][head_dim] fp32) and fills out->retrieval (the retrieval
// zone, best first, one range per cluster, cluster slots) and out->tail
// (one per q head: the estimation zone's partial softmax; empty partials
// when the head has no index yet). Errors are PlanRetrieval's.
absl::Status PlanWaveHead(const HeadStore& head,
                          absl::Span<const float> queries, size_t group_size,
                          size_t head_dim, const WaveIndexParams& params,
                          KvHeadResult* out);

// The answer of PlanWaveHead from a plan of `index` (made by any
// RetrievalBackend): out->retrieval and out->tail, as PlanWaveHead.
void FillWaveHead(const WaveIndex& index, RetrievalPlan plan, size_t head_dim,
                  KvHeadResult* out);

// Slots in `ranges`.
uint64_t RangeSlots(absl::Span<const SlotRange> ranges);

// include_kv: copies the K/V of out->retrieval, in range order, into
// out->keys / out->values. REQUIRES: every range is readable now (as
// returned by ExactRanges or PlanWaveHead under the same lock).
void CopyRangesKv(const HeadStore& head, size_t row_bytes, KvHeadResult* out);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_HEAD_ANSWER_H_
