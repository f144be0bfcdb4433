// EngineImpl::Retrieve: validation of a batch of queries, the layer locks,
// and the EXACT and WAVE answers, split across (session, kv head) on the
// retrieve pool.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "index/dtype.h"
#include "index/wave_index_params.h"
#include "kvstore/engine_impl.h"
#include "kvstore/head_answer.h"
#include "kvstore/wave_gpu.h"

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

  // Every session's layer is read-locked for the whole answer, so each
  // session's answer comes from one state. Locks are taken in ascending
  // session id order (session.h).
  std::vector<size_t> order(sessions.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return sessions[a]->id() < sessions[b]->id();
  });
  // Spilled sessions come back first; the holds keep them resident.
  ASSIGN_OR_RETURN(std::vector<Session::ResidentHold> resident,
                   spiller_.HoldAll(sessions));
  std::vector<std::optional<Session::LayerReader>> readers(sessions.size());
  for (size_t i : order) {
    ASSIGN_OR_RETURN(
        Session::LayerReader reader,
        sessions[i]->ReadLock(options.layer,
                              absl::StrCat("queries[", i, "].session_id")));
    readers[i].emplace(std::move(reader));
  }
  std::vector<const LayerView*> views;
  views.reserve(readers.size());
  for (const auto& reader : readers) views.push_back(&reader->view());
  ASSIGN_OR_RETURN(std::vector<SessionResult> results,
                   AnswerLocked(options, queries, sessions, views));
  readers.clear();

  const int64_t now = NowUnixMs();
  for (const std::shared_ptr<Session>& session : sessions) {
    session->Touch(now);
  }
  return results;
}

absl::StatusOr<std::vector<SessionResult>> EngineImpl::AnswerLocked(
    const RetrieveOptions& options, absl::Span<const RetrieveQuery> queries,
    absl::Span<const std::shared_ptr<Session>> sessions,
    absl::Span<const LayerView* const> views) {
  std::vector<SessionResult> results(queries.size());
  // (session, kv head) pairs answered in WAVE mode.
  std::vector<std::pair<size_t, uint32_t>> wave_heads;
  for (size_t i = 0; i < queries.size(); ++i) {
    const Session& session = *sessions[i];
    const LayerView& view = *views[i];
    SessionResult& r = results[i];
    r.session_id = session.id();
    r.num_tokens = view.num_tokens;
    r.layout_epoch = view.layout_epoch;
    r.mode = RetrieveMode::kExact;
    if (options.mode == RetrieveMode::kWave) {
      absl::Status ready = session.WaveReadiness(options.layer, view);
      if (ready.ok()) {
        r.mode = RetrieveMode::kWave;
      } else if (!options.exact_if_not_ready) {
        return absl::Status(
            ready.code(), absl::StrCat(ready.message(), " (queries[", i, "])"));
      }
    }
    const uint32_t num_kv_heads = session.shape().num_kv_heads;
    r.heads.resize(num_kv_heads);
    for (uint32_t h = 0; h < num_kv_heads; ++h) r.heads[h].kv_head = h;
    if (r.mode == RetrieveMode::kWave) {
      r.indexed_tokens = view.indexed.num_tokens();
      for (const TokenSpan& span : SteadySpans(view.num_tokens, view.indexed)) {
        r.steady.push_back(TokenRange{span.begin, span.end});
      }
      for (uint32_t h = 0; h < num_kv_heads; ++h) wave_heads.emplace_back(i, h);
    } else {
      r.indexed_tokens = 0;  // everything is in the ranges
      for (uint32_t h = 0; h < num_kv_heads; ++h) {
        r.heads[h].retrieval =
            ExactRanges(view.heads[h], view.num_tokens, view.indexed);
      }
    }
  }

  // WAVE: rank clusters and compute tails, per (session, kv head): on the
  // GPU backend when the engine has one (wave_gpu.cc); on the CPU without
  // one, or when a GPU call fails (counted in EngineStats).
  std::vector<absl::Status> statuses(wave_heads.size());
  const bool on_gpu =
      gpu_ != nullptr && !wave_heads.empty() &&
      PlanWaveHeadsOnGpu(*gpu_, queries, sessions, views, wave_heads, results);
  retrieve_pool_.ParallelFor(on_gpu ? 0 : wave_heads.size(), [&](size_t t) {
    const auto [i, h] = wave_heads[t];
    const ModelShape& shape = sessions[i]->shape();
    const size_t g = shape.group_size();
    const size_t d = shape.head_dim;
    statuses[t] = PlanWaveHead(
        views[i]->heads[h], queries[i].query.subspan(h * g * d, g * d), g, d,
        sessions[i]->index_params(), &results[i].heads[h]);
  });
  for (size_t t = 0; t < statuses.size(); ++t) {
    if (!statuses[t].ok()) {
      return absl::Status(statuses[t].code(),
                          absl::StrCat("queries[", wave_heads[t].first,
                                       "]: ", statuses[t].message()));
    }
  }

  if (!options.include_kv) return results;
  // include_kv: the whole answer must fit the inline limit.
  uint64_t inline_bytes = 0;
  std::vector<std::pair<size_t, uint32_t>> all_heads;
  for (size_t i = 0; i < results.size(); ++i) {
    const ModelShape& shape = sessions[i]->shape();
    const uint64_t row_bytes =
        uint64_t{shape.head_dim} * DTypeBytes(shape.dtype);
    for (uint32_t h = 0; h < results[i].heads.size(); ++h) {
      inline_bytes += 2 * row_bytes * RangeSlots(results[i].heads[h].retrieval);
      all_heads.emplace_back(i, h);
    }
  }
  if (inline_bytes > options_.max_inline_kv_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "include_kv: the answer's K/V takes ", inline_bytes,
        " bytes, more than the inline limit of ", options_.max_inline_kv_bytes,
        " bytes (max_inline_kv_bytes); fetch it with FetchClusters instead"));
  }
  retrieve_pool_.ParallelFor(all_heads.size(), [&](size_t t) {
    const auto [i, h] = all_heads[t];
    const ModelShape& shape = sessions[i]->shape();
    CopyRangesKv(views[i]->heads[h],
                 size_t{shape.head_dim} * DTypeBytes(shape.dtype),
                 &results[i].heads[h]);
  });
  return results;
}

}  // namespace wavekv
