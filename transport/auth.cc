#include "transport/auth.h"

#include <openssl/sha.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

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

}  // namespace

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text,
                                             absl::string_view filename) {
  TokenTable table;
  absl::flat_hash_map<std::string, int> line_by_digest;
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
    if (fields.size() != 2) {
      return LineError(filename, line_no,
                       absl::StrCat("expected '<token> <tenant>', got ",
                                    fields.size(), " fields"));
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
    table.tenant_by_digest_.emplace(std::move(digest), std::string(tenant));
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

const std::string* TokenTable::FindTenant(absl::string_view token) const {
  const auto it = tenant_by_digest_.find(Digest(token));
  return it == tenant_by_digest_.end() ? nullptr : &it->second;
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
  const std::string* tenant = current->FindTenant(token);
  if (tenant == nullptr) {
    return absl::UnauthenticatedError("authorization: unknown token");
  }
  return *tenant;
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
