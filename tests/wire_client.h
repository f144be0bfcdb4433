// Thin helpers for tests that speak wavekv.v1 over real gRPC with the
// generated stub: channels without client-side size limits (so the server's
// limits are what a test observes), per-call bearer credentials and
// deadlines, stream draining, and readable statuses.
//
// Thread-safe: free functions; the stubs and channels they return are
// gRPC's (thread-safe).
#ifndef WAVEKV_TESTS_WIRE_CLIENT_H_
#define WAVEKV_TESTS_WIRE_CLIENT_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/wavekv/v1/wavekv.grpc.pb.h"
#include "tests/kv_pattern.h"

namespace wavekv::testing {

// An insecure channel to `address` with unlimited client-side message
// sizes, connected (or failing) within `connect_timeout`.
std::shared_ptr<grpc::Channel> Connect(
    const std::string& address,
    absl::Duration connect_timeout = absl::Seconds(10));

// Prepares `ctx` for one call: deadline `timeout` from now and, when
// `token` is non-empty, metadata `authorization: Bearer <token>`.
void PrepareContext(grpc::ClientContext* ctx, const std::string& token,
                    absl::Duration timeout = absl::Seconds(20));

// "NOT_FOUND", "INVALID_ARGUMENT", ...
std::string CodeName(grpc::StatusCode code);

// "NOT_FOUND: session_id: ..." (or "OK").
std::string StatusText(const grpc::Status& status);

// A unary call's answer and status together.
template <typename Response>
struct Answer {
  grpc::Status status;
  Response response;
  bool ok() const { return status.ok(); }
};

// One call of each unary RPC, acting with `token` ("" = no credentials).
Answer<v1::CreateSessionResponse> CallCreateSession(
    v1::WaveKv::Stub& stub, const std::string& token,
    const v1::CreateSessionRequest& request);
Answer<v1::AppendResponse> CallAppend(v1::WaveKv::Stub& stub,
                                      const std::string& token,
                                      const v1::AppendRequest& request);
Answer<v1::RetrieveResponse> CallRetrieve(v1::WaveKv::Stub& stub,
                                          const std::string& token,
                                          const v1::RetrieveRequest& request);
Answer<v1::GetTransportInfoResponse> CallGetTransportInfo(
    v1::WaveKv::Stub& stub, const std::string& token,
    const v1::GetTransportInfoRequest& request);
Answer<v1::SessionInfo> CallGetSession(v1::WaveKv::Stub& stub,
                                       const std::string& token,
                                       const std::string& session_id);
Answer<v1::ListSessionsResponse> CallListSessions(
    v1::WaveKv::Stub& stub, const std::string& token,
    const v1::ListSessionsRequest& request);
Answer<v1::CloseSessionResponse> CallCloseSession(
    v1::WaveKv::Stub& stub, const std::string& token,
    const std::string& session_id);

// A drained FetchClusters stream: every chunk read, then the final status.
struct FetchAnswer {
  grpc::Status status;
  std::vector<v1::ClusterChunk> chunks;
  bool ok() const { return status.ok(); }
};
FetchAnswer CallFetchClusters(v1::WaveKv::Stub& stub, const std::string& token,
                              const v1::FetchClustersRequest& request);

// All of the tenant's sessions, following next_page_token with `page_size`.
// Fails the returned status on the first failing page.
Answer<std::vector<v1::SessionInfo>> ListAllSessions(v1::WaveKv::Stub& stub,
                                                     const std::string& token,
                                                     uint32_t page_size = 0);

// A CreateSessionRequest for `shape` with `label` (other fields unset).
v1::CreateSessionRequest SessionRequest(const v1::ModelShape& shape,
                                        const std::string& label = "");

// A Retrieve request of `layer` in `mode`, without queries (see AddQuery).
v1::RetrieveRequest RetrieveRequestFor(uint32_t layer, v1::RetrieveMode mode,
                                       bool include_kv);

// Appends one session's query to `request`.
void AddQuery(v1::RetrieveRequest& request, const std::string& session_id,
              const std::string& query);

// Appends tokens [begin, end) of every layer of `pattern`'s shape to the
// session, `chunk_tokens` per layer per request (each request carries every
// layer). Returns the first failing status, or OK.
grpc::Status AppendTokens(v1::WaveKv::Stub& stub, const std::string& token,
                          const std::string& session_id,
                          const KvPattern& pattern, uint64_t begin,
                          uint64_t end, uint32_t chunk_tokens);

// `info` without fields that legitimately change on reads
// (last_access_unix_ms), for before/after comparisons.
v1::SessionInfo StableView(v1::SessionInfo info);

// Equality of two messages with a description of the first difference.
bool SameMessage(const google::protobuf::Message& a,
                 const google::protobuf::Message& b, std::string* diff);

}  // namespace wavekv::testing

#endif  // WAVEKV_TESTS_WIRE_CLIENT_H_
