#include "kvstore/wave_gpu.h"

#include <map>
#include <tuple>

#include "index/attention.h"
#include "index/wave_index_params.h"
#include "kvstore/head_answer.h"

namespace wavekv {

bool PlanWaveHeadsOnGpu(
    EngineGpu& gpu, absl::Span<const RetrieveQuery> queries,
    absl::Span<const std::shared_ptr<Session>> sessions,
    absl::Span<const LayerView* const> views,
    absl::Span<const std::pair<size_t, uint32_t>> wave_heads,
    std::vector<SessionResult>& results) {
  // One GPU call per (group size, head_dim, zone fractions): the plan's
  // parameters are shared by its requests (the backend splits by dtype).
  using GroupKey = std::tuple<size_t, size_t, float, float>;
  struct Group {
    const WaveIndexParams* params = nullptr;
    std::vector<EngineGpu::PlanRequest> requests;
    std::vector<std::pair<size_t, uint32_t>> heads;
  };
  std::map<GroupKey, Group> groups;
  for (const auto& [i, h] : wave_heads) {
    const ModelShape& shape = sessions[i]->shape();
    const HeadStore& head = views[i]->heads[h];
    const size_t g = shape.group_size();
    const size_t d = shape.head_dim;
    if (head.index == nullptr) {
      // Nothing indexed: empty tails, as on the CPU.
      if (!PlanWaveHead(head, queries[i].query.subspan(h * g * d, g * d), g, d,
                        sessions[i]->index_params(), &results[i].heads[h])
               .ok()) {
        return false;
      }
      continue;
    }
    const WaveIndexParams& params = sessions[i]->index_params();
    Group& group = groups[GroupKey{g, d, params.retrieval_fraction,
                                   params.estimation_fraction}];
    group.params = &params;
    group.requests.push_back(
        {&head.index, queries[i].query.subspan(h * g * d, g * d), shape.dtype});
    group.heads.emplace_back(i, h);
  }
  for (auto& [key, group] : groups) {
    const auto [g, d, rf, ef] = key;
    absl::StatusOr<std::vector<RetrievalPlan>> plans =
        gpu.Plan(group.requests, g, *group.params, DefaultScale(d));
    if (!plans.ok()) return false;
    for (size_t r = 0; r < plans->size(); ++r) {
      const auto [i, h] = group.heads[r];
      FillWaveHead(*views[i]->heads[h].index, std::move((*plans)[r]), d,
                   &results[i].heads[h]);
    }
  }
  return true;
}

}  // namespace wavekv
