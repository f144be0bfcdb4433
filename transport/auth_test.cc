#include "transport/auth.h"

#include <cstdio>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

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
      {"secret-1\n", "t.txt:1: expected '<token> <tenant>', got 1 fields"},
      {"ok a\nsecret-1 a b\n", "t.txt:2: expected '<token> <tenant>', got 3"},
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
              HasSubstr(path + ":1: expected '<token> <tenant>'"));
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

}  // namespace
}  // namespace wavekv
