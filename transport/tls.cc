#include "transport/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace wavekv {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The first certificate of a PEM chain; InvalidArgument naming `field`.
absl::Status CheckCertificates(const std::string& field,
                               const std::string& pem) {
  auto bio = MemoryBio(pem);
  std::unique_ptr<X509, X509Free> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": no PEM certificate in the file"));
  }
  return absl::OkStatus();
}

// The key parses and belongs to the chain's first certificate.
absl::Status CheckKeyPair(const std::string& cert_field,
                          const std::string& cert_pem,
                          const std::string& key_field,
                          const std::string& key_pem) {
  auto cert_bio = MemoryBio(cert_pem);
  std::unique_ptr<X509, X509Free> cert(
      PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  auto key_bio = MemoryBio(key_pem);
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_field, ": no PEM certificate in the file"));
  }
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        key_field, ": no unencrypted PEM private key in the file"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        key_field, ": does not match the certificate in ", cert_field));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ServerTlsFiles::Validate() const {
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(
        cert_file.empty() ? "tls_cert: required when tls_key is set"
                          : "tls_key: required when tls_cert is set");
  }
  if (!client_ca_file.empty() && cert_file.empty()) {
    return absl::InvalidArgumentError(
        "tls_client_ca: needs tls_cert and tls_key (mTLS is TLS with client "
        "certificates)");
  }
  return absl::OkStatus();
}

absl::Status ClientTlsFiles::Validate() const {
  if (!use_tls && !(ca_file.empty() && cert_file.empty() && key_file.empty())) {
    return absl::InvalidArgumentError(
        "tls: certificate files given but TLS is off");
  }
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(
        cert_file.empty() ? "tls_cert: required when tls_key is set"
                          : "tls_key: required when tls_cert is set");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadPemFile(const std::string& field,
                                        const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(field, ": cannot read '", path,
                                            "': ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(
        absl::StrCat(field, ": cannot read '", path, "'"));
  }
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsFiles& files) {
  if (absl::Status s = files.Validate(); !s.ok()) return s;
  if (!files.enabled()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadPemFile("tls_cert", files.cert_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPemFile("tls_key", files.key_file);
  if (!key.ok()) return key.status();
  if (absl::Status s = CheckKeyPair("tls_cert", *cert, "tls_key", *key);
      !s.ok()) {
    return s;
  }
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!files.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        ReadPemFile("tls_client_ca", files.client_ca_file);
    if (!ca.ok()) return ca.status();
    if (absl::Status s = CheckCertificates("tls_client_ca", *ca); !s.ok()) {
      return s;
    }
    options.pem_root_certs = *ca;
    options.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  options.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const ClientTlsFiles& files) {
  if (absl::Status s = files.Validate(); !s.ok()) return s;
  if (!files.use_tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  if (!files.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile("tls_ca", files.ca_file);
    if (!ca.ok()) return ca.status();
    if (absl::Status s = CheckCertificates("tls_ca", *ca); !s.ok()) return s;
    options.pem_root_certs = *ca;
  }
  if (!files.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPemFile("tls_cert", files.cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile("tls_key", files.key_file);
    if (!key.ok()) return key.status();
    if (absl::Status s = CheckKeyPair("tls_cert", *cert, "tls_key", *key);
        !s.ok()) {
      return s;
    }
    options.pem_cert_chain = *cert;
    options.pem_private_key = *key;
  }
  return grpc::SslCredentials(options);
}

}  // namespace wavekv
