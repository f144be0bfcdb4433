// Authentication against the real server process: missing or unknown
// credentials are UNAUTHENTICATED on every RPC; the tokens file is
// re-read when it changes (a removed token stops working, an added one
// starts, a broken file is logged and the old tokens stay), and the
// reloads are counted in wavekv_auth_reloads_total{result}.
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/kv_pattern.h"
#include "tests/prometheus_text.h"
#include "tests/server_process.h"
#include "tests/wire_client.h"

namespace wavekv::testing {
namespace {

using grpc::StatusCode;

v1::ModelShape Shape() { return MakeShape(1, 2, 1, 16, v1::DTYPE_FP32); }

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeTempDir("auth-tokens");
    ASSERT_TRUE(dir.ok()) << dir.status();
    tokens_ = *dir + "/tokens";
    ASSERT_TRUE(WriteFile(tokens_,
                          "old-token alice\nkeep-token bob\n"
                          "reader-token bob role=read\n")
                    .ok());
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(
            {.name = "auth", .args = {"--tokens_file=" + tokens_}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::WaveKv::NewStub(Connect(server_->grpc_address()));
  }

  // wavekv_auth_reloads_total{result}.
  double Reloads(const std::string& result) {
    absl::StatusOr<std::string> text =
        HttpGet(server_->metrics_port(), "/metrics");
    EXPECT_TRUE(text.ok()) << text.status();
    if (!text.ok()) return -1;
    absl::StatusOr<std::vector<MetricSample>> samples =
        ParsePrometheusText(*text);
    EXPECT_TRUE(samples.ok()) << samples.status();
    return SumSamples(*samples, "wavekv_auth_reloads_total",
                      {{"result", result}});
  }

  // Polls `done` every 100 ms for up to 15 s (the server polls every 1 s).
  static bool Eventually(const std::function<bool()>& done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(15);
    while (absl::Now() < deadline) {
      if (done()) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return done();
  }

  grpc::Status List(const std::string& token) {
    return CallListSessions(*stub_, token, {}).status;
  }

  std::string tokens_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::WaveKv::Stub> stub_;
};

TEST_F(AuthTest, EveryRpcNeedsAKnownToken) {
  auto created =
      CallCreateSession(*stub_, "keep-token", SessionRequest(Shape()));
  ASSERT_TRUE(created.ok()) << StatusText(created.status);
  const std::string id = created.response.session().session_id();
  for (const std::string token : {std::string(), std::string("nope-token")}) {
    const std::string want =
        token.empty() ? "missing bearer token" : "authorization: unknown token";
    std::vector<std::pair<std::string, grpc::Status>> answers;
    answers.emplace_back(
        "CreateSession",
        CallCreateSession(*stub_, token, SessionRequest(Shape())).status);
    v1::AppendRequest append;
    append.set_session_id(id);
    *append.add_layers() = KvPattern(1, Shape()).Layer(0, 0, 1);
    answers.emplace_back("Append", CallAppend(*stub_, token, append).status);
    v1::RetrieveRequest retrieve =
        RetrieveRequestFor(0, v1::RETRIEVE_MODE_EXACT, false);
    AddQuery(retrieve, id, KvPattern(1, Shape()).Query(0, 0));
    answers.emplace_back("Retrieve",
                         CallRetrieve(*stub_, token, retrieve).status);
    v1::FetchClustersRequest fetch;
    fetch.set_session_id(id);
    answers.emplace_back("FetchClusters",
                         CallFetchClusters(*stub_, token, fetch).status);
    answers.emplace_back("GetTransportInfo",
                         CallGetTransportInfo(*stub_, token, {}).status);
    answers.emplace_back("GetSession",
                         CallGetSession(*stub_, token, id).status);
    answers.emplace_back("ListSessions", List(token));
    answers.emplace_back("CloseSession",
                         CallCloseSession(*stub_, token, id).status);
    for (const auto& [rpc, status] : answers) {
      EXPECT_EQ(status.error_code(), StatusCode::UNAUTHENTICATED)
          << rpc << " with '" << token << "': " << StatusText(status);
      EXPECT_TRUE(absl::StrContains(status.error_message(), want))
          << rpc << ": " << StatusText(status);
    }
  }
  // Nothing happened to the session.
  auto info = CallGetSession(*stub_, "keep-token", id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info.response.num_tokens(), 0u);
}

TEST_F(AuthTest, ReadOnlyTokensArePermissionDeniedOnWrites) {
  const v1::ModelShape shape = Shape();
  auto created = CallCreateSession(*stub_, "keep-token", SessionRequest(shape));
  ASSERT_TRUE(created.ok());
  const std::string id = created.response.session().session_id();
  const KvPattern pattern(1, shape);
  ASSERT_TRUE(AppendTokens(*stub_, "keep-token", id, pattern, 0, 8, 8).ok());

  // Reads work with bob's read-only token, on bob's sessions.
  EXPECT_TRUE(CallGetSession(*stub_, "reader-token", id).ok());
  EXPECT_TRUE(List("reader-token").ok());
  v1::RetrieveRequest retrieve =
      RetrieveRequestFor(0, v1::RETRIEVE_MODE_EXACT, true);
  AddQuery(retrieve, id, pattern.Query(0, 0));
  EXPECT_TRUE(CallRetrieve(*stub_, "reader-token", retrieve).ok());

  // Writes are PERMISSION_DENIED, before anything else is looked at.
  std::vector<std::pair<std::string, grpc::Status>> writes;
  writes.emplace_back(
      "CreateSession",
      CallCreateSession(*stub_, "reader-token", SessionRequest(shape)).status);
  v1::AppendRequest append;
  append.set_session_id(id);
  *append.add_layers() = pattern.Layer(0, 8, 1);
  writes.emplace_back("Append",
                      CallAppend(*stub_, "reader-token", append).status);
  writes.emplace_back("CloseSession",
                      CallCloseSession(*stub_, "reader-token", id).status);
  for (const auto& [rpc, status] : writes) {
    EXPECT_EQ(status.error_code(), StatusCode::PERMISSION_DENIED)
        << rpc << ": " << StatusText(status);
    EXPECT_TRUE(
        absl::StrContains(status.error_message(), rpc + " needs role=write"))
        << StatusText(status);
  }
  auto info = CallGetSession(*stub_, "keep-token", id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info.response.num_tokens(), 8u);
  EXPECT_EQ(ListAllSessions(*stub_, "keep-token").response.size(), 1u);
}

TEST_F(AuthTest, TokensFileIsReloadedOnChange) {
  ASSERT_TRUE(List("old-token").ok());
  EXPECT_EQ(List("new-token").error_code(), StatusCode::UNAUTHENTICATED);
  auto created =
      CallCreateSession(*stub_, "old-token", SessionRequest(Shape()));
  ASSERT_TRUE(created.ok());
  const std::string id = created.response.session().session_id();
  EXPECT_EQ(Reloads("ok"), 0);

  // Rotate alice's token: the old one is removed, a new one added.
  ASSERT_TRUE(WriteFile(tokens_, "new-token alice\nkeep-token bob\n").ok());
  ASSERT_TRUE(Eventually([&] { return List("new-token").ok(); }))
      << server_->StderrTail();
  EXPECT_EQ(List("old-token").error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(List("keep-token").ok());
  // Same tenant, same sessions.
  EXPECT_TRUE(CallGetSession(*stub_, "new-token", id).ok());
  EXPECT_EQ(Reloads("ok"), 1);

  // A broken file: logged, counted, the current tokens stay.
  ASSERT_TRUE(
      WriteFile(tokens_, "new-token alice max_sessions=many\nbad\n").ok());
  ASSERT_TRUE(Eventually([&] { return Reloads("error") >= 1; }))
      << server_->StderrTail();
  EXPECT_TRUE(List("new-token").ok());
  EXPECT_TRUE(List("keep-token").ok());
  EXPECT_TRUE(absl::StrContains(server_->StderrTail(16384),
                                "tokens file reload failed"))
      << server_->StderrTail();
  // The log names the line, never a token.
  EXPECT_FALSE(absl::StrContains(server_->StderrTail(16384), "new-token"));

  // The file removed: also an error, tokens stay.
  std::remove(tokens_.c_str());
  ASSERT_TRUE(Eventually([&] { return Reloads("error") >= 2; }));
  EXPECT_TRUE(List("new-token").ok());

  // Fixed again: bob's token removed, alice keeps hers.
  ASSERT_TRUE(WriteFile(tokens_, "new-token alice\n").ok());
  ASSERT_TRUE(Eventually([&] {
    return List("keep-token").error_code() == StatusCode::UNAUTHENTICATED;
  }));
  EXPECT_TRUE(List("new-token").ok());
  EXPECT_EQ(Reloads("ok"), 2);
  EXPECT_EQ(Reloads("error"), 2);
}

}  // namespace
}  // namespace wavekv::testing
