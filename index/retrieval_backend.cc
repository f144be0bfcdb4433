#include "index/retrieval_backend.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv {

absl::Status ValidateRetrievalRequest(const RetrievalRequest& request, size_t i,
                                      size_t group_size) {
  if (request.index == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("requests[", i, "].index: null"));
  }
  if (group_size == 0) {
    return absl::InvalidArgumentError("group_size: must be > 0");
  }
  const size_t d = request.index->head_dim();
  if (request.queries.size() != group_size * d) {
    return absl::InvalidArgumentError(absl::StrCat(
        "requests[", i, "].queries: expected ", group_size * d, " floats (",
        group_size, " heads x ", d, "), got ", request.queries.size()));
  }
  for (size_t j = 0; j < request.queries.size(); ++j) {
    if (!std::isfinite(request.queries[j])) {
      return absl::InvalidArgumentError(
          absl::StrCat("requests[", i, "].queries: non-finite value at head ",
                       j / d, ", element ", j % d));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RetrievalPlan>> CpuRetrievalBackend::Plan(
    absl::Span<const RetrievalRequest> requests, size_t group_size,
    const WaveIndexParams& params, float scale) {
  for (size_t i = 0; i < requests.size(); ++i) {
    RETURN_IF_ERROR(ValidateRetrievalRequest(requests[i], i, group_size));
  }
  std::vector<RetrievalPlan> plans;
  plans.reserve(requests.size());
  for (const RetrievalRequest& r : requests) {
    ASSIGN_OR_RETURN(
        RetrievalPlan plan,
        PlanRetrieval(*r.index, r.queries, group_size, params, scale));
    plans.push_back(std::move(plan));
  }
  return plans;
}

}  // namespace wavekv
