#include "transport/service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "transport/convert.h"
#include "transport/status.h"

namespace wavekv {
namespace {

constexpr char kServiceName[] = "wavekv.v1.WaveKv";

// Counts a handler as in flight for its whole duration.
class InFlight {
 public:
  explicit InFlight(std::atomic<int64_t>& counter) : counter_(counter) {
    counter_.fetch_add(1);
  }
  ~InFlight() { counter_.fetch_sub(1); }

 private:
  std::atomic<int64_t>& counter_;
};

// Server-side failures worth a log line; caller errors are not.
bool IsServerFault(absl::StatusCode code) {
  return code == absl::StatusCode::kInternal ||
         code == absl::StatusCode::kUnknown ||
         code == absl::StatusCode::kDataLoss;
}

// Upper bound on a ClusterChunk's serialized size for K+V of `chunk_bytes`:
// positions add at most 10 bytes per slot, and a slot holds at least 64
// bytes of K+V (head_dim >= 16, 2-byte dtype), plus field tags.
uint64_t MaxChunkMessageBytes(uint64_t chunk_bytes) {
  return chunk_bytes + chunk_bytes / 64 * 10 + 256;
}

}  // namespace

WaveKvService::WaveKvService(Engine& engine, const Authenticator& auth,
                             ServerMetrics& metrics, ServiceLimits limits,
                             Logger* log)
    : engine_(engine),
      auth_(auth),
      metrics_(metrics),
      limits_(limits),
      log_(log) {}

void WaveKvService::StartDraining() { draining_.store(true); }

void WaveKvService::CancelStreams() {
  absl::MutexLock lock(&streams_mu_);
  for (grpc::ServerContext* ctx : streams_) ctx->TryCancel();
}

WaveKvService::RegisteredStream::RegisteredStream(WaveKvService& service,
                                                  grpc::ServerContext* ctx)
    : service_(service), ctx_(ctx) {
  absl::MutexLock lock(&service_.streams_mu_);
  service_.streams_.insert(ctx_);
}

WaveKvService::RegisteredStream::~RegisteredStream() {
  absl::MutexLock lock(&service_.streams_mu_);
  service_.streams_.erase(ctx_);
}

absl::StatusOr<std::string> WaveKvService::Admit(grpc::ServerContext* ctx,
                                                 RpcMethod method) const {
  // The caller is already counted in in_flight_ (seq_cst), so a drainer
  // that sets draining_ and then sees in_flight_ == 0 has no call to miss.
  if (draining_.load()) {
    return absl::UnavailableError("server: shutting down; retry elsewhere");
  }
  std::optional<absl::string_view> authorization;
  const auto& metadata = ctx->client_metadata();
  if (const auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization = absl::string_view(it->second.data(), it->second.size());
  }
  const bool writes = method == RpcMethod::kCreateSession ||
                      method == RpcMethod::kAppend ||
                      method == RpcMethod::kCloseSession;
  return auth_.Authorize(authorization, writes ? Access::kWrite : Access::kRead,
                         RpcMethodName(method));
}

grpc::Status WaveKvService::Finish(RpcMethod method, absl::Time start,
                                   const absl::Status& status,
                                   uint64_t received_bytes,
                                   uint64_t sent_bytes) {
  metrics_.RecordRpc(method, status.code(), absl::Now() - start, received_bytes,
                     sent_bytes);
  finished_.fetch_add(1);
  if (log_ != nullptr && IsServerFault(status.code())) {
    log_->Error("rpc failed", {{"method", RpcMethodName(method)},
                               {"code", StatusCodeName(status.code())},
                               {"error", status.message()}});
  }
  return ToGrpcStatus(status);
}

template <typename Body>
grpc::Status WaveKvService::RunUnary(RpcMethod method, grpc::ServerContext* ctx,
                                     const google::protobuf::Message& request,
                                     const google::protobuf::Message& response,
                                     Body&& body) {
  InFlight in_flight(in_flight_);
  const absl::Time start = absl::Now();
  const uint64_t received = request.ByteSizeLong();
  absl::Status status;
  uint64_t sent = 0;
  absl::StatusOr<std::string> tenant = Admit(ctx, method);
  if (!tenant.ok()) {
    status = tenant.status();
  } else {
    status = body(*tenant);
  }
  if (status.ok()) {
    sent = response.ByteSizeLong();
    if (sent > limits_.max_send_message_bytes) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "response: ", sent, " bytes exceed the server's message limit of ",
          limits_.max_send_message_bytes,
          " bytes (Retrieve: drop include_kv and use FetchClusters)"));
      sent = 0;
    }
  }
  return Finish(method, start, status, received, sent);
}

grpc::Status WaveKvService::CreateSession(
    grpc::ServerContext* ctx, const v1::CreateSessionRequest* request,
    v1::CreateSessionResponse* response) {
  return RunUnary(RpcMethod::kCreateSession, ctx, *request, *response,
                  [&](const std::string& tenant) -> absl::Status {
                    absl::StatusOr<SessionOptions> options =
                        SessionOptionsFromProto(*request);
                    if (!options.ok()) return options.status();
                    absl::StatusOr<SessionInfo> info =
                        engine_.CreateSession(tenant, *options);
                    if (!info.ok()) return info.status();
                    SessionInfoToProto(*info, response->mutable_session());
                    return absl::OkStatus();
                  });
}

grpc::Status WaveKvService::Append(grpc::ServerContext* ctx,
                                   const v1::AppendRequest* request,
                                   v1::AppendResponse* response) {
  return RunUnary(
      RpcMethod::kAppend, ctx, *request, *response,
      [&](const std::string& tenant) -> absl::Status {
        absl::StatusOr<std::optional<Durability>> durability =
            DurabilityFromProto(request->durability(), "durability");
        if (!durability.ok()) return durability.status();
        const std::vector<LayerAppend> layers = LayerAppendsFromProto(*request);
        absl::StatusOr<AppendResult> result =
            engine_.Append(tenant, request->session_id(), layers, *durability);
        if (!result.ok()) return result.status();
        AppendResultToProto(*result, response);
        return absl::OkStatus();
      });
}

grpc::Status WaveKvService::Retrieve(grpc::ServerContext* ctx,
                                     const v1::RetrieveRequest* request,
                                     v1::RetrieveResponse* response) {
  return RunUnary(
      RpcMethod::kRetrieve, ctx, *request, *response,
      [&](const std::string& tenant) -> absl::Status {
        absl::StatusOr<RetrieveBatch> batch = RetrieveBatchFromProto(*request);
        if (!batch.ok()) return batch.status();
        absl::StatusOr<std::vector<SessionResult>> results =
            engine_.Retrieve(tenant, batch->options, batch->queries);
        if (!results.ok()) return results.status();
        response->mutable_results()->Reserve(static_cast<int>(results->size()));
        for (SessionResult& result : *results) {
          SessionResultToProto(std::move(result), response->add_results());
        }
        return absl::OkStatus();
      });
}

grpc::Status WaveKvService::FetchClusters(
    grpc::ServerContext* ctx, const v1::FetchClustersRequest* request,
    grpc::ServerWriter<v1::ClusterChunk>* writer) {
  InFlight in_flight(in_flight_);
  const absl::Time start = absl::Now();
  const uint64_t received = request->ByteSizeLong();
  uint64_t sent = 0;
  absl::StatusOr<std::string> tenant = Admit(ctx, RpcMethod::kFetchClusters);
  if (!tenant.ok()) {
    return Finish(RpcMethod::kFetchClusters, start, tenant.status(), received,
                  0);
  }
  // Chunks must fit the send limit. Out-of-range sizes (the proto allows
  // 4 KiB..4 MiB) are left to the engine's InvalidArgument.
  const uint64_t chunk_bytes = request->max_chunk_bytes() == 0
                                   ? kDefaultFetchChunkBytes
                                   : request->max_chunk_bytes();
  if (chunk_bytes <= kMaxFetchChunkBytes &&
      MaxChunkMessageBytes(chunk_bytes) > limits_.max_send_message_bytes) {
    return Finish(
        RpcMethod::kFetchClusters, start,
        absl::ResourceExhaustedError(absl::StrCat(
            "max_chunk_bytes: chunks of ", chunk_bytes,
            " bytes may exceed the server's message limit of ",
            limits_.max_send_message_bytes, " bytes; ask for smaller chunks")),
        received, 0);
  }
  const FetchRequest fetch = FetchRequestFromProto(*request);
  RegisteredStream registered(*this, ctx);
  bool write_failed = false;
  uint64_t oversized = 0;
  // The engine holds no session lock while the sink runs (engine.h).
  absl::Status status =
      engine_.FetchSlots(*tenant, fetch, [&](SlotChunk&& chunk) -> bool {
        if (ctx->IsCancelled()) return false;
        v1::ClusterChunk message;
        SlotChunkToProto(std::move(chunk), &message);
        const uint64_t bytes = message.ByteSizeLong();
        if (bytes > limits_.max_send_message_bytes) {
          oversized = bytes;
          return false;
        }
        if (!writer->Write(message)) {
          write_failed = true;
          return false;
        }
        sent += bytes;
        return true;
      });
  if (oversized != 0) {
    status = absl::ResourceExhaustedError(
        absl::StrCat("max_chunk_bytes: a chunk of ", oversized,
                     " bytes exceeds the server's message limit of ",
                     limits_.max_send_message_bytes, " bytes"));
  } else if (status.code() == absl::StatusCode::kCancelled) {
    status = absl::CancelledError(
        write_failed ? "FetchClusters: the client stopped reading the stream"
                     : "FetchClusters: cancelled by the client or shutdown");
  }
  return Finish(RpcMethod::kFetchClusters, start, status, received, sent);
}

grpc::Status WaveKvService::GetTransportInfo(
    grpc::ServerContext* ctx, const v1::GetTransportInfoRequest* request,
    v1::GetTransportInfoResponse* response) {
  return RunUnary(
      RpcMethod::kGetTransportInfo, ctx, *request, *response,
      [&](const std::string& tenant) -> absl::Status {
        if (!request->session_id().empty()) {
          // Per-session keys come with UCX; until then only check access.
          absl::StatusOr<SessionInfo> info =
              engine_.GetSession(tenant, request->session_id());
          if (!info.ok()) return info.status();
        }
        response->add_transports("grpc-stream");
        response->set_max_receive_message_bytes(
            limits_.max_receive_message_bytes);
        response->set_max_send_message_bytes(limits_.max_send_message_bytes);
        response->set_max_inline_kv_bytes(limits_.max_inline_kv_bytes);
        response->clear_ucx_worker_address();
        return absl::OkStatus();
      });
}

grpc::Status WaveKvService::GetSession(grpc::ServerContext* ctx,
                                       const v1::GetSessionRequest* request,
                                       v1::SessionInfo* response) {
  return RunUnary(RpcMethod::kGetSession, ctx, *request, *response,
                  [&](const std::string& tenant) -> absl::Status {
                    absl::StatusOr<SessionInfo> info =
                        engine_.GetSession(tenant, request->session_id());
                    if (!info.ok()) return info.status();
                    SessionInfoToProto(*info, response);
                    return absl::OkStatus();
                  });
}

grpc::Status WaveKvService::ListSessions(grpc::ServerContext* ctx,
                                         const v1::ListSessionsRequest* request,
                                         v1::ListSessionsResponse* response) {
  return RunUnary(RpcMethod::kListSessions, ctx, *request, *response,
                  [&](const std::string& tenant) -> absl::Status {
                    absl::StatusOr<SessionPage> page = engine_.ListSessions(
                        tenant, request->page_size(), request->page_token());
                    if (!page.ok()) return page.status();
                    SessionPageToProto(*page, response);
                    return absl::OkStatus();
                  });
}

grpc::Status WaveKvService::CloseSession(grpc::ServerContext* ctx,
                                         const v1::CloseSessionRequest* request,
                                         v1::CloseSessionResponse* response) {
  return RunUnary(RpcMethod::kCloseSession, ctx, *request, *response,
                  [&](const std::string& tenant) -> absl::Status {
                    absl::StatusOr<uint64_t> freed =
                        engine_.CloseSession(tenant, request->session_id());
                    if (!freed.ok()) return freed.status();
                    response->set_freed_bytes(*freed);
                    return absl::OkStatus();
                  });
}

void EnableHealthAndReflection() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
}

void SetServing(grpc::Server& server, bool serving) {
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  health->SetServingStatus(kServiceName, serving);
}

}  // namespace wavekv
