#include "transport/auth.h"

#include <cstdio>
#include <fstream>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "transport/auth_reloader.h"

namespace wavekv {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string TmpPath(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

TEST(TokenTableTest, ParsesTokensCommentsAndBlankLines) {
  const auto table = TokenTable::Parse(
      "# header\n"
      "\n"
      "tok-a tenant-a\n"
      "  tok-b\ttenant_b   # trailing\n"
      "tok-c tenant-a\r\n",
      "tokens");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 3u);
  ASSERT_NE(table->FindTenant("tok-a"), nullptr);
  EXPECT_EQ(*table->FindTenant("tok-a"), "tenant-a");
  EXPECT_EQ(*table->FindTenant("tok-b"), "tenant_b");
  EXPECT_EQ(*table->FindTenant("tok-c"), "tenant-a");
  EXPECT_EQ(table->FindTenant("tok-"), nullptr);
  EXPECT_EQ(table->FindTenant("tenant-a"), nullptr);
  EXPECT_EQ(table->FindTenant(""), nullptr);
}

TEST(TokenTableTest, ErrorsNameFileAndLineAndNeverEchoTheToken) {
  struct Case {
    std::string text;
    std::string want;
  } cases[] = {
      {"secret-1\n",
       "t.txt:1: expected '<token> <tenant> [name=value ...]', got 1 field"},
      {"ok a\nsecret-1 a b\n",
       "t.txt:2: expected '<token> <tenant> [name=value ...]' with names "
       "max_sessions, max_bytes, max_tokens, role"},
      {"ok a\nsecret-1 a secret-2\n", "t.txt:2: expected '<token> <tenant>"},
      {"secret-1 a =secret-2\n", "t.txt:1: expected '<token> <tenant>"},
      {"secret-1 a max_size=1\n", "t.txt:1: unknown option name"},
      {"secret-1 a role=admin\n", "t.txt:1: role: expected read or write"},
      {"secret-1 a role=read role=read\n", "t.txt:1: role: given twice"},
      {"secret-1 a max_sessions=0\n",
       "t.txt:1: max_sessions: expected a number >= 1, got '0'"},
      {"secret-1 a max_sessions=4294967296\n",
       "t.txt:1: max_sessions: expected a number >= 1"},
      {"secret-1 a max_bytes=4XB\n",
       "t.txt:1: max_bytes: expected a size such as 4GiB >= 1, got '4XB'"},
      {"secret-1 a max_tokens=-1\n", "t.txt:1: max_tokens: expected a number"},
      {"secret-1 a max_tokens=5\nsecret-2 a max_tokens=6\n",
       "t.txt:2: max_tokens of tenant 'a' differs from line 1"},
      {"secret-1 a/b\n", "t.txt:1: tenant must be 1..128 characters"},
      {"secret-1 a\n\nsecret-1 b\n",
       "t.txt:3: duplicate token (first on line 1)"},
      {"secret-1\x01 a\n", "t.txt:1: token must be printable ASCII"},
      {"secret-1 " + std::string(129, 'x'), "t.txt:1: tenant must be"},
  };
  for (const Case& c : cases) {
    const auto r = TokenTable::Parse(c.text, "t.txt");
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.want));
    EXPECT_THAT(std::string(r.status().message()), Not(HasSubstr("secret")));
  }
}

TEST(TokenTableTest, ParsesTenantQuotas) {
  const auto table = TokenTable::Parse(
      "tok-a alice max_sessions=4 max_bytes=2GiB   # a comment\n"
      "tok-b alice max_tokens=1000 max_sessions=4\n"  // same value: fine
      "tok-c bob max_bytes=4096\n"
      "tok-d carol\n",
      "q.txt");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 4u);
  EXPECT_EQ(*table->FindTenant("tok-b"), "alice");
  ASSERT_EQ(table->quotas().size(), 2u);  // carol has none
  const TenantQuota alice = table->quotas().at("alice");
  EXPECT_EQ(alice.max_sessions, 4u);
  EXPECT_EQ(alice.max_bytes, 2ull << 30);
  EXPECT_EQ(alice.max_tokens, 1000u);
  const TenantQuota bob = table->quotas().at("bob");
  EXPECT_EQ(bob.max_sessions, 0u);
  EXPECT_EQ(bob.max_bytes, 4096u);
  EXPECT_EQ(bob.max_tokens, 0u);
}

TEST(AuthenticatorTest, ReadOnlyTokensMayNotWrite) {
  const std::string path = TmpPath("tokens_roles");
  WriteFile(path,
            "tok-r alice role=read\ntok-w alice role=write\ntok-d alice\n");
  auto auth = *Authenticator::FromTokensFile(path);
  EXPECT_EQ(*auth->Authorize("Bearer tok-r", Access::kRead, "GetSession"),
            "alice");
  const auto denied = auth->Authorize("Bearer tok-r", Access::kWrite, "Append");
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.status().message(),
            "authorization: the token is read-only (role=read); Append needs "
            "role=write");
  EXPECT_EQ(*auth->Authorize("Bearer tok-w", Access::kWrite, "Append"),
            "alice");
  EXPECT_EQ(*auth->Authorize("Bearer tok-d", Access::kWrite, "Append"),
            "alice");
  // Unknown tokens stay UNAUTHENTICATED whatever the access.
  EXPECT_EQ(
      auth->Authorize("Bearer x", Access::kWrite, "Append").status().code(),
      absl::StatusCode::kUnauthenticated);
  // A role alone sets no quota.
  EXPECT_TRUE(auth->table()->quotas().empty());
}

TEST(AuthenticatorTest, DisabledActsAsTheDefaultTenant) {
  auto auth = Authenticator::Disabled();
  EXPECT_FALSE(auth->enabled());
  EXPECT_EQ(*auth->Authenticate(std::nullopt), "default");
  EXPECT_EQ(*auth->Authenticate("Bearer anything"), "default");
  EXPECT_EQ(auth->num_tokens(), 0u);
  EXPECT_TRUE(auth->Reload().ok());
}

TEST(AuthenticatorTest, MapsBearerTokensToTenants) {
  const std::string path = TmpPath("tokens_map");
  WriteFile(path, "tok-a tenant-a\ntok-b tenant-b\n");
  auto auth = Authenticator::FromTokensFile(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE((*auth)->enabled());
  EXPECT_EQ((*auth)->num_tokens(), 2u);
  EXPECT_EQ(*(*auth)->Authenticate("Bearer tok-a"), "tenant-a");
  EXPECT_EQ(*(*auth)->Authenticate("bearer   tok-b "), "tenant-b");
  EXPECT_EQ(*(*auth)->Authenticate("BEARER\ttok-b"), "tenant-b");
}

TEST(AuthenticatorTest, RejectsMissingAndUnknownCredentials) {
  const std::string path = TmpPath("tokens_reject");
  WriteFile(path, "tok-a tenant-a\n");
  auto auth = *Authenticator::FromTokensFile(path);
  for (std::optional<absl::string_view> missing :
       {std::optional<absl::string_view>(),
        std::optional<absl::string_view>(""),
        std::optional<absl::string_view>("Bearer"),
        std::optional<absl::string_view>("Bearer   "),
        std::optional<absl::string_view>("Basic dG9rLWE="),
        std::optional<absl::string_view>("Bearertok-a"),
        std::optional<absl::string_view>("tok-a")}) {
    const auto r = auth->Authenticate(missing);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(r.status().message(), "authorization: missing bearer token")
        << missing.value_or("<none>");
  }
  for (absl::string_view unknown :
       {"Bearer tok-b", "Bearer tok-a2", "Bearer TOK-A", "Bearer tenant-a"}) {
    const auto r = auth->Authenticate(unknown);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(r.status().message(), "authorization: unknown token") << unknown;
  }
}

TEST(AuthenticatorTest, FileErrors) {
  EXPECT_EQ(Authenticator::FromTokensFile(TmpPath("nope")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Authenticator::FromTokensFile("").status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string path = TmpPath("tokens_bad");
  WriteFile(path, "only-one-field\n");
  const auto r = Authenticator::FromTokensFile(path);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(path + ":1: expected '<token> <tenant> [name=value"));
}

TEST(AuthenticatorTest, ReloadSwapsTheTableAndKeepsItOnError) {
  const std::string path = TmpPath("tokens_reload");
  WriteFile(path, "tok-a tenant-a\n");
  auto auth = *Authenticator::FromTokensFile(path);
  WriteFile(path, "tok-z tenant-z\n");
  EXPECT_EQ(*auth->Authenticate("Bearer tok-a"), "tenant-a");  // not yet
  ASSERT_TRUE(auth->Reload().ok());
  EXPECT_EQ(*auth->Authenticate("Bearer tok-z"), "tenant-z");
  EXPECT_EQ(auth->Authenticate("Bearer tok-a").status().code(),
            absl::StatusCode::kUnauthenticated);
  WriteFile(path, "broken line here\n");
  EXPECT_EQ(auth->Reload().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*auth->Authenticate("Bearer tok-z"), "tenant-z");
  std::remove(path.c_str());
  EXPECT_EQ(auth->Reload().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*auth->Authenticate("Bearer tok-z"), "tenant-z");
}

// The value of `name{labels}` in the registry's counters/gauges (-1 if none).
double MetricValue(prometheus::Registry& registry, const std::string& name,
                   const std::string& label_value = "") {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      if (!label_value.empty() &&
          (metric.label.empty() || metric.label[0].value != label_value)) {
        continue;
      }
      return family.type == prometheus::MetricType::Counter
                 ? metric.counter.value
                 : metric.gauge.value;
    }
  }
  return -1;
}

TEST(TokensFileReloaderTest, ReloadsChangesKeepsTheOldTableOnErrors) {
  const std::string path = TmpPath("tokens_reloader");
  WriteFile(path, "tok-a alice max_sessions=1\n");
  auto auth = *Authenticator::FromTokensFile(path);
  prometheus::Registry registry;
  std::vector<absl::flat_hash_map<std::string, TenantQuota>> loaded;
  TokensFileReloader reloader(
      *auth, [&](const TokenTable& t) { loaded.push_back(t.quotas()); },
      &registry, nullptr, {.start_thread = false});
  EXPECT_EQ(MetricValue(registry, "wavekv_auth_tokens"), 1);

  // Unchanged: nothing to do.
  EXPECT_EQ(*reloader.CheckNow(), false);
  // Same size, same inode, possibly the same timestamp tick: still seen.
  WriteFile(path, "tok-b alice max_sessions=2\n");
  EXPECT_EQ(*reloader.CheckNow(), true);
  EXPECT_EQ(auth->Authenticate("Bearer tok-a").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(*auth->Authenticate("Bearer tok-b"), "alice");
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].at("alice").max_sessions, 2u);

  // A broken file: error, counted once, old table kept.
  WriteFile(path, "tok-c alice max_sessions=lots\n");
  const absl::StatusOr<bool> broken = reloader.CheckNow();
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(broken.status().message()),
              HasSubstr(":1: max_sessions: expected a number"));
  EXPECT_EQ(*reloader.CheckNow(), false);  // unchanged since: not again
  EXPECT_EQ(*auth->Authenticate("Bearer tok-b"), "alice");
  EXPECT_EQ(loaded.size(), 1u);
  // Removed: an error too, old table kept.
  std::remove(path.c_str());
  EXPECT_EQ(reloader.CheckNow().status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*auth->Authenticate("Bearer tok-b"), "alice");
  // Fixed: loaded.
  WriteFile(path, "tok-c alice\ntok-d bob\n");
  EXPECT_EQ(*reloader.CheckNow(), true);
  EXPECT_EQ(*auth->Authenticate("Bearer tok-d"), "bob");
  ASSERT_EQ(loaded.size(), 2u);
  EXPECT_TRUE(loaded[1].empty());  // quotas removed with the file's lines

  EXPECT_EQ(reloader.reloads_ok(), 2u);
  EXPECT_EQ(reloader.reloads_failed(), 2u);
  EXPECT_EQ(MetricValue(registry, "wavekv_auth_reloads_total", "ok"), 2);
  EXPECT_EQ(MetricValue(registry, "wavekv_auth_reloads_total", "error"), 2);
  EXPECT_EQ(MetricValue(registry, "wavekv_auth_tokens"), 2);
}

TEST(TokensFileReloaderTest, ThePollingThreadPicksUpChanges) {
  const std::string path = TmpPath("tokens_thread");
  WriteFile(path, "tok-a alice\n");
  auto auth = *Authenticator::FromTokensFile(path);
  absl::Notification reloaded;
  TokensFileReloader reloader(*auth,
                              [&](const TokenTable&) {
                                if (!reloaded.HasBeenNotified())
                                  reloaded.Notify();
                              },
                              nullptr, nullptr,
                              {.poll_interval = absl::Milliseconds(10)});
  WriteFile(path, "tok-a alice\ntok-new bob\n");
  ASSERT_TRUE(reloaded.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(*auth->Authenticate("Bearer tok-new"), "bob");
}

}  // namespace
}  // namespace wavekv
