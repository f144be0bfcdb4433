#include "transport/tls_test_certs.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace wavekv::testing {
namespace {

// Runs openssl with `args`, output to `log`; Internal on failure.
absl::Status Openssl(const std::vector<std::string>& args,
                     const std::string& log) {
  std::vector<std::string> argv_storage = {OpensslPath()};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    std::FILE* out = std::freopen(log.c_str(), "w", stdout);
    if (out != nullptr) ::dup2(::fileno(stdout), 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  std::ifstream in(log);
  std::ostringstream text;
  text << in.rdbuf();
  return absl::InternalError(absl::StrCat("openssl ", absl::StrJoin(args, " "),
                                          " failed: ", text.str()));
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// A self-signed CA `name` (name.crt, name.key).
absl::Status MakeCa(const std::string& dir, const std::string& name) {
  return Openssl(
      {"req", "-x509", "-newkey", "ec", "-pkeyopt",
       "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
       "/CN=" + name, "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
       "keyUsage=critical,keyCertSign,cRLSign", "-keyout",
       dir + "/" + name + ".key", "-out", dir + "/" + name + ".crt"},
      dir + "/openssl.log");
}

// A leaf `name` signed by CA `ca` with the extensions in `ext`.
absl::Status MakeLeaf(const std::string& dir, const std::string& ca,
                      const std::string& name, const std::string& ext) {
  const std::string base = dir + "/" + name;
  if (absl::Status s = WriteText(base + ".ext", ext); !s.ok()) return s;
  if (absl::Status s = Openssl(
          {"req", "-new", "-newkey", "ec", "-pkeyopt",
           "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=" + name,
           "-keyout", base + ".key", "-out", base + ".csr"},
          dir + "/openssl.log");
      !s.ok()) {
    return s;
  }
  return Openssl(
      {"x509", "-req", "-in", base + ".csr", "-CA", dir + "/" + ca + ".crt",
       "-CAkey", dir + "/" + ca + ".key", "-CAcreateserial", "-days", "2",
       "-extfile", base + ".ext", "-out", base + ".crt"},
      dir + "/openssl.log");
}

}  // namespace

const char* OpensslPath() { return "/usr/bin/openssl"; }

absl::StatusOr<TestCerts> MakeTestCerts(const std::string& dir) {
  const std::string server_ext =
      "basicConstraints=CA:FALSE\n"
      "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
      "extendedKeyUsage=serverAuth\n";
  const std::string client_ext =
      "basicConstraints=CA:FALSE\n"
      "extendedKeyUsage=clientAuth\n";
  for (absl::Status s :
       {MakeCa(dir, "ca"), MakeLeaf(dir, "ca", "server", server_ext),
        MakeLeaf(dir, "ca", "client", client_ext), MakeCa(dir, "other-ca"),
        MakeLeaf(dir, "other-ca", "other-client", client_ext)}) {
    if (!s.ok()) return s;
  }
  TestCerts certs;
  certs.ca_cert = dir + "/ca.crt";
  certs.server_cert = dir + "/server.crt";
  certs.server_key = dir + "/server.key";
  certs.client_cert = dir + "/client.crt";
  certs.client_key = dir + "/client.key";
  certs.other_ca_cert = dir + "/other-ca.crt";
  certs.other_client_cert = dir + "/other-client.crt";
  certs.other_client_key = dir + "/other-client.key";
  return certs;
}

}  // namespace wavekv::testing
