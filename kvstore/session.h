// Session: one cached sequence of one tenant — its options, and per layer
// the token count, one SlotStore per kv head and the layout epoch.
//
// Locking. Each layer has its own absl::Mutex, so appends to one layer never
// wait for readers of another. Retrieve and FetchSlots read a layer under
// its reader lock (ReadLayer); Append takes the writer locks of the layers it
// names; Close takes every layer's writer lock. Lock order: layer locks in
// ascending layer index; no other lock is taken while one is held, except
// MemoryBudget's lock-free counter. Gauges (token counts, memory bytes,
// last access) are atomics, written under the layer locks and readable
// without them.
//
// Thread-safe.
#ifndef WAVEKV_KVSTORE_SESSION_H_
#define WAVEKV_KVSTORE_SESSION_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "kvstore/memory_budget.h"
#include "kvstore/slot_store.h"
#include "kvstore/types.h"

namespace wavekv {

// The NotFound status for a session that does not exist, is closed, or is
// another tenant's: one message for all three, so ids cannot be probed.
// `field` is the request field holding the id, e.g. "queries[2].session_id".
absl::Status SessionNotFoundError(absl::string_view field,
                                  absl::string_view session_id);

// Read-only view of one layer, valid inside Session::ReadLayer's callback.
struct LayerView {
  uint64_t num_tokens = 0;
  // Starts at 1 and changes whenever slots are reordered (a wave-index
  // relayout), so that stale slot ranges can be detected. 0 is never used:
  // FetchRequest treats it as "do not check".
  uint64_t layout_epoch = 0;
  absl::Span<const SlotStore> heads;  // one per kv head
};

class Session {
 public:
  // REQUIRES: options.Validate() ok; 1 <= max_tokens.
  Session(std::string id, TenantId tenant, const SessionOptions& options,
          uint64_t max_tokens, int64_t now_unix_ms,
          ChunkGeometry geometry = {});

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string& id() const { return id_; }
  const TenantId& tenant() const { return tenant_; }
  const SessionOptions& options() const { return options_; }
  const ModelShape& shape() const { return options_.shape; }
  uint64_t max_tokens() const { return max_tokens_; }

  // The checks of Append that do not depend on state: InvalidArgument
  // naming "layers[i]..." (layer range, a layer named twice, num_tokens >= 1,
  // exact keys/values lengths).
  absl::Status ValidateAppend(absl::Span<const LayerAppend> layers) const;

  // Appends K/V to the named layers, all or nothing. Validates every field
  // first (ValidateAppend), then under the
  // layers' writer locks: start_token == layer length (FailedPrecondition),
  // the session's max_tokens (ResourceExhausted), and reserves the bytes
  // the new chunks take in `budget` before allocating (ResourceExhausted).
  // NotFound if the session is closed. On error nothing changed.
  absl::StatusOr<AppendResult> Append(absl::Span<const LayerAppend> layers,
                                      MemoryBudget& budget);

  // Runs `fn` on a view of `layer` while holding that layer's reader lock.
  // `fn` must not block or call back into the session. Returns NotFound
  // (naming `id_field`) if the session is closed; `fn` is not called then.
  // REQUIRES: layer < shape().num_layers.
  absl::Status ReadLayer(uint32_t layer, absl::string_view id_field,
                         absl::FunctionRef<void(const LayerView&)> fn) const;

  // A snapshot of the session's state. NotFound if closed.
  absl::StatusOr<SessionInfo> Info() const;

  // Frees every chunk and marks the session closed, after which every call
  // answers NotFound. Returns the bytes freed (0 if already closed). The
  // caller returns them to the MemoryBudget.
  uint64_t Close();

  // Records an access at `now_unix_ms` (never moves backwards).
  void Touch(int64_t now_unix_ms);

  // Lock-free gauges.
  uint64_t memory_bytes() const {
    return memory_bytes_.load(std::memory_order_acquire);
  }
  uint64_t num_tokens() const;  // min over layers

 private:
  struct Layer {
    explicit Layer(size_t num_kv_heads, size_t row_bytes,
                   ChunkGeometry geometry);

    mutable absl::Mutex mu;
    std::vector<SlotStore> heads ABSL_GUARDED_BY(mu);
    uint64_t layout_epoch ABSL_GUARDED_BY(mu) = 1;
    // Mirror of heads[*].num_slots(); written with mu held exclusively,
    // readable without it for gauges.
    std::atomic<uint64_t> num_tokens{0};
  };

  // Holds the writer locks of a set of layers, taken in ascending order.
  class LayerWriteLocks;

  std::vector<uint64_t> LayerTokens() const;

  const std::string id_;
  const TenantId tenant_;
  const SessionOptions options_;
  const uint64_t max_tokens_;
  const int64_t created_unix_ms_;
  std::vector<std::unique_ptr<Layer>> layers_;  // fixed after construction

  // Written only while every layer's writer lock is held (Close), so any
  // one layer lock suffices to read it consistently.
  std::atomic<bool> closed_{false};
  std::atomic<uint64_t> memory_bytes_{0};  // written under layer locks
  std::atomic<int64_t> last_access_unix_ms_;
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_SESSION_H_
