// TLS and mutual TLS of the real server process (--tls_cert --tls_key
// [--tls_client_ca]), with a CA, server and client certificates generated
// by /usr/bin/openssl into $TEST_TMPDIR at test time:
//  - TLS: a client trusting the CA works end to end (bearer token too);
//    a plaintext client and a client trusting another CA are refused;
//  - mTLS: a client certificate from the CA works; none, or one from
//    another CA, is refused;
//  - /metrics stays plain HTTP;
//  - bad TLS flags fail the start with a message naming the flag.
#include "transport/tls.h"

#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/kv_pattern.h"
#include "tests/server_process.h"
#include "tests/wire_client.h"
#include "transport/tls_test_certs.h"

namespace wavekv::testing {
namespace {

using grpc::StatusCode;

const char kToken[] = "tls-tenant-token";

class TlsProcessTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::access(OpensslPath(), X_OK) != 0) return;
    absl::StatusOr<std::string> dir = MakeTempDir("tls-certs");
    ASSERT_TRUE(dir.ok()) << dir.status();
    absl::StatusOr<TestCerts> certs = MakeTestCerts(*dir);
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = new TestCerts(*certs);
    tokens_ = new std::string(*dir + "/tokens");
    ASSERT_TRUE(
        WriteFile(*tokens_, absl::StrCat(kToken, " tls-tenant\n")).ok());
  }

  void SetUp() override {
    if (certs_ == nullptr) {
      GTEST_SKIP() << OpensslPath() << " is not available";
    }
  }

  void StartServer(bool mtls) {
    std::vector<std::string> args = {"--tls_cert=" + certs_->server_cert,
                                     "--tls_key=" + certs_->server_key,
                                     "--tokens_file=" + *tokens_};
    if (mtls) args.push_back("--tls_client_ca=" + certs_->ca_cert);
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start({.name = mtls ? "mtls" : "tls", .args = args});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  ClientTlsFiles Trusting(const std::string& ca) const {
    ClientTlsFiles files;
    files.use_tls = true;
    files.ca_file = ca;
    return files;
  }
  ClientTlsFiles WithCert(ClientTlsFiles files, const std::string& cert,
                          const std::string& key) const {
    files.cert_file = cert;
    files.key_file = key;
    return files;
  }

  // One ListSessions through a channel with `files`.
  grpc::Status ListWith(const ClientTlsFiles& files) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
        MakeChannelCredentials(files);
    EXPECT_TRUE(creds.ok()) << creds.status();
    if (!creds.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "creds");
    auto channel = grpc::CreateChannel(server_->grpc_address(), *creds);
    auto stub = v1::WaveKv::NewStub(channel);
    grpc::ClientContext ctx;
    PrepareContext(&ctx, kToken, absl::Seconds(5));
    v1::ListSessionsResponse response;
    return stub->ListSessions(&ctx, {}, &response);
  }

  static TestCerts* certs_;
  static std::string* tokens_;
  std::unique_ptr<ServerProcess> server_;
};

TestCerts* TlsProcessTest::certs_ = nullptr;
std::string* TlsProcessTest::tokens_ = nullptr;

TEST_F(TlsProcessTest, TlsServesTrustingClientsOnly) {
  StartServer(/*mtls=*/false);
  // End to end over TLS: create, append, get.
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      MakeChannelCredentials(Trusting(certs_->ca_cert));
  ASSERT_TRUE(creds.ok()) << creds.status();
  auto stub =
      v1::WaveKv::NewStub(grpc::CreateChannel(server_->grpc_address(), *creds));
  const v1::ModelShape shape = MakeShape(1, 2, 1, 16, v1::DTYPE_FP32);
  auto created = CallCreateSession(*stub, kToken, SessionRequest(shape));
  ASSERT_TRUE(created.ok()) << StatusText(created.status);
  const std::string id = created.response.session().session_id();
  ASSERT_TRUE(
      AppendTokens(*stub, kToken, id, KvPattern(1, shape), 0, 32, 16).ok());
  EXPECT_EQ(CallGetSession(*stub, kToken, id).response.num_tokens(), 32u);
  // The token is still required inside TLS.
  EXPECT_EQ(CallGetSession(*stub, "", id).status.error_code(),
            StatusCode::UNAUTHENTICATED);

  // Plaintext client: refused (the handshake never completes).
  const grpc::Status plain = ListWith(ClientTlsFiles{});
  EXPECT_EQ(plain.error_code(), StatusCode::UNAVAILABLE) << StatusText(plain);
  // A client that trusts another CA cannot verify the server.
  const grpc::Status wrong_ca = ListWith(Trusting(certs_->other_ca_cert));
  EXPECT_EQ(wrong_ca.error_code(), StatusCode::UNAVAILABLE)
      << StatusText(wrong_ca);
  // /metrics stays plain HTTP.
  EXPECT_TRUE(HttpGet(server_->metrics_port(), "/metrics").ok());
}

TEST_F(TlsProcessTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  StartServer(/*mtls=*/true);
  const ClientTlsFiles trusting = Trusting(certs_->ca_cert);
  EXPECT_TRUE(
      ListWith(WithCert(trusting, certs_->client_cert, certs_->client_key))
          .ok());
  const grpc::Status no_cert = ListWith(trusting);
  EXPECT_EQ(no_cert.error_code(), StatusCode::UNAVAILABLE)
      << StatusText(no_cert);
  const grpc::Status other_ca = ListWith(
      WithCert(trusting, certs_->other_client_cert, certs_->other_client_key));
  EXPECT_EQ(other_ca.error_code(), StatusCode::UNAVAILABLE)
      << StatusText(other_ca);
  EXPECT_EQ(ListWith(ClientTlsFiles{}).error_code(), StatusCode::UNAVAILABLE);
  EXPECT_TRUE(HttpGet(server_->metrics_port(), "/metrics").ok());
}

TEST_F(TlsProcessTest, BadTlsFlagsFailTheStartNamingTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string want;
  } cases[] = {
      {{"--tls_cert=" + certs_->server_cert},
       "tls_key: required when tls_cert is set"},
      {{"--tls_client_ca=" + certs_->ca_cert}, "tls_client_ca: needs tls_cert"},
      {{"--tls_cert=" + certs_->server_cert, "--tls_key=" + certs_->client_key},
       "tls_key: does not match the certificate in tls_cert"},
      {{"--tls_cert=/nonexistent.crt", "--tls_key=" + certs_->server_key},
       "tls_cert: cannot read '/nonexistent.crt'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start({.name = "tls-bad",
                              .args = c.args,
                              .ready_timeout = absl::Seconds(10)});
    ASSERT_FALSE(server.ok()) << c.want;
    EXPECT_TRUE(absl::StrContains(server.status().message(), c.want))
        << server.status();
  }
}

}  // namespace
}  // namespace wavekv::testing
