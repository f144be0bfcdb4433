#include "transport/auth.h"

#include <openssl/sha.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "transport/byte_size.h"

namespace wavekv {
namespace {

constexpr size_t kMaxTenantBytes = 128;

std::string Digest(absl::string_view token) {
  unsigned char out[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(),
         out);
  return std::string(reinterpret_cast<const char*>(out), sizeof(out));
}

bool IsTenantChar(char c) {
  return absl::ascii_isalnum(c) || c == '_' || c == '.' || c == '-';
}

bool IsTokenChar(char c) { return c > 0x20 && c < 0x7F; }

absl::Status LineError(absl::string_view filename, int line,
                       absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(filename, ":", line, ": ", what));
}

// The value of `quota` named `name`; *known = false for an unknown name.
uint64_t QuotaValue(const TenantQuota& quota, absl::string_view name,
                    bool* known) {
  *known = true;
  if (name == "max_sessions") return quota.max_sessions;
  if (name == "max_bytes") return quota.max_bytes;
  if (name == "max_tokens") return quota.max_tokens;
  *known = false;
  return 0;
}

// One `name=value` quota field of a line, applied to `quota`. `first_line`
// remembers, per tenant and quota name, the line that set it (conflicts).
absl::Status ParseQuota(absl::string_view field, const std::string& tenant,
                        absl::string_view filename, int line_no,
                        TenantQuota& quota,
                        absl::flat_hash_map<std::string, int>& first_line) {
  const size_t eq = field.find('=');
  // The field is never echoed whole: it could be a mistyped token.
  if (eq == absl::string_view::npos || eq == 0) {
    return LineError(filename, line_no,
                     "expected '<token> <tenant> [name=value ...]' with "
                     "names max_sessions, max_bytes, max_tokens, role");
  }
  const absl::string_view name = field.substr(0, eq);
  const absl::string_view value = field.substr(eq + 1);
  bool known = false;
  const uint64_t current = QuotaValue(quota, name, &known);
  if (!known) {
    return LineError(filename, line_no,
                     "unknown option name (expected max_sessions, "
                     "max_bytes, max_tokens or role)");
  }
  uint64_t number = 0;
  bool parsed = false;
  if (name == "max_bytes") {
    const absl::StatusOr<uint64_t> bytes = ParseByteSize(value);
    parsed = bytes.ok();
    if (parsed) number = *bytes;
  } else {
    parsed = absl::SimpleAtoi(value, &number) &&
             (name != "max_sessions" || number <= UINT32_MAX);
  }
  if (!parsed || number == 0) {
    return LineError(
        filename, line_no,
        absl::StrCat(name, ": expected ",
                     name == "max_bytes" ? "a size such as 4GiB" : "a number",
                     " >= 1, got '", value, "'"));
  }
  const auto [it, inserted] =
      first_line.emplace(absl::StrCat(tenant, " ", name), line_no);
  if (!inserted) {
    if (current == number) return absl::OkStatus();
    return LineError(filename, line_no,
                     absl::StrCat(name, " of tenant '", tenant,
                                  "' differs from line ", it->second));
  }
  if (name == "max_sessions") {
    quota.max_sessions = static_cast<uint32_t>(number);
  } else if (name == "max_bytes") {
    quota.max_bytes = number;
  } else {
    quota.max_tokens = number;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text,
                                             absl::string_view filename) {
  TokenTable table;
  absl::flat_hash_map<std::string, int> line_by_digest;
  absl::flat_hash_map<std::string, int> quota_line;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    // A '#' at the start or after whitespace begins a comment.
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '#' && (i == 0 || absl::ascii_isspace(line[i - 1]))) {
        line = line.substr(0, i);
        break;
      }
    }
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r\v\f"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (fields.size() < 2) {
      return LineError(filename, line_no,
                       absl::StrCat("expected '<token> <tenant> "
                                    "[name=value ...]', got ",
                                    fields.size(), " field"));
    }
    const absl::string_view token = fields[0];
    const absl::string_view tenant = fields[1];
    if (!std::all_of(token.begin(), token.end(), IsTokenChar)) {
      return LineError(filename, line_no,
                       "token must be printable ASCII without spaces");
    }
    if (tenant.size() > kMaxTenantBytes ||
        !std::all_of(tenant.begin(), tenant.end(), IsTenantChar)) {
      return LineError(filename, line_no,
                       absl::StrCat("tenant must be 1..", kMaxTenantBytes,
                                    " characters of [A-Za-z0-9_.-]"));
    }
    std::string digest = Digest(token);
    const auto [it, inserted] = line_by_digest.emplace(digest, line_no);
    if (!inserted) {
      return LineError(
          filename, line_no,
          absl::StrCat("duplicate token (first on line ", it->second, ")"));
    }
    TokenPrincipal principal;
    principal.tenant = std::string(tenant);
    const auto quota_it = table.quotas_.find(principal.tenant);
    TenantQuota quota =
        quota_it == table.quotas_.end() ? TenantQuota{} : quota_it->second;
    bool role_seen = false;
    for (size_t f = 2; f < fields.size(); ++f) {
      if (absl::StartsWith(fields[f], "role=")) {
        const absl::string_view role = fields[f].substr(5);
        if (role_seen || (role != "read" && role != "write")) {
          return LineError(
              filename, line_no,
              role_seen ? "role: given twice" : "role: expected read or write");
        }
        role_seen = true;
        principal.read_only = role == "read";
        continue;
      }
      if (absl::Status st = ParseQuota(fields[f], principal.tenant, filename,
                                       line_no, quota, quota_line);
          !st.ok()) {
        return st;
      }
    }
    if (!quota.unlimited()) table.quotas_[principal.tenant] = quota;
    table.by_digest_.emplace(std::move(digest), std::move(principal));
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("tokens_file: cannot open '", path, "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(
        absl::StrCat("tokens_file: cannot read '", path, "'"));
  }
  return Parse(text.str(), path);
}

const TokenPrincipal* TokenTable::Find(absl::string_view token) const {
  const auto it = by_digest_.find(Digest(token));
  return it == by_digest_.end() ? nullptr : &it->second;
}

const std::string* TokenTable::FindTenant(absl::string_view token) const {
  const TokenPrincipal* principal = Find(token);
  return principal == nullptr ? nullptr : &principal->tenant;
}

Authenticator::Authenticator(std::string tokens_path,
                             std::string default_tenant,
                             std::shared_ptr<const TokenTable> table)
    : tokens_path_(std::move(tokens_path)),
      default_tenant_(std::move(default_tenant)),
      table_(std::move(table)) {}

std::unique_ptr<Authenticator> Authenticator::Disabled(std::string tenant) {
  return std::unique_ptr<Authenticator>(
      new Authenticator("", std::move(tenant), nullptr));
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::FromTokensFile(
    std::string path) {
  if (path.empty()) {
    return absl::InvalidArgumentError("tokens_file: empty path");
  }
  absl::StatusOr<TokenTable> table = TokenTable::ReadFile(path);
  if (!table.ok()) return table.status();
  return std::unique_ptr<Authenticator>(
      new Authenticator(std::move(path), "",
                        std::make_shared<const TokenTable>(*std::move(table))));
}

std::shared_ptr<const TokenTable> Authenticator::table() const {
  absl::MutexLock lock(&mu_);
  return table_;
}

absl::StatusOr<std::string> Authenticator::Authenticate(
    std::optional<absl::string_view> authorization) const {
  return Authorize(authorization, Access::kRead, "");
}

absl::StatusOr<std::string> Authenticator::Authorize(
    std::optional<absl::string_view> authorization, Access access,
    absl::string_view what) const {
  if (!enabled()) return default_tenant_;
  absl::string_view value =
      absl::StripAsciiWhitespace(authorization.value_or(""));
  // RFC 6750: the scheme is case-insensitive.
  constexpr absl::string_view kScheme = "bearer";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme) ||
      !absl::ascii_isspace(value[kScheme.size()])) {
    return absl::UnauthenticatedError("authorization: missing bearer token");
  }
  const absl::string_view token =
      absl::StripLeadingAsciiWhitespace(value.substr(kScheme.size()));
  const std::shared_ptr<const TokenTable> current = table();
  const TokenPrincipal* principal = current->Find(token);
  if (principal == nullptr) {
    return absl::UnauthenticatedError("authorization: unknown token");
  }
  if (access == Access::kWrite && principal->read_only) {
    return absl::PermissionDeniedError(
        absl::StrCat("authorization: the token is read-only (role=read); ",
                     what.empty() ? "this call" : what, " needs role=write"));
  }
  return principal->tenant;
}

absl::Status Authenticator::Reload() {
  if (!enabled()) return absl::OkStatus();
  absl::StatusOr<TokenTable> fresh = TokenTable::ReadFile(tokens_path_);
  if (!fresh.ok()) return fresh.status();
  auto table = std::make_shared<const TokenTable>(*std::move(fresh));
  absl::MutexLock lock(&mu_);
  table_.swap(table);
  return absl::OkStatus();
  // The old table (now in `table`) is released after the lock.
}

size_t Authenticator::num_tokens() const {
  if (!enabled()) return 0;
  return table()->size();
}

}  // namespace wavekv
