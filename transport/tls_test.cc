// TLS credentials from files: validation and file errors, and real
// handshakes against an in-process gRPC server (channel reaches READY or
// not) for TLS, mTLS, plaintext clients and certificates of the wrong CA.
#include "transport/tls.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/wavekv/v1/wavekv.grpc.pb.h"
#include "transport/tls_test_certs.h"

namespace wavekv {
namespace {

using ::testing::HasSubstr;
using ::wavekv::testing::MakeTestCerts;
using ::wavekv::testing::TestCerts;

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::access(testing::OpensslPath(), X_OK) != 0) return;
    dir_ = new std::string(absl::StrCat(std::getenv("TEST_TMPDIR"), "/certs"));
    ASSERT_EQ(std::system(("mkdir -p " + *dir_).c_str()), 0);
    absl::StatusOr<TestCerts> certs = MakeTestCerts(*dir_);
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = new TestCerts(*certs);
  }

  void SetUp() override {
    if (certs_ == nullptr) {
      GTEST_SKIP() << testing::OpensslPath()
                   << " is not available to make test certificates";
    }
  }

  // Starts a server with `files` on 127.0.0.1:0.
  void StartServer(const ServerTlsFiles& files) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
        MakeServerCredentials(files);
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port_);
    // Any sync service will do: the test only looks at the handshake.
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
  }

  // True if a channel with `files` reaches READY within a second.
  bool Connects(const ClientTlsFiles& files) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
        MakeChannelCredentials(files);
    EXPECT_TRUE(creds.ok()) << creds.status();
    if (!creds.ok()) return false;
    auto channel =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), *creds);
    return channel->WaitForConnected(std::chrono::system_clock::now() +
                                     std::chrono::seconds(1));
  }

  ServerTlsFiles ServerFiles(bool mtls) const {
    return {certs_->server_cert, certs_->server_key,
            mtls ? certs_->ca_cert : ""};
  }
  ClientTlsFiles ClientFiles(bool with_cert) const {
    ClientTlsFiles f;
    f.use_tls = true;
    f.ca_file = certs_->ca_cert;
    if (with_cert) {
      f.cert_file = certs_->client_cert;
      f.key_file = certs_->client_key;
    }
    return f;
  }

  static std::string* dir_;
  static TestCerts* certs_;
  int port_ = 0;
  v1::WaveKv::Service service_;
  std::unique_ptr<grpc::Server> server_;
};

std::string* TlsTest::dir_ = nullptr;
TestCerts* TlsTest::certs_ = nullptr;

TEST(TlsFilesTest, ValidateNamesTheMissingFlag) {
  EXPECT_TRUE(ServerTlsFiles{}.Validate().ok());
  EXPECT_THAT(std::string(ServerTlsFiles{"c", "", ""}.Validate().message()),
              HasSubstr("tls_key: required when tls_cert is set"));
  EXPECT_THAT(std::string(ServerTlsFiles{"", "k", ""}.Validate().message()),
              HasSubstr("tls_cert: required when tls_key is set"));
  EXPECT_THAT(std::string(ServerTlsFiles{"", "", "ca"}.Validate().message()),
              HasSubstr("tls_client_ca: needs tls_cert and tls_key"));
  ClientTlsFiles plain;
  EXPECT_TRUE(plain.Validate().ok());
  plain.ca_file = "ca";
  EXPECT_EQ(plain.Validate().code(), absl::StatusCode::kInvalidArgument);
  ClientTlsFiles half;
  half.use_tls = true;
  half.cert_file = "c";
  EXPECT_THAT(std::string(half.Validate().message()),
              HasSubstr("tls_key: required"));
}

TEST(TlsFilesTest, InsecureWhenOff) {
  EXPECT_TRUE(MakeServerCredentials({}).ok());
  EXPECT_TRUE(MakeChannelCredentials({}).ok());
}

TEST_F(TlsTest, FileErrorsNameTheFlag) {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> missing =
      MakeServerCredentials({*dir_ + "/nope.crt", certs_->server_key, ""});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("tls_cert: cannot read"));
  // A key that is not the certificate's.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> mismatch =
      MakeServerCredentials({certs_->server_cert, certs_->client_key, ""});
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mismatch.status().message()),
              HasSubstr("tls_key: does not match the certificate in tls_cert"));
  // Not PEM at all.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> garbage =
      MakeServerCredentials({certs_->server_key, certs_->server_key, ""});
  EXPECT_THAT(std::string(garbage.status().message()),
              HasSubstr("tls_cert: no PEM certificate"));
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> bad_ca =
      MakeServerCredentials(
          {certs_->server_cert, certs_->server_key, certs_->server_key});
  EXPECT_THAT(std::string(bad_ca.status().message()),
              HasSubstr("tls_client_ca: no PEM certificate"));
  ClientTlsFiles client = ClientFiles(true);
  client.key_file = certs_->server_key;
  EXPECT_THAT(std::string(MakeChannelCredentials(client).status().message()),
              HasSubstr("tls_key: does not match"));
}

TEST_F(TlsTest, TlsServerAcceptsTlsClientsOnly) {
  StartServer(ServerFiles(/*mtls=*/false));
  EXPECT_TRUE(Connects(ClientFiles(/*with_cert=*/false)));
  EXPECT_TRUE(Connects(ClientFiles(/*with_cert=*/true)));  // cert unused
  EXPECT_FALSE(Connects(ClientTlsFiles{}));                // plaintext
  ClientTlsFiles wrong_root = ClientFiles(false);
  wrong_root.ca_file = certs_->other_ca_cert;  // server not verifiable
  EXPECT_FALSE(Connects(wrong_root));
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  StartServer(ServerFiles(/*mtls=*/true));
  EXPECT_TRUE(Connects(ClientFiles(/*with_cert=*/true)));
  EXPECT_FALSE(Connects(ClientFiles(/*with_cert=*/false)));
  EXPECT_FALSE(Connects(ClientTlsFiles{}));
  ClientTlsFiles other = ClientFiles(false);
  other.cert_file = certs_->other_client_cert;
  other.key_file = certs_->other_client_key;
  EXPECT_FALSE(Connects(other));
}

TEST_F(TlsTest, PlaintextServerRefusesTlsClients) {
  StartServer({});
  EXPECT_TRUE(Connects(ClientTlsFiles{}));
  EXPECT_FALSE(Connects(ClientFiles(false)));
}

}  // namespace
}  // namespace wavekv
