// Session: one cached sequence of one tenant — its options, and per layer
// the token count, the stores of every kv head, the wave index and its
// build state.
//
// Stores of one (layer, kv head) (HeadStore):
//  - tokens: the token-order SlotStore, slot t = token t. It holds the
//    steady zone (sinks, recent tokens) and every token not indexed yet;
//    tokens the index covers are dropped from it (their chunks freed).
//  - clusters: the ClusterStore of indexed tokens in the index's
//    cluster-major slot order.
//  - index: the WaveIndex over those tokens.
// Every kv head of a layer covers the same token span (LayerView::indexed),
// so one answer has one steady zone per session. Slot addresses: types.h,
// kClusterSlotBase.
//
// Index builds (index_build.cc): Append reports the layers that have a
// block to index (NextIndexBlock); the engine runs BuildIndex for each, at
// most one at a time per layer. A build copies the block's K/V under short
// reader locks, clusters without any lock, then takes the writer lock
// briefly to install clusters, slots and index and to drop the tokens from
// the token-order store.
//
// Locking. Each layer has its own absl::Mutex, so appends to one layer never
// wait for readers of another. Readers (Retrieve, FetchSlots, Info) hold a
// layer's reader lock; Append takes the writer locks of the layers it
// names; a build's install takes one layer's writer lock; Close takes every
// layer's writer lock. Lock order: within a session, layer locks in
// ascending layer index. A thread may hold the reader locks of one layer in
// several sessions (a Retrieve batch): it takes them in ascending session id
// order; writer locks of two sessions are never held together. No other
// lock is taken while a layer lock is held, except MemoryBudget's lock-free
// counter and TenantQuotas' leaf mutex (Append's `admit`). Gauges (token
// counts, memory bytes, last access) are atomics, written under the layer
// locks and readable without them.
//
// Thread-safe.
#ifndef WAVEKV_KVSTORE_SESSION_H_
#define WAVEKV_KVSTORE_SESSION_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "index/wave_index.h"
#include "index/wave_index_params.h"
#include "kvstore/cluster_store.h"
#include "kvstore/host_arena.h"
#include "kvstore/memory_budget.h"
#include "kvstore/slot_store.h"
#include "kvstore/storage/storage.h"
#include "kvstore/tenant_quota.h"
#include "kvstore/thread_pool.h"
#include "kvstore/types.h"

namespace wavekv {

class EngineGpu;  // kvstore/gpu/engine_gpu.h

// The NotFound status for a session that does not exist, is closed, or is
// another tenant's: one message for all three, so ids cannot be probed.
// `field` is the request field holding the id, e.g. "queries[2].session_id".
absl::Status SessionNotFoundError(absl::string_view field,
                                  absl::string_view session_id);

// The index's parameters from the session's options (the same fields).
WaveIndexParams ToWaveIndexParams(const IndexOptions& options);

// The stores of one kv head of one layer (see above).
struct HeadStore {
  HeadStore(size_t row_bytes, ChunkGeometry geometry, HostArena* arena)
      : tokens(row_bytes, geometry, arena), clusters(row_bytes) {}

  SlotStore tokens;
  ClusterStore clusters;
  // Null until the layer's first block is installed. Shared so that a build
  // can prepare its next block against it without the layer lock: only
  // builds change it, one at a time per layer, under the writer lock.
  std::shared_ptr<WaveIndex> index;
};

// Read-only view of one layer, valid while its reader lock is held.
struct LayerView {
  uint64_t num_tokens = 0;
  // Starts at 1 and changes whenever installed slots are reordered, so
  // that stale slot ranges can be detected. Index builds only append
  // clusters, so they keep it. 0 is never used: FetchRequest treats it as
  // "do not check".
  uint64_t layout_epoch = 0;
  // Tokens in the cluster stores (the same for every kv head); empty when
  // nothing is indexed.
  TokenSpan indexed;
  // A build of this layer is scheduled or running.
  bool build_pending = false;
  // The last build's failure; OK if none failed since the last success.
  absl::Status build_error;
  absl::Span<const HeadStore> heads;  // one per kv head
};

// How Session::Append persists (ASYNC: enabled; SYNC: enabled and sync).
// Admits an append (Session::Append's `admit`): an error refuses it; on
// success, the refund to call if the append fails after all.
using AppendAdmit =
    std::function<absl::StatusOr<std::function<void()>>(const AppendCharge&)>;

struct AppendPersist {
  bool enabled = false;
  bool sync = false;
};

class Session {
 public:
  // REQUIRES: options.Validate() ok; 1 <= max_tokens.
  Session(std::string id, TenantId tenant, const SessionOptions& options,
          uint64_t max_tokens, int64_t now_unix_ms, ChunkGeometry geometry = {},
          HostArena* arena = nullptr);

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string& id() const { return id_; }
  const TenantId& tenant() const { return tenant_; }
  const SessionOptions& options() const { return options_; }
  const ModelShape& shape() const { return options_.shape; }
  const WaveIndexParams& index_params() const { return params_; }
  uint64_t max_tokens() const { return max_tokens_; }

  // The checks of Append that do not depend on state: InvalidArgument
  // naming "layers[i]..." (layer range, a layer named twice, num_tokens >= 1,
  // exact keys/values lengths).
  absl::Status ValidateAppend(absl::Span<const LayerAppend> layers) const;

  struct AppendOutcome {
    AppendResult result;
    // Layers that now have a block to index and whose build the caller
    // must run (BuildIndex), now or on a worker; they are marked pending.
    std::vector<uint32_t> index_layers;
  };
  // Appends K/V to the named layers, all or nothing. Validates every field
  // first (ValidateAppend), then under the layers' writer locks:
  // start_token == layer length (FailedPrecondition), the session's
  // max_tokens (ResourceExhausted), and reserves the bytes the new chunks
  // take in `budget` before allocating (ResourceExhausted). NotFound if the
  // session is closed. On error nothing changed.
  // `admit`, when set, runs under the writer locks once the memory checks
  // passed (budget reserved, chunks allocated), with what the append
  // brings (the tenant's quota, tenant_quota.h); its error refuses the
  // append, nothing changed. On success it returns a refund, called if the
  // storage write below then fails.
  // With `persist` (ASYNC/SYNC, session_persist.cc), the append is written
  // to storage under the writer locks after `admit`, so nothing refused is
  // ever on disk: the request's K/V, any earlier tokens of those layers not
  // written yet, and the session's meta the first time, as one atomic
  // batch (sync: WAL fsynced before it returns). A failed write refuses the
  // append with nothing changed (the quota charge refunded). Nothing after
  // the write can fail. Holding the writer locks across the write keeps a
  // layer's records in token order; readers of those layers wait for it.
  absl::StatusOr<AppendOutcome> Append(absl::Span<const LayerAppend> layers,
                                       MemoryBudget& budget,
                                       const AppendAdmit& admit = nullptr,
                                       AppendPersist persist = AppendPersist());

  struct BuildReport {
    uint32_t blocks = 0;  // blocks clustered and installed
    absl::Status status;  // the failure, if the build failed
  };
  // Indexes `layer` block by block until NextIndexBlock has nothing more,
  // then clears its pending mark. Memory for the new cluster slots and the
  // index growth is reserved in `budget` before it is allocated; the
  // tokens' old chunks are released after the install. A failure
  // (ResourceExhausted for memory, InvalidArgument for non-finite K/V) is
  // recorded in the layer (SessionInfo index_state FAILED) and returned;
  // the next Append retries it unless it was InvalidArgument. A session
  // closed meanwhile ends the build quietly.
  // The layer's kv heads are clustered in parallel on `pool` (the calling
  // thread takes part; a pool without threads builds them in turn).
  // REQUIRES: `layer` was returned by Append in index_layers and no other
  // BuildIndex of it runs.
  // With `gpu`, each block's kv heads are clustered on the GPU in one batch
  // (the CPU redoes a block whose GPU call fails; EngineGpu counts it).
  BuildReport BuildIndex(uint32_t layer, MemoryBudget& budget, ThreadPool& pool,
                         EngineGpu* gpu = nullptr);

  // Holds one layer's reader lock while alive (RAII); view() is valid
  // meanwhile. Move-only; must be destroyed on the thread that made it.
  class LayerReader {
   public:
    LayerReader(LayerReader&& other) noexcept;
    LayerReader& operator=(LayerReader&&) = delete;
    ~LayerReader();
    const LayerView& view() const { return view_; }

   private:
    friend class Session;
    LayerReader(absl::Mutex* mu, LayerView view);
    absl::Mutex* mu_;
    LayerView view_;
  };
  // Takes `layer`'s reader lock. NotFound (naming `id_field`) if the
  // session is closed. REQUIRES: layer < shape().num_layers.
  absl::StatusOr<LayerReader> ReadLock(uint32_t layer,
                                       absl::string_view id_field) const;

  // Runs `fn` on a view of `layer` while holding its reader lock. `fn` must
  // not block or call back into the session. NotFound as ReadLock.
  absl::Status ReadLayer(uint32_t layer, absl::string_view id_field,
                         absl::FunctionRef<void(const LayerView&)> fn) const;

  // OK if `view` (of `layer`) can be answered in WAVE mode: the layer has
  // indexed at least one block, or has nothing to index yet (a short
  // context: all steady). Otherwise Unavailable (the first build has not
  // finished) or FailedPrecondition (the build failed), with a message
  // naming "mode", the layer, the session and the index state.
  absl::Status WaveReadiness(uint32_t layer, const LayerView& view) const;

  // A snapshot of the session's state. NotFound if closed.
  absl::StatusOr<SessionInfo> Info() const;

  // Frees every store and index and marks the session closed, after which
  // every call answers NotFound. Returns the bytes freed (0 if already
  // closed). The caller returns them to the MemoryBudget.
  uint64_t Close();

  // Records an access at `now_unix_ms` (never moves backwards).
  void Touch(int64_t now_unix_ms);

  // --- Residency: spill to disk and restore (session_spill.cc) ---
  //
  // An operation that reads or writes the stores (Append, Retrieve,
  // FetchSlots) holds the session resident (a counted hold, re-entrant: a
  // FetchSlots sink may Append to the same session) for its whole
  // duration; spilling takes residency_mu_ with TryLock only and gives up
  // while any hold exists, so a session with an operation in flight is
  // never spilled and a spiller never waits. A spilled session
  // keeps its metadata (token counts, indexed spans: Info and GetSession
  // answer as before, memory_bytes 0) while its stores and indexes are
  // freed. Lock order: residency_mu_ before any layer lock; holds of
  // several sessions are taken in ascending session id order, and a thread
  // waiting for one exclusively (a restore) holds no other.

  // A counted hold (RAII, move-only).
  class ResidentHold {
   public:
    ResidentHold(ResidentHold&& other) noexcept : session_(other.session_) {
      other.session_ = nullptr;
    }
    ResidentHold& operator=(ResidentHold&& other) noexcept;
    ~ResidentHold();

   private:
    friend class Session;
    explicit ResidentHold(const Session* session) : session_(session) {}
    const Session* session_;
  };
  // A hold if the session is resident; nullopt (nothing held) if spilled.
  std::optional<ResidentHold> HoldIfResident() const;

  bool spilled() const { return spilled_.load(std::memory_order_acquire); }
  int64_t last_access_unix_ms() const {
    return last_access_unix_ms_.load(std::memory_order_acquire);
  }
  // Bytes the session held when it was spilled (0 while resident).
  uint64_t spilled_bytes() const {
    return spilled_bytes_.load(std::memory_order_acquire);
  }
  // Whether some layer has an index build scheduled or running.
  bool BuildPending() const;

  // Spills the session if it is idle: FailedPrecondition ("busy") without
  // waiting if any operation holds it, a build is pending, or it is
  // already spilled or closed; otherwise runs `persist` (which must put
  // everything on disk; its error is returned, nothing freed), then frees
  // every store and index and marks it spilled. Returns the bytes freed,
  // which the caller returns to the MemoryBudget. If the session was
  // closed while `persist` ran, returns Aborted (its records were written
  // after the close: the caller deletes them).
  absl::StatusOr<uint64_t> TrySpill(absl::FunctionRef<absl::Status()> persist);

  // If the session is spilled: empties its layers' metadata, runs `restore`
  // (which must load it back, e.g. Restore(snapshot)) and marks it
  // resident; if `restore` fails, the metadata is put back and the session
  // stays spilled. OK at once if it is resident. A spilled session has no
  // holds, so this waits only for a spill or restore of it in progress.
  absl::Status RestoreIfSpilled(absl::FunctionRef<absl::Status()> restore);

  // Registers this new, empty session as spilled with the metadata of
  // `snapshot` (from Storage::LoadSession: token counts, indexed spans;
  // persistent, every token durable), without loading its K/V: recovery
  // of a session that does not fit the memory budget. The first access
  // restores it from storage (RestoreIfSpilled), its index from the stored
  // index record. REQUIRES: called before the session is shared.
  void InitSpilled(const SessionSnapshot& snapshot);

  // --- Persistence (session_persist.cc) ---

  // Sets the store this session writes to (ASYNC/SYNC appends, index
  // records after builds, snapshots). REQUIRES: called before the session
  // is shared; `storage` outlives the session.
  void AttachStorage(Storage* storage) { storage_ = storage; }
  SessionMeta Meta() const;
  // Tokens of every layer whose K/V is fsynced on disk (min over layers).
  uint64_t durable_tokens() const;
  // Whether some layer has tokens written but not yet fsynced.
  bool HasUnsyncedWrites() const;
  // Per layer, tokens written to storage (maybe not fsynced yet).
  std::vector<uint64_t> WrittenTokens() const;
  // Marks `written` (from WrittenTokens before an fsync of the WAL) durable.
  void MarkDurable(absl::Span<const uint64_t> written);
  // Whether the session's meta is in storage (it was durably appended to,
  // written as a snapshot, or recovered).
  bool persistent() const {
    return meta_persisted_.load(std::memory_order_acquire);
  }
  // Writes what storage lacks: every token not written yet and every
  // layer's index (a NONE session: all of it), then marks it persistent.
  // For shutdown and spill. Holds one layer's reader lock at a time.
  absl::Status PersistAll(bool sync);
  // Every layer's K/V (token order) and index, under reader locks.
  absl::StatusOr<SessionSnapshot> Snapshot() const;
  // Writes `layer`'s index record (after a build installed a block).
  // A no-op unless the session is persistent.
  absl::Status PersistIndex(uint32_t layer);
  // Loads `snapshot` (from Storage::LoadSession) into this new, empty
  // session: K/V into the token-order stores, each stored index with its
  // cluster store, tokens beyond it left for builds. Reserves memory in
  // `budget` first (ResourceExhausted, nothing kept, if it does not fit).
  // Returns the layers that still have a block to index (marked pending).
  absl::StatusOr<std::vector<uint32_t>> Restore(const SessionSnapshot& snapshot,
                                                MemoryBudget& budget);
  // Makes every call on the session answer `status` (DataLoss for records
  // that failed their check); Info still lists it with index_state FAILED
  // and index_error = the message. REQUIRES: called before the session is
  // shared.
  void MarkUnusable(absl::Status status) { unusable_ = std::move(status); }
  // OK, or the status every call on the session answers.
  const absl::Status& unusable() const { return unusable_; }

  // Lock-free gauges.
  uint64_t memory_bytes() const {
    return memory_bytes_.load(std::memory_order_acquire);
  }
  uint64_t num_tokens() const;      // min over layers
  uint64_t indexed_tokens() const;  // sum over layers

 private:
  struct Layer {
    Layer(size_t num_kv_heads, size_t row_bytes, ChunkGeometry geometry,
          HostArena* arena);

    mutable absl::Mutex mu;
    std::vector<HeadStore> heads ABSL_GUARDED_BY(mu);
    uint64_t layout_epoch ABSL_GUARDED_BY(mu) = 1;
    TokenSpan indexed ABSL_GUARDED_BY(mu);
    bool build_pending ABSL_GUARDED_BY(mu) = false;
    absl::Status build_error ABSL_GUARDED_BY(mu);
    // Mirrors of heads[*].tokens.num_slots() and indexed.num_tokens();
    // written with mu held exclusively, readable without it for gauges.
    std::atomic<uint64_t> num_tokens{0};
    std::atomic<uint64_t> indexed_tokens{0};
    // Tokens [0, written_tokens) are written to storage (written under mu
    // held exclusively), [0, durable_tokens) also fsynced.
    std::atomic<uint64_t> written_tokens{0};
    std::atomic<uint64_t> durable_tokens{0};
  };

  // The K/V of tokens [begin, end) of `layer` in the LayerAppend layout,
  // from the token-order store and (for indexed tokens) the cluster store.
  void ExportTokensLocked(const Layer& layer, uint64_t begin, uint64_t end,
                          std::string& keys, std::string& values) const
      ABSL_SHARED_LOCKS_REQUIRED(layer.mu);
  // Append's storage write (see Append); `layers` validated.
  absl::Status PersistAppendLocked(absl::Span<const LayerAppend> layers,
                                   bool sync) ABSL_NO_THREAD_SAFETY_ANALYSIS;

  // Holds the writer locks of a set of layers, taken in ascending order.
  class LayerWriteLocks;

  // Whether `layer` has a block to index and may start a build now.
  bool NeedsBuild(const Layer& layer) const
      ABSL_SHARED_LOCKS_REQUIRED(layer.mu);
  // One block of BuildIndex: true if it was installed, false if the
  // session was closed meanwhile.
  absl::StatusOr<bool> BuildBlock(uint32_t layer_index, TokenSpan block,
                                  MemoryBudget& budget, ThreadPool& pool,
                                  EngineGpu* gpu);
  std::vector<uint64_t> LayerTokens() const;

  const std::string id_;
  const TenantId tenant_;
  const SessionOptions options_;
  const WaveIndexParams params_;
  const uint64_t max_tokens_;
  const int64_t created_unix_ms_;
  // Where the stores' chunks and segments come from (outlives the session).
  HostArena* const arena_;
  std::vector<std::unique_ptr<Layer>> layers_;  // fixed after construction

  // Written only while every layer's writer lock is held (Close), so any
  // one layer lock suffices to read it consistently.
  std::atomic<bool> closed_{false};
  std::atomic<uint64_t> memory_bytes_{0};  // written under layer locks
  std::atomic<int64_t> last_access_unix_ms_;

  // Residency (see above). spilled_ is written with residency_mu_ held
  // exclusively and every layer's writer lock.
  mutable absl::Mutex residency_mu_;
  mutable uint64_t resident_holds_ ABSL_GUARDED_BY(residency_mu_) = 0;
  std::atomic<bool> spilled_{false};
  std::atomic<uint64_t> spilled_bytes_{0};

  // Persistence: set before the session is shared, then read-only.
  Storage* storage_ = nullptr;
  absl::Status unusable_;
  std::atomic<bool> meta_persisted_{false};
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_SESSION_H_
