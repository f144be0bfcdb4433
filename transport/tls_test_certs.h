// Test certificates, generated at test time with /usr/bin/openssl into a
// fresh directory: a CA, a server certificate for localhost / 127.0.0.1
// and a client certificate signed by it, plus a second, unrelated CA with
// its own client certificate (the "wrong CA" cases). EC P-256 keys, valid
// for two days.
//
// Example:
//   ASSERT_OK_AND_ASSIGN(TestCerts certs, MakeTestCerts(dir));
//   server flags: --tls_cert=certs.server_cert --tls_key=certs.server_key
//
// Thread-safe: runs child processes; use distinct directories.
#ifndef WAVEKV_TRANSPORT_TLS_TEST_CERTS_H_
#define WAVEKV_TRANSPORT_TLS_TEST_CERTS_H_

#include <string>

#include "absl/status/statusor.h"

namespace wavekv::testing {

struct TestCerts {
  std::string ca_cert;  // PEM files, absolute paths
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  std::string other_ca_cert;                        // an unrelated CA
  std::string other_client_cert, other_client_key;  // signed by other CA
};

// The openssl binary used (/usr/bin/openssl); tests skip when it is absent.
const char* OpensslPath();

// Creates the files in `dir` (which must exist). Internal error quoting
// the failing openssl command and its output.
absl::StatusOr<TestCerts> MakeTestCerts(const std::string& dir);

}  // namespace wavekv::testing

#endif  // WAVEKV_TRANSPORT_TLS_TEST_CERTS_H_
