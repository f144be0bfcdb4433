// WaveKvClient: the typed C++ client of the wavekv.v1 gRPC service, what an
// inference worker links to talk to a wavekv-server.
//
// Every method is one or a few unary/streaming calls with the per-call
// deadline of ClientOptions; failures come back as absl::Status with the
// server's canonical code and message unchanged (the message names the
// offending field, e.g. "layers[0].start_token: ..."). Transport failures
// read UNAVAILABLE / DEADLINE_EXCEEDED as gRPC reports them.
//
// Thread-safe: one client may be shared by any number of threads; calls do
// not serialise against each other (the gRPC channel multiplexes them).
//
// Example:
//   ClientOptions options;
//   options.target = "127.0.0.1:7070";
//   ASSIGN_OR_RETURN(std::unique_ptr<WaveKvClient> client,
//                    WaveKvClient::Connect(options));
//   ASSIGN_OR_RETURN(v1::SessionInfo s, client->CreateSession(request));
//   ASSIGN_OR_RETURN(auto appended,
//                    client->AppendPrefill(s.session_id(), /*layer=*/0,
//                                          /*start_token=*/0, n, keys, vals));
#ifndef WAVEKV_CLIENT_WAVEKV_CLIENT_H_
#define WAVEKV_CLIENT_WAVEKV_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "grpcpp/channel.h"
#include "proto/wavekv/v1/wavekv.grpc.pb.h"
#include "transport/tls.h"

namespace wavekv {

struct ClientOptions {
  // gRPC target, e.g. "127.0.0.1:7070" or "dns:///wavekv-0.wavekv:7070".
  std::string target = "127.0.0.1:7070";
  // Sent as `authorization: Bearer <bearer_token>` on every wavekv call when
  // non-empty. Must not contain whitespace or control characters.
  std::string bearer_token;
  // Deadline of each RPC (each request of a chunked prefill, the whole
  // stream of a FetchClusters). > 0.
  absl::Duration call_timeout = absl::Seconds(30);
  // gRPC send and receive limit of the channel, in bytes. 64 KiB..2 GiB-1.
  // Keep it <= the server's --max_message_bytes for sends.
  uint32_t max_message_bytes = 64u << 20;
  // K+V payload bytes per Append request of AppendPrefill: a prefill is cut
  // into requests of at most this many bytes of keys plus values.
  // 4 KiB..max_message_bytes - 64 KiB (room for the envelope).
  uint32_t max_append_bytes = 8u << 20;
  // FetchClusters: K+V bytes per streamed chunk; 0 = the server default
  // (1 MiB); otherwise 4 KiB..4 MiB.
  uint32_t fetch_chunk_bytes = 0;
  // ListSessions page size used to walk all pages. 1..1000.
  uint32_t list_page_size = 100;
  // TLS of the channel (transport/tls.h): off by default; with use_tls the
  // server is verified against ca_file (empty: the system roots), and
  // cert_file + key_file are presented as client certificate (mTLS).
  ClientTlsFiles tls;

  // InvalidArgument naming the field and the value on bad settings.
  absl::Status Validate() const;
};

// Standard grpc.health.v1 serving states.
enum class ServingStatus {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3
};
const char* ServingStatusName(ServingStatus status);

// Progress of AppendPrefill, reported after every acknowledged request.
struct AppendProgress {
  uint32_t layer = 0;
  uint64_t tokens_done = 0;   // tokens of this call acknowledged so far
  uint64_t tokens_total = 0;  // tokens of this call
  uint64_t bytes_sent = 0;    // K+V payload bytes acknowledged so far
  uint32_t requests = 0;      // Append requests acknowledged so far
};
using AppendProgressFn = std::function<void(const AppendProgress&)>;

// K/V of one token of one layer, [num_kv_heads][head_dim] in the session
// dtype (AppendDecode).
struct TokenKv {
  absl::Span<const uint8_t> keys;
  absl::Span<const uint8_t> values;
};

// One session's query for Retrieve: fp32 [num_q_heads][head_dim].
struct QueryView {
  std::string session_id;
  absl::Span<const float> query;
};

// What one Retrieve call asks for (RetrieveRequest without the queries).
struct RetrieveParams {
  uint32_t layer = 0;
  v1::RetrieveMode mode = v1::RETRIEVE_MODE_EXACT;
  // Return the retrieval zone's K/V inline (RESOURCE_EXHAUSTED above the
  // server's max_inline_kv_bytes: use FetchClusters then).
  bool include_kv = false;
  // WAVE on a layer whose index is not ready: answer that session in EXACT
  // instead of failing the call with UNAVAILABLE.
  bool exact_if_not_ready = false;
};

// The reassembled answer of FetchClusters for one kv head: the K/V of its
// requested ranges, concatenated in request order — the same layout as
// Retrieve's inline KvHeadResult.keys/values — and each slot's position.
struct FetchedHead {
  uint32_t kv_head = 0;
  std::vector<v1::SlotRange> ranges;  // as requested
  std::string keys;                   // [slots][head_dim], session dtype
  std::string values;
  std::vector<uint64_t> positions;  // [slots]
  uint64_t num_slots() const { return positions.size(); }
};

class WaveKvClient {
 public:
  // Creates a channel to options.target with the options' message limits.
  // Does not contact the server (the first call does); InvalidArgument on
  // bad options.
  static absl::StatusOr<std::unique_ptr<WaveKvClient>> Connect(
      const ClientOptions& options);
  // Uses an existing channel (in-process servers, custom credentials).
  // options.target and max_message_bytes are then informational only.
  static absl::StatusOr<std::unique_ptr<WaveKvClient>> Create(
      std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  WaveKvClient(const WaveKvClient&) = delete;
  WaveKvClient& operator=(const WaveKvClient&) = delete;
  ~WaveKvClient();

  // grpc.health.v1.Health/Check of `service` ("" = the server as a whole,
  // "wavekv.v1.WaveKv" = the KV service). No credentials needed.
  absl::StatusOr<ServingStatus> Health(const std::string& service = "");

  absl::StatusOr<v1::SessionInfo> CreateSession(
      const v1::CreateSessionRequest& request);

  // One raw Append request, as given.
  absl::StatusOr<v1::AppendResponse> Append(const v1::AppendRequest& request);

  // Appends `num_tokens` tokens of one layer starting at `start_token`
  // (which must be the layer's current length). keys/values are
  // [num_tokens][num_kv_heads][head_dim] in the session dtype; they are cut
  // into several Append requests of at most max_append_bytes (K+V) each,
  // sent in order with the right start_token. `progress`, if set, runs on
  // the calling thread after every acknowledged request. Returns the last
  // request's answer.
  // On a failed request the earlier ones stay applied: the status keeps the
  // server's code and says which tokens were stored ("layer 3: stored tokens
  // [0, 8192) of [0, 32768); ..."), so a caller can resume from there.
  absl::StatusOr<v1::AppendResponse> AppendPrefill(
      const std::string& session_id, uint32_t layer, uint64_t start_token,
      uint64_t num_tokens, absl::Span<const uint8_t> keys,
      absl::Span<const uint8_t> values,
      const AppendProgressFn& progress = nullptr,
      v1::Durability durability = v1::DURABILITY_UNSPECIFIED);

  // Appends the token at `position` to every layer in one request:
  // layers[i] is layer i's K/V (REQUIRES: layers.size() == num_layers of
  // the session, else the server rejects it).
  absl::StatusOr<v1::AppendResponse> AppendDecode(
      const std::string& session_id, uint64_t position,
      absl::Span<const TokenKv> layers,
      v1::Durability durability = v1::DURABILITY_UNSPECIFIED);

  // One Retrieve for a batch of sessions at one layer; results come in
  // query order. Each SessionResult.mode says which mode answered it.
  absl::StatusOr<v1::RetrieveResponse> Retrieve(
      const RetrieveParams& params, absl::Span<const QueryView> queries);
  // Shorthand: no inline K/V, no EXACT fallback.
  absl::StatusOr<v1::RetrieveResponse> Retrieve(
      uint32_t layer, v1::RetrieveMode mode,
      absl::Span<const QueryView> queries);

  // Streams the K/V of `heads`' slot ranges and reassembles them: one
  // FetchedHead per requested head, in request order. Every chunk is checked
  // against the request (head, cluster, consecutive slots, byte lengths);
  // a stream that deviates or ends early fails with DATA_LOSS.
  // `layout_epoch` comes from the Retrieve answer (0 = do not check).
  absl::StatusOr<std::vector<FetchedHead>> FetchClusters(
      const std::string& session_id, uint32_t layer, uint64_t layout_epoch,
      absl::Span<const v1::HeadSlots> heads);

  absl::StatusOr<v1::SessionInfo> GetSession(const std::string& session_id);

  // Every session of the caller's tenant, walking all pages (by id).
  absl::StatusOr<std::vector<v1::SessionInfo>> ListSessions();

  // Returns the bytes the server freed.
  absl::StatusOr<uint64_t> CloseSession(const std::string& session_id);

  // session_id empty: server-level information only.
  absl::StatusOr<v1::GetTransportInfoResponse> GetTransportInfo(
      const std::string& session_id = "");

  const ClientOptions& options() const { return options_; }

 private:
  WaveKvClient(std::shared_ptr<grpc::Channel> channel,
               const ClientOptions& options);

  // A context carrying the deadline and the bearer token.
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  const ClientOptions options_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::WaveKv::Stub> stub_;
};

// The HeadSlots to fetch a Retrieve answer's retrieval zone: every kv head
// with at least one range, its ranges in answer order.
std::vector<v1::HeadSlots> RetrievalSlots(const v1::SessionResult& result);

}  // namespace wavekv

#endif  // WAVEKV_CLIENT_WAVEKV_CLIENT_H_
