// WaveKvClient against the real service and engine, in process, over gRPC
// on 127.0.0.1 with a port picked at run time.
#include "client/wavekv_client.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/attention_reference.h"
#include "client/demo.h"
#include "client/synthetic_kv.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvstore/engine.h"
#include "prometheus/registry.h"
#include "transport/auth.h"
#include "transport/metrics.h"
#include "transport/service.h"

namespace wavekv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Attention shape of the tests: 2 layers, GQA 4/2, head_dim 64, fp16.
constexpr uint32_t kLayers = 2, kQHeads = 4, kKvHeads = 2, kHeadDim = 64;
constexpr uint64_t kTokenBytes = kKvHeads * kHeadDim * 2;  // K of one token

class InProcessServer {
 public:
  // `tokens_file` empty: authentication disabled.
  InProcessServer(uint32_t max_message_bytes, const std::string& tokens_file) {
    EngineOptions engine_options;
    engine_options.memory_budget_bytes = 256ull << 20;
    engine_options.max_inline_kv_bytes = 1 << 20;
    engine_ = *Engine::Open(engine_options);
    auth_ = tokens_file.empty() ? Authenticator::Disabled()
                                : *Authenticator::FromTokensFile(tokens_file);
    metrics_ = std::make_unique<ServerMetrics>(registry_);
    ServiceLimits limits;
    limits.max_receive_message_bytes = max_message_bytes;
    limits.max_send_message_bytes = max_message_bytes;
    limits.max_inline_kv_bytes = engine_options.max_inline_kv_bytes;
    service_ = std::make_unique<WaveKvService>(*engine_, *auth_, *metrics_,
                                               limits, nullptr);
    EnableHealthAndReflection();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    SetServing(*server_, true);
  }
  ~InProcessServer() { server_->Shutdown(); }

  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  grpc::Server& server() { return *server_; }

 private:
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Authenticator> auth_;
  prometheus::Registry registry_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<WaveKvService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// "SERVING" etc., or the error.
std::string Serving(const absl::StatusOr<ServingStatus>& status) {
  return status.ok() ? ServingStatusName(*status) : status.status().ToString();
}

v1::CreateSessionRequest SessionRequest(const std::string& label = "test") {
  v1::CreateSessionRequest request;
  v1::ModelShape* shape = request.mutable_shape();
  shape->set_num_layers(kLayers);
  shape->set_num_q_heads(kQHeads);
  shape->set_num_kv_heads(kKvHeads);
  shape->set_head_dim(kHeadDim);
  shape->set_dtype(v1::DTYPE_FP16);
  request.set_label(label);
  return request;
}

SyntheticKvOptions TestKv() {
  SyntheticKvOptions o;
  o.num_layers = kLayers;
  o.num_q_heads = kQHeads;
  o.num_kv_heads = kKvHeads;
  o.head_dim = kHeadDim;
  o.dtype = DType::kFp16;
  o.seed = 3;
  o.clusters_per_head = 8;
  return o;
}

class WaveKvClientTest : public ::testing::Test {
 protected:
  // Server and client limits: 256 KiB messages, 40 KiB of K+V per Append.
  static constexpr uint32_t kMessageBytes = 256u << 10;

  void SetUp() override {
    server_ = std::make_unique<InProcessServer>(kMessageBytes, "");
    ClientOptions options;
    options.target = server_->target();
    options.max_message_bytes = kMessageBytes;
    options.max_append_bytes = 40u << 10;
    options.fetch_chunk_bytes = 4u << 10;
    options.list_page_size = 2;
    options.call_timeout = absl::Seconds(20);
    client_ = *WaveKvClient::Connect(options);
  }

  // Prefills `n` synthetic tokens into every layer of a new session; keeps
  // the local copy in keys_/values_.
  std::string PrefilledSession(uint64_t n) {
    absl::StatusOr<v1::SessionInfo> s =
        client_->CreateSession(SessionRequest());
    EXPECT_TRUE(s.ok()) << s.status();
    SyntheticKv kv(TestKv());
    keys_.assign(kLayers, std::vector<uint8_t>(n * kTokenBytes));
    values_.assign(kLayers, std::vector<uint8_t>(n * kTokenBytes));
    for (uint32_t l = 0; l < kLayers; ++l) {
      kv.Generate(l, 0, n, keys_[l].data(), values_[l].data());
      absl::StatusOr<v1::AppendResponse> r = client_->AppendPrefill(
          s->session_id(), l, 0, n, keys_[l], values_[l]);
      EXPECT_TRUE(r.ok()) << r.status();
    }
    return s->session_id();
  }

  std::unique_ptr<InProcessServer> server_;
  std::unique_ptr<WaveKvClient> client_;
  std::vector<std::vector<uint8_t>> keys_, values_;
};

TEST_F(WaveKvClientTest, HealthAndTransportInfo) {
  EXPECT_EQ(Serving(client_->Health()), "SERVING");
  EXPECT_EQ(Serving(client_->Health("wavekv.v1.WaveKv")), "SERVING");
  EXPECT_THAT(client_->Health("no.such.Service").status().code(),
              absl::StatusCode::kNotFound);
  SetServing(server_->server(), false);
  EXPECT_EQ(Serving(client_->Health()), "NOT_SERVING");
  absl::StatusOr<v1::GetTransportInfoResponse> info =
      client_->GetTransportInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->max_receive_message_bytes(), kMessageBytes);
  EXPECT_FALSE(info->transports().empty());
}

TEST_F(WaveKvClientTest, PrefillIsChunkedUnderTheMessageLimit) {
  absl::StatusOr<v1::SessionInfo> s = client_->CreateSession(SessionRequest());
  ASSERT_TRUE(s.ok()) << s.status();
  const uint64_t n = 1000;  // 500 KiB of K+V: twice the message limit
  SyntheticKv kv(TestKv());
  std::vector<uint8_t> k(n * kTokenBytes), v(n * kTokenBytes);
  kv.Generate(0, 0, n, k.data(), v.data());

  // One request with everything is refused by the message limit...
  v1::AppendRequest whole;
  whole.set_session_id(s->session_id());
  v1::LayerKV* layer = whole.add_layers();
  layer->set_num_tokens(n);
  layer->set_keys(std::string(k.begin(), k.end()));
  layer->set_values(std::string(v.begin(), v.end()));
  EXPECT_EQ(client_->Append(whole).status().code(),
            absl::StatusCode::kResourceExhausted);

  // ...AppendPrefill cuts it into 40 KiB requests (80 tokens each).
  std::vector<AppendProgress> progress;
  absl::StatusOr<v1::AppendResponse> r = client_->AppendPrefill(
      s->session_id(), 0, 0, n, k, v,
      [&](const AppendProgress& p) { progress.push_back(p); });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->layer_tokens(), ElementsAre(n, 0));
  ASSERT_EQ(progress.size(), 13u);  // ceil(1000 / 80)
  EXPECT_EQ(progress[0].tokens_done, 80u);
  EXPECT_EQ(progress[0].bytes_sent, 80 * 2 * kTokenBytes);
  EXPECT_EQ(progress.back().tokens_done, n);
  EXPECT_EQ(progress.back().requests, 13u);
  EXPECT_EQ(progress.back().bytes_sent, 2 * n * kTokenBytes);

  // A continuation appends at the layer's end; a replay is refused and the
  // error says what was stored.
  absl::StatusOr<v1::AppendResponse> again =
      client_->AppendPrefill(s->session_id(), 0, 0, n, k, v);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(),
              HasSubstr("layer 0: stored tokens [0, 0) of [0, 1000)"));
  EXPECT_THAT(again.status().message(), HasSubstr("start_token"));
  absl::StatusOr<v1::SessionInfo> info = client_->GetSession(s->session_id());
  ASSERT_TRUE(info.ok());
  EXPECT_THAT(info->layer_tokens(), ElementsAre(n, 0));

  ClientOptions tiny = client_->options();
  tiny.max_append_bytes = 4096;
  EXPECT_TRUE(tiny.Validate().ok());
  tiny.max_append_bytes = kMessageBytes;  // no room for the envelope
  EXPECT_THAT(tiny.Validate().message(), HasSubstr("max_append_bytes"));
}

TEST_F(WaveKvClientTest, DecodeAppendAddsOneTokenToEveryLayer) {
  const std::string id = PrefilledSession(100);
  SyntheticKv kv(TestKv());
  std::vector<uint8_t> k(kLayers * kTokenBytes), v(kLayers * kTokenBytes);
  std::vector<TokenKv> layers;
  for (uint32_t l = 0; l < kLayers; ++l) {
    kv.Generate(l, 100, 1, k.data() + l * kTokenBytes,
                v.data() + l * kTokenBytes);
    layers.push_back(
        TokenKv{absl::MakeConstSpan(k).subspan(l * kTokenBytes, kTokenBytes),
                absl::MakeConstSpan(v).subspan(l * kTokenBytes, kTokenBytes)});
  }
  absl::StatusOr<v1::AppendResponse> r = client_->AppendDecode(id, 100, layers);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->layer_tokens(), ElementsAre(101, 101));
  EXPECT_EQ(r->num_tokens(), 101u);

  // Replaying the step is refused as a whole (no layer changes).
  r = client_->AppendDecode(id, 100, layers);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  // A token of the wrong size names the field.
  layers[1].keys = layers[1].keys.subspan(0, 10);
  r = client_->AppendDecode(id, 101, layers);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("layers[1].keys"));
  absl::StatusOr<v1::SessionInfo> info = client_->GetSession(id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->num_tokens(), 101u);
}

TEST_F(WaveKvClientTest, RetrieveAndFetchRoundTripTheStoredKv) {
  const uint64_t n = 300;
  const std::string id = PrefilledSession(n);
  SyntheticKv kv(TestKv());
  const std::vector<float> query = kv.Query(1, 0);
  const QueryView view{id, query};
  absl::StatusOr<v1::RetrieveResponse> response =
      client_->Retrieve(1, v1::RETRIEVE_MODE_EXACT, {&view, 1});
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->results_size(), 1);
  const v1::SessionResult& result = response->results(0);
  EXPECT_EQ(result.num_tokens(), n);
  ASSERT_EQ(result.heads_size(), static_cast<int>(kKvHeads));

  // 4 KiB chunks: each 300-slot range arrives in many pieces.
  absl::StatusOr<std::vector<FetchedHead>> fetched = client_->FetchClusters(
      id, 1, result.layout_epoch(), RetrievalSlots(result));
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ASSERT_EQ(fetched->size(), kKvHeads);
  const size_t head_bytes = kHeadDim * 2;
  for (const FetchedHead& head : *fetched) {
    ASSERT_EQ(head.num_slots(), n);
    std::vector<bool> seen(n, false);
    for (size_t slot = 0; slot < n; ++slot) {
      const uint64_t t = head.positions[slot];
      ASSERT_LT(t, n);
      EXPECT_FALSE(seen[t]) << "token " << t << " twice";
      seen[t] = true;
      const size_t local = t * kTokenBytes + head.kv_head * head_bytes;
      ASSERT_EQ(head.keys.compare(
                    slot * head_bytes, head_bytes,
                    reinterpret_cast<const char*>(keys_[1].data() + local),
                    head_bytes),
                0)
          << "kv head " << head.kv_head << " slot " << slot;
      ASSERT_EQ(head.values.compare(
                    slot * head_bytes, head_bytes,
                    reinterpret_cast<const char*>(values_[1].data() + local),
                    head_bytes),
                0);
    }
  }

  // The same K/V inline, and attention over it equals full attention.
  absl::StatusOr<v1::RetrieveResponse> inline_response = client_->Retrieve(
      RetrieveParams{.layer = 1, .include_kv = true}, {&view, 1});
  ASSERT_TRUE(inline_response.ok()) << inline_response.status();
  const v1::SessionResult& inline_result = inline_response->results(0);
  for (uint32_t h = 0; h < kKvHeads; ++h) {
    EXPECT_EQ(inline_result.heads(h).keys(), (*fetched)[h].keys);
    EXPECT_EQ(inline_result.heads(h).values(), (*fetched)[h].values);
  }
  const AttentionShape shape{kQHeads, kKvHeads, kHeadDim, DType::kFp16};
  const LayerKvView local{keys_[1], values_[1], n};
  absl::StatusOr<std::vector<float>> got = RetrievedAttention(
      shape, inline_result, query, RetrievedKvInline(inline_result), local);
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<std::vector<float>> want =
      LocalFullAttention(shape, query, local);
  ASSERT_TRUE(want.ok());
  for (size_t i = 0; i < want->size(); ++i) {
    ASSERT_NEAR((*got)[i], (*want)[i], 1e-5) << i;
  }
}

TEST_F(WaveKvClientTest, ErrorsKeepTheServersCodeAndMessage) {
  absl::StatusOr<v1::SessionInfo> missing = client_->GetSession("no-such");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("session_id"));

  v1::CreateSessionRequest bad = SessionRequest();
  bad.mutable_shape()->set_head_dim(7);
  absl::StatusOr<v1::SessionInfo> created = client_->CreateSession(bad);
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(created.status().message(), HasSubstr("shape.head_dim"));

  const std::string id = PrefilledSession(20);
  std::vector<float> query(kQHeads * kHeadDim, 0.5f);
  const QueryView view{id, query};
  absl::StatusOr<v1::RetrieveResponse> r =
      client_->Retrieve(kLayers, v1::RETRIEVE_MODE_EXACT, {&view, 1});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("layer"));
  const QueryView short_view{id, absl::MakeConstSpan(query).subspan(0, 10)};
  r = client_->Retrieve(0, v1::RETRIEVE_MODE_EXACT, {&short_view, 1});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("queries[0].query"));

  EXPECT_EQ(client_->CloseSession("no-such").status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<FetchedHead>> fetched =
      client_->FetchClusters("no-such", 0, 0, {v1::HeadSlots()});
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kNotFound);

  // Nothing listens there: UNAVAILABLE, quickly.
  ClientOptions nowhere = client_->options();
  nowhere.target = "127.0.0.1:1";
  nowhere.call_timeout = absl::Seconds(5);
  EXPECT_EQ((*WaveKvClient::Connect(nowhere))->ListSessions().status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(WaveKvClientTest, ListWalksAllPagesAndCloseFrees) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<v1::SessionInfo> s =
        client_->CreateSession(SessionRequest(absl::StrCat("s", i)));
    ASSERT_TRUE(s.ok()) << s.status();
    ids.push_back(s->session_id());
  }
  absl::StatusOr<std::vector<v1::SessionInfo>> all = client_->ListSessions();
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 5u);  // page size 2: three pages
  std::vector<std::string> listed;
  for (const auto& s : *all) listed.push_back(s.session_id());
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(listed, ids);

  const std::string full = PrefilledSession(50);
  absl::StatusOr<uint64_t> freed = client_->CloseSession(full);
  ASSERT_TRUE(freed.ok()) << freed.status();
  EXPECT_GE(*freed, 2 * kLayers * 50 * kTokenBytes);
  EXPECT_EQ(client_->GetSession(full).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->ListSessions()->size(), 5u);
}

TEST_F(WaveKvClientTest, OneClientServesManyThreads) {
  // Each thread runs its own session through the shared client; every
  // answer must hold exactly that thread's data.
  constexpr int kThreads = 4;
  constexpr uint64_t kTokens = 120;
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      SyntheticKvOptions o = TestKv();
      o.seed = 100 + i;
      SyntheticKv kv(o);
      std::vector<uint8_t> k(kTokens * kTokenBytes), v(kTokens * kTokenBytes);
      kv.Generate(0, 0, kTokens, k.data(), v.data());
      absl::StatusOr<v1::SessionInfo> s =
          client_->CreateSession(SessionRequest(absl::StrCat("t", i)));
      if (!s.ok()) return void(failures[i] = s.status().ToString());
      absl::Status st =
          client_->AppendPrefill(s->session_id(), 0, 0, kTokens, k, v).status();
      if (!st.ok()) return void(failures[i] = st.ToString());
      const std::vector<float> query = kv.Query(0, 0);
      const QueryView view{s->session_id(), query};
      absl::StatusOr<v1::RetrieveResponse> r =
          client_->Retrieve(0, v1::RETRIEVE_MODE_EXACT, {&view, 1});
      if (!r.ok()) return void(failures[i] = r.status().ToString());
      absl::StatusOr<std::vector<FetchedHead>> f = client_->FetchClusters(
          s->session_id(), 0, r->results(0).layout_epoch(),
          RetrievalSlots(r->results(0)));
      if (!f.ok()) return void(failures[i] = f.status().ToString());
      const AttentionShape shape{kQHeads, kKvHeads, kHeadDim, DType::kFp16};
      std::vector<RetrievedKv> retrieved;
      for (const FetchedHead& head : *f) {
        retrieved.push_back(RetrievedKv::Of(head.keys, head.values));
      }
      const LayerKvView local{k, v, kTokens};
      absl::StatusOr<std::vector<float>> got =
          RetrievedAttention(shape, r->results(0), query, retrieved, local);
      absl::StatusOr<std::vector<float>> want =
          LocalFullAttention(shape, query, local);
      if (!got.ok() || !want.ok()) {
        return void(failures[i] = "attention failed");
      }
      for (size_t j = 0; j < want->size(); ++j) {
        if (std::abs((*got)[j] - (*want)[j]) > 1e-5) {
          return void(failures[i] = absl::StrCat("output ", j, " differs"));
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(failures[i], "") << "thread " << i;
  }
  EXPECT_EQ(client_->ListSessions()->size(), size_t{kThreads});
}

TEST(WaveKvClientAuthTest, SendsTheBearerToken) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/tokens";
  std::ofstream(path)
      << "# test tokens\nsecret-a tenant-a\nsecret-b tenant-b\n";
  InProcessServer server(4u << 20, path);
  ClientOptions options;
  options.target = server.target();
  auto client = [&](const std::string& token) {
    ClientOptions o = options;
    o.bearer_token = token;
    return *WaveKvClient::Connect(o);
  };

  absl::Status none = client("")->ListSessions().status();
  EXPECT_EQ(none.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(none.message(), HasSubstr("missing bearer token"));
  absl::Status wrong = client("secret-c")->ListSessions().status();
  EXPECT_EQ(wrong.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(wrong.message(), HasSubstr("unknown token"));
  // Health checking stays open.
  EXPECT_EQ(Serving(client("")->Health()), "SERVING");

  std::unique_ptr<WaveKvClient> a = client("secret-a");
  absl::StatusOr<v1::SessionInfo> s = a->CreateSession(SessionRequest());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(a->ListSessions()->size(), 1u);
  // Tenant b neither sees nor touches tenant a's session.
  std::unique_ptr<WaveKvClient> b = client("secret-b");
  EXPECT_EQ(b->ListSessions()->size(), 0u);
  EXPECT_EQ(b->GetSession(s->session_id()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(a->GetSession(s->session_id()).ok());
  ClientOptions bad = options;
  bad.bearer_token = "has space";
  EXPECT_THAT(WaveKvClient::Connect(bad).status().message(),
              HasSubstr("bearer_token"));
}

TEST(WaveKvDemoTest, SmallDemoRunsEndToEndAndChecksEveryAnswer) {
  InProcessServer server(64u << 20, "");
  ClientOptions options;
  options.target = server.target();
  std::unique_ptr<WaveKvClient> client = *WaveKvClient::Connect(options);
  DemoOptions demo;
  demo.num_layers = 2;
  demo.context_tokens = 600;
  demo.decode_steps = 3;
  demo.num_q_heads = 8;
  demo.num_kv_heads = 2;
  demo.head_dim = 64;
  demo.keep_session = false;
  demo.index_wait = absl::Seconds(20);
  using Modes = std::vector<v1::RetrieveMode>;
  for (const Modes& modes :
       {Modes{v1::RETRIEVE_MODE_EXACT}, Modes{v1::RETRIEVE_MODE_WAVE},
        Modes{v1::RETRIEVE_MODE_EXACT, v1::RETRIEVE_MODE_WAVE}}) {
    demo.modes = modes;
    std::ostringstream out;
    absl::StatusOr<DemoReport> report = RunDemo(*client, demo, out);
    ASSERT_TRUE(report.ok()) << report.status() << "\n" << out.str();
    ASSERT_EQ(report->samples.size(), 6u * modes.size());
    for (const DemoSample& s : report->samples) {
      EXPECT_EQ(s.num_tokens, 600u + s.step + 1);
      if (s.mode == v1::RETRIEVE_MODE_EXACT) {
        EXPECT_EQ(s.retrieved_tokens, s.num_tokens);
        EXPECT_LT(s.rel_error, 1e-5);
      } else {  // WAVE: an estimate, but a finite one over fewer tokens
        EXPECT_TRUE(std::isfinite(s.rel_error));
        EXPECT_LE(s.retrieved_tokens, s.num_tokens);
      }
    }
    EXPECT_EQ(report->prefill_bytes, 2 * 2 * 600 * (2 * 64 * 2));
    EXPECT_THAT(out.str(), HasSubstr("summary"));
    std::cout << out.str();  // in the test log, for a look at the output
    EXPECT_TRUE(report->session_id.empty());  // closed
  }
  EXPECT_TRUE(client->ListSessions()->empty());
}

}  // namespace
}  // namespace wavekv
