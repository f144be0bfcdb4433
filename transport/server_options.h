// ServerOptions: everything wavekv-server is configured with (flags and
// config file, see server_main.cc), with the defaults of the process
// contract, and its validation.
#ifndef WAVEKV_TRANSPORT_SERVER_OPTIONS_H_
#define WAVEKV_TRANSPORT_SERVER_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kvstore/engine.h"
#include "transport/tls.h"

namespace wavekv {

struct ServerOptions {
  // gRPC address HOST:PORT; port 0 picks a free port.
  std::string listen = "127.0.0.1:7070";
  // Prometheus /metrics address HOST:PORT; port 0 picks; empty = none.
  std::string metrics_listen = "127.0.0.1:9464";
  // Created if missing; holds the server's RocksDB (and its lock).
  std::string data_dir = "./wavekv-data";
  // `<token> <tenant> [max_sessions=N max_bytes=SIZE max_tokens=N]` lines
  // (transport/auth.h), re-read when it changes; empty = authentication
  // disabled (every call acts as tenant "default").
  std::string tokens_file;
  // TLS of the gRPC listener (transport/tls.h): PEM certificate chain and
  // key (both or neither); with tls_client_ca, clients must present a
  // certificate from that CA (mTLS). /metrics stays plain HTTP.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // If set, {"grpc_port":N,"metrics_port":M,"pid":P} is written here
  // (tmp + rename) once both listeners are up.
  std::string ready_file;
  // Host memory for K/V of all sessions, in bytes.
  uint64_t memory_budget_bytes = 8ull << 30;
  uint32_t max_sessions = 4096;
  uint32_t max_sessions_per_tenant = 1024;
  uint64_t max_tokens_per_session = 4ull << 20;  // per layer
  // gRPC receive and send limit, in bytes. 64 KiB .. 2 GiB - 1.
  uint64_t max_message_bytes = 64ull << 20;
  // Retrieve include_kv limit, in bytes; <= max_message_bytes.
  uint64_t max_inline_kv_bytes = 16ull << 20;
  // Sessions per Retrieve call.
  uint32_t max_batch_sessions = 256;
  // On SIGTERM/SIGINT, how long in-flight RPCs may run before they are
  // cancelled. 0 .. 3600000.
  int64_t drain_timeout_ms = 10000;
  // The engine's GPU backend (--gpu): "off", "auto" (device 0 when the
  // binary has CUDA and a GPU is usable, the CPU otherwise) or a device
  // number (Start fails if it cannot be used).
  std::string gpu = "auto";

  // InvalidArgument naming the flag and the value; never clamps.
  absl::Status Validate() const;
  EngineOptions ToEngineOptions() const;
  ServerTlsFiles ToTlsFiles() const;
};

// EngineOptions::gpu_device for a --gpu value: -1 for "off", -2 for
// "auto", N for a device number, -3 for anything else (Validate rejects it).
int32_t GpuDeviceOption(absl::string_view gpu);

// Checks "HOST:PORT" (HOST may be a name, IPv4, or [IPv6]; PORT 0..65535).
// InvalidArgument "FIELD: ..." otherwise.
absl::Status ValidateHostPort(absl::string_view field,
                              absl::string_view address);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_SERVER_OPTIONS_H_
