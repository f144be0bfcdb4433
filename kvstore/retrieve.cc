// EngineImpl::Retrieve: validation of a batch of queries, EXACT mode, and
// the seam for WAVE mode.
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "index/dtype.h"
#include "kvstore/engine_impl.h"

namespace wavekv {

absl::StatusOr<std::vector<SessionResult>> EngineImpl::Retrieve(
    const TenantId& tenant, const RetrieveOptions& options,
    absl::Span<const RetrieveQuery> queries) {
  if (options.mode != RetrieveMode::kExact &&
      options.mode != RetrieveMode::kWave) {
    return absl::InvalidArgumentError(
        absl::StrCat("mode: ", static_cast<int>(options.mode),
                     " is not EXACT (1) or WAVE (2)"));
  }
  if (queries.empty()) {
    return absl::InvalidArgumentError(
        "queries: at least one query is required");
  }
  if (queries.size() > options_.max_batch_sessions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "queries: ", queries.size(), " sessions, more than the batch limit of ",
        options_.max_batch_sessions));
  }

  // Every query is validated before any work, so a bad one fails the call
  // as a whole.
  std::vector<std::shared_ptr<Session>> sessions;
  sessions.reserve(queries.size());
  absl::flat_hash_map<absl::string_view, size_t> seen;
  for (size_t i = 0; i < queries.size(); ++i) {
    const RetrieveQuery& q = queries[i];
    const std::string id_field = absl::StrCat("queries[", i, "].session_id");
    ASSIGN_OR_RETURN(std::shared_ptr<Session> session,
                     sessions_.Find(tenant, q.session_id, id_field));
    if (auto [it, inserted] = seen.emplace(q.session_id, i); !inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat(id_field, ": session \"", q.session_id,
                       "\" appears twice (also queries[", it->second, "])"));
    }
    const ModelShape& shape = session->shape();
    if (options.layer >= shape.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer: ", options.layer, " is out of range 0..",
                       shape.num_layers - 1, " of session \"", q.session_id,
                       "\" (queries[", i, "])"));
    }
    const size_t expected = size_t{shape.num_q_heads} * shape.head_dim;
    if (q.query.size() != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "queries[", i, "].query: expected ", expected,
          " floats ([num_q_heads=", shape.num_q_heads,
          "][head_dim=", shape.head_dim, "]), got ", q.query.size()));
    }
    for (size_t e = 0; e < q.query.size(); ++e) {
      if (!std::isfinite(q.query[e])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "queries[", i, "].query: element ", e, " is not finite"));
      }
    }
    sessions.push_back(std::move(session));
  }

  std::vector<SessionResult> results;
  if (options.mode == RetrieveMode::kWave) {
    ASSIGN_OR_RETURN(results, RetrieveWave(options, queries, sessions));
  } else {
    ASSIGN_OR_RETURN(results, RetrieveExact(options, queries, sessions));
  }
  const int64_t now = NowUnixMs();
  for (const std::shared_ptr<Session>& session : sessions) {
    session->Touch(now);
  }
  return results;
}

absl::StatusOr<std::vector<SessionResult>> EngineImpl::RetrieveExact(
    const RetrieveOptions& options, absl::Span<const RetrieveQuery> queries,
    absl::Span<const std::shared_ptr<Session>> sessions) const {
  std::vector<SessionResult> results(queries.size());
  // include_kv: bytes the whole answer needs; copying stops once it is over
  // the limit, counting goes on so the error names the full need.
  uint64_t inline_bytes = 0;
  bool over_limit = false;
  for (size_t i = 0; i < queries.size(); ++i) {
    const Session& session = *sessions[i];
    const ModelShape& shape = session.shape();
    const size_t row_bytes = size_t{shape.head_dim} * DTypeBytes(shape.dtype);
    SessionResult& r = results[i];
    r.session_id = session.id();
    const std::string id_field = absl::StrCat("queries[", i, "].session_id");
    RETURN_IF_ERROR(
        session.ReadLayer(options.layer, id_field, [&](const LayerView& layer) {
          r.num_tokens = layer.num_tokens;
          r.indexed_tokens = 0;  // no wave index: every token is retrieved
          r.layout_epoch = layer.layout_epoch;
          r.heads.resize(shape.num_kv_heads);
          const uint64_t n = layer.num_tokens;
          if (options.include_kv) {
            inline_bytes += 2 * n * row_bytes * shape.num_kv_heads;
            over_limit =
                over_limit || inline_bytes > options_.max_inline_kv_bytes;
          }
          for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
            KvHeadResult& head = r.heads[h];
            head.kv_head = h;
            if (n == 0) continue;  // a SlotRange holds >= 1 slot
            // n <= max_tokens <= UINT32_MAX (EngineOptions::Validate).
            head.retrieval.push_back(SlotRange{0, 0, static_cast<uint32_t>(n)});
            if (options.include_kv && !over_limit) {
              head.keys.resize(n * row_bytes);
              head.values.resize(n * row_bytes);
              layer.heads[h].CopyOut(
                  0, n, reinterpret_cast<uint8_t*>(head.keys.data()),
                  reinterpret_cast<uint8_t*>(head.values.data()), nullptr);
            }
          }
        }));
  }
  if (over_limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "include_kv: the answer's K/V takes ", inline_bytes,
        " bytes, more than the inline limit of ", options_.max_inline_kv_bytes,
        " bytes (max_inline_kv_bytes); fetch it with FetchClusters instead"));
  }
  return results;
}

absl::StatusOr<std::vector<SessionResult>> EngineImpl::RetrieveWave(
    const RetrieveOptions& options, absl::Span<const RetrieveQuery> queries,
    absl::Span<const std::shared_ptr<Session>> sessions) const {
  // The wave index (index/) is built per (session, layer, kv head); until
  // the engine builds and maintains it, no layer is ready for WAVE mode.
  (void)options;
  (void)queries;
  (void)sessions;
  return absl::UnavailableError(
      "mode: WAVE retrieval needs the wave index, which is not built for "
      "this session yet");
}

}  // namespace wavekv
