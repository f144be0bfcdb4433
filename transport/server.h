// WaveKvServer: one running wavekv server — data directory, engine,
// authenticator, metrics endpoint and the gRPC server with WaveKvService,
// health and reflection — assembled from ServerOptions. server_main.cc is
// the process around it (flags, signals, ready file); tests can run it in
// process.
//
// Example:
//   ASSIGN_OR_RETURN(auto server, WaveKvServer::Start(options, log));
//   ... wait for SIGTERM ...
//   WaveKvServer::DrainSummary s = server->Shutdown(absl::Seconds(10));
//
// Thread-safe: accessors may be called from any thread; Shutdown from one.
#ifndef WAVEKV_TRANSPORT_SERVER_H_
#define WAVEKV_TRANSPORT_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "kvstore/engine.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "transport/auth.h"
#include "transport/auth_reloader.h"
#include "transport/data_dir.h"
#include "transport/log.h"
#include "transport/metrics.h"
#include "transport/server_options.h"
#include "transport/service.h"

namespace wavekv {

class WaveKvServer {
 public:
  // Validates `options`, opens the data dir (failing fast if another server
  // holds it), the engine and the tokens file, then starts the metrics
  // endpoint and the gRPC server. `log` must outlive the server. Errors
  // name the option: "listen: cannot listen on ...", "data_dir: ...".
  static absl::StatusOr<std::unique_ptr<WaveKvServer>> Start(
      const ServerOptions& options, Logger& log);

  // Shuts down with no drain time if Shutdown was not called.
  ~WaveKvServer();

  WaveKvServer(const WaveKvServer&) = delete;
  WaveKvServer& operator=(const WaveKvServer&) = delete;

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }  // 0 when disabled
  const ServerRecord& record() const { return data_dir_->record(); }
  Engine& engine() { return *engine_; }

  struct DrainSummary {
    absl::Duration took;
    int64_t in_flight_at_start = 0;
    // True if RPCs were still running at the deadline and were cancelled.
    bool cancelled_in_flight = false;
    uint64_t rpcs_finished = 0;  // since start
    EngineStats engine;          // at the end
  };

  // Health -> NOT_SERVING, wavekv_up -> 0, new wavekv RPCs -> UNAVAILABLE;
  // lets in-flight ones finish for up to `drain_timeout`, then cancels the
  // rest, closes every connection and waits for the handlers. Idempotent.
  DrainSummary Shutdown(absl::Duration drain_timeout);

 private:
  WaveKvServer() = default;

  ServerOptions options_;
  Logger* log_ = nullptr;
  // Declaration order is teardown order, reversed: the gRPC server goes
  // first, the data directory (and its lock) last.
  std::unique_ptr<DataDir> data_dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Authenticator> auth_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<ServerMetrics> metrics_;
  // Re-reads the tokens file (null when authentication is disabled).
  std::unique_ptr<TokensFileReloader> tokens_reloader_;
  std::shared_ptr<RefreshingCollectable> exposed_metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<WaveKvService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  bool shut_down_ = false;
  DrainSummary summary_;
};

// Writes `{"grpc_port":N,"metrics_port":M,"pid":P}\n` to `path` atomically
// (a temporary file in the same directory, fsync, rename).
absl::Status WriteReadyFile(const std::string& path, int grpc_port,
                            int metrics_port, int64_t pid);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_SERVER_H_
