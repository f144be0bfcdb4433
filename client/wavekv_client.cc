#include "client/wavekv_client.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/channel_arguments.h"
#include "transport/status.h"

namespace wavekv {
namespace {

constexpr uint32_t kEnvelopeBytes = 64u << 10;  // room for non-payload fields
constexpr char kHealthCheckMethod[] = "/grpc.health.v1.Health/Check";

// grpc.health.v1.HealthCheckRequest { string service = 1; }, hand-encoded:
// the standard health proto is not shipped with Debian's gRPC, and defining
// it here could clash with a server linked into the same binary.
grpc::ByteBuffer EncodeHealthRequest(const std::string& service) {
  std::string bytes;
  if (!service.empty()) {
    google::protobuf::io::StringOutputStream raw(&bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    google::protobuf::internal::WireFormatLite::WriteString(1, service, &out);
  }
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// grpc.health.v1.HealthCheckResponse { ServingStatus status = 1; }.
absl::StatusOr<ServingStatus> DecodeHealthResponse(
    const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) {
    return absl::DataLossError("health: unreadable response");
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(
      reinterpret_cast<const uint8_t*>(bytes.data()),
      static_cast<int>(bytes.size()));
  uint32_t status = 0;  // proto3 default: UNKNOWN
  while (uint32_t tag = in.ReadTag()) {
    if (tag == WireFormatLite::MakeTag(1, WireFormatLite::WIRETYPE_VARINT)) {
      if (!in.ReadVarint32(&status)) {
        return absl::DataLossError("health: bad status field");
      }
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return absl::DataLossError("health: malformed response");
    }
  }
  if (status > 3) status = 0;
  return static_cast<ServingStatus>(status);
}

absl::Status WithContext(const absl::Status& status,
                         const std::string& context) {
  return absl::Status(status.code(),
                      absl::StrCat(context, ": ", status.message()));
}

std::string ToBytes(absl::Span<const uint8_t> span) {
  return std::string(reinterpret_cast<const char*>(span.data()), span.size());
}

}  // namespace

absl::Status ClientOptions::Validate() const {
  if (target.empty()) {
    return absl::InvalidArgumentError("target: must not be empty");
  }
  RETURN_IF_ERROR(tls.Validate());
  for (char c : bearer_token) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) ||
        absl::ascii_iscntrl(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          "bearer_token: must not contain whitespace or control characters");
    }
  }
  if (call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "call_timeout: must be > 0, got ", absl::FormatDuration(call_timeout)));
  }
  if (max_message_bytes < (64u << 10) || max_message_bytes > 0x7fffffffu) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes: must be in [65536, 2147483647], got ",
                     max_message_bytes));
  }
  if (max_append_bytes < (4u << 10) ||
      max_append_bytes > max_message_bytes - kEnvelopeBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_append_bytes: must be in [4096, max_message_bytes - 65536 = ",
        max_message_bytes - kEnvelopeBytes, "], got ", max_append_bytes));
  }
  if (fetch_chunk_bytes != 0 &&
      (fetch_chunk_bytes < (4u << 10) || fetch_chunk_bytes > (4u << 20))) {
    return absl::InvalidArgumentError(
        absl::StrCat("fetch_chunk_bytes: must be 0 or in [4096, 4194304], got ",
                     fetch_chunk_bytes));
  }
  if (list_page_size < 1 || list_page_size > 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "list_page_size: must be in [1, 1000], got ", list_page_size));
  }
  return absl::OkStatus();
}

const char* ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case ServingStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

absl::StatusOr<std::unique_ptr<WaveKvClient>> WaveKvClient::Connect(
    const ClientOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                   MakeChannelCredentials(options.tls));
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("target: cannot create a channel to ", options.target));
  }
  return Create(std::move(channel), options);
}

absl::StatusOr<std::unique_ptr<WaveKvClient>> WaveKvClient::Create(
    std::shared_ptr<grpc::Channel> channel, const ClientOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  if (channel == nullptr) {
    return absl::InvalidArgumentError("channel: must not be null");
  }
  return std::unique_ptr<WaveKvClient>(
      new WaveKvClient(std::move(channel), options));
}

WaveKvClient::WaveKvClient(std::shared_ptr<grpc::Channel> channel,
                           const ClientOptions& options)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::WaveKv::NewStub(channel_)) {}

WaveKvClient::~WaveKvClient() = default;

std::unique_ptr<grpc::ClientContext> WaveKvClient::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(
      absl::ToChronoTime(absl::Now() + options_.call_timeout));
  if (!options_.bearer_token.empty()) {
    context->AddMetadata("authorization",
                         absl::StrCat("Bearer ", options_.bearer_token));
  }
  return context;
}

absl::StatusOr<ServingStatus> WaveKvClient::Health(const std::string& service) {
  grpc::GenericStub generic(channel_);
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  grpc::ByteBuffer request = EncodeHealthRequest(service);
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  generic.UnaryCall(context.get(), kHealthCheckMethod, grpc::StubOptions(),
                    &request, &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();
  if (!status.ok()) return FromGrpcStatus(status);
  return DecodeHealthResponse(response);
}

absl::StatusOr<v1::SessionInfo> WaveKvClient::CreateSession(
    const v1::CreateSessionRequest& request) {
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  v1::CreateSessionResponse response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->CreateSession(context.get(), request, &response)));
  return std::move(*response.mutable_session());
}

absl::StatusOr<v1::AppendResponse> WaveKvClient::Append(
    const v1::AppendRequest& request) {
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  v1::AppendResponse response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->Append(context.get(), request, &response)));
  return response;
}

absl::StatusOr<v1::AppendResponse> WaveKvClient::AppendPrefill(
    const std::string& session_id, uint32_t layer, uint64_t start_token,
    uint64_t num_tokens, absl::Span<const uint8_t> keys,
    absl::Span<const uint8_t> values, const AppendProgressFn& progress,
    v1::Durability durability) {
  if (num_tokens == 0) {
    return absl::InvalidArgumentError("num_tokens: must be >= 1, got 0");
  }
  if (keys.size() != values.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("values: expected ", keys.size(),
                     " bytes (the length of keys), got ", values.size()));
  }
  if (keys.empty() || keys.size() % num_tokens != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "keys: ", keys.size(), " bytes is not a positive multiple of ",
        num_tokens, " tokens"));
  }
  const uint64_t token_bytes = keys.size() / num_tokens;
  const uint64_t tokens_per_request = std::min<uint64_t>(
      options_.max_append_bytes / (2 * token_bytes), 0xffffffffu);
  if (tokens_per_request == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_append_bytes: ", options_.max_append_bytes,
        " is smaller than one token's K+V (", 2 * token_bytes, " bytes)"));
  }

  AppendProgress state;
  state.layer = layer;
  state.tokens_total = num_tokens;
  v1::AppendResponse last;
  while (state.tokens_done < num_tokens) {
    const uint64_t n =
        std::min(tokens_per_request, num_tokens - state.tokens_done);
    const uint64_t offset = state.tokens_done * token_bytes;
    v1::AppendRequest request;
    request.set_session_id(session_id);
    request.set_durability(durability);
    v1::LayerKV* kv = request.add_layers();
    kv->set_layer(layer);
    kv->set_start_token(start_token + state.tokens_done);
    kv->set_num_tokens(static_cast<uint32_t>(n));
    kv->set_keys(ToBytes(keys.subspan(offset, n * token_bytes)));
    kv->set_values(ToBytes(values.subspan(offset, n * token_bytes)));
    absl::StatusOr<v1::AppendResponse> response = Append(request);
    if (!response.ok()) {
      return WithContext(
          response.status(),
          absl::StrCat("layer ", layer, ": stored tokens [", start_token, ", ",
                       start_token + state.tokens_done, ") of [", start_token,
                       ", ", start_token + num_tokens,
                       "); the request for tokens [",
                       start_token + state.tokens_done, ", ",
                       start_token + state.tokens_done + n, ") failed"));
    }
    last = *std::move(response);
    state.tokens_done += n;
    state.bytes_sent += 2 * n * token_bytes;
    ++state.requests;
    if (progress) progress(state);
  }
  return last;
}

absl::StatusOr<v1::AppendResponse> WaveKvClient::AppendDecode(
    const std::string& session_id, uint64_t position,
    absl::Span<const TokenKv> layers, v1::Durability durability) {
  if (layers.empty()) {
    return absl::InvalidArgumentError("layers: must not be empty");
  }
  v1::AppendRequest request;
  request.set_session_id(session_id);
  request.set_durability(durability);
  for (size_t i = 0; i < layers.size(); ++i) {
    v1::LayerKV* kv = request.add_layers();
    kv->set_layer(static_cast<uint32_t>(i));
    kv->set_start_token(position);
    kv->set_num_tokens(1);
    kv->set_keys(ToBytes(layers[i].keys));
    kv->set_values(ToBytes(layers[i].values));
  }
  return Append(request);
}

absl::StatusOr<v1::RetrieveResponse> WaveKvClient::Retrieve(
    uint32_t layer, v1::RetrieveMode mode,
    absl::Span<const QueryView> queries) {
  RetrieveParams params;
  params.layer = layer;
  params.mode = mode;
  return Retrieve(params, queries);
}

absl::StatusOr<v1::RetrieveResponse> WaveKvClient::Retrieve(
    const RetrieveParams& params, absl::Span<const QueryView> queries) {
  v1::RetrieveRequest request;
  request.set_layer(params.layer);
  request.set_mode(params.mode);
  request.set_include_kv(params.include_kv);
  request.set_exact_if_not_ready(params.exact_if_not_ready);
  for (const QueryView& q : queries) {
    v1::SessionQuery* sq = request.add_queries();
    sq->set_session_id(q.session_id);
    // FP32 little-endian on the wire; x86-64 and aarch64 hosts are LE.
    sq->set_query(reinterpret_cast<const char*>(q.query.data()),
                  q.query.size() * sizeof(float));
  }
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  v1::RetrieveResponse response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->Retrieve(context.get(), request, &response)));
  return response;
}

absl::StatusOr<std::vector<FetchedHead>> WaveKvClient::FetchClusters(
    const std::string& session_id, uint32_t layer, uint64_t layout_epoch,
    absl::Span<const v1::HeadSlots> heads) {
  std::vector<FetchedHead> fetched(heads.size());
  if (heads.empty()) return fetched;
  v1::FetchClustersRequest request;
  request.set_session_id(session_id);
  request.set_layer(layer);
  request.set_layout_epoch(layout_epoch);
  request.set_max_chunk_bytes(options_.fetch_chunk_bytes);
  for (size_t h = 0; h < heads.size(); ++h) {
    *request.add_heads() = heads[h];
    fetched[h].kv_head = heads[h].kv_head();
    fetched[h].ranges.assign(heads[h].ranges().begin(),
                             heads[h].ranges().end());
  }

  std::unique_ptr<grpc::ClientContext> context = NewContext();
  std::unique_ptr<grpc::ClientReader<v1::ClusterChunk>> reader =
      stub_->FetchClusters(context.get(), request);

  // Cursor over (head, range, slot) the next chunk must continue.
  size_t head_index = 0, range_index = 0;
  uint64_t next_slot = 0;
  uint64_t slot_bytes = 0;  // K (or V) bytes of one slot, from chunk 1
  auto skip_finished = [&] {
    while (head_index < heads.size()) {
      const auto& ranges = heads[head_index].ranges();
      if (range_index < ranges.size()) {
        const v1::SlotRange& r = ranges[range_index];
        if (next_slot == 0) next_slot = r.first_slot();
        if (next_slot < r.first_slot() + r.num_slots()) return;
        ++range_index;
        next_slot = 0;
        continue;
      }
      ++head_index;
      range_index = 0;
      next_slot = 0;
    }
  };
  skip_finished();

  std::string mismatch;
  size_t chunk_index = 0;
  v1::ClusterChunk chunk;
  while (reader->Read(&chunk)) {
    const std::string where = absl::StrCat("FetchClusters chunk ", chunk_index);
    ++chunk_index;
    if (head_index >= heads.size()) {
      mismatch = absl::StrCat(where, ": more data than requested");
      break;
    }
    const v1::SlotRange& r = heads[head_index].ranges()[range_index];
    const uint64_t range_end = r.first_slot() + r.num_slots();
    if (chunk.kv_head() != heads[head_index].kv_head() ||
        chunk.cluster_id() != r.cluster_id() ||
        chunk.first_slot() != next_slot || chunk.num_slots() == 0 ||
        next_slot + chunk.num_slots() > range_end) {
      mismatch =
          absl::StrCat(where, ": got kv_head ", chunk.kv_head(), " cluster ",
                       chunk.cluster_id(), " slots [", chunk.first_slot(),
                       ", +", chunk.num_slots(), "), expected kv_head ",
                       heads[head_index].kv_head(), " cluster ", r.cluster_id(),
                       " slots [", next_slot, ", ", range_end, ")");
      break;
    }
    if (slot_bytes == 0 && chunk.keys().size() % chunk.num_slots() == 0) {
      slot_bytes = chunk.keys().size() / chunk.num_slots();
      // Now the sizes are known: reserve every head's buffers once.
      for (size_t h = 0; h < heads.size(); ++h) {
        uint64_t slots = 0;
        for (const v1::SlotRange& r : heads[h].ranges()) {
          slots += r.num_slots();
        }
        fetched[h].keys.reserve(slots * slot_bytes);
        fetched[h].values.reserve(slots * slot_bytes);
        fetched[h].positions.reserve(slots);
      }
    }
    if (slot_bytes == 0 ||
        chunk.keys().size() != slot_bytes * chunk.num_slots() ||
        chunk.values().size() != chunk.keys().size() ||
        chunk.positions_size() != static_cast<int>(chunk.num_slots())) {
      mismatch = absl::StrCat(where, ": ", chunk.num_slots(), " slots with ",
                              chunk.keys().size(), " key bytes, ",
                              chunk.values().size(), " value bytes and ",
                              chunk.positions_size(), " positions");
      break;
    }
    FetchedHead& out = fetched[head_index];
    out.keys.append(chunk.keys());
    out.values.append(chunk.values());
    out.positions.insert(out.positions.end(), chunk.positions().begin(),
                         chunk.positions().end());
    next_slot += chunk.num_slots();
    skip_finished();
  }
  if (!mismatch.empty()) {
    context->TryCancel();
    while (reader->Read(&chunk)) {
    }
    reader->Finish().ok();  // the cancelled status says nothing new
    return absl::DataLossError(mismatch);
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  if (head_index < heads.size()) {
    return absl::DataLossError(
        absl::StrCat("FetchClusters: stream ended after ", chunk_index,
                     " chunks before slot ", next_slot, " of heads[",
                     head_index, "].ranges[", range_index, "]"));
  }
  return fetched;
}

absl::StatusOr<v1::SessionInfo> WaveKvClient::GetSession(
    const std::string& session_id) {
  v1::GetSessionRequest request;
  request.set_session_id(session_id);
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  v1::SessionInfo response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->GetSession(context.get(), request, &response)));
  return response;
}

absl::StatusOr<std::vector<v1::SessionInfo>> WaveKvClient::ListSessions() {
  std::vector<v1::SessionInfo> sessions;
  v1::ListSessionsRequest request;
  request.set_page_size(options_.list_page_size);
  do {
    std::unique_ptr<grpc::ClientContext> context = NewContext();
    v1::ListSessionsResponse response;
    RETURN_IF_ERROR(
        FromGrpcStatus(stub_->ListSessions(context.get(), request, &response)));
    for (v1::SessionInfo& s : *response.mutable_sessions()) {
      sessions.push_back(std::move(s));
    }
    if (!response.next_page_token().empty() &&
        response.next_page_token() == request.page_token()) {
      return absl::DataLossError(
          "ListSessions: server returned the same page token twice");
    }
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return sessions;
}

absl::StatusOr<uint64_t> WaveKvClient::CloseSession(
    const std::string& session_id) {
  v1::CloseSessionRequest request;
  request.set_session_id(session_id);
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  v1::CloseSessionResponse response;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->CloseSession(context.get(), request, &response)));
  return response.freed_bytes();
}

absl::StatusOr<v1::GetTransportInfoResponse> WaveKvClient::GetTransportInfo(
    const std::string& session_id) {
  v1::GetTransportInfoRequest request;
  request.set_session_id(session_id);
  std::unique_ptr<grpc::ClientContext> context = NewContext();
  v1::GetTransportInfoResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(
      stub_->GetTransportInfo(context.get(), request, &response)));
  return response;
}

std::vector<v1::HeadSlots> RetrievalSlots(const v1::SessionResult& result) {
  std::vector<v1::HeadSlots> slots;
  for (const v1::KvHeadResult& head : result.heads()) {
    if (head.retrieval().empty()) continue;
    v1::HeadSlots& hs = slots.emplace_back();
    hs.set_kv_head(head.kv_head());
    *hs.mutable_ranges() = head.retrieval();
  }
  return slots;
}

}  // namespace wavekv
