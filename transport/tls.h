// TLS and mutual TLS for the gRPC listener and its clients, from PEM files.
//
// Server (wavekv-server --tls_cert=F --tls_key=F [--tls_client_ca=F]):
//  - cert + key: the server speaks TLS only; plaintext clients fail the
//    handshake (UNAVAILABLE on their side).
//  - + client CA: mutual TLS. Every client must present a certificate
//    chaining to that CA; without one, or with one from another CA, the
//    handshake fails. The client certificate only admits the connection;
//    the tenant still comes from the bearer token.
// Client (WaveKvClient / `wavekv` CLI --tls_ca --tls_cert --tls_key):
//  - ca: verify the server against this CA (empty: the system roots);
//  - cert + key: present a client certificate (mTLS).
// The Prometheus /metrics endpoint is not covered: it stays plain HTTP.
//
// Files are read once (at startup / channel creation). Errors name the
// flag: "tls_cert: cannot read '/x': No such file or directory",
// "tls_key: does not match the certificate in tls_cert".
//
// Thread-safe: pure functions.
#ifndef WAVEKV_TRANSPORT_TLS_H_
#define WAVEKV_TRANSPORT_TLS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace wavekv {

struct ServerTlsFiles {
  std::string cert_file;       // PEM certificate chain; empty = no TLS
  std::string key_file;        // PEM private key of cert_file
  std::string client_ca_file;  // PEM CA bundle; non-empty = require mTLS

  bool enabled() const { return !cert_file.empty(); }
  // InvalidArgument when only one of cert/key is set, or a client CA is
  // given without them (field names tls_cert, tls_key, tls_client_ca).
  absl::Status Validate() const;
};

struct ClientTlsFiles {
  bool use_tls = false;   // false: plaintext (the other fields must be empty)
  std::string ca_file;    // PEM roots to verify the server; empty = system
  std::string cert_file;  // PEM client certificate chain (mTLS)
  std::string key_file;   // PEM private key of cert_file

  // InvalidArgument when only one of cert/key is set (tls_cert, tls_key).
  absl::Status Validate() const;
};

// Insecure credentials when !files.enabled(); otherwise reads and checks
// the files (PEM, the key matches the certificate) and returns TLS
// credentials.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsFiles& files);

// Insecure credentials when !files.use_tls; otherwise TLS credentials from
// the files (checked as above).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const ClientTlsFiles& files);

// Reads a whole file; NotFound/DataLoss "FIELD: cannot read 'PATH': ...".
absl::StatusOr<std::string> ReadPemFile(const std::string& field,
                                        const std::string& path);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_TLS_H_
