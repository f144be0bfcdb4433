// Multi-tenancy against the real server process:
//  - isolation: three tenants try every session RPC (GetSession, Append,
//    Retrieve alone and in a batch with their own session, FetchClusters,
//    GetTransportInfo, CloseSession) on each other's sessions: every call is
//    NOT_FOUND with exactly the message an unknown id gets (existence never
//    leaks), listings never show foreign sessions, and nothing changes;
//  - quotas from the tokens file (sessions, K/V bytes, tokens): over a
//    quota is RESOURCE_EXHAUSTED naming it, with nothing changed, and the
//    quotas follow the file when it is rewritten;
//  - /metrics never carries tenant names, tokens or session ids.
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/kv_pattern.h"
#include "tests/prometheus_text.h"
#include "tests/server_process.h"
#include "tests/wire_client.h"

namespace wavekv::testing {
namespace {

using grpc::StatusCode;

struct Tenant {
  std::string name;
  std::string token;
};
const Tenant kTenants[] = {{"alice", "alice-secret-token-1"},
                           {"bob", "bob-secret-token-2"},
                           {"carol", "carol-secret-token-3"}};
// Tenants with quotas (second server).
const char kQuotaToken[] = "dave-secret-token-4";
const char kBytesToken[] = "frank-secret-token-5";

constexpr uint32_t kLayers = 2;
constexpr uint32_t kTokensPerSession = 24;

v1::ModelShape Shape() { return MakeShape(kLayers, 4, 2, 16, v1::DTYPE_FP32); }

// Everything every tenant can see: its sessions (StableView) by id.
using Snapshot = std::map<std::string, std::map<std::string, std::string>>;

class TenantIsolationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = MakeTempDir("tenant-tokens");
    ASSERT_TRUE(dir.ok()) << dir.status();
    std::string tokens = "# isolation test\n";
    for (const Tenant& t : kTenants) {
      absl::StrAppend(&tokens, t.token, " ", t.name, "\n");
    }
    ASSERT_TRUE(WriteFile(*dir + "/tokens", tokens).ok());
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start({.name = "tenant-isolation",
                              .args = {"--tokens_file=" + *dir + "/tokens"}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
    stub_ = v1::WaveKv::NewStub(Connect(server_->grpc_address())).release();
  }
  static void TearDownTestSuite() {
    delete stub_;
    delete server_;
  }

  // Every tenant's sessions as its own ListSessions/GetSession show them.
  Snapshot Take() {
    Snapshot snapshot;
    for (const Tenant& t : kTenants) {
      auto listed = ListAllSessions(*stub_, t.token, 1);
      EXPECT_TRUE(listed.ok()) << StatusText(listed.status);
      for (const v1::SessionInfo& info : listed.response) {
        auto got = CallGetSession(*stub_, t.token, info.session_id());
        EXPECT_TRUE(got.ok()) << StatusText(got.status);
        snapshot[t.name][info.session_id()] =
            StableView(got.response).SerializeAsString();
      }
    }
    return snapshot;
  }

  static ServerProcess* server_;
  static v1::WaveKv::Stub* stub_;
};

ServerProcess* TenantIsolationTest::server_ = nullptr;
v1::WaveKv::Stub* TenantIsolationTest::stub_ = nullptr;

// `status` with `id` replaced, to compare a foreign id's answer with an
// unknown id's.
std::string Normalized(const grpc::Status& status, const std::string& id) {
  return absl::StrReplaceAll(StatusText(status), {{id, "<ID>"}});
}

TEST_F(TenantIsolationTest, EveryRpcOnAnotherTenantsSessionIsNotFound) {
  const KvPattern pattern(7, Shape());
  // Two sessions per tenant, with K/V.
  std::map<std::string, std::vector<std::string>> sessions;
  for (const Tenant& t : kTenants) {
    for (int i = 0; i < 2; ++i) {
      auto created =
          CallCreateSession(*stub_, t.token, SessionRequest(Shape(), t.name));
      ASSERT_TRUE(created.ok()) << StatusText(created.status);
      const std::string id = created.response.session().session_id();
      ASSERT_TRUE(
          AppendTokens(*stub_, t.token, id, pattern, 0, kTokensPerSession, 8)
              .ok());
      sessions[t.name].push_back(id);
    }
  }
  const Snapshot before = Take();
  ASSERT_EQ(before.size(), 3u);
  // An id nobody has, to compare messages with.
  const std::string unknown(32, 'e');

  int calls = 0;
  for (const Tenant& attacker : kTenants) {
    const std::string& own = sessions[attacker.name][0];
    for (const Tenant& victim : kTenants) {
      if (victim.name == attacker.name) continue;
      for (const std::string& id : sessions[victim.name]) {
        SCOPED_TRACE(attacker.name + " on " + victim.name + "'s " + id);
        // The answer every probe must give: the unknown id's, verbatim.
        auto expect_not_found = [&](const std::string& rpc,
                                    const grpc::Status& foreign,
                                    const grpc::Status& missing) {
          ++calls;
          EXPECT_EQ(foreign.error_code(), StatusCode::NOT_FOUND)
              << rpc << ": " << StatusText(foreign);
          EXPECT_EQ(Normalized(foreign, id), Normalized(missing, unknown))
              << rpc << ": a foreign session must look like a missing one";
        };

        expect_not_found(
            "GetSession", CallGetSession(*stub_, attacker.token, id).status,
            CallGetSession(*stub_, attacker.token, unknown).status);

        v1::AppendRequest append;
        append.set_session_id(id);
        *append.add_layers() = pattern.Layer(0, kTokensPerSession, 1);
        v1::AppendRequest append_unknown = append;
        append_unknown.set_session_id(unknown);
        expect_not_found(
            "Append", CallAppend(*stub_, attacker.token, append).status,
            CallAppend(*stub_, attacker.token, append_unknown).status);

        for (bool batch : {false, true}) {
          auto request = [&](const std::string& target) {
            v1::RetrieveRequest r =
                RetrieveRequestFor(0, v1::RETRIEVE_MODE_EXACT, true);
            if (batch) AddQuery(r, own, pattern.Query(0, 1));
            AddQuery(r, target, pattern.Query(0, 1));
            return r;
          };
          expect_not_found(
              batch ? "Retrieve (batch with an own session)" : "Retrieve",
              CallRetrieve(*stub_, attacker.token, request(id)).status,
              CallRetrieve(*stub_, attacker.token, request(unknown)).status);
        }

        v1::FetchClustersRequest fetch;
        fetch.set_session_id(id);
        fetch.set_layer(0);
        v1::HeadSlots* head = fetch.add_heads();
        head->set_kv_head(0);
        v1::SlotRange* range = head->add_ranges();
        range->set_first_slot(0);
        range->set_num_slots(kTokensPerSession);
        v1::FetchClustersRequest fetch_unknown = fetch;
        fetch_unknown.set_session_id(unknown);
        const FetchAnswer fetched =
            CallFetchClusters(*stub_, attacker.token, fetch);
        EXPECT_TRUE(fetched.chunks.empty()) << "foreign K/V was streamed";
        expect_not_found(
            "FetchClusters", fetched.status,
            CallFetchClusters(*stub_, attacker.token, fetch_unknown).status);

        v1::GetTransportInfoRequest info;
        info.set_session_id(id);
        v1::GetTransportInfoRequest info_unknown;
        info_unknown.set_session_id(unknown);
        expect_not_found(
            "GetTransportInfo",
            CallGetTransportInfo(*stub_, attacker.token, info).status,
            CallGetTransportInfo(*stub_, attacker.token, info_unknown).status);

        expect_not_found(
            "CloseSession", CallCloseSession(*stub_, attacker.token, id).status,
            CallCloseSession(*stub_, attacker.token, unknown).status);
      }
    }
    // Listing shows exactly the attacker's own sessions.
    auto listed = ListAllSessions(*stub_, attacker.token, 1);
    ASSERT_TRUE(listed.ok());
    std::vector<std::string> ids;
    for (const v1::SessionInfo& s : listed.response) {
      ids.push_back(s.session_id());
    }
    std::vector<std::string> own_ids = sessions[attacker.name];
    std::sort(own_ids.begin(), own_ids.end());
    EXPECT_EQ(ids, own_ids);
  }
  EXPECT_EQ(calls, 3 * 2 * 2 * 7);
  EXPECT_EQ(Take(), before) << "a refused call changed some tenant's state";

  // Each owner can still do everything with its sessions.
  for (const Tenant& t : kTenants) {
    for (const std::string& id : sessions[t.name]) {
      EXPECT_TRUE(CallCloseSession(*stub_, t.token, id).ok());
    }
  }
}

TEST_F(TenantIsolationTest, MetricsNeverCarryTenantsTokensOrSessionIds) {
  std::vector<std::string> secrets;
  for (const Tenant& t : kTenants) {
    auto created = CallCreateSession(*stub_, t.token, SessionRequest(Shape()));
    ASSERT_TRUE(created.ok());
    secrets.push_back(t.name);
    secrets.push_back(t.token);
    secrets.push_back(created.response.session().session_id());
    // Some failing calls too, so error-code series exist.
    CallGetSession(*stub_, t.token, std::string(32, 'f'));
  }
  CallGetSession(*stub_, "no-such-token", std::string(32, 'f'));
  absl::StatusOr<std::string> text =
      HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(text.ok()) << text.status();
  absl::StatusOr<std::vector<MetricSample>> samples =
      ParsePrometheusText(*text);
  ASSERT_TRUE(samples.ok()) << samples.status();
  ASSERT_GT(samples->size(), 10u);
  EXPECT_GT(SumSamples(*samples, "wavekv_rpc_requests_total",
                       {{"method", "GetSession"}, {"code", "NOT_FOUND"}}),
            0);
  for (const std::string& secret : secrets) {
    EXPECT_FALSE(absl::StrContains(*text, secret))
        << "/metrics mentions '" << secret << "'";
  }
  // Label values come from small fixed sets: no value is id- or token-like.
  for (const MetricSample& s : *samples) {
    for (const auto& [key, value] : s.labels) {
      EXPECT_LE(value.size(), 40u) << s.name << "{" << key << "}";
      EXPECT_NE(key, "tenant") << s.name;
      EXPECT_NE(key, "session_id") << s.name;
    }
  }
}

// --- Quotas ------------------------------------------------------------------

class TenantQuotaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeTempDir("quota-tokens");
    ASSERT_TRUE(dir.ok()) << dir.status();
    tokens_ = *dir + "/tokens";
    WriteTokens("max_sessions=2 max_tokens=150");
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(
            {.name = "tenant-quota", .args = {"--tokens_file=" + tokens_}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::WaveKv::NewStub(Connect(server_->grpc_address()));
  }

  void WriteTokens(const std::string& quotas) {
    ASSERT_TRUE(
        WriteFile(tokens_, absl::StrCat(kQuotaToken, " dave ", quotas,
                                        "\nerin-token erin\n", kBytesToken,
                                        " frank max_bytes=64KiB\n"))
            .ok());
  }

  std::string Create(const std::string& token = kQuotaToken) {
    auto created = CallCreateSession(*stub_, token, SessionRequest(Shape()));
    EXPECT_TRUE(created.ok()) << StatusText(created.status);
    return created.response.session().session_id();
  }

  // Appends `n` tokens to every layer of `id` at `start`.
  grpc::Status AppendAll(const std::string& id, uint64_t start, uint32_t n,
                         const std::string& token = kQuotaToken) {
    const KvPattern pattern(3, Shape());
    return AppendTokens(*stub_, token, id, pattern, start, start + n, n);
  }

  std::string tokens_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::WaveKv::Stub> stub_;
};

// Token bytes of K (or V) of one token of one layer: 2 heads * 16 * 4.
constexpr uint64_t kTokenLayerBytes = 2 * 16 * 4;
// K+V of one token over both layers.
constexpr uint64_t kTokenBytes = 2 * kTokenLayerBytes * kLayers;

TEST_F(TenantQuotaTest, OverAQuotaIsResourceExhaustedAndChangesNothing) {
  const std::string s1 = Create();
  const std::string s2 = Create();
  // max_sessions=2.
  auto third = CallCreateSession(*stub_, kQuotaToken, SessionRequest(Shape()));
  EXPECT_EQ(third.status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(third.status.error_message(),
                                "tenant quota max_sessions"))
      << StatusText(third.status);
  EXPECT_EQ(ListAllSessions(*stub_, kQuotaToken).response.size(), 2u);
  // erin has no quota.
  for (int i = 0; i < 3; ++i) Create("erin-token");

  // max_tokens=150 over both sessions (each session's longest layer).
  ASSERT_TRUE(AppendAll(s1, 0, 100).ok());
  const v1::SessionInfo s2_before =
      StableView(CallGetSession(*stub_, kQuotaToken, s2).response);
  const grpc::Status over_tokens = AppendAll(s2, 0, 51);
  EXPECT_EQ(over_tokens.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(
      absl::StrContains(over_tokens.error_message(), "tenant quota max_tokens"))
      << StatusText(over_tokens);
  std::string diff;
  EXPECT_TRUE(
      SameMessage(StableView(CallGetSession(*stub_, kQuotaToken, s2).response),
                  s2_before, &diff))
      << diff;
  ASSERT_TRUE(AppendAll(s2, 0, 50).ok());  // exactly 150

  // frank: max_bytes=64KiB. 100 tokens = 51200 bytes; 30 more would be
  // 66560 > 65536; 28 more are exactly 65536.
  static_assert(kTokenBytes == 512);
  const std::string f1 = Create(kBytesToken);
  ASSERT_TRUE(AppendAll(f1, 0, 100, kBytesToken).ok());
  const v1::SessionInfo f1_before =
      StableView(CallGetSession(*stub_, kBytesToken, f1).response);
  const grpc::Status over_bytes = AppendAll(f1, 100, 30, kBytesToken);
  EXPECT_EQ(over_bytes.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(
      absl::StrContains(over_bytes.error_message(), "tenant quota max_bytes"))
      << StatusText(over_bytes);
  EXPECT_TRUE(
      SameMessage(StableView(CallGetSession(*stub_, kBytesToken, f1).response),
                  f1_before, &diff))
      << diff;
  EXPECT_TRUE(AppendAll(f1, 100, 28, kBytesToken).ok());
  EXPECT_EQ(AppendAll(f1, 128, 1, kBytesToken).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);

  // Closing a session gives its bytes and tokens back.
  EXPECT_EQ(AppendAll(s1, 100, 1).error_code(), StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_TRUE(CallCloseSession(*stub_, kQuotaToken, s2).ok());
  EXPECT_TRUE(AppendAll(s1, 100, 50).ok());
}

TEST_F(TenantQuotaTest, QuotasFollowTheTokensFile) {
  Create();
  Create();
  auto refused =
      CallCreateSession(*stub_, kQuotaToken, SessionRequest(Shape()));
  ASSERT_EQ(refused.status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  WriteTokens("max_sessions=3");
  // Within a few polls the new quota applies.
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  grpc::Status status;
  do {
    absl::SleepFor(absl::Milliseconds(200));
    status =
        CallCreateSession(*stub_, kQuotaToken, SessionRequest(Shape())).status;
  } while (!status.ok() && absl::Now() < deadline);
  EXPECT_TRUE(status.ok()) << StatusText(status);
  // Dropping the quota entirely makes the tenant unlimited.
  WriteTokens("");
  const absl::Time deadline2 = absl::Now() + absl::Seconds(15);
  int created = 0;
  while (created < 2 && absl::Now() < deadline2) {
    absl::SleepFor(absl::Milliseconds(200));
    if (CallCreateSession(*stub_, kQuotaToken, SessionRequest(Shape())).ok()) {
      ++created;
    }
  }
  EXPECT_EQ(created, 2);
  EXPECT_EQ(ListAllSessions(*stub_, kQuotaToken).response.size(), 5u);
}

}  // namespace
}  // namespace wavekv::testing
