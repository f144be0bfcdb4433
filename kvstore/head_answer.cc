#include "kvstore/head_answer.h"

#include <cstring>
#include <limits>
#include <utility>

#include "index/attention.h"
#include "index/retrieval.h"
#include "index/wave_index.h"

namespace wavekv {

std::vector<SlotRange> ExactRanges(const HeadStore& head, uint64_t num_tokens,
                                   TokenSpan indexed) {
  // Counts fit 32 bits: num_tokens <= max_tokens <= UINT32_MAX
  // (EngineOptions::Validate).
  std::vector<SlotRange> ranges;
  if (num_tokens == 0) return ranges;  // a SlotRange holds >= 1 slot
  if (indexed.empty()) {
    ranges.push_back({0, 0, static_cast<uint32_t>(num_tokens)});
    return ranges;
  }
  if (indexed.begin > 0) {
    ranges.push_back({0, 0, static_cast<uint32_t>(indexed.begin)});
  }
  ranges.push_back(
      {0, kClusterSlotBase, static_cast<uint32_t>(head.clusters.num_slots())});
  if (indexed.end < num_tokens) {
    ranges.push_back(
        {0, indexed.end, static_cast<uint32_t>(num_tokens - indexed.end)});
  }
  return ranges;
}

absl::Status PlanWaveHead(const HeadStore& head,
                          absl::Span<const float> queries, size_t group_size,
                          size_t head_dim, const WaveIndexParams& params,
                          KvHeadResult* out) {
  out->retrieval.clear();
  out->tail.clear();
  if (head.index == nullptr) {
    // Nothing indexed (a short context): no clusters, empty tails.
    for (size_t q = 0; q < group_size; ++q) {
      out->tail.push_back({-std::numeric_limits<float>::infinity(), 0.0f,
                           std::vector<float>(head_dim, 0.0f)});
    }
    return absl::OkStatus();
  }
  const WaveIndex& index = *head.index;
  absl::StatusOr<RetrievalPlan> plan =
      PlanRetrieval(index, queries, group_size, params, DefaultScale(head_dim));
  if (!plan.ok()) return plan.status();
  FillWaveHead(index, *std::move(plan), head_dim, out);
  return absl::OkStatus();
}

void FillWaveHead(const WaveIndex& index, RetrievalPlan plan, size_t head_dim,
                  KvHeadResult* out) {
  out->retrieval.clear();
  out->tail.clear();
  out->retrieval.reserve(plan.retrieval_clusters.size());
  for (ClusterId c : plan.retrieval_clusters) {
    out->retrieval.push_back(
        {c, kClusterSlotBase + index.cluster_offset(c), index.cluster_size(c)});
  }
  out->tail.reserve(plan.tail.size());
  for (AttentionPartial& p : plan.tail) {
    if (p.numerator.empty()) p.numerator.assign(head_dim, 0.0f);
    out->tail.push_back({p.max_logit, p.denominator, std::move(p.numerator)});
  }
}

uint64_t RangeSlots(absl::Span<const SlotRange> ranges) {
  uint64_t slots = 0;
  for (const SlotRange& r : ranges) slots += r.num_slots;
  return slots;
}

void CopyRangesKv(const HeadStore& head, size_t row_bytes, KvHeadResult* out) {
  const uint64_t slots = RangeSlots(out->retrieval);
  out->keys.resize(slots * row_bytes);
  out->values.resize(slots * row_bytes);
  auto* keys = reinterpret_cast<uint8_t*>(out->keys.data());
  auto* values = reinterpret_cast<uint8_t*>(out->values.data());
  uint64_t done = 0;
  for (const SlotRange& r : out->retrieval) {
    uint8_t* k = keys + done * row_bytes;
    uint8_t* v = values + done * row_bytes;
    if (r.first_slot >= kClusterSlotBase) {
      head.clusters.CopyOut(r.first_slot - kClusterSlotBase, r.num_slots, k, v,
                            nullptr);
    } else {
      head.tokens.CopyOut(r.first_slot, r.num_slots, k, v, nullptr);
    }
    done += r.num_slots;
  }
}

}  // namespace wavekv
