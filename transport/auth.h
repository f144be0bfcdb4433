// Bearer-token authentication: a tokens file maps secrets to tenants (and
// optionally sets the tenants' quotas), and an Authenticator turns a call's
// `authorization` metadata into the tenant the call acts for (the tenant is
// never taken from a request field).
//
// Tokens file format, one token per line:
//   # comment
//   s3cr3t-token-a   tenant-a   max_sessions=8 max_bytes=4GiB
//   max_tokens=1000000 s3cr3t-token-b   tenant-b    # trailing comment
//   s3cr3t-token-c   tenant-a    # a second token of tenant-a
// Tokens are printable ASCII without spaces; tenants are 1..128 characters
// of [A-Za-z0-9_.-]. A token may appear once; several tokens may share a
// tenant. After the tenant, optional `name=value` quotas of the tenant
// (kvstore/tenant_quota.h): max_sessions=N (live sessions), max_bytes=SIZE
// (K+V bytes over its sessions; "4GiB", "512MiB" or bytes),
// max_tokens=N (tokens over its sessions). Values are >= 1; an absent quota
// is unlimited. A quota may be given on any of the tenant's lines; two lines
// giving different values are an error. `role=read` makes that one token
// read-only (writes: PERMISSION_DENIED); `role=write` (default) allows all.
// Errors name "FILE:LINE" and never echo a token.
//
// Tokens are held as SHA-256 digests and looked up by digest, so lookup
// time does not depend on how much of a guessed token matches a real one.
//
// Example:
//   ASSIGN_OR_RETURN(auto auth, Authenticator::FromTokensFile(path));
//   ASSIGN_OR_RETURN(std::string tenant, auth->Authenticate("Bearer s3cr3t"));
//   engine->SetTenantQuotas(auth->table()->quotas());
#ifndef WAVEKV_TRANSPORT_AUTH_H_
#define WAVEKV_TRANSPORT_AUTH_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "kvstore/tenant_quota.h"

namespace wavekv {

// What a token stands for.
struct TokenPrincipal {
  std::string tenant;
  // role=read: reads only (GetSession, ListSessions, Retrieve,
  // FetchClusters, GetTransportInfo); writes are PERMISSION_DENIED.
  bool read_only = false;
};

// What a call does, for Authenticator::Authorize.
enum class Access { kRead, kWrite };

// An immutable token -> tenant table. Thread-safe (const after Parse).
class TokenTable {
 public:
  // Parses the contents of the tokens file `filename`. InvalidArgument
  // "FILE:LINE: ..." on a malformed line, a bad tenant name or a duplicate
  // token.
  static absl::StatusOr<TokenTable> Parse(absl::string_view text,
                                          absl::string_view filename);
  // Reads and parses `path`; NotFound if it cannot be opened.
  static absl::StatusOr<TokenTable> ReadFile(const std::string& path);

  // The principal of `token`, or nullptr if the token is unknown.
  const TokenPrincipal* Find(absl::string_view token) const;
  // The tenant of `token`, or nullptr if the token is unknown.
  const std::string* FindTenant(absl::string_view token) const;
  size_t size() const { return by_digest_.size(); }

  // The quotas the file sets, by tenant (tenants without any are absent).
  const absl::flat_hash_map<std::string, TenantQuota>& quotas() const {
    return quotas_;
  }

 private:
  absl::flat_hash_map<std::string, TokenPrincipal> by_digest_;
  absl::flat_hash_map<std::string, TenantQuota> quotas_;
};

// Maps the `authorization` metadata of a call to its tenant. Thread-safe.
class Authenticator {
 public:
  // Authentication disabled: every call acts as `tenant`.
  static std::unique_ptr<Authenticator> Disabled(
      std::string tenant = "default");
  // Authentication by the tokens file at `path` (read now; see Reload).
  static absl::StatusOr<std::unique_ptr<Authenticator>> FromTokensFile(
      std::string path);

  bool enabled() const { return !tokens_path_.empty(); }
  const std::string& tokens_path() const { return tokens_path_; }

  // `authorization` is the call's `authorization` metadata value (nullopt
  // when absent). Returns the tenant, or UNAUTHENTICATED with
  // "authorization: missing bearer token" (absent, empty or not a Bearer
  // credential) or "authorization: unknown token".
  absl::StatusOr<std::string> Authenticate(
      std::optional<absl::string_view> authorization) const;

  // As Authenticate, and a token whose role does not allow `access` is
  // PERMISSION_DENIED "authorization: the token is read-only (role=read);
  // <what> needs role=write". Disabled: every call may write.
  absl::StatusOr<std::string> Authorize(
      std::optional<absl::string_view> authorization, Access access,
      absl::string_view what) const;

  // Re-reads the tokens file and swaps the table in atomically; calls in
  // flight finish with the table they started with. On error the current
  // table stays and the error is returned. No-op when disabled.
  absl::Status Reload();

  // Number of tokens of the current table (0 when disabled).
  size_t num_tokens() const;

  // The current table (null when disabled); stays valid while held.
  std::shared_ptr<const TokenTable> table() const;

 private:
  Authenticator(std::string tokens_path, std::string default_tenant,
                std::shared_ptr<const TokenTable> table);

  const std::string tokens_path_;     // empty = disabled
  const std::string default_tenant_;  // used when disabled
  mutable absl::Mutex mu_;
  std::shared_ptr<const TokenTable> table_ ABSL_GUARDED_BY(mu_);
};

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_AUTH_H_
