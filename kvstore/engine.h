// The wavekv engine: sessions of many tenants, their K/V in host memory in
// the cluster-major slot layout, and retrieval. A plain C++ library with
// absl::Status results: the gRPC service (transport/) is a thin layer over
// it, and a worker process can link it directly (co-located mode).
//
// Error contract (shared with the wire API): a failing call changes no
// state and returns a canonical code whose message names the field, using
// the proto's field names, e.g. "layers[1].keys: expected 4096 bytes, got 10".
//  - InvalidArgument: malformed input;  NotFound: unknown session, or a
//    session of another tenant (indistinguishable on purpose);
//  - FailedPrecondition: valid input that does not fit the current state;
//  - ResourceExhausted: memory budget, session/token limits, tenant quotas;
//  - Unavailable: WAVE retrieval on a layer whose index is not ready.
//
// Thread-safe: every method may be called concurrently from any thread.
//
// Example:
//   ASSIGN_OR_RETURN(auto engine, Engine::Open(EngineOptions{}));
//   ASSIGN_OR_RETURN(SessionInfo s, engine->CreateSession("t1", opts));
//   ASSIGN_OR_RETURN(AppendResult r, engine->Append("t1", s.session_id,
//   layers));
#ifndef WAVEKV_KVSTORE_ENGINE_H_
#define WAVEKV_KVSTORE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvstore/tenant_quota.h"
#include "kvstore/types.h"

namespace wavekv {

class Storage;  // kvstore/storage/storage.h

// A failed background index build, as reported to
// EngineOptions::on_index_build_failure.
struct IndexBuildFailure {
  std::string session_id;
  TenantId tenant;
  uint32_t layer = 0;
  absl::Status status;
};

// EngineOptions::gpu_device values besides a device number.
inline constexpr int32_t kGpuOff = -1;
inline constexpr int32_t kGpuAuto = -2;

struct EngineOptions {
  // Host memory all sessions' K/V may hold, in bytes. Appends beyond it fail
  // with ResourceExhausted. >= 1 MiB.
  uint64_t memory_budget_bytes = 8ull << 30;
  // Sessions alive at once (all tenants). >= 1.
  uint32_t max_sessions = 4096;
  // Sessions alive at once per tenant. >= 1.
  uint32_t max_sessions_per_tenant = 1024;
  // Default and maximum of SessionOptions::max_tokens (per layer). >= 1.
  uint64_t max_tokens_per_session = 4ull << 20;
  // Retrieve with include_kv fails with ResourceExhausted beyond this many
  // K+V bytes in one answer. >= 0.
  uint64_t max_inline_kv_bytes = 16ull << 20;
  // Retrieve batch limit (sessions per call). 1..4096.
  uint32_t max_batch_sessions = 256;
  // Threads that build wave indexes in the background: a build job is one
  // (session, layer), whose kv heads are clustered in parallel on the same
  // threads. A job clusters everything that waits when it starts (so under
  // load, prefill chunks coalesce into fewer, larger blocks). 0 builds
  // synchronously inside Append: the call returns with the index caught up,
  // one block per qualifying Append (deterministic, for tests). 0..64.
  uint32_t index_threads = 2;
  // Worker threads that, with the calling thread, split one Retrieve batch
  // across (session, kv head). 0 = the calling thread alone. 0..256.
  uint32_t retrieve_threads = 4;
  // Called on a build thread for every failed index build (the failure is
  // also counted and shown in the session's index_state/index_error). Must
  // be thread-safe and must not call into the engine. Empty: failures are
  // logged to stderr.
  std::function<void(const IndexBuildFailure&)> on_index_build_failure;
  // Append refuses NaN and infinity in K/V (InvalidArgument naming token,
  // kv head and element): one scan of the request's bytes. false skips the
  // scan for callers that guarantee finite K/V; a non-finite value then
  // fails its layer's index build for good (index_state FAILED).
  bool check_finite_kv = true;
  // GPU backend: index builds (k-means of a layer's kv heads in one batch)
  // and WAVE retrieval planning (scoring, zones, tails over centroids, value
  // sums and sizes kept in device memory) on a CUDA device. kGpuOff = CPU
  // only; kGpuAuto = device 0 if this build has CUDA and a GPU is usable,
  // the CPU otherwise; N >= 0 = device N: Open fails with InvalidArgument
  // if this build has no CUDA or N is not a device, FailedPrecondition if
  // no GPU is usable. A GPU call that fails falls back to the CPU for that
  // call (logged and counted in EngineStats). >= -2.
  int32_t gpu_device = -1;

  // --- Persistent tier (kvstore/storage/) ---
  // Directory of the engine's RocksDB database (created if missing). Empty
  // and no `storage`: memory only, and ASYNC/SYNC are FailedPrecondition.
  // With it, Open recovers every stored session (see Engine::Open).
  std::string storage_dir;
  // An already open store, used instead of opening storage_dir (the server
  // shares its database with the data directory's server record).
  std::shared_ptr<Storage> storage;
  // ASYNC appends are fsynced (and durable_tokens advanced) this often by a
  // background flusher, in milliseconds. 1..60000.
  uint32_t async_flush_interval_ms = 50;
  // Recovery progress lines from Open ("recovering 12 sessions", one line
  // per session, a summary). Empty: written to stderr.
  std::function<void(const std::string&)> on_recovery_log;

  absl::Status Validate() const;
};

// Aggregate gauges for metrics. Cheap; a consistent-enough snapshot.
struct EngineStats {
  uint64_t sessions = 0;
  uint64_t memory_bytes = 0;  // K/V bytes held by all sessions
  uint64_t memory_budget_bytes = 0;
  uint64_t tokens = 0;          // sum over sessions of num_tokens * num_layers
  uint64_t indexed_tokens = 0;  // sum over sessions and layers
  // Index builds (counters since Open): blocks clustered and installed,
  // builds that failed, and seconds spent building (successful or not).
  uint64_t index_builds = 0;
  uint64_t index_build_failures = 0;
  double index_build_seconds_total = 0.0;
  // (session, layer) builds queued or running now.
  uint64_t index_pending_layers = 0;
  // GPU backend (EngineOptions::gpu_device): the device in use (-1 none),
  // blocks clustered and Retrieve calls planned on it, and GPU calls that
  // failed and were redone on the CPU (counters since Open).
  int32_t gpu_device = -1;
  uint64_t gpu_index_blocks = 0;
  uint64_t gpu_build_fallbacks = 0;
  uint64_t gpu_retrieve_calls = 0;
  uint64_t gpu_retrieve_fallbacks = 0;
  // Persistent tier (zero without one): writes that failed, of those for
  // lack of disk space, WAL fsyncs, and sessions found at Open (restored,
  // of those left on disk because the memory budget was full, and
  // unusable because their records failed a check).
  uint64_t storage_write_errors = 0;
  uint64_t storage_no_space_errors = 0;
  uint64_t storage_wal_syncs = 0;
  // Write/WAL-sync calls (the denominator of storage_write_errors) and the
  // bytes written by the successful ones.
  uint64_t storage_write_ops = 0;
  uint64_t storage_bytes_written = 0;
  // Tokens appended to ASYNC/SYNC sessions but not yet durable: sum over
  // those sessions of num_tokens - durable_tokens (per-layer minima).
  uint64_t durable_lag_tokens = 0;
  uint64_t sessions_recovered = 0;
  uint64_t sessions_recovered_spilled = 0;
  uint64_t sessions_unusable = 0;
  // Memory tiers (kvstore/spiller.h; zero without a persistent tier):
  // sessions spilled to disk to make room and the bytes that freed, spills
  // the disk refused, sessions restored on access and restores that failed
  // (counters since Open); sessions on disk now and the bytes they held.
  uint64_t spills = 0;
  uint64_t spilled_bytes_total = 0;
  uint64_t spill_failures = 0;
  uint64_t restores = 0;
  uint64_t restore_failures = 0;
  uint64_t spilled_sessions = 0;
  uint64_t spilled_bytes = 0;
  // The pinned host arena (kvstore/host_arena.h): slabs, bytes mapped and
  // mlocked, slabs whose mlock was refused, 1 - largest free run / free.
  uint64_t arena_slabs = 0;
  uint64_t arena_reserved_bytes = 0;
  uint64_t arena_locked_bytes = 0;
  uint64_t arena_lock_failures = 0;
  double arena_fragmentation = 0.0;
};

class Engine {
 public:
  // With a persistent tier, Open recovers every stored session before it
  // returns: same id, tenant, options, tokens and index (from the stored
  // index records; layers without one are rebuilt in the background), so
  // Retrieve answers as before the restart. Sessions that do not fit the
  // memory budget are registered spilled (listed with their tokens, K/V
  // left on disk) and restored on first access like any spilled session. A
  // session whose records fail their check is still listed (index_state
  // FAILED, index_error says why) and every call on it answers DataLoss
  // "session S: layer L chunk C: ..."; CloseSession removes it. Progress
  // goes to on_recovery_log.
  static absl::StatusOr<std::unique_ptr<Engine>> Open(
      const EngineOptions& options);

  // Graceful shutdown: with a persistent tier, stops the ASYNC flusher and
  // persists every session (DURABILITY_NONE ones included) before
  // returning, so a restart serves them all.
  virtual ~Engine() = default;

  // Creates a session owned by `tenant`. Fails with InvalidArgument on bad
  // options (also max_tokens above max_tokens_per_session),
  // FailedPrecondition for a durability level this engine cannot honour
  // (ASYNC and SYNC need a persistent tier: storage_dir), and
  // ResourceExhausted over session limits.
  virtual absl::StatusOr<SessionInfo> CreateSession(
      const TenantId& tenant, const SessionOptions& options) = 0;

  // Appends K/V to one or more layers, atomically: either every layer of
  // the request is applied or none. Each layer's start_token must equal that
  // layer's current length (FailedPrecondition otherwise). `durability`
  // overrides the session level when set. Bytes are reserved in the memory
  // budget before anything is copied (ResourceExhausted naming
  // memory_budget_bytes when they do not fit); past the session's
  // max_tokens is ResourceExhausted too. Updates last_access on success.
  // Durability: NONE keeps the K/V in memory (persisted only at shutdown
  // or spill); ASYNC writes it to the WAL before returning and a
  // background flusher fsyncs it (durable_tokens says how far); SYNC
  // returns after the WAL is fsynced (concurrent SYNC appends share an
  // fsync), durable_tokens = num_tokens. A storage failure refuses the
  // append with nothing applied: ResourceExhausted "storage: no space
  // left ..." or Unavailable/Internal with RocksDB's message; reads go on.
  // Layers that now have update_tokens or more tokens waiting beyond the
  // recent window get an index build (background, or before returning
  // with index_threads = 0); its failure does not fail the Append (see
  // SessionInfo::index_state).
  virtual absl::StatusOr<AppendResult> Append(
      const TenantId& tenant, const std::string& session_id,
      absl::Span<const LayerAppend> layers,
      std::optional<Durability> durability = std::nullopt) = 0;

  // Answers one query per session at one layer; each session's answer is
  // taken from one consistent state of its layer. Fails as a whole if any
  // query is invalid (message names "queries[i]...").
  //  - kExact: every stored token of the layer exactly once, as SlotRanges
  //    per kv head (cluster_id 0): [0, n) as one range before anything is
  //    indexed; once tokens are indexed, up to three: the sinks and the
  //    unindexed tail in the token-order store and the indexed tokens as
  //    one range of the cluster store (types.h, kClusterSlotBase).
  //    `steady` is empty and indexed_tokens 0.
  //  - kWave: `steady` is exactly the tokens outside the index (sinks,
  //    recent and not yet indexed tokens), indexed_tokens how many are in
  //    it, and per kv head the retrieval-zone clusters (best first, one
  //    SlotRange each) and one TailStats per q head of its group. A layer
  //    with no index answers Unavailable while its first build runs and
  //    FailedPrecondition if its build failed ("mode: WAVE retrieval on
  //    layer L of session S: ..."), unless exact_if_not_ready, which serves
  //    that session in kExact mode (SessionResult::mode). A layer too short
  //    to index is ready: everything steady, no clusters.
  // include_kv adds the K/V of the ranges, in range order; beyond
  // max_inline_kv_bytes it is ResourceExhausted. Updates last_access of
  // every session on success.
  virtual absl::StatusOr<std::vector<SessionResult>> Retrieve(
      const TenantId& tenant, const RetrieveOptions& options,
      absl::Span<const RetrieveQuery> queries) = 0;

  // Streams the K/V of the requested slot ranges to `sink`, each range cut
  // into chunks of at most max_chunk_bytes (K+V). Validation of the whole
  // request happens before the first chunk. If `sink` returns false the
  // fetch stops with Cancelled. The session is not locked while `sink` runs.
  // Ranges past the stored slots, over tokens that have moved into the
  // wave index since (also when that happens during the fetch), or a stale
  // layout_epoch, are FailedPrecondition.
  virtual absl::Status FetchSlots(
      const TenantId& tenant, const FetchRequest& request,
      const std::function<bool(SlotChunk&&)>& sink) = 0;

  // Does not count as an access (last_access is left as it is).
  virtual absl::StatusOr<SessionInfo> GetSession(
      const TenantId& tenant, const std::string& session_id) = 0;

  // The tenant's sessions ordered by id; page_size 0 = 100, at most 1000.
  // page_token is the previous page's next_page_token (InvalidArgument if
  // it is not one).
  virtual absl::StatusOr<SessionPage> ListSessions(
      const TenantId& tenant, uint32_t page_size,
      const std::string& page_token) = 0;

  // Closes the session and frees its memory; returns the bytes freed. With
  // a persistent tier its records are deleted; for an ASYNC/SYNC session
  // (or one with durable tokens) the deletion is fsynced before this
  // returns, so a closed durable session never comes back after a crash.
  virtual absl::StatusOr<uint64_t> CloseSession(
      const TenantId& tenant, const std::string& session_id) = 0;

  // Replaces every tenant's quota (sessions, K/V bytes, tokens; see
  // tenant_quota.h); tenants without an entry are limited only by
  // EngineOptions. Applies to the next CreateSession and Append: over a
  // quota they fail with ResourceExhausted "tenant quota max_...: ..." and
  // change nothing; what sessions hold already is never taken away.
  virtual void SetTenantQuotas(
      absl::flat_hash_map<TenantId, TenantQuota> quotas) = 0;
  // What the tenant's live sessions hold, in the units of its quota.
  virtual TenantUsage GetTenantUsage(const TenantId& tenant) const = 0;

  virtual EngineStats Stats() const = 0;
  virtual const EngineOptions& options() const = 0;
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_ENGINE_H_
