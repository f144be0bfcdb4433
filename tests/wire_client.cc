#include "tests/wire_client.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"

namespace wavekv::testing {

std::shared_ptr<grpc::Channel> Connect(const std::string& address,
                                       absl::Duration connect_timeout) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // A fresh connection per channel: tests that restart servers or count
  // per-connection effects must not share subchannels.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args);
  channel->WaitForConnected(absl::ToChronoTime(absl::Now() + connect_timeout));
  return channel;
}

void PrepareContext(grpc::ClientContext* ctx, const std::string& token,
                    absl::Duration timeout) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

std::string CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return absl::StrCat("CODE_", static_cast<int>(code));
  }
}

std::string StatusText(const grpc::Status& status) {
  if (status.ok()) return "OK";
  return absl::StrCat(CodeName(status.error_code()), ": ",
                      status.error_message());
}

namespace {

template <typename Request, typename Response, typename Method>
Answer<Response> Unary(v1::WaveKv::Stub& stub, const std::string& token,
                       const Request& request, Method method) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, token);
  Answer<Response> answer;
  answer.status = (stub.*method)(&ctx, request, &answer.response);
  return answer;
}

}  // namespace

Answer<v1::CreateSessionResponse> CallCreateSession(
    v1::WaveKv::Stub& stub, const std::string& token,
    const v1::CreateSessionRequest& request) {
  return Unary<v1::CreateSessionRequest, v1::CreateSessionResponse>(
      stub, token, request, &v1::WaveKv::Stub::CreateSession);
}

Answer<v1::AppendResponse> CallAppend(v1::WaveKv::Stub& stub,
                                      const std::string& token,
                                      const v1::AppendRequest& request) {
  return Unary<v1::AppendRequest, v1::AppendResponse>(
      stub, token, request, &v1::WaveKv::Stub::Append);
}

Answer<v1::RetrieveResponse> CallRetrieve(v1::WaveKv::Stub& stub,
                                          const std::string& token,
                                          const v1::RetrieveRequest& request) {
  return Unary<v1::RetrieveRequest, v1::RetrieveResponse>(
      stub, token, request, &v1::WaveKv::Stub::Retrieve);
}

Answer<v1::GetTransportInfoResponse> CallGetTransportInfo(
    v1::WaveKv::Stub& stub, const std::string& token,
    const v1::GetTransportInfoRequest& request) {
  return Unary<v1::GetTransportInfoRequest, v1::GetTransportInfoResponse>(
      stub, token, request, &v1::WaveKv::Stub::GetTransportInfo);
}

Answer<v1::SessionInfo> CallGetSession(v1::WaveKv::Stub& stub,
                                       const std::string& token,
                                       const std::string& session_id) {
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  return Unary<v1::GetSessionRequest, v1::SessionInfo>(
      stub, token, request, &v1::WaveKv::Stub::GetSession);
}

Answer<v1::ListSessionsResponse> CallListSessions(
    v1::WaveKv::Stub& stub, const std::string& token,
    const v1::ListSessionsRequest& request) {
  return Unary<v1::ListSessionsRequest, v1::ListSessionsResponse>(
      stub, token, request, &v1::WaveKv::Stub::ListSessions);
}

Answer<v1::CloseSessionResponse> CallCloseSession(
    v1::WaveKv::Stub& stub, const std::string& token,
    const std::string& session_id) {
  v1::CloseSessionRequest request;
  request.set_session_id(session_id);
  return Unary<v1::CloseSessionRequest, v1::CloseSessionResponse>(
      stub, token, request, &v1::WaveKv::Stub::CloseSession);
}

FetchAnswer CallFetchClusters(v1::WaveKv::Stub& stub, const std::string& token,
                              const v1::FetchClustersRequest& request) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx, token);
  FetchAnswer answer;
  auto reader = stub.FetchClusters(&ctx, request);
  v1::ClusterChunk chunk;
  while (reader->Read(&chunk)) answer.chunks.push_back(std::move(chunk));
  answer.status = reader->Finish();
  return answer;
}

Answer<std::vector<v1::SessionInfo>> ListAllSessions(v1::WaveKv::Stub& stub,
                                                     const std::string& token,
                                                     uint32_t page_size) {
  Answer<std::vector<v1::SessionInfo>> all;
  v1::ListSessionsRequest request;
  request.set_page_size(page_size);
  for (int page = 0; page < 100000; ++page) {
    auto answer = CallListSessions(stub, token, request);
    if (!answer.ok()) {
      all.status = answer.status;
      return all;
    }
    for (auto& s : *answer.response.mutable_sessions()) {
      all.response.push_back(std::move(s));
    }
    if (answer.response.next_page_token().empty()) return all;
    request.set_page_token(answer.response.next_page_token());
  }
  all.status = grpc::Status(grpc::StatusCode::INTERNAL,
                            "ListSessions paging did not end");
  return all;
}

v1::CreateSessionRequest SessionRequest(const v1::ModelShape& shape,
                                        const std::string& label) {
  v1::CreateSessionRequest request;
  *request.mutable_shape() = shape;
  request.set_label(label);
  return request;
}

v1::RetrieveRequest RetrieveRequestFor(uint32_t layer, v1::RetrieveMode mode,
                                       bool include_kv) {
  v1::RetrieveRequest request;
  request.set_layer(layer);
  request.set_mode(mode);
  request.set_include_kv(include_kv);
  return request;
}

void AddQuery(v1::RetrieveRequest& request, const std::string& session_id,
              const std::string& query) {
  v1::SessionQuery* q = request.add_queries();
  q->set_session_id(session_id);
  q->set_query(query);
}

grpc::Status AppendTokens(v1::WaveKv::Stub& stub, const std::string& token,
                          const std::string& session_id,
                          const KvPattern& pattern, uint64_t begin,
                          uint64_t end, uint32_t chunk_tokens) {
  for (uint64_t at = begin; at < end; at += chunk_tokens) {
    const uint32_t n =
        static_cast<uint32_t>(std::min<uint64_t>(chunk_tokens, end - at));
    v1::AppendRequest request;
    request.set_session_id(session_id);
    for (uint32_t l = 0; l < pattern.shape().num_layers(); ++l) {
      *request.add_layers() = pattern.Layer(l, at, n);
    }
    auto answer = CallAppend(stub, token, request);
    if (!answer.ok()) return answer.status;
  }
  return grpc::Status::OK;
}

v1::SessionInfo StableView(v1::SessionInfo info) {
  info.clear_last_access_unix_ms();
  return info;
}

bool SameMessage(const google::protobuf::Message& a,
                 const google::protobuf::Message& b, std::string* diff) {
  google::protobuf::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(diff);
  return differencer.Compare(a, b);
}

}  // namespace wavekv::testing
