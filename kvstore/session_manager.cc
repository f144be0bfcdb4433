#include "kvstore/session_manager.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace wavekv {
namespace {

constexpr size_t kIdChars = 32;  // 128 bits in hex

bool IsSessionIdShaped(const std::string& s) {
  if (s.size() != kIdChars) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

SessionManager::SessionManager(uint32_t max_sessions,
                               uint32_t max_sessions_per_tenant,
                               TenantQuotas* quotas)
    : max_sessions_(max_sessions),
      max_sessions_per_tenant_(max_sessions_per_tenant),
      quotas_(quotas) {}

std::string SessionManager::NewIdLocked() {
  while (true) {
    const uint64_t hi = absl::Uniform<uint64_t>(bitgen_);
    const uint64_t lo = absl::Uniform<uint64_t>(bitgen_);
    std::string id = absl::StrFormat("%016x%016x", hi, lo);
    if (!by_id_.contains(id)) return id;
  }
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Create(
    const TenantId& tenant,
    absl::FunctionRef<std::shared_ptr<Session>(std::string id)> make) {
  absl::MutexLock lock(&mu_);
  if (by_id_.size() >= max_sessions_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("max_sessions: the engine already holds ", by_id_.size(),
                     " sessions, its limit"));
  }
  auto tenant_it = by_tenant_.find(tenant);
  const size_t tenant_sessions =
      tenant_it == by_tenant_.end() ? 0 : tenant_it->second.size();
  if (tenant_sessions >= max_sessions_per_tenant_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("max_sessions_per_tenant: the tenant already holds ",
                     tenant_sessions, " sessions, its limit"));
  }
  std::string id = NewIdLocked();
  if (quotas_ != nullptr) {
    if (absl::Status s = quotas_->AdmitSession(tenant, id); !s.ok()) return s;
  }
  std::shared_ptr<Session> session = make(id);
  by_id_.emplace(id, session);
  by_tenant_[tenant].insert(std::move(id));
  return session;
}

absl::Status SessionManager::Restore(std::shared_ptr<Session> session) {
  absl::MutexLock lock(&mu_);
  if (by_id_.contains(session->id())) {
    return absl::AlreadyExistsError(
        absl::StrCat("session ", session->id(), " is already registered"));
  }
  by_tenant_[session->tenant()].insert(session->id());
  by_id_.emplace(session->id(), std::move(session));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Find(
    const TenantId& tenant, const std::string& session_id,
    absl::string_view field) const {
  if (session_id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must not be empty"));
  }
  absl::ReaderMutexLock lock(&mu_);
  auto it = by_id_.find(session_id);
  if (it == by_id_.end() || it->second->tenant() != tenant) {
    return SessionNotFoundError(field, session_id);
  }
  return it->second;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Remove(
    const TenantId& tenant, const std::string& session_id) {
  if (session_id.empty()) {
    return absl::InvalidArgumentError("session_id: must not be empty");
  }
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(session_id);
  if (it == by_id_.end() || it->second->tenant() != tenant) {
    return SessionNotFoundError("session_id", session_id);
  }
  std::shared_ptr<Session> session = std::move(it->second);
  by_id_.erase(it);
  auto tenant_it = by_tenant_.find(tenant);
  tenant_it->second.erase(session_id);
  if (tenant_it->second.empty()) by_tenant_.erase(tenant_it);
  return session;
}

absl::StatusOr<SessionManager::Page> SessionManager::List(
    const TenantId& tenant, uint32_t page_size,
    const std::string& page_token) const {
  if (page_size > 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_size: ", page_size, " is more than the maximum of 1000"));
  }
  if (page_size == 0) page_size = 100;
  if (!page_token.empty() && !IsSessionIdShaped(page_token)) {
    return absl::InvalidArgumentError(
        "page_token: not a token returned by ListSessions");
  }
  Page page;
  absl::ReaderMutexLock lock(&mu_);
  auto tenant_it = by_tenant_.find(tenant);
  if (tenant_it == by_tenant_.end()) return page;
  const std::set<std::string>& ids = tenant_it->second;
  auto it = page_token.empty() ? ids.begin() : ids.upper_bound(page_token);
  for (; it != ids.end() && page.sessions.size() < page_size; ++it) {
    page.sessions.push_back(by_id_.find(*it)->second);  // present
  }
  if (it != ids.end()) page.next_page_token = page.sessions.back()->id();
  return page;
}

std::vector<std::shared_ptr<Session>> SessionManager::All() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::shared_ptr<Session>> all;
  all.reserve(by_id_.size());
  for (const auto& [id, session] : by_id_) all.push_back(session);
  return all;
}

size_t SessionManager::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return by_id_.size();
}

}  // namespace wavekv
