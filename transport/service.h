// WaveKvService: the gRPC face of the engine (wavekv.v1.WaveKv). Thin: each
// handler authenticates the call (tenant from the `authorization`
// metadata), converts the request (transport/convert.h), calls the Engine,
// converts the result back and records metrics. State lives in the engine.
//
// Messages larger than the server's send limit are refused with
// RESOURCE_EXHAUSTED naming the limit (Retrieve with include_kv: use
// FetchClusters instead) rather than failing inside gRPC.
//
// Example (see transport/server.cc for the full setup):
//   EnableHealthAndReflection();
//   WaveKvService service(*engine, *auth, metrics, limits, &log);
//   grpc::ServerBuilder builder;
//   builder.RegisterService(&service);
//   ...
//   SetServing(*server, true);
//
// Thread-safe: handlers run concurrently on gRPC's threads.
#ifndef WAVEKV_TRANSPORT_SERVICE_H_
#define WAVEKV_TRANSPORT_SERVICE_H_

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "kvstore/engine.h"
#include "proto/wavekv/v1/wavekv.grpc.pb.h"
#include "transport/auth.h"
#include "transport/log.h"
#include "transport/metrics.h"

namespace wavekv {

// Limits the service reports (GetTransportInfo) and enforces on responses.
struct ServiceLimits {
  // gRPC message limits the server was built with, in bytes.
  uint32_t max_receive_message_bytes = 64u << 20;
  uint32_t max_send_message_bytes = 64u << 20;
  // Retrieve include_kv limit (the engine enforces it; reported here).
  uint64_t max_inline_kv_bytes = 16ull << 20;
};

// FetchClusters' default chunk size (max_chunk_bytes = 0), in bytes.
inline constexpr uint32_t kDefaultFetchChunkBytes = 1u << 20;
// Largest max_chunk_bytes the proto allows, in bytes.
inline constexpr uint32_t kMaxFetchChunkBytes = 4u << 20;

class WaveKvService final : public v1::WaveKv::Service {
 public:
  // `engine`, `auth`, `metrics` and `log` must outlive the service; `log`
  // may be null (no logging).
  WaveKvService(Engine& engine, const Authenticator& auth,
                ServerMetrics& metrics, ServiceLimits limits, Logger* log);

  grpc::Status CreateSession(grpc::ServerContext* ctx,
                             const v1::CreateSessionRequest* request,
                             v1::CreateSessionResponse* response) override;
  grpc::Status Append(grpc::ServerContext* ctx,
                      const v1::AppendRequest* request,
                      v1::AppendResponse* response) override;
  grpc::Status Retrieve(grpc::ServerContext* ctx,
                        const v1::RetrieveRequest* request,
                        v1::RetrieveResponse* response) override;
  grpc::Status FetchClusters(
      grpc::ServerContext* ctx, const v1::FetchClustersRequest* request,
      grpc::ServerWriter<v1::ClusterChunk>* writer) override;
  grpc::Status GetTransportInfo(
      grpc::ServerContext* ctx, const v1::GetTransportInfoRequest* request,
      v1::GetTransportInfoResponse* response) override;
  grpc::Status GetSession(grpc::ServerContext* ctx,
                          const v1::GetSessionRequest* request,
                          v1::SessionInfo* response) override;
  grpc::Status ListSessions(grpc::ServerContext* ctx,
                            const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status CloseSession(grpc::ServerContext* ctx,
                            const v1::CloseSessionRequest* request,
                            v1::CloseSessionResponse* response) override;

  // From now on new wavekv RPCs fail with UNAVAILABLE "server: shutting
  // down" while running ones continue (health and reflection stay open).
  // Used by the drain before gRPC's Shutdown, which would otherwise wait
  // for idle client connections to close.
  void StartDraining();
  bool draining() const { return draining_.load(); }

  // Cancels every running FetchClusters stream (ServerContext::TryCancel),
  // so a handler blocked on a stalled client's flow control returns. Used
  // at the end of the drain, before gRPC's Shutdown.
  void CancelStreams();

  // RPCs running now, and finished since start (any status).
  int64_t in_flight() const { return in_flight_.load(); }
  uint64_t finished() const { return finished_.load(); }

 private:
  // Runs `body(tenant)` (returning absl::Status) for one unary RPC with
  // authentication, the response size check and metrics.
  template <typename Body>
  grpc::Status RunUnary(RpcMethod method, grpc::ServerContext* ctx,
                        const google::protobuf::Message& request,
                        const google::protobuf::Message& response, Body&& body);

  // UNAVAILABLE while draining; otherwise the caller's tenant (or
  // UNAUTHENTICATED; PERMISSION_DENIED for a read-only token on a method
  // that writes: CreateSession, Append, CloseSession).
  absl::StatusOr<std::string> Admit(grpc::ServerContext* ctx,
                                    RpcMethod method) const;

  // Lists a streaming handler's context in streams_ for its lifetime.
  class RegisteredStream {
   public:
    RegisteredStream(WaveKvService& service, grpc::ServerContext* ctx);
    ~RegisteredStream();

   private:
    WaveKvService& service_;
    grpc::ServerContext* const ctx_;
  };
  // Records metrics, logs server-side failures, returns the wire status.
  grpc::Status Finish(RpcMethod method, absl::Time start,
                      const absl::Status& status, uint64_t received_bytes,
                      uint64_t sent_bytes);

  Engine& engine_;
  const Authenticator& auth_;
  ServerMetrics& metrics_;
  const ServiceLimits limits_;
  Logger* const log_;
  std::atomic<int64_t> in_flight_{0};
  std::atomic<uint64_t> finished_{0};
  std::atomic<bool> draining_{false};

  // Contexts of running FetchClusters handlers; an entry stays valid until
  // its handler removes it (under streams_mu_).
  absl::Mutex streams_mu_;
  absl::flat_hash_set<grpc::ServerContext*> streams_
      ABSL_GUARDED_BY(streams_mu_);
};

// Enables gRPC's default health service and server reflection for every
// ServerBuilder created afterwards. Call once, before building the server.
void EnableHealthAndReflection();

// Health status of the overall server ("") and of "wavekv.v1.WaveKv".
// REQUIRES: the server was built after EnableHealthAndReflection().
void SetServing(grpc::Server& server, bool serving);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_SERVICE_H_
