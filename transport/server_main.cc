// wavekv-server: the process around WaveKvServer. Flags per the process
// contract (absl flags, `--config=FILE` applied first so the command line
// overrides it), JSON logs on stderr, ready file, and a graceful drain on
// SIGTERM / SIGINT: the signal handler only writes to a pipe; the main
// thread reads it and shuts the server down with the drain timeout.
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "grpc/grpc.h"
#include "transport/byte_size.h"
#include "transport/config_file.h"
#include "transport/log.h"
#include "transport/server.h"
#include "transport/server_options.h"

namespace {
const wavekv::ServerOptions kDefaults;
}  // namespace

ABSL_FLAG(std::string, listen, kDefaults.listen,
          "gRPC address HOST:PORT; port 0 picks a free port");
ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_listen,
          "Prometheus /metrics address HOST:PORT; port 0 picks; empty "
          "disables");
ABSL_FLAG(std::string, data_dir, kDefaults.data_dir,
          "data directory (created if missing; locked)");
ABSL_FLAG(std::string, config, "",
          "file of `name = value` lines (flag names); flags override it");
ABSL_FLAG(wavekv::ByteSize, memory_budget,
          wavekv::ByteSize{kDefaults.memory_budget_bytes},
          "host memory budget for K/V, e.g. 8GiB, 512MiB or bytes");
ABSL_FLAG(uint32_t, max_sessions, kDefaults.max_sessions,
          "sessions alive at once, all tenants");
ABSL_FLAG(uint32_t, max_sessions_per_tenant, kDefaults.max_sessions_per_tenant,
          "sessions alive at once per tenant");
ABSL_FLAG(uint64_t, max_tokens_per_session, kDefaults.max_tokens_per_session,
          "default and maximum tokens per layer of a session");
ABSL_FLAG(wavekv::ByteSize, max_message_bytes,
          wavekv::ByteSize{kDefaults.max_message_bytes},
          "gRPC receive/send message limit in bytes");
ABSL_FLAG(wavekv::ByteSize, max_inline_kv_bytes,
          wavekv::ByteSize{kDefaults.max_inline_kv_bytes},
          "Retrieve include_kv limit in bytes");
ABSL_FLAG(uint32_t, max_batch_sessions, kDefaults.max_batch_sessions,
          "sessions per Retrieve call");
ABSL_FLAG(std::string, gpu, kDefaults.gpu,
          "engine GPU backend: off, auto (device 0 if built with CUDA and a "
          "GPU is usable) or a device number");
ABSL_FLAG(std::string, tokens_file, "",
          "`<token> <tenant> [max_sessions=N] [max_bytes=SIZE] "
          "[max_tokens=N]` lines, re-read on change; empty disables "
          "authentication");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain: serve gRPC over TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require client certificates from it (mTLS)");
ABSL_FLAG(std::string, ready_file, "",
          "written atomically with {\"grpc_port\",\"metrics_port\",\"pid\"} "
          "once listening");
ABSL_FLAG(int64_t, drain_timeout_ms, kDefaults.drain_timeout_ms,
          "on SIGTERM/SIGINT, time in-flight RPCs get before cancellation");

namespace wavekv {
namespace {

// The settings a config file may hold: the flags above except `config`.
const absl::flat_hash_set<std::string>& ConfigNames() {
  static const auto* const names = new absl::flat_hash_set<std::string>{
      "listen",
      "metrics_listen",
      "data_dir",
      "memory_budget",
      "max_sessions",
      "max_sessions_per_tenant",
      "max_tokens_per_session",
      "max_message_bytes",
      "max_inline_kv_bytes",
      "max_batch_sessions",
      "gpu",
      "tokens_file",
      "tls_cert",
      "tls_key",
      "tls_client_ca",
      "ready_file",
      "drain_timeout_ms",
  };
  return *names;
}

ServerOptions OptionsFromFlags() {
  ServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.tokens_file = absl::GetFlag(FLAGS_tokens_file);
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  o.ready_file = absl::GetFlag(FLAGS_ready_file);
  o.memory_budget_bytes = absl::GetFlag(FLAGS_memory_budget).bytes;
  o.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  o.max_sessions_per_tenant = absl::GetFlag(FLAGS_max_sessions_per_tenant);
  o.max_tokens_per_session = absl::GetFlag(FLAGS_max_tokens_per_session);
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes).bytes;
  o.max_inline_kv_bytes = absl::GetFlag(FLAGS_max_inline_kv_bytes).bytes;
  o.max_batch_sessions = absl::GetFlag(FLAGS_max_batch_sessions);
  o.gpu = absl::GetFlag(FLAGS_gpu);
  o.drain_timeout_ms = absl::GetFlag(FLAGS_drain_timeout_ms);
  return o;
}

// Write end of the signal pipe; the handler's only state.
std::atomic<int> g_signal_fd{-1};

void OnSignal(int signo) {
  const int saved_errno = errno;
  const int fd = g_signal_fd.load();
  const unsigned char byte = static_cast<unsigned char>(signo);
  if (fd >= 0) (void)!::write(fd, &byte, 1);
  errno = saved_errno;
}

// Installs SIGTERM/SIGINT handlers writing to a pipe; returns its read end.
int InstallSignalPipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
  g_signal_fd.store(fds[1]);
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  // Blocking reads from here on; the handler's end stays non-blocking.
  ::fcntl(fds[0], F_SETFL, ::fcntl(fds[0], F_GETFL) & ~O_NONBLOCK);
  return fds[0];
}

// Blocks until a signal arrives; returns its number.
int WaitForSignal(int read_fd) {
  unsigned char byte = 0;
  while (true) {
    const ssize_t n = ::read(read_fd, &byte, 1);
    if (n == 1) return byte;
    if (n < 0 && errno == EINTR) continue;
    return 0;  // pipe broken: treat as a request to stop
  }
}

const char* SignalName(int signo) {
  switch (signo) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    default:
      return "unknown";
  }
}

int Fail(Logger& log, std::string_view msg, const absl::Status& status) {
  log.Error(msg, {{"code", absl::StatusCodeToString(status.code())},
                  {"error", status.message()}});
  return 1;
}

int Run(int argc, char** argv) {
  // A process-lifetime reference to the gRPC library: otherwise the
  // server's destructor drops the last one, and the final grpc_shutdown
  // joins executor threads that may sit in a poll for ~10 s. Exit reclaims
  // everything.
  grpc_init();
  // glibc keeps one malloc arena per thread that ever allocated: the
  // transient whole-session buffers of spill/restore and RocksDB reads
  // then stay in ~400 MiB of per-thread arenas (bench/RESULTS.md, load
  // with a small budget: RSS 727 -> 374 MiB with 2 arenas, and faster).
  // MALLOC_ARENA_MAX in the environment still wins.
  if (getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
  Logger log(StderrLogSink());
  absl::SetProgramUsageMessage(
      "wavekv-server --listen=HOST:PORT [--config=FILE] [flags]: the wavekv "
      "KV-cache vector store (gRPC service wavekv.v1.WaveKv)");

  // The config file first; flags parsed afterwards override it.
  const std::string config = FindConfigFlag(argc, argv);
  if (!config.empty()) {
    absl::StatusOr<std::vector<ConfigEntry>> entries =
        ReadConfigFile(config, ConfigNames());
    if (!entries.ok()) return Fail(log, "bad config", entries.status());
    if (absl::Status s = ApplyConfigToFlags(*entries, config); !s.ok()) {
      return Fail(log, "bad config", s);
    }
  }
  absl::ParseCommandLine(argc, argv);
  const ServerOptions options = OptionsFromFlags();
  if (absl::Status s = options.Validate(); !s.ok()) {
    return Fail(log, "bad config", s);
  }
  log.Info("config",
           {{"listen", options.listen},
            {"metrics_listen", options.metrics_listen},
            {"data_dir", options.data_dir},
            {"config", config},
            {"memory_budget", FormatByteSize(options.memory_budget_bytes)},
            {"max_sessions", options.max_sessions},
            {"max_sessions_per_tenant", options.max_sessions_per_tenant},
            {"max_tokens_per_session", options.max_tokens_per_session},
            {"max_message_bytes", options.max_message_bytes},
            {"max_inline_kv_bytes", options.max_inline_kv_bytes},
            {"max_batch_sessions", options.max_batch_sessions},
            {"gpu", options.gpu},
            {"tokens_file", options.tokens_file},
            {"auth", !options.tokens_file.empty()},
            {"tls_cert", options.tls_cert},
            {"tls_key", options.tls_key},
            {"tls_client_ca", options.tls_client_ca},
            {"tls", !options.tls_cert.empty()},
            {"mtls", !options.tls_client_ca.empty()},
            {"ready_file", options.ready_file},
            {"drain_timeout_ms", options.drain_timeout_ms}});

  // A stale ready file from an earlier run must not look like this one.
  if (!options.ready_file.empty()) ::unlink(options.ready_file.c_str());
  const int signal_fd = InstallSignalPipe();
  if (signal_fd < 0) {
    return Fail(log, "cannot install signal handlers",
                absl::InternalError(std::strerror(errno)));
  }

  absl::StatusOr<std::unique_ptr<WaveKvServer>> server =
      WaveKvServer::Start(options, log);
  if (!server.ok()) return Fail(log, "cannot start", server.status());
  const ServerRecord& record = (*server)->record();
  log.Info("listening", {{"grpc", options.listen},
                         {"grpc_port", (*server)->grpc_port()},
                         {"metrics", options.metrics_listen},
                         {"metrics_port", (*server)->metrics_port()},
                         {"server_id", record.server_id},
                         {"start_count", record.start_count},
                         {"pid", static_cast<int64_t>(::getpid())}});
  if (!options.ready_file.empty()) {
    absl::Status s = WriteReadyFile(options.ready_file, (*server)->grpc_port(),
                                    (*server)->metrics_port(), ::getpid());
    if (!s.ok()) {
      (*server)->Shutdown(absl::ZeroDuration());
      return Fail(log, "cannot write ready file", s);
    }
  }

  const int signo = WaitForSignal(signal_fd);
  const absl::Duration drain = absl::Milliseconds(options.drain_timeout_ms);
  log.Info("draining", {{"signal", SignalName(signo)},
                        {"drain_timeout_ms", options.drain_timeout_ms}});
  if (!options.ready_file.empty()) ::unlink(options.ready_file.c_str());
  const WaveKvServer::DrainSummary summary = (*server)->Shutdown(drain);
  log.Info("stopped", {{"drain_ms", absl::ToInt64Milliseconds(summary.took)},
                       {"in_flight_at_signal", summary.in_flight_at_start},
                       {"cancelled_in_flight", summary.cancelled_in_flight},
                       {"rpcs", summary.rpcs_finished},
                       {"sessions", summary.engine.sessions},
                       {"tokens", summary.engine.tokens},
                       {"memory_bytes", summary.engine.memory_bytes}});
  server->reset();
  return 0;
}

}  // namespace
}  // namespace wavekv

int main(int argc, char** argv) { return wavekv::Run(argc, argv); }
