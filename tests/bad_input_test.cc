// Every RPC of wavekv.v1.WaveKv with bad input, against the real server
// process: the status code of the proto's error convention, a message that
// names the offending field, and no state change (every tenant's sessions,
// as ListSessions and GetSession show them, are the same before and after).
//
// The server runs with a tokens file of three tenants (alice, bob, carol)
// and small limits so that every limit can be hit cheaply.
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/answer_checks.h"
#include "tests/grpc_health.grpc.pb.h"
#include "tests/kv_pattern.h"
#include "tests/prometheus_text.h"
#include "tests/server_process.h"
#include "tests/wire_client.h"

namespace wavekv::testing {
namespace {

using grpc::StatusCode;

const char kAlice[] = "alice-token-0123";
const char kBob[] = "bob-token-4567";
const char kCarol[] = "carol-token-89ab";
constexpr uint32_t kMaxSessionsPerTenant = 3;
constexpr uint64_t kMaxInlineKvBytes = 8192;
constexpr uint32_t kMaxBatchSessions = 4;
constexpr uint64_t kMaxTokensPerSession = 100000;
constexpr uint64_t kMaxMessageBytes = 2 << 20;
constexpr uint64_t kMemoryBudgetBytes = 4 << 20;

// What a rejected call must look like.
struct Rejection {
  StatusCode code;
  // The message must contain at least one of these (field names).
  std::vector<std::string> names;
  // Further codes the contract leaves open for this case.
  std::vector<StatusCode> also = {};
};

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto dir = MakeTempDir("bad-input-tokens");
    ASSERT_TRUE(dir.ok()) << dir.status();
    const std::string tokens = *dir + "/tokens";
    ASSERT_TRUE(
        WriteFile(tokens, absl::StrCat("# token tenant\n", kAlice, " alice\n\n",
                                       kBob, " bob\n", kCarol, " carol\n"))
            .ok());
    auto server = ServerProcess::Start(
        {.name = "bad-input",
         .args = {
             "--tokens_file=" + tokens,
             absl::StrCat("--max_sessions_per_tenant=", kMaxSessionsPerTenant),
             absl::StrCat("--max_inline_kv_bytes=", kMaxInlineKvBytes),
             absl::StrCat("--max_batch_sessions=", kMaxBatchSessions),
             absl::StrCat("--max_tokens_per_session=", kMaxTokensPerSession),
             absl::StrCat("--max_message_bytes=", kMaxMessageBytes),
             absl::StrCat("--memory_budget=", kMemoryBudgetBytes),
         }});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server).release();
    channel_ =
        new std::shared_ptr<grpc::Channel>(Connect(server_->grpc_address()));
    stub_ = v1::WaveKv::NewStub(*channel_).release();
  }

  static void TearDownTestSuite() {
    delete stub_;
    delete channel_;
    stub_ = nullptr;
    if (server_ != nullptr) {
      auto exit = server_->Terminate();
      EXPECT_TRUE(exit.ok() && exit->ok())
          << (exit.ok() ? exit->ToString() : exit.status().ToString());
      delete server_;
      server_ = nullptr;
    }
  }

  // Each test starts with: alice's `victim_` (2 layers, 20 tokens each) and
  // bob's `bobs_` (1 layer, 5 tokens).
  void SetUp() override {
    ASSERT_NE(stub_, nullptr) << "server did not start";
    victim_ = CreateWithTokens(kAlice, victim_pattern_, 20);
    bobs_ = CreateWithTokens(kBob, bob_pattern_, 5);
    ASSERT_FALSE(victim_.empty());
    ASSERT_FALSE(bobs_.empty());
  }

  void TearDown() override {
    if (stub_ == nullptr) return;
    for (const char* token : {kAlice, kBob, kCarol}) {
      auto all = ListAllSessions(stub(), token);
      for (const auto& s : all.response) {
        CallCloseSession(stub(), token, s.session_id());
      }
    }
  }

  v1::WaveKv::Stub& stub() { return *stub_; }

  std::string CreateWithTokens(const std::string& token,
                               const KvPattern& pattern, uint64_t tokens,
                               uint64_t max_tokens = 0) {
    v1::CreateSessionRequest request = SessionRequest(pattern.shape());
    request.set_max_tokens(max_tokens);
    auto created = CallCreateSession(stub(), token, request);
    EXPECT_TRUE(created.ok()) << StatusText(created.status);
    if (!created.ok()) return "";
    const std::string id = created.response.session().session_id();
    grpc::Status st = AppendTokens(stub(), token, id, pattern, 0, tokens, 64);
    EXPECT_TRUE(st.ok()) << StatusText(st);
    return id;
  }

  // Every tenant's sessions, without read-time fields.
  std::map<std::string, std::vector<v1::SessionInfo>> Snapshot() {
    std::map<std::string, std::vector<v1::SessionInfo>> state;
    for (const char* token : {kAlice, kBob, kCarol}) {
      auto all = ListAllSessions(stub(), token);
      EXPECT_TRUE(all.ok()) << StatusText(all.status);
      for (const auto& s : all.response) {
        state[token].push_back(StableView(s));
        // GetSession must agree with the listing.
        auto got = CallGetSession(stub(), token, s.session_id());
        EXPECT_TRUE(got.ok()) << StatusText(got.status);
        std::string diff;
        EXPECT_TRUE(SameMessage(StableView(got.response), StableView(s), &diff))
            << diff;
      }
    }
    return state;
  }

  void ExpectSameState(
      const std::string& what,
      const std::map<std::string, std::vector<v1::SessionInfo>>& before) {
    auto after = Snapshot();
    ASSERT_EQ(before.size(), after.size()) << what << ": tenants changed";
    for (const auto& [token, sessions] : before) {
      const auto& now = after[token];
      ASSERT_EQ(sessions.size(), now.size())
          << what << ": session count of " << token << " changed";
      for (size_t i = 0; i < sessions.size(); ++i) {
        std::string diff;
        EXPECT_TRUE(SameMessage(sessions[i], now[i], &diff))
            << what << ": session " << sessions[i].session_id()
            << " changed: " << diff;
      }
    }
  }

  // Checks `status` against `want`.
  static void ExpectRejection(const std::string& what,
                              const grpc::Status& status,
                              const Rejection& want) {
    bool code_ok = status.error_code() == want.code;
    for (StatusCode c : want.also) code_ok |= status.error_code() == c;
    EXPECT_TRUE(code_ok) << what << ": got " << StatusText(status) << ", want "
                         << CodeName(want.code);
    bool named = want.names.empty();
    for (const std::string& n : want.names) {
      named |= absl::StrContains(status.error_message(), n);
    }
    EXPECT_TRUE(named) << what << ": message \"" << status.error_message()
                       << "\" names none of {"
                       << absl::StrJoin(want.names, ", ") << "}";
  }

  // Runs `call`, checks its rejection and that no state changed.
  void ExpectRejected(const std::string& what,
                      const std::function<grpc::Status()>& call,
                      const Rejection& want) {
    auto before = Snapshot();
    grpc::Status status = call();
    ExpectRejection(what, status, want);
    ExpectSameState(what, before);
  }

  // An EXACT Retrieve of the victim at `layer` (for slot ranges/epochs).
  v1::SessionResult ExactVictim(uint32_t layer) {
    v1::RetrieveRequest request =
        RetrieveRequestFor(layer, v1::RETRIEVE_MODE_EXACT, false);
    AddQuery(request, victim_, victim_pattern_.Query(layer, 0));
    auto r = CallRetrieve(stub(), kAlice, request);
    EXPECT_TRUE(r.ok()) << StatusText(r.status);
    return r.ok() ? r.response.results(0) : v1::SessionResult();
  }

  const v1::ModelShape victim_shape_ = MakeShape(2, 4, 2, 16, v1::DTYPE_FP16);
  const KvPattern victim_pattern_{1, victim_shape_};
  const KvPattern bob_pattern_{2, MakeShape(1, 2, 2, 16, v1::DTYPE_FP16)};
  std::string victim_;
  std::string bobs_;

  static ServerProcess* server_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static v1::WaveKv::Stub* stub_;
};

ServerProcess* BadInputTest::server_ = nullptr;
std::shared_ptr<grpc::Channel>* BadInputTest::channel_ = nullptr;
v1::WaveKv::Stub* BadInputTest::stub_ = nullptr;

template <typename Request>
struct Case {
  std::string name;
  std::function<void(Request&)> mutate;
  Rejection want;
};

Rejection Invalid(std::vector<std::string> names) {
  return {StatusCode::INVALID_ARGUMENT, std::move(names)};
}

// A slot range past the layer's current end depends on the state (the
// layer may grow), so FAILED_PRECONDITION fits the proto's convention;
// INVALID_ARGUMENT is accepted too.
Rejection PastTheEnd(std::vector<std::string> names) {
  return {StatusCode::FAILED_PRECONDITION,
          std::move(names),
          {StatusCode::INVALID_ARGUMENT}};
}

// --------------------------------------------------------------- Create

TEST_F(BadInputTest, CreateSessionRejectsMalformedRequests) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  using R = v1::CreateSessionRequest;
  auto shape = [](R& r) { return r.mutable_shape(); };
  auto opts = [](R& r) { return r.mutable_index_options(); };
  const std::vector<Case<R>> cases = {
      {"missing shape", [](R& r) { r.clear_shape(); }, Invalid({"shape"})},
      {"num_layers 0", [&](R& r) { shape(r)->set_num_layers(0); },
       Invalid({"shape.num_layers"})},
      {"num_layers 1025", [&](R& r) { shape(r)->set_num_layers(1025); },
       Invalid({"shape.num_layers"})},
      {"num_q_heads 0", [&](R& r) { shape(r)->set_num_q_heads(0); },
       Invalid({"shape.num_q_heads"})},
      {"num_q_heads 1026", [&](R& r) { shape(r)->set_num_q_heads(1026); },
       Invalid({"shape.num_q_heads"})},
      {"num_q_heads not a multiple of num_kv_heads",
       [&](R& r) { shape(r)->set_num_q_heads(5); },
       Invalid({"shape.num_q_heads"})},
      {"num_kv_heads 0", [&](R& r) { shape(r)->set_num_kv_heads(0); },
       Invalid({"shape.num_kv_heads"})},
      {"num_kv_heads 257",
       [&](R& r) {
         shape(r)->set_num_kv_heads(257);
         shape(r)->set_num_q_heads(514);
       },
       Invalid({"shape.num_kv_heads"})},
      {"head_dim not a multiple of 8",
       [&](R& r) { shape(r)->set_head_dim(36); }, Invalid({"shape.head_dim"})},
      {"head_dim 8", [&](R& r) { shape(r)->set_head_dim(8); },
       Invalid({"shape.head_dim"})},
      {"head_dim 520", [&](R& r) { shape(r)->set_head_dim(520); },
       Invalid({"shape.head_dim"})},
      {"dtype unspecified",
       [&](R& r) { shape(r)->set_dtype(v1::DTYPE_UNSPECIFIED); },
       Invalid({"shape.dtype"})},
      {"dtype unknown",
       [&](R& r) { shape(r)->set_dtype(static_cast<v1::DType>(9)); },
       Invalid({"shape.dtype"})},
      {"retrieval_fraction 0",
       [&](R& r) { opts(r)->set_retrieval_fraction(0.0f); },
       Invalid({"index_options.retrieval_fraction"})},
      {"retrieval_fraction > 1",
       [&](R& r) { opts(r)->set_retrieval_fraction(1.5f); },
       Invalid({"index_options.retrieval_fraction"})},
      {"retrieval_fraction NaN",
       [&](R& r) { opts(r)->set_retrieval_fraction(nan); },
       Invalid({"index_options.retrieval_fraction"})},
      {"estimation_fraction < 0",
       [&](R& r) { opts(r)->set_estimation_fraction(-0.1f); },
       Invalid({"index_options.estimation_fraction"})},
      {"fractions sum > 1",
       [&](R& r) {
         opts(r)->set_retrieval_fraction(0.6f);
         opts(r)->set_estimation_fraction(0.6f);
       },
       Invalid({"index_options.estimation_fraction",
                "index_options.retrieval_fraction"})},
      {"cluster_size 0", [&](R& r) { opts(r)->set_cluster_size(0); },
       Invalid({"index_options.cluster_size"})},
      {"cluster_size 5000", [&](R& r) { opts(r)->set_cluster_size(5000); },
       Invalid({"index_options.cluster_size"})},
      {"update_tokens not a multiple of cluster_size",
       [&](R& r) { opts(r)->set_update_tokens(1000); },
       Invalid({"index_options.update_tokens"})},
      {"update_tokens 8",
       [&](R& r) {
         opts(r)->set_cluster_size(8);
         opts(r)->set_update_tokens(8);
       },
       Invalid({"index_options.update_tokens"})},
      {"sink_tokens 5000", [&](R& r) { opts(r)->set_sink_tokens(5000); },
       Invalid({"index_options.sink_tokens"})},
      {"recent_tokens 70000", [&](R& r) { opts(r)->set_recent_tokens(70000); },
       Invalid({"index_options.recent_tokens"})},
      {"segment_tokens 32", [&](R& r) { opts(r)->set_segment_tokens(32); },
       Invalid({"index_options.segment_tokens"})},
      {"kmeans_iterations 0", [&](R& r) { opts(r)->set_kmeans_iterations(0); },
       Invalid({"index_options.kmeans_iterations"})},
      {"kmeans_iterations 101",
       [&](R& r) { opts(r)->set_kmeans_iterations(101); },
       Invalid({"index_options.kmeans_iterations"})},
      {"label of 129 bytes", [](R& r) { r.set_label(std::string(129, 'x')); },
       Invalid({"label"})},
      // 65 two-byte characters: 130 bytes, though only 65 characters.
      {"label of 130 bytes of UTF-8",
       [](R& r) {
         std::string label;
         for (int i = 0; i < 65; ++i) label += "\xc3\xa9";
         r.set_label(label);
       },
       Invalid({"label"})},
      {"durability unknown",
       [](R& r) { r.set_durability(static_cast<v1::Durability>(9)); },
       Invalid({"durability"})},
      {"max_tokens above the server limit",
       [](R& r) { r.set_max_tokens(kMaxTokensPerSession + 1); },
       {StatusCode::INVALID_ARGUMENT,
        {"max_tokens"},
        {StatusCode::RESOURCE_EXHAUSTED}}},
  };
  for (const auto& c : cases) {
    R request = SessionRequest(MakeShape(2, 4, 2, 16, v1::DTYPE_FP16));
    c.mutate(request);
    ExpectRejected(
        "CreateSession " + c.name,
        [&] { return CallCreateSession(stub(), kAlice, request).status; },
        c.want);
  }
}

TEST_F(BadInputTest, CreateSessionAcceptsTheBoundaries) {
  using R = v1::CreateSessionRequest;
  const std::vector<std::pair<std::string, std::function<void(R&)>>> cases = {
      {"head_dim 16", [](R& r) { r.mutable_shape()->set_head_dim(16); }},
      {"head_dim 512", [](R& r) { r.mutable_shape()->set_head_dim(512); }},
      {"num_layers 1024",
       [](R& r) { r.mutable_shape()->set_num_layers(1024); }},
      {"label of 128 bytes", [](R& r) { r.set_label(std::string(128, 'y')); }},
      {"retrieval_fraction 1 and estimation_fraction 0",
       [](R& r) {
         r.mutable_index_options()->set_retrieval_fraction(1.0f);
         r.mutable_index_options()->set_estimation_fraction(0.0f);
       }},
      {"max_tokens at the server limit",
       [](R& r) { r.set_max_tokens(kMaxTokensPerSession); }},
  };
  for (const auto& [name, mutate] : cases) {
    R request = SessionRequest(MakeShape(2, 4, 2, 16, v1::DTYPE_FP16));
    mutate(request);
    auto created = CallCreateSession(stub(), kCarol, request);
    ASSERT_TRUE(created.ok()) << name << ": " << StatusText(created.status);
    EXPECT_TRUE(CallCloseSession(stub(), kCarol,
                                 created.response.session().session_id())
                    .ok());
  }
}

TEST_F(BadInputTest, CreateSessionEnforcesTheTenantSessionLimit) {
  std::vector<std::string> ids;
  for (uint32_t i = 0; i < kMaxSessionsPerTenant; ++i) {
    auto created = CallCreateSession(
        stub(), kCarol, SessionRequest(MakeShape(1, 1, 1, 16, v1::DTYPE_FP16)));
    ASSERT_TRUE(created.ok()) << StatusText(created.status);
    ids.push_back(created.response.session().session_id());
  }
  ExpectRejected("CreateSession over max_sessions_per_tenant",
                 [&] {
                   return CallCreateSession(stub(), kCarol,
                                            SessionRequest(MakeShape(
                                                1, 1, 1, 16, v1::DTYPE_FP16)))
                       .status;
                 },
                 {StatusCode::RESOURCE_EXHAUSTED, {"session"}});
  // The quota is per tenant: alice (who holds one) can still create.
  auto alices = CallCreateSession(
      stub(), kAlice, SessionRequest(MakeShape(1, 1, 1, 16, v1::DTYPE_FP16)));
  EXPECT_TRUE(alices.ok()) << StatusText(alices.status);
  // Closing one frees a place.
  ASSERT_TRUE(CallCloseSession(stub(), kCarol, ids[0]).ok());
  EXPECT_TRUE(
      CallCreateSession(stub(), kCarol,
                        SessionRequest(MakeShape(1, 1, 1, 16, v1::DTYPE_FP16)))
          .ok());
}

// --------------------------------------------------------------- Append

TEST_F(BadInputTest, AppendRejectsMalformedRequests) {
  using R = v1::AppendRequest;
  const KvPattern& p = victim_pattern_;
  const std::vector<Case<R>> cases = {
      {"unknown session",
       [](R& r) { r.set_session_id("no-such-session"); },
       {StatusCode::NOT_FOUND, {"session_id"}}},
      {"empty session_id",
       [](R& r) { r.set_session_id(""); },
       {StatusCode::INVALID_ARGUMENT, {"session_id"}, {StatusCode::NOT_FOUND}}},
      {"another tenant's session",
       [&](R& r) { r.set_session_id(bobs_); },
       {StatusCode::NOT_FOUND, {"session_id"}}},
      {"no layers", [](R& r) { r.clear_layers(); }, Invalid({"layers"})},
      {"layer out of range", [&](R& r) { r.mutable_layers(0)->set_layer(2); },
       Invalid({"layers[0].layer"})},
      {"layer named twice", [&](R& r) { *r.add_layers() = p.Layer(0, 20, 1); },
       Invalid({"layers[2].layer"})},
      {"num_tokens 0",
       [&](R& r) {
         r.mutable_layers(1)->set_num_tokens(0);
         r.mutable_layers(1)->clear_keys();
         r.mutable_layers(1)->clear_values();
       },
       Invalid({"layers[1].num_tokens"})},
      {"keys too short",
       [&](R& r) { r.mutable_layers(0)->mutable_keys()->resize(10); },
       Invalid({"layers[0].keys"})},
      {"values too long",
       [&](R& r) { r.mutable_layers(0)->mutable_values()->append("x"); },
       Invalid({"layers[0].values"})},
      {"num_tokens larger than the data",
       [&](R& r) { r.mutable_layers(1)->set_num_tokens(2); },
       Invalid({"layers[1].keys", "layers[1].num_tokens"})},
      {"bad keys in the second layer only",
       [&](R& r) { r.mutable_layers(1)->mutable_keys()->pop_back(); },
       Invalid({"layers[1].keys"})},
      {"durability unknown",
       [](R& r) { r.set_durability(static_cast<v1::Durability>(9)); },
       Invalid({"durability"})},
      {"start_token behind the layer",
       [&](R& r) { *r.mutable_layers(0) = p.Layer(0, 19, 1); },
       {StatusCode::FAILED_PRECONDITION, {"layers[0].start_token"}}},
      {"start_token ahead of the layer",
       [&](R& r) { *r.mutable_layers(0) = p.Layer(0, 21, 1); },
       {StatusCode::FAILED_PRECONDITION, {"layers[0].start_token"}}},
      {"start_token wrong in the second layer only",
       [&](R& r) { r.mutable_layers(1)->set_start_token(0); },
       {StatusCode::FAILED_PRECONDITION, {"layers[1].start_token"}}},
  };
  for (const auto& c : cases) {
    // A valid decode step (one token per layer) that each case spoils.
    R request;
    request.set_session_id(victim_);
    *request.add_layers() = p.Layer(0, 20, 1);
    *request.add_layers() = p.Layer(1, 20, 1);
    c.mutate(request);
    ExpectRejected(
        "Append " + c.name,
        [&] { return CallAppend(stub(), kAlice, request).status; }, c.want);
  }
  // The unspoiled step is accepted afterwards: nothing half-applied before.
  R good;
  good.set_session_id(victim_);
  *good.add_layers() = p.Layer(0, 20, 1);
  *good.add_layers() = p.Layer(1, 20, 1);
  auto ok = CallAppend(stub(), kAlice, good);
  ASSERT_TRUE(ok.ok()) << StatusText(ok.status);
  EXPECT_EQ(ok.response.num_tokens(), 21u);
  // A retried step is refused, so it is never applied twice.
  ExpectRejected("Append retried step",
                 [&] { return CallAppend(stub(), kAlice, good).status; },
                 {StatusCode::FAILED_PRECONDITION, {"layers[0].start_token"}});
}

TEST_F(BadInputTest, AppendPastMaxTokensIsResourceExhausted) {
  const std::string id =
      CreateWithTokens(kAlice, victim_pattern_, 30, /*max_tokens=*/32);
  ASSERT_FALSE(id.empty());
  v1::AppendRequest request;
  request.set_session_id(id);
  *request.add_layers() = victim_pattern_.Layer(0, 30, 3);
  ExpectRejected("Append past max_tokens",
                 [&] { return CallAppend(stub(), kAlice, request).status; },
                 {StatusCode::RESOURCE_EXHAUSTED, {"max_tokens"}});
  // Up to the limit is fine.
  *request.mutable_layers(0) = victim_pattern_.Layer(0, 30, 2);
  EXPECT_TRUE(CallAppend(stub(), kAlice, request).ok());
}

TEST_F(BadInputTest, AppendOverTheMessageLimitIsResourceExhausted) {
  // 3 MiB of keys+values in one request; the server accepts 2 MiB messages.
  const KvPattern big(5, MakeShape(1, 8, 8, 128, v1::DTYPE_FP16));
  auto created = CallCreateSession(stub(), kAlice, SessionRequest(big.shape()));
  ASSERT_TRUE(created.ok()) << StatusText(created.status);
  v1::AppendRequest request;
  request.set_session_id(created.response.session().session_id());
  *request.add_layers() = big.Layer(0, 0, 768);  // 768 * 2 KiB * 2
  ExpectRejected("Append of 3 MiB",
                 [&] { return CallAppend(stub(), kAlice, request).status; },
                 {StatusCode::RESOURCE_EXHAUSTED, {}});
}

TEST_F(BadInputTest, AppendBeyondTheMemoryBudgetIsResourceExhausted) {
  // 8 KiB of K+V per token; 128 tokens (1 MiB) per request.
  const KvPattern big(6, MakeShape(1, 8, 8, 128, v1::DTYPE_FP32));
  auto created = CallCreateSession(stub(), kAlice, SessionRequest(big.shape()));
  ASSERT_TRUE(created.ok()) << StatusText(created.status);
  const std::string id = created.response.session().session_id();
  uint64_t at = 0;
  grpc::Status last;
  // Twice the budget in 1 MiB requests: the budget must stop it on the way.
  for (uint64_t i = 0; i < 2 * kMemoryBudgetBytes / (1 << 20); ++i) {
    v1::AppendRequest request;
    request.set_session_id(id);
    *request.add_layers() = big.Layer(0, at, 128);
    auto before = Snapshot();
    last = CallAppend(stub(), kAlice, request).status;
    if (!last.ok()) {
      ExpectRejection("Append over the memory budget", last,
                      {StatusCode::RESOURCE_EXHAUSTED, {"memory"}});
      ExpectSameState("Append over the memory budget", before);
      break;
    }
    at += 128;
  }
  ASSERT_FALSE(last.ok()) << "8 MiB appended under a 4 MiB budget";
  EXPECT_GE(at, 128u) << "1 MiB must fit a 4 MiB budget";
  // Closing the session returns its memory: the same append now fits.
  ASSERT_TRUE(CallCloseSession(stub(), kAlice, id).ok());
  auto again = CallCreateSession(stub(), kAlice, SessionRequest(big.shape()));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(AppendTokens(stub(), kAlice,
                           again.response.session().session_id(), big, 0, at,
                           128)
                  .ok());
}

// --------------------------------------------------------------- Retrieve

TEST_F(BadInputTest, RetrieveRejectsMalformedRequests) {
  using R = v1::RetrieveRequest;
  const KvPattern& p = victim_pattern_;
  const std::string big =
      CreateWithTokens(kAlice, victim_pattern_, 100);  // 12800 B of K+V
  ASSERT_FALSE(big.empty());
  auto add_query = [](R& r, const std::string& id, const std::string& q) {
    v1::SessionQuery* sq = r.add_queries();
    sq->set_session_id(id);
    sq->set_query(q);
  };
  const std::vector<Case<R>> cases = {
      {"mode unspecified",
       [](R& r) { r.set_mode(v1::RETRIEVE_MODE_UNSPECIFIED); },
       Invalid({"mode"})},
      {"mode unknown",
       [](R& r) { r.set_mode(static_cast<v1::RetrieveMode>(7)); },
       Invalid({"mode"})},
      {"no queries", [](R& r) { r.clear_queries(); }, Invalid({"queries"})},
      {"more sessions than max_batch_sessions",
       [&](R& r) {
         r.clear_queries();
         for (uint32_t i = 0; i <= kMaxBatchSessions; ++i) {
           add_query(r, absl::StrCat("s", i), p.Query(0, 0));
         }
       },
       {StatusCode::INVALID_ARGUMENT,
        {"queries"},
        {StatusCode::RESOURCE_EXHAUSTED}}},
      {"session twice", [&](R& r) { add_query(r, victim_, p.Query(0, 1)); },
       Invalid({"queries[1].session_id"})},
      {"query too short",
       [](R& r) { r.mutable_queries(0)->mutable_query()->resize(12); },
       Invalid({"queries[0].query"})},
      {"query with a NaN",
       [](R& r) {
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(r.mutable_queries(0)->mutable_query()->data() + 8, &nan,
                     4);
       },
       Invalid({"queries[0].query"})},
      {"query empty", [](R& r) { r.mutable_queries(0)->clear_query(); },
       Invalid({"queries[0].query"})},
      {"layer out of range", [](R& r) { r.set_layer(2); }, Invalid({"layer"})},
      {"unknown session",
       [](R& r) { r.mutable_queries(0)->set_session_id("no-such-session"); },
       {StatusCode::NOT_FOUND, {"queries[0].session_id"}}},
      {"empty session_id",
       [](R& r) { r.mutable_queries(0)->set_session_id(""); },
       {StatusCode::INVALID_ARGUMENT,
        {"queries[0].session_id"},
        {StatusCode::NOT_FOUND}}},
      {"another tenant's session in the batch",
       [&](R& r) { add_query(r, bobs_, bob_pattern_.Query(0, 0)); },
       {StatusCode::NOT_FOUND, {"queries[1].session_id"}}},
      {"include_kv over max_inline_kv_bytes",
       [&](R& r) {
         r.set_include_kv(true);
         add_query(r, big, p.Query(0, 2));
       },
       {StatusCode::RESOURCE_EXHAUSTED, {"include_kv", "max_inline_kv_bytes"}}},
  };
  for (const auto& c : cases) {
    R request;
    request.set_layer(0);
    request.set_mode(v1::RETRIEVE_MODE_EXACT);
    add_query(request, victim_, p.Query(0, 0));
    c.mutate(request);
    ExpectRejected(
        "Retrieve " + c.name,
        [&] { return CallRetrieve(stub(), kAlice, request).status; }, c.want);
  }
  // The unspoiled request, and include_kv just under the limit, work.
  R good;
  good.set_mode(v1::RETRIEVE_MODE_EXACT);
  good.set_include_kv(true);
  add_query(good, victim_, p.Query(0, 0));
  auto r = CallRetrieve(stub(), kAlice, good);
  ASSERT_TRUE(r.ok()) << StatusText(r.status);
  EXPECT_TRUE(CheckExactResult(r.response.results(0), p, 0, true).ok());
}

TEST_F(BadInputTest, RetrieveWaveBeforeAnIndexExists) {
  // The victim holds 20 tokens: fewer than sink_tokens + recent_tokens, so
  // no key can be clustered yet. The server either reports the index as not
  // ready (UNAVAILABLE) or answers with everything in the steady zone.
  v1::RetrieveRequest request;
  request.set_layer(1);
  request.set_mode(v1::RETRIEVE_MODE_WAVE);
  v1::SessionQuery* q = request.add_queries();
  q->set_session_id(victim_);
  q->set_query(victim_pattern_.Query(1, 0));
  auto before = Snapshot();
  auto r = CallRetrieve(stub(), kAlice, request);
  ExpectSameState("Retrieve WAVE before an index", before);
  if (!r.ok()) {
    ExpectRejection("Retrieve WAVE before an index", r.status,
                    {StatusCode::UNAVAILABLE, {}});
    return;
  }
  ASSERT_EQ(r.response.results_size(), 1);
  const v1::SessionResult& result = r.response.results(0);
  EXPECT_EQ(result.num_tokens(), 20u);
  EXPECT_EQ(result.indexed_tokens(), 0u);
  uint64_t steady = 0;
  for (const v1::TokenRange& t : result.steady()) steady += t.end() - t.begin();
  EXPECT_EQ(steady, 20u) << "every token is steady";
  for (const v1::KvHeadResult& head : result.heads()) {
    EXPECT_TRUE(head.retrieval().empty());
  }
}

// --------------------------------------------------------------- Fetch

TEST_F(BadInputTest, FetchClustersRejectsMalformedRequestsBeforeStreaming) {
  using R = v1::FetchClustersRequest;
  const v1::SessionResult exact = ExactVictim(0);
  ASSERT_EQ(exact.heads_size(), 2);
  const v1::SlotRange whole = exact.heads(1).retrieval(0);
  const std::vector<Case<R>> cases = {
      {"unknown session",
       [](R& r) { r.set_session_id("no-such-session"); },
       {StatusCode::NOT_FOUND, {"session_id"}}},
      {"another tenant's session",
       [&](R& r) { r.set_session_id(bobs_); },
       {StatusCode::NOT_FOUND, {"session_id"}}},
      {"layer out of range", [](R& r) { r.set_layer(2); }, Invalid({"layer"})},
      {"max_chunk_bytes 100", [](R& r) { r.set_max_chunk_bytes(100); },
       Invalid({"max_chunk_bytes"})},
      {"max_chunk_bytes 4095", [](R& r) { r.set_max_chunk_bytes(4095); },
       Invalid({"max_chunk_bytes"})},
      {"max_chunk_bytes over 4 MiB",
       [](R& r) { r.set_max_chunk_bytes((4 << 20) + 1); },
       Invalid({"max_chunk_bytes"})},
      {"max_chunk_bytes over the server's message limit",
       [](R& r) { r.set_max_chunk_bytes(4 << 20); },
       {StatusCode::RESOURCE_EXHAUSTED, {"max_chunk_bytes"}}},
      {"kv_head out of range", [](R& r) { r.mutable_heads(0)->set_kv_head(2); },
       Invalid({"heads[0].kv_head"})},
      {"range of 0 slots",
       [](R& r) { r.mutable_heads(0)->mutable_ranges(0)->set_num_slots(0); },
       Invalid({"heads[0].ranges[0]"})},
      {"range beyond the stored slots",
       [](R& r) {
         r.mutable_heads(0)->mutable_ranges(0)->set_first_slot(1ull << 40);
       },
       PastTheEnd({"heads[0].ranges[0]"})},
      {"range one slot too long",
       [](R& r) {
         auto* range = r.mutable_heads(0)->mutable_ranges(0);
         range->set_num_slots(range->num_slots() + 1);
       },
       PastTheEnd({"heads[0].ranges[0]"})},
      {"bad second range after a good one",
       [](R& r) {
         v1::SlotRange* bad = r.mutable_heads(0)->add_ranges();
         *bad = r.heads(0).ranges(0);
         bad->set_num_slots(0);
       },
       Invalid({"heads[0].ranges[1]"})},
      {"range from the last token slot into the cluster slots",
       [](R& r) {
         auto* range = r.mutable_heads(0)->mutable_ranges(0);
         range->set_first_slot((1ull << 48) - 1);
         range->set_num_slots(2);
       },
       PastTheEnd({"heads[0].ranges[0]"})},
      {"range whose end overflows uint64",
       [](R& r) {
         auto* range = r.mutable_heads(0)->mutable_ranges(0);
         range->set_first_slot(std::numeric_limits<uint64_t>::max());
         range->set_num_slots(std::numeric_limits<uint32_t>::max());
       },
       PastTheEnd({"heads[0].ranges[0]"})},
      {"stale layout_epoch",
       [&](R& r) { r.set_layout_epoch(exact.layout_epoch() + 1000); },
       {StatusCode::FAILED_PRECONDITION, {"layout_epoch"}}},
  };
  for (const auto& c : cases) {
    R request;
    request.set_session_id(victim_);
    request.set_layer(0);
    request.set_layout_epoch(exact.layout_epoch());
    request.set_max_chunk_bytes(4096);
    v1::HeadSlots* hs = request.add_heads();
    hs->set_kv_head(1);
    *hs->add_ranges() = whole;
    c.mutate(request);
    ExpectRejected(
        "FetchClusters " + c.name,
        [&] {
          FetchAnswer a = CallFetchClusters(stub(), kAlice, request);
          EXPECT_TRUE(a.chunks.empty()) << c.name << ": " << a.chunks.size()
                                        << " chunks before the error";
          return a.status;
        },
        c.want);
  }
}

// ------------------------------------------------- the small read RPCs

TEST_F(BadInputTest, SessionLookupsRejectUnknownAndForeignSessions) {
  struct Lookup {
    std::string rpc;
    std::function<grpc::Status(const std::string&)> call;
  };
  const std::vector<Lookup> lookups = {
      {"GetSession",
       [&](const std::string& id) {
         return CallGetSession(stub(), kAlice, id).status;
       }},
      {"GetTransportInfo",
       [&](const std::string& id) {
         v1::GetTransportInfoRequest r;
         r.set_session_id(id);
         return CallGetTransportInfo(stub(), kAlice, r).status;
       }},
      {"CloseSession",
       [&](const std::string& id) {
         return CallCloseSession(stub(), kAlice, id).status;
       }},
  };
  for (const Lookup& l : lookups) {
    ExpectRejected(l.rpc + " unknown session",
                   [&] { return l.call("no-such-session"); },
                   {StatusCode::NOT_FOUND, {"session_id"}});
    ExpectRejected(l.rpc + " another tenant's session",
                   [&] { return l.call(bobs_); },
                   {StatusCode::NOT_FOUND, {"session_id"}});
    // An id longer than any the server issues.
    ExpectRejected(l.rpc + " id of 200 bytes",
                   [&] { return l.call(std::string(200, 'z')); },
                   {StatusCode::NOT_FOUND,
                    {"session_id"},
                    {StatusCode::INVALID_ARGUMENT}});
    // An id of 1 MiB: the error must still arrive as such (a message that
    // echoed the whole id would exceed gRPC's metadata limit on the client).
    grpc::Status huge;
    ExpectRejected(l.rpc + " id of 1 MiB",
                   [&] { return huge = l.call(std::string(1 << 20, 'z')); },
                   {StatusCode::NOT_FOUND,
                    {"session_id"},
                    {StatusCode::INVALID_ARGUMENT}});
    EXPECT_LT(huge.error_message().size(), 4096u) << l.rpc;
  }
  ExpectRejected(
      "GetSession empty id",
      [&] { return CallGetSession(stub(), kAlice, "").status; },
      {StatusCode::INVALID_ARGUMENT, {"session_id"}, {StatusCode::NOT_FOUND}});
  // Foreign and unknown ids read the same, so ids cannot be probed.
  auto foreign = CallGetSession(stub(), kAlice, bobs_);
  auto unknown = CallGetSession(stub(), kAlice, "no-such-session");
  EXPECT_EQ(foreign.status.error_code(), unknown.status.error_code());
  EXPECT_FALSE(absl::StrContains(foreign.status.error_message(), "bob"));
}

TEST_F(BadInputTest, ListSessionsRejectsBadPaging) {
  using R = v1::ListSessionsRequest;
  const std::vector<Case<R>> cases = {
      {"page_size 1001", [](R& r) { r.set_page_size(1001); },
       Invalid({"page_size"})},
      {"page_token not from ListSessions",
       [](R& r) { r.set_page_token("!!garbage!!"); }, Invalid({"page_token"})},
  };
  for (const auto& c : cases) {
    R request;
    c.mutate(request);
    ExpectRejected(
        "ListSessions " + c.name,
        [&] { return CallListSessions(stub(), kAlice, request).status; },
        c.want);
  }
  // page_size 1000 is fine; each tenant sees only its own sessions.
  R max;
  max.set_page_size(1000);
  auto alice = CallListSessions(stub(), kAlice, max);
  auto bob = CallListSessions(stub(), kBob, max);
  ASSERT_TRUE(alice.ok() && bob.ok());
  ASSERT_EQ(alice.response.sessions_size(), 1);
  EXPECT_EQ(alice.response.sessions(0).session_id(), victim_);
  ASSERT_EQ(bob.response.sessions_size(), 1);
  EXPECT_EQ(bob.response.sessions(0).session_id(), bobs_);
}

// --------------------------------------------------------------- auth

TEST_F(BadInputTest, EveryRpcNeedsAKnownBearerToken) {
  struct Rpc {
    std::string name;
    std::function<grpc::Status(const std::string& token)> call;
  };
  const KvPattern& p = victim_pattern_;
  const std::vector<Rpc> rpcs = {
      {"CreateSession",
       [&](const std::string& t) {
         return CallCreateSession(stub(), t, SessionRequest(p.shape())).status;
       }},
      {"Append",
       [&](const std::string& t) {
         v1::AppendRequest r;
         r.set_session_id(victim_);
         *r.add_layers() = p.Layer(0, 20, 1);
         return CallAppend(stub(), t, r).status;
       }},
      {"Retrieve",
       [&](const std::string& t) {
         v1::RetrieveRequest r =
             RetrieveRequestFor(0, v1::RETRIEVE_MODE_EXACT, false);
         AddQuery(r, victim_, p.Query(0, 0));
         return CallRetrieve(stub(), t, r).status;
       }},
      {"FetchClusters",
       [&](const std::string& t) {
         v1::FetchClustersRequest r;
         r.set_session_id(victim_);
         v1::HeadSlots* hs = r.add_heads();
         hs->set_kv_head(0);
         v1::SlotRange* range = hs->add_ranges();
         range->set_num_slots(1);
         FetchAnswer a = CallFetchClusters(stub(), t, r);
         EXPECT_TRUE(a.chunks.empty());
         return a.status;
       }},
      {"GetTransportInfo",
       [&](const std::string& t) {
         return CallGetTransportInfo(stub(), t, {}).status;
       }},
      {"GetSession",
       [&](const std::string& t) {
         return CallGetSession(stub(), t, victim_).status;
       }},
      {"ListSessions",
       [&](const std::string& t) {
         return CallListSessions(stub(), t, {}).status;
       }},
      {"CloseSession",
       [&](const std::string& t) {
         return CallCloseSession(stub(), t, victim_).status;
       }},
  };
  auto unauthenticated = [&](const std::string& method) -> double {
    auto body = HttpGet(server_->metrics_port(), "/metrics");
    EXPECT_TRUE(body.ok()) << body.status();
    if (!body.ok()) return -1;
    auto samples = ParsePrometheusText(*body);
    EXPECT_TRUE(samples.ok()) << samples.status();
    if (!samples.ok()) return -1;
    return SumSamples(*samples, "wavekv_rpc_requests_total",
                      {{"method", method}, {"code", "UNAUTHENTICATED"}});
  };
  for (const Rpc& rpc : rpcs) {
    const double counted_before = unauthenticated(rpc.name);
    ExpectRejected(
        rpc.name + " without credentials", [&] { return rpc.call(""); },
        {StatusCode::UNAUTHENTICATED, {"authorization: missing bearer token"}});
    ExpectRejected(
        rpc.name + " with an unknown token",
        [&] { return rpc.call("not-a-known-token"); },
        {StatusCode::UNAUTHENTICATED, {"authorization: unknown token"}});
    // Both refusals are counted under their code (recorded as calls end).
    double counted = unauthenticated(rpc.name);
    for (int i = 0; i < 100 && counted < counted_before + 2; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
      counted = unauthenticated(rpc.name);
    }
    EXPECT_EQ(counted, counted_before + 2) << rpc.name;
  }
  // Other schemes are not bearer tokens.
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", std::string("Basic ") + kAlice);
    v1::SessionInfo info;
    v1::GetSessionRequest request;
    request.set_session_id(victim_);
    EXPECT_EQ(stub().GetSession(&ctx, request, &info).error_code(),
              StatusCode::UNAUTHENTICATED);
  }
  // Health checking stays open.
  auto health = grpc::health::v1::Health::NewStub(*channel_);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, "");
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status st = health->Check(&ctx, {}, &response);
  ASSERT_TRUE(st.ok()) << StatusText(st);
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace wavekv::testing
