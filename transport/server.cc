#include "transport/server.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "transport/tls.h"

namespace wavekv {
namespace {

constexpr absl::Duration kDrainPollInterval = absl::Milliseconds(2);
constexpr absl::Duration kDrainFlushTime = absl::Milliseconds(200);

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::UnavailableError(
      absl::StrCat(what, " '", path, "': ", std::strerror(errno)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WaveKvServer>> WaveKvServer::Start(
    const ServerOptions& options, Logger& log) {
  RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<WaveKvServer> server(new WaveKvServer());
  server->options_ = options;
  server->log_ = &log;

  ASSIGN_OR_RETURN(server->data_dir_, DataDir::Open(options.data_dir));
  {
    // The engine's persistent tier is the data directory's database:
    // sessions come back from it here, SYNC/ASYNC appends go to it.
    EngineOptions engine_options = options.ToEngineOptions();
    engine_options.storage = server->data_dir_->storage();
    engine_options.on_recovery_log = [&log](const std::string& line) {
      log.Info("storage", {{"event", line}});
    };
    ASSIGN_OR_RETURN(server->engine_, Engine::Open(engine_options));
  }
  {
    // What --gpu resolved to: index builds and WAVE planning on this
    // device, or on the CPU (device -1).
    const int32_t device = server->engine_->Stats().gpu_device;
    log.Info("gpu", {{"option", options.gpu},
                     {"enabled", device >= 0},
                     {"device", static_cast<int64_t>(device)}});
  }
  if (options.tokens_file.empty()) {
    server->auth_ = Authenticator::Disabled();
  } else {
    ASSIGN_OR_RETURN(server->auth_,
                     Authenticator::FromTokensFile(options.tokens_file));
  }

  server->registry_ = std::make_shared<prometheus::Registry>();
  server->metrics_ = std::make_unique<ServerMetrics>(*server->registry_);
  if (server->auth_->enabled()) {
    // The tenants' quotas from the tokens file, now and on every reload.
    Engine* quota_engine = server->engine_.get();
    quota_engine->SetTenantQuotas(server->auth_->table()->quotas());
    server->tokens_reloader_ = std::make_unique<TokensFileReloader>(
        *server->auth_,
        [quota_engine](const TokenTable& table) {
          quota_engine->SetTenantQuotas(table.quotas());
        },
        server->registry_.get(), &log);
  }
  Engine* engine = server->engine_.get();
  ServerMetrics* metrics = server->metrics_.get();
  metrics->SetEngineStats(engine->Stats());
  server->exposed_metrics_ = std::make_shared<RefreshingCollectable>(
      server->registry_,
      [engine, metrics] { metrics->SetEngineStats(engine->Stats()); });
  if (!options.metrics_listen.empty()) {
    // prometheus-cpp (civetweb) reports a failed bind by throwing.
    try {
      server->exposer_ = std::make_unique<prometheus::Exposer>(
          options.metrics_listen, /*num_threads=*/2);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("metrics_listen: cannot listen on '",
                       options.metrics_listen, "': ", e.what()));
    }
    server->exposer_->RegisterCollectable(server->exposed_metrics_);
    const std::vector<int> ports = server->exposer_->GetListeningPorts();
    if (ports.empty()) {
      return absl::UnavailableError(absl::StrCat(
          "metrics_listen: no port bound for '", options.metrics_listen, "'"));
    }
    server->metrics_port_ = ports.front();
  }

  ServiceLimits limits;
  limits.max_receive_message_bytes =
      static_cast<uint32_t>(options.max_message_bytes);
  limits.max_send_message_bytes =
      static_cast<uint32_t>(options.max_message_bytes);
  limits.max_inline_kv_bytes = options.max_inline_kv_bytes;
  server->service_ = std::make_unique<WaveKvService>(
      *server->engine_, *server->auth_, *server->metrics_, limits, &log);

  EnableHealthAndReflection();
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                   MakeServerCredentials(options.ToTlsFiles()));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &server->grpc_port_);
  // Deliberate limits on both directions (validated to fit in an int).
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // Without this gRPC sets SO_REUSEPORT, and a second server could bind
  // the same port silently.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(server->service_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("listen: cannot listen on '", options.listen,
                     "' (address in use or not local?)"));
  }
  SetServing(*server->grpc_server_, true);
  server->metrics_->SetUp(true);
  return server;
}

WaveKvServer::~WaveKvServer() {
  if (grpc_server_ != nullptr) Shutdown(absl::ZeroDuration());
}

WaveKvServer::DrainSummary WaveKvServer::Shutdown(
    absl::Duration drain_timeout) {
  if (shut_down_) return summary_;
  shut_down_ = true;
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + drain_timeout;
  // Health first, so load balancers stop routing here; new wavekv RPCs get
  // UNAVAILABLE while the running ones finish.
  metrics_->SetUp(false);
  SetServing(*grpc_server_, false);
  service_->StartDraining();
  summary_.in_flight_at_start = service_->in_flight();
  while (service_->in_flight() > 0 && absl::Now() < deadline) {
    absl::SleepFor(kDrainPollInterval);
  }
  summary_.cancelled_in_flight = service_->in_flight() > 0;
  // A stream stalled on a client that does not read would otherwise keep
  // its handler blocked in Write until the connection dies.
  if (summary_.cancelled_in_flight) service_->CancelStreams();
  // gRPC's graceful Shutdown waits until every client connection is closed,
  // which an idle client may only notice seconds later. Give finished calls
  // a moment to flush their last messages, then cancel what is left and
  // close the connections.
  const absl::Duration flush =
      summary_.cancelled_in_flight
          ? absl::ZeroDuration()
          : std::min(kDrainFlushTime,
                     std::max(deadline - absl::Now(), absl::ZeroDuration()));
  grpc_server_->Shutdown(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(flush));
  grpc_server_->Wait();
  summary_.took = absl::Now() - start;
  summary_.rpcs_finished = service_->finished();
  summary_.engine = engine_->Stats();
  return summary_;
}

absl::Status WriteReadyFile(const std::string& path, int grpc_port,
                            int metrics_port, int64_t pid) {
  const std::string tmp = absl::StrCat(path, ".tmp.", pid);
  const std::string line =
      absl::StrCat("{\"grpc_port\":", grpc_port,
                   ",\"metrics_port\":", metrics_port, ",\"pid\":", pid, "}\n");
  const int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("ready_file: cannot create", tmp);
  size_t written = 0;
  while (written < line.size()) {
    const ssize_t n = ::write(fd, line.data() + written, line.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const absl::Status s = ErrnoError("ready_file: cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return s;
    }
    written += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const absl::Status sync_error =
      synced ? absl::OkStatus() : ErrnoError("ready_file: cannot sync", tmp);
  if (::close(fd) != 0 || !synced) {
    const absl::Status s =
        synced ? ErrnoError("ready_file: cannot close", tmp) : sync_error;
    ::unlink(tmp.c_str());
    return s;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const absl::Status s = ErrnoError("ready_file: cannot rename to", path);
    ::unlink(tmp.c_str());
    return s;
  }
  return absl::OkStatus();
}

}  // namespace wavekv
