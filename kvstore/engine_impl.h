// EngineImpl: the in-memory engine behind Engine (engine.h). It hands the
// work to small classes: SessionManager (ids, tenants, session limits),
// Session (per-layer locks, stores and wave indexes), MemoryBudget (host
// bytes), IndexBuilder (background index builds) and a ThreadPool that
// splits Retrieve batches.
//
// Its methods are defined in engine.cc (sessions and appends), retrieve.cc
// (Retrieve: validation, locking, EXACT and WAVE answers) and
// fetch_slots.cc (FetchSlots).
//
// The persistent tier (engine_storage.cc): OpenStorage opens or adopts the
// Storage, recovers every stored session and starts the ASYNC flusher;
// the destructor stops it and persists every session.
//
// Thread-safe. Lock order: SessionManager::mu_ is never held while a
// session's layer locks are taken; layer locks as in session.h. No lock is
// held while FetchSlots' sink runs.
#ifndef WAVEKV_KVSTORE_ENGINE_IMPL_H_
#define WAVEKV_KVSTORE_ENGINE_IMPL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kvstore/engine.h"
#include "kvstore/gpu/engine_gpu.h"
#include "kvstore/host_arena.h"
#include "kvstore/index_builder.h"
#include "kvstore/memory_budget.h"
#include "kvstore/session.h"
#include "kvstore/session_manager.h"
#include "kvstore/spiller.h"
#include "kvstore/storage/storage.h"
#include "kvstore/tenant_quota.h"
#include "kvstore/thread_pool.h"
#include "kvstore/types.h"

namespace wavekv {

class EngineImpl final : public Engine {
 public:
  // REQUIRES: options.Validate() ok.
  explicit EngineImpl(const EngineOptions& options);
  // Stops the flusher and persists every session (engine_storage.cc).
  ~EngineImpl() override;

  // Opens options.storage_dir (or adopts options.storage), recovers the
  // stored sessions and starts the ASYNC flusher; a no-op without a
  // persistent tier. Called once by Engine::Open before the engine is
  // shared.
  absl::Status OpenStorage();

  absl::StatusOr<SessionInfo> CreateSession(
      const TenantId& tenant, const SessionOptions& options) override;
  absl::StatusOr<AppendResult> Append(
      const TenantId& tenant, const std::string& session_id,
      absl::Span<const LayerAppend> layers,
      std::optional<Durability> durability) override;
  absl::StatusOr<std::vector<SessionResult>> Retrieve(
      const TenantId& tenant, const RetrieveOptions& options,
      absl::Span<const RetrieveQuery> queries) override;
  absl::Status FetchSlots(
      const TenantId& tenant, const FetchRequest& request,
      const std::function<bool(SlotChunk&&)>& sink) override;
  absl::StatusOr<SessionInfo> GetSession(
      const TenantId& tenant, const std::string& session_id) override;
  absl::StatusOr<SessionPage> ListSessions(
      const TenantId& tenant, uint32_t page_size,
      const std::string& page_token) override;
  absl::StatusOr<uint64_t> CloseSession(const TenantId& tenant,
                                        const std::string& session_id) override;
  void SetTenantQuotas(
      absl::flat_hash_map<TenantId, TenantQuota> quotas) override;
  TenantUsage GetTenantUsage(const TenantId& tenant) const override;
  EngineStats Stats() const override;
  const EngineOptions& options() const override { return options_; }

 private:
  // OK if this engine can honour `durability` (valid enum assumed);
  // FailedPrecondition naming the durability field otherwise.
  absl::Status CheckDurability(Durability durability) const;

  // Recovery of one stored session (OpenStorage).
  void RecoverSession(const Storage::MetaEntry& entry);
  // The ASYNC flusher's loop and one step of it: fsync the WAL, then mark
  // what was written before it durable.
  void FlushLoop();
  absl::Status FlushAsyncOnce();
  void Log(const std::string& line) const;

  // The answers to validated queries, with every session's layer reader
  // lock held (readers[i] for sessions[i]).
  absl::StatusOr<std::vector<SessionResult>> AnswerLocked(
      const RetrieveOptions& options, absl::Span<const RetrieveQuery> queries,
      absl::Span<const std::shared_ptr<Session>> sessions,
      absl::Span<const LayerView* const> views);

  static int64_t NowUnixMs();

  const EngineOptions options_;
  // Set by OpenStorage; outlives every session (they hold a raw pointer).
  std::shared_ptr<Storage> storage_;
  MemoryBudget budget_;
  // Pinned host memory of every session's K/V; outlives the sessions.
  HostArena arena_;
  TenantQuotas quotas_;  // before sessions_, which points to it
  SessionManager sessions_;
  // The GPU backend (gpu_device), null on the CPU. Used by builder_'s
  // threads and by Retrieve (wave_gpu.cc).
  const std::unique_ptr<EngineGpu> gpu_;
  // Destroyed before the members above: their threads use them.
  IndexBuilder builder_;
  ThreadPool retrieve_pool_;
  // Spills idle sessions to storage_ when the budget is full, and restores
  // them on access (no-op without storage_).
  Spiller spiller_{storage_, budget_, sessions_, builder_};

  // Persistence counters and the ASYNC flusher.
  std::atomic<uint64_t> sessions_recovered_{0};
  std::atomic<uint64_t> sessions_unusable_{0};
  // Of sessions_recovered_, those registered spilled (budget full at Open).
  std::atomic<uint64_t> sessions_recovered_spilled_{0};
  absl::Mutex flush_mu_;
  bool stop_flusher_ ABSL_GUARDED_BY(flush_mu_) = false;
  std::thread flusher_;
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_ENGINE_IMPL_H_
