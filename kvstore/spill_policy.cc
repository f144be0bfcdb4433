#include "kvstore/spill_policy.h"

#include <algorithm>
#include <map>
#include <tuple>

namespace wavekv {

std::vector<size_t> SpillOrder(absl::Span<const SpillCandidate> candidates) {
  // Resident bytes per tenant (busy sessions count: they hold memory too).
  std::map<TenantId, uint64_t> usage;
  uint64_t total = 0;
  for (const SpillCandidate& c : candidates) {
    if (c.memory_bytes == 0) continue;
    usage[c.tenant] += c.memory_bytes;
    total += c.memory_bytes;
  }
  if (usage.empty()) return {};
  const uint64_t fair_share = total / usage.size();

  // Eligible sessions, least recently used first (ties: smaller id), per
  // tenant and overall.
  auto lru_less = [&](size_t a, size_t b) {
    return std::tie(candidates[a].last_access_unix_ms,
                    candidates[a].session_id) <
           std::tie(candidates[b].last_access_unix_ms,
                    candidates[b].session_id);
  };
  std::vector<size_t> eligible;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (!candidates[i].busy && candidates[i].memory_bytes > 0) {
      eligible.push_back(i);
    }
  }
  std::sort(eligible.begin(), eligible.end(), lru_less);
  std::map<TenantId, std::vector<size_t>> by_tenant;  // each in LRU order
  for (size_t i : eligible) by_tenant[candidates[i].tenant].push_back(i);
  std::map<TenantId, size_t> next_of_tenant;
  std::vector<bool> taken(candidates.size(), false);

  std::vector<size_t> order;
  order.reserve(eligible.size());
  size_t global_next = 0;
  while (order.size() < eligible.size()) {
    // The tenant furthest above its fair share that still has a victim.
    const TenantId* over = nullptr;
    uint64_t most_over = 0;
    for (const auto& [tenant, sessions] : by_tenant) {
      if (next_of_tenant[tenant] >= sessions.size()) continue;
      const uint64_t used = usage[tenant];
      if (used > fair_share && used - fair_share > most_over) {
        most_over = used - fair_share;
        over = &tenant;
      }
    }
    size_t victim;
    if (over != nullptr) {
      victim = by_tenant[*over][next_of_tenant[*over]];
    } else {
      while (taken[eligible[global_next]]) ++global_next;
      victim = eligible[global_next];
    }
    taken[victim] = true;
    const SpillCandidate& c = candidates[victim];
    usage[c.tenant] -= c.memory_bytes;
    // Advance the tenant's cursor past sessions already taken.
    std::vector<size_t>& own = by_tenant[c.tenant];
    size_t& next = next_of_tenant[c.tenant];
    while (next < own.size() && taken[own[next]]) ++next;
    order.push_back(victim);
  }
  return order;
}

std::vector<size_t> ChooseSpillVictims(
    absl::Span<const SpillCandidate> candidates, uint64_t need_bytes) {
  std::vector<size_t> order = SpillOrder(candidates);
  uint64_t freed = 0;
  size_t n = 0;
  while (n < order.size() && freed < need_bytes) {
    freed += candidates[order[n]].memory_bytes;
    ++n;
  }
  order.resize(n);
  return order;
}

}  // namespace wavekv
