#include "kvstore/tenant_quota.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv {
namespace {

// True if `used + more` stays within `quota` (0 = unlimited), without
// overflowing; a quota lowered below `used` refuses any growth.
bool Fits(uint64_t used, uint64_t more, uint64_t quota) {
  if (quota == 0 || more == 0) return true;
  return used <= quota && more <= quota - used;
}

}  // namespace

void TenantQuotas::Set(absl::flat_hash_map<TenantId, TenantQuota> quotas) {
  absl::MutexLock lock(&mu_);
  quotas_ = std::move(quotas);
}

TenantQuota TenantQuotas::QuotaLocked(const TenantId& tenant) const {
  const auto it = quotas_.find(tenant);
  return it == quotas_.end() ? TenantQuota{} : it->second;
}

TenantQuota TenantQuotas::Get(const TenantId& tenant) const {
  absl::MutexLock lock(&mu_);
  return QuotaLocked(tenant);
}

absl::Status TenantQuotas::AdmitSession(const TenantId& tenant,
                                        const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  const TenantQuota quota = QuotaLocked(tenant);
  const auto state_it = state_.find(tenant);
  const uint64_t held =
      state_it == state_.end() ? 0 : state_it->second.sessions.size();
  if (!Fits(held, 1, quota.max_sessions)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tenant quota max_sessions: tenant '", tenant, "' holds ",
                     held, " sessions, its quota is ", quota.max_sessions));
  }
  state_[tenant].sessions.try_emplace(session_id);
  return absl::OkStatus();
}

absl::Status TenantQuotas::ChargeLocked(const TenantId& tenant,
                                        const std::string& session_id,
                                        const AppendCharge& charge,
                                        bool check) {
  TenantState& state = state_[tenant];
  const auto [it, inserted] = state.sessions.try_emplace(session_id);
  SessionCharge& session = it->second;
  const uint64_t more_tokens = charge.session_tokens > session.tokens
                                   ? charge.session_tokens - session.tokens
                                   : 0;
  if (check) {
    const TenantQuota quota = QuotaLocked(tenant);
    absl::Status refusal;
    if (!Fits(state.usage.kv_bytes, charge.kv_bytes, quota.max_bytes)) {
      refusal = absl::ResourceExhaustedError(
          absl::StrCat("tenant quota max_bytes: appending ", charge.kv_bytes,
                       " K/V bytes would bring tenant '", tenant, "' to ",
                       state.usage.kv_bytes + charge.kv_bytes,
                       " bytes, over its quota of ", quota.max_bytes));
    } else if (!Fits(state.usage.tokens, more_tokens, quota.max_tokens)) {
      refusal = absl::ResourceExhaustedError(
          absl::StrCat("tenant quota max_tokens: ", more_tokens,
                       " more tokens would bring tenant '", tenant, "' to ",
                       state.usage.tokens + more_tokens,
                       " tokens, over its quota of ", quota.max_tokens));
    }
    if (!refusal.ok()) {
      // Leave no trace of the lookup.
      if (inserted) state.sessions.erase(it);
      if (state.sessions.empty()) state_.erase(tenant);
      return refusal;
    }
  }
  session.kv_bytes += charge.kv_bytes;
  session.tokens += more_tokens;
  state.usage.kv_bytes += charge.kv_bytes;
  state.usage.tokens += more_tokens;
  return absl::OkStatus();
}

absl::Status TenantQuotas::ChargeAppend(const TenantId& tenant,
                                        const std::string& session_id,
                                        const AppendCharge& charge) {
  absl::MutexLock lock(&mu_);
  return ChargeLocked(tenant, session_id, charge, /*check=*/true);
}

absl::StatusOr<uint64_t> TenantQuotas::ChargeAppendRefundable(
    const TenantId& tenant, const std::string& session_id,
    const AppendCharge& charge) {
  absl::MutexLock lock(&mu_);
  uint64_t before = 0;
  if (const auto state = state_.find(tenant); state != state_.end()) {
    const auto session = state->second.sessions.find(session_id);
    if (session != state->second.sessions.end()) {
      before = session->second.tokens;
    }
  }
  RETURN_IF_ERROR(ChargeLocked(tenant, session_id, charge, /*check=*/true));
  return before;
}

void TenantQuotas::RefundAppend(const TenantId& tenant,
                                const std::string& session_id,
                                const AppendCharge& charge,
                                uint64_t tokens_before) {
  absl::MutexLock lock(&mu_);
  const auto state_it = state_.find(tenant);
  if (state_it == state_.end()) return;
  TenantState& state = state_it->second;
  const auto it = state.sessions.find(session_id);
  if (it == state.sessions.end()) return;
  SessionCharge& session = it->second;
  const uint64_t bytes = std::min(charge.kv_bytes, session.kv_bytes);
  session.kv_bytes -= bytes;
  state.usage.kv_bytes -= bytes;
  if (session.tokens == charge.session_tokens &&
      tokens_before < session.tokens) {
    state.usage.tokens -= session.tokens - tokens_before;
    session.tokens = tokens_before;
  }
}

void TenantQuotas::ForceCharge(const TenantId& tenant,
                               const std::string& session_id,
                               const AppendCharge& charge) {
  absl::MutexLock lock(&mu_);
  (void)ChargeLocked(tenant, session_id, charge, /*check=*/false);
}

void TenantQuotas::ReleaseSession(const TenantId& tenant,
                                  const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  const auto state_it = state_.find(tenant);
  if (state_it == state_.end()) return;
  TenantState& state = state_it->second;
  const auto it = state.sessions.find(session_id);
  if (it == state.sessions.end()) return;
  state.usage.kv_bytes -= it->second.kv_bytes;
  state.usage.tokens -= it->second.tokens;
  state.sessions.erase(it);
  if (state.sessions.empty()) state_.erase(state_it);
}

TenantUsage TenantQuotas::Usage(const TenantId& tenant) const {
  absl::MutexLock lock(&mu_);
  const auto it = state_.find(tenant);
  if (it == state_.end()) return TenantUsage{};
  TenantUsage usage = it->second.usage;
  usage.sessions = it->second.sessions.size();
  return usage;
}

}  // namespace wavekv
