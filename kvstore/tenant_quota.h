// Per-tenant quotas: how many sessions a tenant may hold, and how much K/V
// (bytes and tokens) all of its sessions together may hold. The quotas come
// from outside the engine (the server's tokens file, reloaded on change) and
// may be replaced at any time; a lowered quota never takes anything away,
// it only refuses what would go over it.
//
// Units:
//  - sessions: live sessions of the tenant;
//  - kv_bytes: K and V bytes appended to its live sessions (the request's
//    `keys` + `values` lengths, independent of how the engine stores them);
//  - tokens: per session, the length of its longest layer; summed over the
//    tenant's live sessions (a token of a 32-layer model counts once).
// A closed session gives back everything it was charged.
//
// Refusals are ResourceExhausted with a message naming the quota, e.g.
// "tenant quota max_bytes: appending 4096 K/V bytes would bring tenant
// 'alice' to 20480 bytes, over its quota of 16384", and charge nothing.
//
// Thread-safe. TenantQuotas' mutex is a leaf: it is taken under
// SessionManager's mutex and under a session's layer locks, and nothing is
// called while it is held.
//
// Example:
//   TenantQuotas quotas;
//   quotas.Set({{"alice", TenantQuota{.max_sessions = 4}}});
//   RETURN_IF_ERROR(quotas.AdmitSession("alice", id));
//   RETURN_IF_ERROR(quotas.ChargeAppend("alice", id, {.kv_bytes = 4096,
//                                                     .session_tokens = 16}));
//   quotas.ReleaseSession("alice", id);  // when the session is closed
#ifndef WAVEKV_KVSTORE_TENANT_QUOTA_H_
#define WAVEKV_KVSTORE_TENANT_QUOTA_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvstore/types.h"

namespace wavekv {

// One tenant's limits; 0 = unlimited (the engine-wide limits still apply).
struct TenantQuota {
  uint32_t max_sessions = 0;  // live sessions
  uint64_t max_bytes = 0;     // K+V bytes over all live sessions
  uint64_t max_tokens = 0;    // tokens over all live sessions (see above)

  bool unlimited() const {
    return max_sessions == 0 && max_bytes == 0 && max_tokens == 0;
  }
  bool operator==(const TenantQuota& other) const {
    return max_sessions == other.max_sessions && max_bytes == other.max_bytes &&
           max_tokens == other.max_tokens;
  }
};

// What a tenant's live sessions hold, in the units of TenantQuota.
struct TenantUsage {
  uint64_t sessions = 0;  // live sessions
  uint64_t kv_bytes = 0;
  uint64_t tokens = 0;
};

// What one Append brings to its session.
struct AppendCharge {
  uint64_t kv_bytes = 0;  // keys + values bytes of the request
  // The largest layer length after the append among the appended layers.
  uint64_t session_tokens = 0;
};

class TenantQuotas {
 public:
  TenantQuotas() = default;
  TenantQuotas(const TenantQuotas&) = delete;
  TenantQuotas& operator=(const TenantQuotas&) = delete;

  // Replaces every tenant's quota; tenants not in `quotas` are unlimited.
  // What sessions hold already stays charged.
  void Set(absl::flat_hash_map<TenantId, TenantQuota> quotas);

  // The tenant's quota (all zero = unlimited if it has none).
  TenantQuota Get(const TenantId& tenant) const;

  // Registers new session `session_id` of `tenant` if the tenant's
  // max_sessions allows one more; ResourceExhausted "tenant quota
  // max_sessions: ..." (nothing registered) otherwise.
  absl::Status AdmitSession(const TenantId& tenant,
                            const std::string& session_id);

  // Charges `charge` to session `session_id` of `tenant`: its K/V bytes
  // add up; its tokens raise the session's charged length to
  // charge.session_tokens if that is longer. ResourceExhausted naming
  // max_bytes or max_tokens, with nothing charged, if the tenant would go
  // over a quota. Call it as the last step that can fail, when the append
  // is certain to be applied otherwise (there is no undo). A session not
  // admitted before is registered (it counts from then on).
  absl::Status ChargeAppend(const TenantId& tenant,
                            const std::string& session_id,
                            const AppendCharge& charge);

  // ChargeAppend for an append that may still fail afterwards (a storage
  // write): on success returns the session's charged length before this
  // charge, for RefundAppend.
  absl::StatusOr<uint64_t> ChargeAppendRefundable(const TenantId& tenant,
                                                  const std::string& session_id,
                                                  const AppendCharge& charge);

  // Gives back a charge of ChargeAppendRefundable whose append then failed:
  // its bytes, and its tokens if it still sets the session's length (a
  // concurrent append to another layer that went further keeps its own).
  void RefundAppend(const TenantId& tenant, const std::string& session_id,
                    const AppendCharge& charge, uint64_t tokens_before);

  // Registers and charges without checking any quota (sessions restored
  // from disk, which were admitted before).
  void ForceCharge(const TenantId& tenant, const std::string& session_id,
                   const AppendCharge& charge);

  // Unregisters the session and gives back everything charged to it
  // (no-op if unknown). Call it after the session is closed, so that no
  // append can charge it afterwards.
  void ReleaseSession(const TenantId& tenant, const std::string& session_id);

  TenantUsage Usage(const TenantId& tenant) const;

 private:
  struct SessionCharge {
    uint64_t kv_bytes = 0;
    uint64_t tokens = 0;
  };
  struct TenantState {
    TenantUsage usage;
    absl::flat_hash_map<std::string, SessionCharge> sessions;
  };

  absl::Status ChargeLocked(const TenantId& tenant,
                            const std::string& session_id,
                            const AppendCharge& charge, bool check)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  TenantQuota QuotaLocked(const TenantId& tenant) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<TenantId, TenantQuota> quotas_ ABSL_GUARDED_BY(mu_);
  // Only tenants that hold a session.
  absl::flat_hash_map<TenantId, TenantState> state_ ABSL_GUARDED_BY(mu_);
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_TENANT_QUOTA_H_
