// A real wavekv-server as a child process of a test, plus a minimal HTTP GET
// for its /metrics endpoint.
//
// ServerProcess::Start() forks and execs the server binary (from the test's
// runfiles) with `--listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0
// --data_dir=<fresh dir> --ready_file=<file>` plus the caller's flags, waits
// for the ready file (the contract in /tmp/wavekv-server-contract.md) and
// exposes the ports the server picked. The server's stderr (JSON log lines)
// goes to a file under $TEST_TMPDIR; failures quote its tail.
//
// Example:
//   ASSERT_OK_AND_ASSIGN(auto server, ServerProcess::Start({.name = "it"}));
//   auto channel = grpc::CreateChannel(server->grpc_address(), ...);
//   ...
//   ExitStatus st = server->Terminate().value();  // SIGTERM, wait
//   EXPECT_TRUE(st.exited && st.code == 0) << st.ToString();
//
// The child is SIGKILLed and reaped by the destructor if still running, and
// gets SIGKILL from the kernel if the thread that started it dies first
// (PR_SET_PDEATHSIG): start servers from the test's main thread.
//
// Not thread-safe: one thread drives a ServerProcess; grpc_address() and the
// other const accessors may be read from any thread.
#ifndef WAVEKV_TESTS_SERVER_PROCESS_H_
#define WAVEKV_TESTS_SERVER_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace wavekv::testing {

struct ServerProcessOptions {
  // Names the child's directory under $TEST_TMPDIR (made unique per start).
  std::string name = "server";
  // Extra flags, e.g. {"--memory_budget=4MiB", "--tokens_file=/x"}.
  std::vector<std::string> args;
  // Data directory; empty = a fresh "<dir>/data". Reusing one across starts
  // is how restart tests keep state.
  std::string data_dir;
  // Bound on the wait for the ready file.
  absl::Duration ready_timeout = absl::Seconds(30);
  // Pass --metrics_listen=127.0.0.1:0 (otherwise the flag is left to `args`).
  bool metrics = true;
};

// How a child process ended.
struct ExitStatus {
  bool exited = false;  // true: `code` is valid; false: killed by `signal`
  int code = -1;
  int signal = 0;

  bool ok() const { return exited && code == 0; }
  std::string ToString() const;  // "exit 0", "signal 9"
};

class ServerProcess {
 public:
  // Starts the server and waits until its ready file appears. Fails with
  // DeadlineExceeded (not ready in time) or Internal (exec failure, early
  // exit), the message quoting the last lines of the server's stderr.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const ServerProcessOptions& options);

  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  // SIGKILLs and reaps the child if it is still running.
  ~ServerProcess();

  pid_t pid() const { return pid_; }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string grpc_address() const;  // "127.0.0.1:<grpc_port>"
  const std::string& data_dir() const { return data_dir_; }
  const std::string& stderr_path() const { return stderr_path_; }

  // The last `max_bytes` of the server's stderr so far.
  std::string StderrTail(size_t max_bytes = 4096) const;

  // True while the child has not been reaped (and has not exited).
  bool Running();

  // Sends `signal` to the child (no wait). Fails if it was already reaped.
  absl::Status Signal(int signal);

  // Waits up to `timeout` for the child to exit and reaps it. Fails with
  // DeadlineExceeded if it is still running then (the child is left alone).
  absl::StatusOr<ExitStatus> Wait(absl::Duration timeout);

  // SIGTERM, then Wait(timeout). On timeout the child is SIGKILLed and
  // DeadlineExceeded returned (quoting the stderr tail).
  absl::StatusOr<ExitStatus> Terminate(
      absl::Duration timeout = absl::Seconds(20));

  // SIGKILL and reap. Returns how it ended (signal 9 unless it had exited).
  ExitStatus Kill();

 private:
  ServerProcess() = default;
  absl::Status WaitReady(absl::Duration timeout);

  pid_t pid_ = -1;
  bool reaped_ = false;
  ExitStatus exit_status_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::string dir_;
  std::string data_dir_;
  std::string ready_path_;
  std::string stderr_path_;
};

// Absolute path of //transport:wavekv-server in this test's runfiles
// ($TEST_SRCDIR/wavekv/transport/wavekv-server), or $WAVEKV_SERVER if set.
std::string ServerBinaryPath();

// A fresh, empty directory under $TEST_TMPDIR (or /tmp) named after `name`.
absl::StatusOr<std::string> MakeTempDir(const std::string& name);

// Writes `contents` to `path` (truncating).
absl::Status WriteFile(const std::string& path, const std::string& contents);

// HTTP/1.0 GET of http://127.0.0.1:<port><path> over a raw socket. Returns
// the body of a 200 answer; any other status line is an error quoting it.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path,
                                    absl::Duration timeout = absl::Seconds(5));

}  // namespace wavekv::testing

#endif  // WAVEKV_TESTS_SERVER_PROCESS_H_
