// Fuzz target: arbitrary bytes as a script of wavekv.v1 requests
// (request_script.h) driven through the service's real path — proto parse,
// transport/convert.h, then the kvstore Engine (in memory, synchronous index
// builds, no threads) — exactly as transport/service.cc does, minus gRPC.
//
// Besides "never crash, leak or hang", every step checks the wire contract:
//  - a failed call returns a client-side code (never INTERNAL, UNKNOWN or
//    DATA_LOSS, never OK-with-garbage) with a non-empty message, and
//    changes no state (every session of both tenants, as ListSessions
//    shows it, and the engine's memory gauge are the same before and after);
//  - a tenant never sees another tenant's session (GetSession, ListSessions,
//    Retrieve, FetchClusters and CloseSession of the other tenant's ids are
//    NOT_FOUND);
//  - a successful Append/Close/Create accounts memory consistently with the
//    sessions' memory_bytes.
// A violated check prints what happened and aborts (a fuzzer crash).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "fuzz/request_script.h"
#include "kvstore/engine.h"
#include "proto/wavekv/v1/wavekv.pb.h"
#include "transport/convert.h"

namespace wavekv::fuzz {
namespace {

// Small limits, so every limit is reachable by a short input.
EngineOptions FuzzEngineOptions() {
  EngineOptions options;
  options.memory_budget_bytes = 8ull << 20;
  options.max_sessions = 6;
  options.max_sessions_per_tenant = 4;
  options.max_tokens_per_session = 4096;
  options.max_inline_kv_bytes = 64ull << 10;
  options.max_batch_sessions = 4;
  options.index_threads = 0;  // builds run inside Append: deterministic
  options.retrieve_threads = 0;
  return options;
}

// FetchClusters: stop the stream (Cancelled) after this many chunks, as a
// client that stops reading would.
constexpr int kMaxFetchChunks = 64;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "request_fuzzer: contract violated: %s\n", what.c_str());
  std::abort();
}

// The session fields a failed call must not change (last_access may).
std::string StableText(const SessionInfo& s) {
  std::string out = absl::StrCat(
      s.session_id, " tenant=", s.tenant,
      " durability=", static_cast<int>(s.durability),
      " max_tokens=", s.max_tokens, " label_bytes=", s.label.size(),
      " num_tokens=", s.num_tokens, " durable=", s.durable_tokens,
      " memory=", s.memory_bytes, " state=", static_cast<int>(s.index_state),
      " tokens=[");
  for (uint64_t t : s.layer_tokens) absl::StrAppend(&out, t, ",");
  absl::StrAppend(&out, "] indexed=[");
  for (uint64_t t : s.layer_indexed_tokens) absl::StrAppend(&out, t, ",");
  absl::StrAppend(&out, "]");
  return out;
}

class ScriptRunner {
 public:
  explicit ScriptRunner(std::unique_ptr<Engine> engine)
      : engine_(std::move(engine)) {}

  void Run(const std::vector<ScriptStep>& steps) {
    for (size_t i = 0; i < steps.size(); ++i) Step(i, steps[i]);
  }

 private:
  // Everything a failed call must leave as it was.
  std::string Snapshot() {
    std::string out;
    for (int tenant = 0; tenant < 2; ++tenant) {
      absl::StatusOr<SessionPage> page =
          engine_->ListSessions(TenantName(tenant), 1000, "");
      if (!page.ok())
        Fail(absl::StrCat("ListSessions: ", page.status().ToString()));
      uint64_t memory = 0;
      for (const SessionInfo& s : page->sessions) {
        if (s.tenant != TenantName(tenant)) {
          Fail(absl::StrCat("ListSessions of ", TenantName(tenant),
                            " shows a session of ", s.tenant));
        }
        memory += s.memory_bytes;
        absl::StrAppend(&out, StableText(s), "\n");
      }
      total_memory_[tenant] = memory;
    }
    const EngineStats stats = engine_->Stats();
    if (stats.memory_bytes < total_memory_[0] + total_memory_[1]) {
      Fail(absl::StrCat("engine memory_bytes ", stats.memory_bytes,
                        " < sum of sessions' memory_bytes ",
                        total_memory_[0] + total_memory_[1]));
    }
    absl::StrAppend(&out, "sessions=", stats.sessions,
                    " memory=", stats.memory_bytes);
    return out;
  }

  // "#k" -> the k-th created session; anything else is passed through.
  std::string ResolveId(const std::string& id) const {
    if (id.size() == 2 && id[0] == '#' && id[1] >= '0' && id[1] <= '9' &&
        !created_.empty()) {
      return created_[(id[1] - '0') % created_.size()].first;
    }
    return id;
  }

  // The tenant that owns `id`, or -1 when no script session has it.
  int OwnerOf(const std::string& id) const {
    for (const auto& [sid, tenant] : created_) {
      if (sid == id) return tenant;
    }
    return -1;
  }

  void CheckForeignIsNotFound(const absl::Status& status, const std::string& id,
                              int tenant, const char* rpc) const {
    const int owner = OwnerOf(id);
    if (owner >= 0 && owner != tenant && status.ok()) {
      Fail(absl::StrCat(rpc, " by ", TenantName(tenant),
                        " succeeded on a session of ", TenantName(owner)));
    }
  }

  void CheckFailure(size_t step, RequestOp op, const absl::Status& status,
                    const std::string& before) {
    const absl::StatusCode code = status.code();
    if (code == absl::StatusCode::kInternal ||
        code == absl::StatusCode::kUnknown ||
        code == absl::StatusCode::kDataLoss) {
      Fail(absl::StrCat(
          "step ", step, " op ", static_cast<int>(op),
          ": server-side error code for client input: ", status.ToString()));
    }
    if (status.message().empty()) {
      Fail(absl::StrCat("step ", step,
                        ": error without a message: ", status.ToString()));
    }
    const std::string after = Snapshot();
    if (after != before) {
      Fail(absl::StrCat("step ", step, " op ", static_cast<int>(op),
                        " failed (", status.ToString(),
                        ") but changed state:\nbefore:\n", before, "\nafter:\n",
                        after));
    }
  }

  void Step(size_t index, const ScriptStep& step) {
    const std::string tenant = TenantName(step.tenant);
    const std::string before = Snapshot();
    absl::Status status;
    switch (step.op) {
      case RequestOp::kCreateSession: {
        v1::CreateSessionRequest request;
        if (!request.ParseFromString(step.message)) return;
        status = CreateSession(tenant, step.tenant, request);
        break;
      }
      case RequestOp::kAppend: {
        v1::AppendRequest request;
        if (!request.ParseFromString(step.message)) return;
        request.set_session_id(ResolveId(request.session_id()));
        status = Append(tenant, request);
        CheckForeignIsNotFound(status, request.session_id(), step.tenant,
                               "Append");
        break;
      }
      case RequestOp::kRetrieve: {
        v1::RetrieveRequest request;
        if (!request.ParseFromString(step.message)) return;
        for (v1::SessionQuery& q : *request.mutable_queries()) {
          q.set_session_id(ResolveId(q.session_id()));
        }
        status = Retrieve(tenant, request);
        for (const v1::SessionQuery& q : request.queries()) {
          CheckForeignIsNotFound(status, q.session_id(), step.tenant,
                                 "Retrieve");
        }
        break;
      }
      case RequestOp::kFetchClusters: {
        v1::FetchClustersRequest request;
        if (!request.ParseFromString(step.message)) return;
        request.set_session_id(ResolveId(request.session_id()));
        status = FetchClusters(tenant, request);
        CheckForeignIsNotFound(status, request.session_id(), step.tenant,
                               "FetchClusters");
        // Stopping the stream is the client's doing; no state either way.
        if (status.code() == absl::StatusCode::kCancelled) status = {};
        break;
      }
      case RequestOp::kGetSession: {
        v1::GetSessionRequest request;
        if (!request.ParseFromString(step.message)) return;
        const std::string id = ResolveId(request.session_id());
        absl::StatusOr<SessionInfo> info = engine_->GetSession(tenant, id);
        if (info.ok()) {
          if (info->tenant != tenant) {
            Fail(absl::StrCat("GetSession by ", tenant, " returned ",
                              info->tenant, "'s session"));
          }
          v1::SessionInfo out;
          SessionInfoToProto(*info, &out);
        }
        status = info.status();
        CheckForeignIsNotFound(status, id, step.tenant, "GetSession");
        break;
      }
      case RequestOp::kListSessions: {
        v1::ListSessionsRequest request;
        if (!request.ParseFromString(step.message)) return;
        absl::StatusOr<SessionPage> page = engine_->ListSessions(
            tenant, request.page_size(), request.page_token());
        if (page.ok()) {
          for (const SessionInfo& s : page->sessions) {
            if (s.tenant != tenant) {
              Fail(absl::StrCat("ListSessions by ", tenant, " returned ",
                                s.tenant, "'s session"));
            }
          }
          v1::ListSessionsResponse out;
          SessionPageToProto(*page, &out);
        }
        status = page.status();
        break;
      }
      case RequestOp::kCloseSession: {
        v1::CloseSessionRequest request;
        if (!request.ParseFromString(step.message)) return;
        const std::string id = ResolveId(request.session_id());
        absl::StatusOr<uint64_t> freed = engine_->CloseSession(tenant, id);
        status = freed.status();
        CheckForeignIsNotFound(status, id, step.tenant, "CloseSession");
        if (freed.ok()) {
          std::erase_if(created_,
                        [&](const auto& entry) { return entry.first == id; });
        }
        break;
      }
    }
    if (trace_) {
      std::fprintf(stderr, "step %zu op %d tenant %s: %s\n", index,
                   static_cast<int>(step.op), tenant.c_str(),
                   status.ToString().c_str());
    }
    if (!status.ok()) CheckFailure(index, step.op, status, before);
  }

  absl::Status CreateSession(const std::string& tenant, int tenant_index,
                             const v1::CreateSessionRequest& request) {
    absl::StatusOr<SessionOptions> options = SessionOptionsFromProto(request);
    if (!options.ok()) return options.status();
    absl::StatusOr<SessionInfo> info = engine_->CreateSession(tenant, *options);
    if (!info.ok()) return info.status();
    if (info->tenant != tenant) Fail("CreateSession: wrong tenant");
    if (OwnerOf(info->session_id) >= 0) {
      Fail(absl::StrCat("CreateSession reused id ", info->session_id));
    }
    created_.emplace_back(info->session_id, tenant_index);
    v1::CreateSessionResponse response;
    SessionInfoToProto(*info, response.mutable_session());
    return absl::OkStatus();
  }

  absl::Status Append(const std::string& tenant,
                      const v1::AppendRequest& request) {
    absl::StatusOr<std::optional<Durability>> durability =
        DurabilityFromProto(request.durability(), "durability");
    if (!durability.ok()) return durability.status();
    const std::vector<LayerAppend> layers = LayerAppendsFromProto(request);
    absl::StatusOr<AppendResult> result =
        engine_->Append(tenant, request.session_id(), layers, *durability);
    if (!result.ok()) return result.status();
    if (result->durable_tokens > result->num_tokens) {
      Fail("Append: durable_tokens > num_tokens");
    }
    v1::AppendResponse response;
    AppendResultToProto(*result, &response);
    return absl::OkStatus();
  }

  absl::Status Retrieve(const std::string& tenant,
                        const v1::RetrieveRequest& request) {
    absl::StatusOr<RetrieveBatch> batch = RetrieveBatchFromProto(request);
    if (!batch.ok()) return batch.status();
    absl::StatusOr<std::vector<SessionResult>> results =
        engine_->Retrieve(tenant, batch->options, batch->queries);
    if (!results.ok()) return results.status();
    if (results->size() != batch->queries.size()) {
      Fail(absl::StrCat("Retrieve: ", results->size(), " results for ",
                        batch->queries.size(), " queries"));
    }
    v1::RetrieveResponse response;
    for (SessionResult& result : *results) {
      if (result.indexed_tokens > result.num_tokens) {
        Fail("Retrieve: indexed_tokens > num_tokens");
      }
      SessionResultToProto(std::move(result), response.add_results());
    }
    return absl::OkStatus();
  }

  absl::Status FetchClusters(const std::string& tenant,
                             const v1::FetchClustersRequest& request) {
    const FetchRequest fetch = FetchRequestFromProto(request);
    int chunks = 0;
    return engine_->FetchSlots(tenant, fetch, [&](SlotChunk&& chunk) {
      if (chunk.keys.size() != chunk.values.size() ||
          chunk.positions.size() != chunk.num_slots) {
        Fail("FetchClusters: chunk with inconsistent sizes");
      }
      v1::ClusterChunk message;
      SlotChunkToProto(std::move(chunk), &message);
      return ++chunks < kMaxFetchChunks;
    });
  }

  std::unique_ptr<Engine> engine_;
  // WAVEKV_FUZZ_TRACE=1 prints every step's status (to see what seeds do).
  const bool trace_ = std::getenv("WAVEKV_FUZZ_TRACE") != nullptr;
  // Sessions created by the script (id, tenant), in creation order.
  std::vector<std::pair<std::string, int>> created_;
  uint64_t total_memory_[2] = {0, 0};
};

}  // namespace
}  // namespace wavekv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace wavekv;
  const std::vector<fuzz::ScriptStep> steps = fuzz::DecodeScript(
      absl::string_view(reinterpret_cast<const char*>(data), size));
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Open(fuzz::FuzzEngineOptions());
  if (!engine.ok())
    fuzz::Fail(absl::StrCat("Engine::Open: ", engine.status().ToString()));
  fuzz::ScriptRunner runner(std::move(*engine));
  runner.Run(steps);
  return 0;
}
