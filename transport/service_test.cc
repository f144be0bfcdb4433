// In-process tests of WaveKvService over real gRPC on 127.0.0.1 with the
// real engine: authentication, conversions, streaming, limits and metrics.
// (Process-level and bad-input suites live in tests/.)
#include "transport/service.h"

#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transport/grpc_probes.h"
#include "transport/metrics.h"

namespace wavekv {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

constexpr uint32_t kHeadDim = 16;
constexpr uint32_t kKvHeads = 2;
constexpr uint32_t kQHeads = 4;

// Deterministic fp32 K/V: token t, head h, dim d -> distinct values.
std::string KvBytes(uint64_t first_token, uint32_t num_tokens, float sign) {
  std::vector<float> v;
  for (uint64_t t = first_token; t < first_token + num_tokens; ++t) {
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      for (uint32_t d = 0; d < kHeadDim; ++d) {
        v.push_back(sign * (t * 0.01f + h * 0.5f + d * 0.001f));
      }
    }
  }
  return std::string(reinterpret_cast<const char*>(v.data()),
                     v.size() * sizeof(float));
}

// Bytes of kv head `h` of tokens [first, first+n), [n][head_dim].
std::string HeadBytes(const std::string& kv, uint32_t h, uint64_t first,
                      uint32_t n) {
  std::string out;
  const size_t row = kHeadDim * sizeof(float);
  for (uint64_t t = first; t < first + n; ++t) {
    out.append(kv.substr((t * kKvHeads + h) * row, row));
  }
  return out;
}

// Health of `service` as its enum value, or minus the gRPC code on error.
int Health(const std::shared_ptr<grpc::Channel>& channel,
           const std::string& service) {
  absl::StatusOr<HealthStatus> status = CheckHealth(channel, service);
  if (!status.ok()) return -static_cast<int>(status.status().code());
  return static_cast<int>(*status);
}

class ServiceTest : public ::testing::Test {
 protected:
  void Start(std::unique_ptr<Authenticator> auth, ServiceLimits limits = {}) {
    EnableHealthAndReflection();
    EngineOptions options;
    options.memory_budget_bytes = 64ull << 20;
    options.max_inline_kv_bytes = limits.max_inline_kv_bytes;
    engine_ = *Engine::Open(options);
    auth_ = std::move(auth);
    registry_ = std::make_shared<prometheus::Registry>();
    metrics_ = std::make_unique<ServerMetrics>(*registry_);
    service_ = std::make_unique<WaveKvService>(*engine_, *auth_, *metrics_,
                                               limits, &log_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.SetMaxReceiveMessageSize(limits.max_receive_message_bytes);
    builder.SetMaxSendMessageSize(limits.max_send_message_bytes);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    SetServing(*server_, true);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(256 << 20);
    channel_ =
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port),
                                  grpc::InsecureChannelCredentials(), args);
    stub_ = v1::WaveKv::NewStub(channel_);
  }

  void TearDown() override {
    stub_.reset();
    channel_.reset();
    // A short deadline, then cancel: a graceful Shutdown would wait for the
    // client side to notice the GOAWAY.
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(50));
    }
  }

  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }

  std::string CreateSession(const std::string& token = "") {
    v1::CreateSessionRequest req;
    req.mutable_shape()->set_num_layers(2);
    req.mutable_shape()->set_num_q_heads(kQHeads);
    req.mutable_shape()->set_num_kv_heads(kKvHeads);
    req.mutable_shape()->set_head_dim(kHeadDim);
    req.mutable_shape()->set_dtype(v1::DTYPE_FP32);
    req.set_label("svc-test");
    // Every token stays in the steady zone: no background clustering moves
    // slots under the fetches below.
    req.mutable_index_options()->set_recent_tokens(65536);
    v1::CreateSessionResponse resp;
    const grpc::Status s = stub_->CreateSession(Ctx(token).get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.session().session_id();
  }

  grpc::Status Append(const std::string& id, uint32_t layer, uint64_t start,
                      uint32_t n, v1::AppendResponse* resp,
                      const std::string& token = "") {
    v1::AppendRequest req;
    req.set_session_id(id);
    v1::LayerKV* l = req.add_layers();
    l->set_layer(layer);
    l->set_start_token(start);
    l->set_num_tokens(n);
    l->set_keys(KvBytes(start, n, 1.0f));
    l->set_values(KvBytes(start, n, -1.0f));
    return stub_->Append(Ctx(token).get(), req, resp);
  }

  v1::RetrieveRequest ExactRetrieve(const std::string& id, bool include_kv) {
    v1::RetrieveRequest req;
    req.set_layer(0);
    req.set_mode(v1::RETRIEVE_MODE_EXACT);
    req.set_include_kv(include_kv);
    v1::SessionQuery* q = req.add_queries();
    q->set_session_id(id);
    const std::vector<float> query(kQHeads * kHeadDim, 0.1f);
    q->set_query(std::string(reinterpret_cast<const char*>(query.data()),
                             query.size() * sizeof(float)));
    return req;
  }

  std::string Metrics() { return RenderMetricsText(*registry_); }

  MemoryLogSink log_sink_;
  Logger log_{log_sink_};
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Authenticator> auth_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<WaveKvService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WaveKv::Stub> stub_;
};

TEST_F(ServiceTest, SessionLifecycleOverRealGrpc) {
  Start(Authenticator::Disabled());
  const std::string id = CreateSession();
  ASSERT_FALSE(id.empty());

  v1::AppendResponse appended;
  ASSERT_TRUE(Append(id, 0, 0, 100, &appended).ok());
  EXPECT_EQ(appended.layer_tokens(0), 100u);
  EXPECT_EQ(appended.layer_tokens(1), 0u);
  EXPECT_EQ(appended.num_tokens(), 0u);

  v1::RetrieveResponse retrieved;
  grpc::Status s =
      stub_->Retrieve(Ctx().get(), ExactRetrieve(id, true), &retrieved);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(retrieved.results_size(), 1);
  const v1::SessionResult& r = retrieved.results(0);
  EXPECT_EQ(r.session_id(), id);
  EXPECT_EQ(r.num_tokens(), 100u);
  ASSERT_EQ(r.heads_size(), static_cast<int>(kKvHeads));
  const std::string keys = KvBytes(0, 100, 1.0f);
  const std::string values = KvBytes(0, 100, -1.0f);
  for (uint32_t h = 0; h < kKvHeads; ++h) {
    EXPECT_EQ(r.heads(h).keys(), HeadBytes(keys, h, 0, 100)) << h;
    EXPECT_EQ(r.heads(h).values(), HeadBytes(values, h, 0, 100)) << h;
  }

  // FetchClusters in 4 KiB chunks: 128 bytes of K+V per slot -> 32 slots.
  v1::FetchClustersRequest fetch;
  fetch.set_session_id(id);
  fetch.set_layer(0);
  fetch.set_layout_epoch(r.layout_epoch());
  fetch.set_max_chunk_bytes(4096);
  v1::HeadSlots* hs = fetch.add_heads();
  hs->set_kv_head(1);
  *hs->mutable_ranges() = r.heads(1).retrieval();
  auto ctx = Ctx();
  auto reader = stub_->FetchClusters(ctx.get(), fetch);
  v1::ClusterChunk chunk;
  std::string fetched_keys, fetched_values;
  int chunks = 0;
  while (reader->Read(&chunk)) {
    ++chunks;
    EXPECT_EQ(chunk.kv_head(), 1u);
    EXPECT_LE(chunk.keys().size() + chunk.values().size(), 4096u);
    EXPECT_EQ(chunk.positions_size(), static_cast<int>(chunk.num_slots()));
    fetched_keys += chunk.keys();
    fetched_values += chunk.values();
  }
  s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(chunks, 4);
  EXPECT_EQ(fetched_keys, HeadBytes(keys, 1, 0, 100));
  EXPECT_EQ(fetched_values, HeadBytes(values, 1, 0, 100));

  v1::GetSessionRequest get;
  get.set_session_id(id);
  v1::SessionInfo info;
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &info).ok());
  EXPECT_EQ(info.label(), "svc-test");
  EXPECT_EQ(info.layer_tokens(0), 100u);
  EXPECT_TRUE(info.index_options().has_cluster_size());

  v1::ListSessionsResponse list;
  ASSERT_TRUE(
      stub_->ListSessions(Ctx().get(), v1::ListSessionsRequest(), &list).ok());
  ASSERT_EQ(list.sessions_size(), 1);
  EXPECT_EQ(list.sessions(0).session_id(), id);

  v1::GetTransportInfoResponse transport;
  ASSERT_TRUE(stub_
                  ->GetTransportInfo(Ctx().get(), v1::GetTransportInfoRequest(),
                                     &transport)
                  .ok());
  ASSERT_EQ(transport.transports_size(), 1);
  EXPECT_EQ(transport.transports(0), "grpc-stream");
  EXPECT_EQ(transport.max_receive_message_bytes(), 64u << 20);
  EXPECT_EQ(transport.max_send_message_bytes(), 64u << 20);
  EXPECT_EQ(transport.max_inline_kv_bytes(), 16u << 20);
  EXPECT_TRUE(transport.ucx_worker_address().empty());

  v1::CloseSessionRequest close;
  close.set_session_id(id);
  v1::CloseSessionResponse closed;
  ASSERT_TRUE(stub_->CloseSession(Ctx().get(), close, &closed).ok());
  EXPECT_GT(closed.freed_bytes(), 0u);
  s = stub_->GetSession(Ctx().get(), get, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);

  const std::vector<std::string> lines = absl::StrSplit(Metrics(), '\n');
  EXPECT_THAT(lines, Contains("wavekv_rpc_requests_total{code=\"OK\","
                              "method=\"FetchClusters\"} 1"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_requests_total{code=\"NOT_FOUND\","
                              "method=\"GetSession\"} 1"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_requests_total{code=\"OK\","
                              "method=\"GetSession\"} 1"));
  EXPECT_THAT(lines, Contains("wavekv_rpc_latency_seconds_count{method="
                              "\"Append\"} 1"));
  EXPECT_EQ(service_->in_flight(), 0);
  EXPECT_EQ(service_->finished(), 9u);
}

TEST_F(ServiceTest, BytesCountersMatchMessageSizes) {
  Start(Authenticator::Disabled());
  const std::string id = CreateSession();
  v1::AppendRequest req;
  req.set_session_id(id);
  v1::LayerKV* l = req.add_layers();
  l->set_layer(1);
  l->set_num_tokens(3);
  l->set_keys(KvBytes(0, 3, 1.0f));
  l->set_values(KvBytes(0, 3, 1.0f));
  v1::AppendResponse resp;
  ASSERT_TRUE(stub_->Append(Ctx().get(), req, &resp).ok());
  const std::vector<std::string> lines = absl::StrSplit(Metrics(), '\n');
  EXPECT_THAT(lines, Contains(absl::StrCat(
                         "wavekv_rpc_received_bytes_total{method=\"Append\"} ",
                         req.ByteSizeLong())));
  EXPECT_THAT(lines, Contains(absl::StrCat(
                         "wavekv_rpc_sent_bytes_total{method=\"Append\"} ",
                         resp.ByteSizeLong())));
}

TEST_F(ServiceTest, AuthenticationDerivesTheTenant) {
  const std::string path =
      std::string(std::getenv("TEST_TMPDIR")) + "/svc_tokens";
  {
    std::ofstream out(path);
    out << "tok-a tenant-a\ntok-b tenant-b\n";
  }
  Start(*Authenticator::FromTokensFile(path));

  v1::ListSessionsResponse list;
  grpc::Status s =
      stub_->ListSessions(Ctx().get(), v1::ListSessionsRequest(), &list);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(s.error_message(), "authorization: missing bearer token");
  s = stub_->ListSessions(Ctx("tok-zzz").get(), v1::ListSessionsRequest(),
                          &list);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(s.error_message(), "authorization: unknown token");

  const std::string id = CreateSession("tok-a");
  ASSERT_FALSE(id.empty());
  v1::GetSessionRequest get;
  get.set_session_id(id);
  v1::SessionInfo info;
  EXPECT_TRUE(stub_->GetSession(Ctx("tok-a").get(), get, &info).ok());
  // Another tenant sees NOT_FOUND, exactly like a missing session.
  s = stub_->GetSession(Ctx("tok-b").get(), get, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  v1::AppendResponse appended;
  s = Append(id, 0, 0, 1, &appended, "tok-b");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  s = Append(id, 0, 0, 1, &appended);  // no token
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(
      stub_->ListSessions(Ctx("tok-b").get(), v1::ListSessionsRequest(), &list)
          .ok());
  EXPECT_EQ(list.sessions_size(), 0);
  v1::GetTransportInfoRequest transport_req;
  transport_req.set_session_id(id);
  v1::GetTransportInfoResponse transport;
  s = stub_->GetTransportInfo(Ctx("tok-b").get(), transport_req, &transport);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(
      stub_->GetTransportInfo(Ctx("tok-a").get(), transport_req, &transport)
          .ok());

  // Health stays open without credentials.
  EXPECT_EQ(Health(channel_, ""), 1);
  EXPECT_EQ(Health(channel_, "wavekv.v1.WaveKv"), 1);

  const std::vector<std::string> lines = absl::StrSplit(Metrics(), '\n');
  EXPECT_THAT(lines,
              Contains("wavekv_rpc_requests_total{code="
                       "\"UNAUTHENTICATED\",method=\"ListSessions\"} 2"));
  EXPECT_THAT(Metrics(), ::testing::Not(HasSubstr("tenant")));
}

TEST_F(ServiceTest, ConversionErrorsNameTheField) {
  Start(Authenticator::Disabled());
  v1::CreateSessionRequest create;
  create.mutable_shape()->set_num_layers(1);
  create.mutable_shape()->set_num_q_heads(1);
  create.mutable_shape()->set_num_kv_heads(1);
  create.mutable_shape()->set_head_dim(64);
  v1::CreateSessionResponse created;
  grpc::Status s = stub_->CreateSession(Ctx().get(), create, &created);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("shape.dtype: must be DTYPE_FP16"));

  const std::string id = CreateSession();
  v1::RetrieveRequest retrieve = ExactRetrieve(id, false);
  retrieve.clear_mode();
  v1::RetrieveResponse retrieved;
  s = stub_->Retrieve(Ctx().get(), retrieve, &retrieved);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("mode: must be"));
  retrieve = ExactRetrieve(id, false);
  retrieve.mutable_queries(0)->set_query("abcdef");
  s = stub_->Retrieve(Ctx().get(), retrieve, &retrieved);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(),
            "queries[0].query: expected a multiple of 4 bytes (fp32), got 6");

  v1::AppendRequest append;
  append.set_session_id(id);
  append.set_durability(static_cast<v1::Durability>(12));
  append.add_layers()->set_num_tokens(1);
  v1::AppendResponse appended;
  s = stub_->Append(Ctx().get(), append, &appended);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("durability: unknown value 12"));
}

TEST_F(ServiceTest, ResponsesOverTheSendLimitAreRefusedClearly) {
  ServiceLimits limits;
  limits.max_send_message_bytes = 64 << 10;
  limits.max_receive_message_bytes = 1 << 20;
  limits.max_inline_kv_bytes = 1 << 20;
  Start(Authenticator::Disabled(), limits);
  const std::string id = CreateSession();
  v1::AppendResponse appended;
  // 300 tokens * 2 heads * 64 bytes * (K+V) = 76800 bytes of K/V.
  ASSERT_TRUE(Append(id, 0, 0, 300, &appended).ok());
  v1::RetrieveResponse retrieved;
  grpc::Status s =
      stub_->Retrieve(Ctx().get(), ExactRetrieve(id, true), &retrieved);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(),
              HasSubstr("exceed the server's message limit of 65536 bytes"));
  s = stub_->Retrieve(Ctx().get(), ExactRetrieve(id, false), &retrieved);
  ASSERT_TRUE(s.ok()) << s.error_message();

  v1::FetchClustersRequest fetch;
  fetch.set_session_id(id);
  v1::HeadSlots* hs = fetch.add_heads();
  *hs->mutable_ranges() = retrieved.results(0).heads(0).retrieval();
  {
    auto ctx = Ctx();
    auto reader = stub_->FetchClusters(ctx.get(), fetch);  // 1 MiB default
    v1::ClusterChunk chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    s = reader->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(s.error_message(), HasSubstr("max_chunk_bytes: chunks of "
                                             "1048576 bytes may exceed"));
  }
  fetch.set_max_chunk_bytes(16 << 10);
  auto ctx = Ctx();
  auto reader = stub_->FetchClusters(ctx.get(), fetch);
  v1::ClusterChunk chunk;
  uint64_t slots = 0;
  while (reader->Read(&chunk)) slots += chunk.num_slots();
  s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(slots, 300u);
}

TEST_F(ServiceTest, CancelledFetchStopsStreaming) {
  Start(Authenticator::Disabled());
  const std::string id = CreateSession();
  v1::AppendResponse appended;
  ASSERT_TRUE(Append(id, 0, 0, 2000, &appended).ok());
  v1::FetchClustersRequest fetch;
  fetch.set_session_id(id);
  fetch.set_max_chunk_bytes(4096);
  v1::HeadSlots* hs = fetch.add_heads();
  v1::SlotRange* range = hs->add_ranges();
  range->set_num_slots(2000);
  auto ctx = Ctx();
  auto reader = stub_->FetchClusters(ctx.get(), fetch);
  v1::ClusterChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk)) << reader->Finish().error_message();
  ctx->TryCancel();
  int more = 0;
  while (reader->Read(&chunk)) ++more;
  EXPECT_LT(more, 62);  // 63 chunks in all; the rest were not sent
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The handler has finished (and counted) once the server side is done.
  for (int i = 0; i < 200 && service_->in_flight() != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(service_->in_flight(), 0);
}

TEST_F(ServiceTest, HealthReportsNotServingWhenToldSo) {
  Start(Authenticator::Disabled());
  EXPECT_EQ(Health(channel_, "wavekv.v1.WaveKv"), 1);
  SetServing(*server_, false);
  EXPECT_EQ(Health(channel_, ""), 2);
  EXPECT_EQ(Health(channel_, "wavekv.v1.WaveKv"), 2);
  // Unknown services are NOT_FOUND (negative code here).
  EXPECT_EQ(Health(channel_, "nope"),
            -static_cast<int>(grpc::StatusCode::NOT_FOUND));
}

TEST_F(ServiceTest, DrainingRefusesNewCallsAndCancelsStalledStreams) {
  Start(Authenticator::Disabled());
  const std::string id = CreateSession();
  v1::AppendResponse appended;
  for (uint32_t i = 0; i < 4; ++i) {  // 4 x 3.75 MiB appends
    ASSERT_TRUE(Append(id, 0, i * 15000, 15000, &appended).ok());
  }
  v1::FetchClustersRequest fetch;
  fetch.set_session_id(id);
  for (uint32_t h = 0; h < kKvHeads; ++h) {
    v1::HeadSlots* hs = fetch.add_heads();
    hs->set_kv_head(h);
    hs->add_ranges()->set_num_slots(60000);
  }
  auto ctx = Ctx();
  auto reader = stub_->FetchClusters(ctx.get(), fetch);
  v1::ClusterChunk chunk;
  // Then stop reading: 15 MiB do not fit the flow-control windows, so the
  // handler blocks in Write.
  ASSERT_TRUE(reader->Read(&chunk)) << reader->Finish().error_message();
  for (int i = 0; i < 400 && service_->in_flight() != 1; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(service_->in_flight(), 1);

  service_->StartDraining();
  EXPECT_TRUE(service_->draining());
  v1::GetSessionRequest get;
  get.set_session_id(id);
  v1::SessionInfo info;
  const grpc::Status s = stub_->GetSession(Ctx().get(), get, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(s.error_message(), "server: shutting down; retry elsewhere");
  EXPECT_EQ(Health(channel_, ""), 1);   // health is the server's to set
  EXPECT_EQ(service_->in_flight(), 1);  // the stream is still running

  service_->CancelStreams();
  for (int i = 0; i < 400 && service_->in_flight() != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(service_->in_flight(), 0);
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

}  // namespace
}  // namespace wavekv
