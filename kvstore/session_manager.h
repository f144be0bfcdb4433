// SessionManager: the engine's table of live sessions — ids, tenant
// namespaces, and the session-count limits.
//
// Ids are 128 random bits in lowercase hex (32 characters), unique among
// live sessions. Every lookup is scoped to a tenant: a session of another
// tenant answers exactly like an unknown id (SessionNotFoundError).
//
// The table holds std::shared_ptr<Session>: a call that found a session
// keeps it alive while it works even if the session is removed meanwhile
// (the Session itself then answers NotFound once closed).
//
// Thread-safe. Lock order: mu_ is never held while a Session lock is taken;
// TenantQuotas' mutex is taken under mu_ (it is a leaf).
#ifndef WAVEKV_KVSTORE_SESSION_MANAGER_H_
#define WAVEKV_KVSTORE_SESSION_MANAGER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "kvstore/session.h"
#include "kvstore/tenant_quota.h"
#include "kvstore/types.h"

namespace wavekv {

class SessionManager {
 public:
  // REQUIRES: both limits >= 1. `quotas`, if not null, must outlive the
  // manager: Create also admits the session there (the tenant's
  // max_sessions quota); the caller releases it there after closing.
  SessionManager(uint32_t max_sessions, uint32_t max_sessions_per_tenant,
                 TenantQuotas* quotas = nullptr);

  SessionManager(const SessionManager&) = delete;
  SessionManager& operator=(const SessionManager&) = delete;

  // Picks a fresh id, calls `make(id)` and registers the result for
  // `tenant`. ResourceExhausted naming max_sessions,
  // max_sessions_per_tenant or the tenant quota max_sessions when a limit
  // is reached (`make` is not called).
  absl::StatusOr<std::shared_ptr<Session>> Create(
      const TenantId& tenant,
      absl::FunctionRef<std::shared_ptr<Session>(std::string id)> make);

  // Registers a session recovered from storage under its own id, without
  // checking the session limits (it was admitted before the restart).
  // AlreadyExists if the id is taken.
  absl::Status Restore(std::shared_ptr<Session> session);

  // The tenant's session `session_id`. InvalidArgument if the id is empty;
  // NotFound (naming `field`) if unknown or another tenant's.
  absl::StatusOr<std::shared_ptr<Session>> Find(
      const TenantId& tenant, const std::string& session_id,
      absl::string_view field = "session_id") const;

  // Unregisters and returns the tenant's session; errors as Find. The
  // caller closes it.
  absl::StatusOr<std::shared_ptr<Session>> Remove(
      const TenantId& tenant, const std::string& session_id);

  struct Page {
    std::vector<std::shared_ptr<Session>> sessions;  // ascending id
    std::string next_page_token;                     // empty at the end
  };
  // Up to `page_size` of the tenant's sessions with ids after `page_token`
  // (the last id of the previous page; empty = from the start).
  // InvalidArgument on a malformed page_token or page_size > 1000;
  // page_size 0 means 100.
  absl::StatusOr<Page> List(const TenantId& tenant, uint32_t page_size,
                            const std::string& page_token) const;

  // Every live session (for gauges).
  std::vector<std::shared_ptr<Session>> All() const;
  size_t size() const;

 private:
  std::string NewIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint32_t max_sessions_;
  const uint32_t max_sessions_per_tenant_;
  TenantQuotas* const quotas_;  // may be null

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Session>> by_id_
      ABSL_GUARDED_BY(mu_);
  // Per tenant, its session ids in order (listing and per-tenant counts).
  std::map<TenantId, std::set<std::string>> by_tenant_ ABSL_GUARDED_BY(mu_);
  absl::BitGen bitgen_ ABSL_GUARDED_BY(mu_);
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_SESSION_MANAGER_H_
