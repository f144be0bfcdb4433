// Engine::Open and EngineImpl's session lifecycle: create, append, get,
// list, close, stats. Retrieve is in retrieve.cc, FetchSlots in
// fetch_slots.cc.
#include "kvstore/engine.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "kvstore/engine_impl.h"
#include "kvstore/finite_check.h"

namespace wavekv {
namespace {

const char* DurabilityName(Durability durability) {
  switch (durability) {
    case Durability::kNone:
      return "NONE";
    case Durability::kAsync:
      return "ASYNC";
    case Durability::kSync:
      return "SYNC";
  }
  return "UNKNOWN";
}

// Slabs of 64 MiB, or one slab the size of a small budget (tests).
HostArenaOptions ArenaOptionsFor(const EngineOptions& options) {
  HostArenaOptions arena;
  const uint64_t budget_pages =
      (options.memory_budget_bytes + kHostPageBytes - 1) / kHostPageBytes;
  arena.slab_bytes =
      std::min<uint64_t>(arena.slab_bytes, budget_pages * kHostPageBytes);
  return arena;
}

// The GPU backend, or null for the CPU. Open checked the option; a device
// that then fails to open leaves the engine on the CPU, logged.
std::unique_ptr<EngineGpu> OpenGpu(int32_t option) {
  absl::StatusOr<std::unique_ptr<EngineGpu>> gpu = EngineGpu::Open(option);
  if (!gpu.ok()) {
    const std::string message = gpu.status().ToString();
    ABSL_RAW_LOG(WARNING, "wavekv: GPU backend not opened, using the CPU: %s",
                 message.c_str());
    return nullptr;
  }
  return *std::move(gpu);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Open(
    const EngineOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  // A GPU that was asked for by number and cannot be used fails Open.
  RETURN_IF_ERROR(ResolveGpuDevice(options.gpu_device).status());
  auto engine = std::make_unique<EngineImpl>(options);
  RETURN_IF_ERROR(engine->OpenStorage());
  return std::unique_ptr<Engine>(std::move(engine));
}

EngineImpl::EngineImpl(const EngineOptions& options)
    : options_(options),
      budget_(options.memory_budget_bytes),
      arena_(ArenaOptionsFor(options)),
      sessions_(options.max_sessions, options.max_sessions_per_tenant,
                &quotas_),
      gpu_(OpenGpu(options.gpu_device)),
      builder_(options.index_threads, budget_, options.on_index_build_failure,
               gpu_.get()),
      retrieve_pool_(static_cast<int>(options.retrieve_threads)) {}

int64_t EngineImpl::NowUnixMs() { return absl::ToUnixMillis(absl::Now()); }

absl::Status EngineImpl::CheckDurability(Durability durability) const {
  if (durability == Durability::kNone || storage_ != nullptr) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "durability: ", DurabilityName(durability),
      " requires the persistent tier, which is not enabled in this engine"));
}

absl::StatusOr<SessionInfo> EngineImpl::CreateSession(
    const TenantId& tenant, const SessionOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  if (options.max_tokens > options_.max_tokens_per_session) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: ", options.max_tokens,
                     " is more than the engine's per-session limit of ",
                     options_.max_tokens_per_session));
  }
  RETURN_IF_ERROR(CheckDurability(options.durability));
  const uint64_t max_tokens = options.max_tokens != 0
                                  ? options.max_tokens
                                  : options_.max_tokens_per_session;
  const int64_t now = NowUnixMs();
  ASSIGN_OR_RETURN(std::shared_ptr<Session> session,
                   sessions_.Create(tenant, [&](std::string id) {
                     auto session = std::make_shared<Session>(
                         std::move(id), tenant, options, max_tokens, now,
                         ChunkGeometry{}, &arena_);
                     session->AttachStorage(storage_.get());
                     return session;
                   }));
  // A durable session is on disk before it is acknowledged, so a restart
  // brings it back even before its first append.
  if (options.durability != Durability::kNone) {
    if (absl::Status s =
            session->PersistAll(options.durability == Durability::kSync);
        !s.ok()) {
      if (sessions_.Remove(tenant, session->id()).ok()) {
        budget_.Release(session->Close());
        quotas_.ReleaseSession(tenant, session->id());
      }
      return s;
    }
  }
  return session->Info();
}

absl::StatusOr<AppendResult> EngineImpl::Append(
    const TenantId& tenant, const std::string& session_id,
    absl::Span<const LayerAppend> layers,
    std::optional<Durability> durability) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> session,
                   sessions_.Find(tenant, session_id));
  if (durability.has_value() && *durability != Durability::kNone &&
      *durability != Durability::kAsync && *durability != Durability::kSync) {
    return absl::InvalidArgumentError(
        absl::StrCat("durability: ", static_cast<int>(*durability),
                     " is not NONE (1), ASYNC (2) or SYNC (3)"));
  }
  // Malformed input is reported before the durability level is refused.
  RETURN_IF_ERROR(session->ValidateAppend(layers));
  if (options_.check_finite_kv) {
    RETURN_IF_ERROR(CheckFiniteKv(layers, session->shape()));
  }
  const Durability level = durability.value_or(session->options().durability);
  RETURN_IF_ERROR(CheckDurability(level));
  ASSIGN_OR_RETURN(Session::ResidentHold resident, spiller_.Hold(session));
  AppendPersist persist;
  persist.enabled = level != Durability::kNone;
  persist.sync = level == Durability::kSync;
  ASSIGN_OR_RETURN(
      Session::AppendOutcome outcome, spiller_.WithRoom(session.get(), [&] {
        return session->Append(
            layers, budget_,
            [&](const AppendCharge& charge)
                -> absl::StatusOr<std::function<void()>> {
              ASSIGN_OR_RETURN(
                  uint64_t before,
                  quotas_.ChargeAppendRefundable(tenant, session_id, charge));
              return [this, &tenant, &session_id, charge, before] {
                quotas_.RefundAppend(tenant, session_id, charge, before);
              };
            },
            persist);
      }));
  session->Touch(NowUnixMs());
  for (uint32_t layer : outcome.index_layers) {
    builder_.Schedule(session, layer);
  }
  return std::move(outcome.result);
}

absl::StatusOr<SessionInfo> EngineImpl::GetSession(
    const TenantId& tenant, const std::string& session_id) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> session,
                   sessions_.Find(tenant, session_id));
  if (!session->unusable().ok()) return session->unusable();
  return session->Info();
}

absl::StatusOr<SessionPage> EngineImpl::ListSessions(
    const TenantId& tenant, uint32_t page_size, const std::string& page_token) {
  ASSIGN_OR_RETURN(SessionManager::Page page,
                   sessions_.List(tenant, page_size, page_token));
  SessionPage out;
  out.sessions.reserve(page.sessions.size());
  for (const std::shared_ptr<Session>& session : page.sessions) {
    absl::StatusOr<SessionInfo> info = session->Info();
    // A session closed since the listing is left out, as if listed later.
    if (info.ok()) out.sessions.push_back(*std::move(info));
  }
  out.next_page_token = std::move(page.next_page_token);
  return out;
}

absl::StatusOr<uint64_t> EngineImpl::CloseSession(
    const TenantId& tenant, const std::string& session_id) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> session,
                   sessions_.Remove(tenant, session_id));
  const uint64_t freed = session->Close();
  budget_.Release(freed);
  // After Close: no append can charge the session any more.
  quotas_.ReleaseSession(tenant, session_id);
  if (storage_ != nullptr &&
      (session->persistent() || !session->unusable().ok())) {
    // Synced when the session promised durability (its level, or tokens
    // already durable): acknowledged durable data must not come back after
    // a crash once its close was acknowledged. Otherwise not synced: a
    // crash may bring back what was only a cache, as it may bring back a
    // session whose close got no reply.
    const bool sync = session->options().durability != Durability::kNone ||
                      session->durable_tokens() > 0;
    if (absl::Status s = storage_->DeleteSession(session_id, sync); !s.ok()) {
      Log(absl::StrCat(
          "session ", session_id,
          ": closed, but deleting its records failed: ", s.message()));
    }
  }
  return freed;
}

void EngineImpl::SetTenantQuotas(
    absl::flat_hash_map<TenantId, TenantQuota> quotas) {
  quotas_.Set(std::move(quotas));
}

TenantUsage EngineImpl::GetTenantUsage(const TenantId& tenant) const {
  return quotas_.Usage(tenant);
}

EngineStats EngineImpl::Stats() const {
  EngineStats stats;
  stats.memory_budget_bytes = budget_.budget_bytes();
  stats.memory_bytes = budget_.used_bytes();
  for (const std::shared_ptr<Session>& session : sessions_.All()) {
    ++stats.sessions;
    stats.tokens += session->num_tokens() * session->shape().num_layers;
    stats.indexed_tokens += session->indexed_tokens();
    if (session->options().durability != Durability::kNone) {
      const uint64_t tokens = session->num_tokens();
      const uint64_t durable = session->durable_tokens();
      if (tokens > durable) stats.durable_lag_tokens += tokens - durable;
    }
  }
  builder_.AddStats(stats);
  if (gpu_ != nullptr) gpu_->AddStats(stats);
  spiller_.AddStats(stats);
  const HostArenaStats arena = arena_.Stats();
  stats.arena_slabs = arena.slabs;
  stats.arena_reserved_bytes = arena.reserved_bytes;
  stats.arena_locked_bytes = arena.locked_bytes;
  stats.arena_lock_failures = arena.lock_failures;
  stats.arena_fragmentation = arena.fragmentation;
  if (storage_ != nullptr) {
    stats.storage_write_errors = storage_->write_errors();
    stats.storage_no_space_errors = storage_->no_space_errors();
    stats.storage_wal_syncs = storage_->wal_syncs();
    stats.storage_write_ops = storage_->write_ops();
    stats.storage_bytes_written = storage_->bytes_written();
  }
  stats.sessions_recovered = sessions_recovered_.load();
  stats.sessions_recovered_spilled = sessions_recovered_spilled_.load();
  stats.sessions_unusable = sessions_unusable_.load();
  return stats;
}

}  // namespace wavekv
