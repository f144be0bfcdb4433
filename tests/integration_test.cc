// Process-level integration test: the real wavekv-server binary as a child
// process, every RPC of wavekv.v1.WaveKv over real gRPC on 127.0.0.1, plus
// health checking, reflection, /metrics, the config file, the data-dir lock
// and a graceful SIGTERM drain with an RPC in flight.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/answer_checks.h"
#include "tests/grpc_health.grpc.pb.h"
#include "tests/grpc_reflection.grpc.pb.h"
#include "tests/kv_pattern.h"
#include "tests/prometheus_text.h"
#include "tests/server_process.h"
#include "tests/wire_client.h"

namespace wavekv::testing {
namespace {

constexpr uint64_t kMaxInlineKvBytes = 1 << 20;
constexpr uint64_t kMemoryBudgetBytes = 256ull << 20;
constexpr uint64_t kMaxTokensPerSession = 100000;
const char kNoToken[] = "";  // this server runs without a tokens file

class IntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = ServerProcess::Start(
        {.name = "integration",
         .args = {
             absl::StrCat("--max_inline_kv_bytes=", kMaxInlineKvBytes),
             "--memory_budget=256MiB",
             absl::StrCat("--max_tokens_per_session=", kMaxTokensPerSession)}});
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
    channel_ = nullptr;
    if (server_ != nullptr) {
      // An idle server stops cleanly on SIGTERM.
      auto exit = server_->Terminate();
      EXPECT_TRUE(exit.ok()) << exit.status();
      if (exit.ok()) {
        EXPECT_TRUE(exit->ok()) << exit->ToString() << "\n"
                                << server_->StderrTail();
      }
      delete server_;
      server_ = nullptr;
    }
  }

  void SetUp() override { ASSERT_NE(stub_, nullptr) << "server did not start"; }

  v1::WaveKv::Stub& stub() { return *stub_; }

  // Creates a session; fails the test (and returns an empty info) if the
  // server refuses.
  v1::SessionInfo Create(const v1::CreateSessionRequest& request) {
    auto answer = CallCreateSession(stub(), kNoToken, request);
    EXPECT_TRUE(answer.ok()) << StatusText(answer.status);
    return answer.response.session();
  }

  static ServerProcess* server_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static v1::WaveKv::Stub* stub_;
};

ServerProcess* IntegrationTest::server_ = nullptr;
std::shared_ptr<grpc::Channel>* IntegrationTest::channel_ = nullptr;
v1::WaveKv::Stub* IntegrationTest::stub_ = nullptr;

TEST_F(IntegrationTest, CreateSessionResolvesDefaults) {
  const int64_t before_ms = absl::ToUnixMillis(absl::Now());
  v1::SessionInfo s = Create(
      SessionRequest(MakeShape(4, 8, 2, 64, v1::DTYPE_FP16), "defaults"));
  ASSERT_FALSE(s.session_id().empty());
  EXPECT_LE(s.session_id().size(), 64u);
  EXPECT_EQ(s.shape().num_layers(), 4u);
  EXPECT_EQ(s.shape().num_q_heads(), 8u);
  EXPECT_EQ(s.shape().num_kv_heads(), 2u);
  EXPECT_EQ(s.shape().head_dim(), 64u);
  EXPECT_EQ(s.shape().dtype(), v1::DTYPE_FP16);
  const v1::IndexOptions& o = s.index_options();
  ASSERT_TRUE(o.has_sink_tokens() && o.has_recent_tokens() &&
              o.has_segment_tokens() && o.has_cluster_size() &&
              o.has_kmeans_iterations() && o.has_update_tokens() &&
              o.has_retrieval_fraction() && o.has_estimation_fraction())
      << "every index option must be set in the answer: " << o.DebugString();
  EXPECT_EQ(o.sink_tokens(), 4u);
  EXPECT_EQ(o.recent_tokens(), 64u);
  EXPECT_EQ(o.segment_tokens(), 8192u);
  EXPECT_EQ(o.cluster_size(), 16u);
  EXPECT_EQ(o.kmeans_iterations(), 9u);
  EXPECT_EQ(o.update_tokens(), 1024u);
  EXPECT_FLOAT_EQ(o.retrieval_fraction(), 0.018f);
  EXPECT_FLOAT_EQ(o.estimation_fraction(), 0.232f);
  EXPECT_EQ(s.durability(), v1::DURABILITY_NONE);
  EXPECT_EQ(s.max_tokens(), kMaxTokensPerSession);
  EXPECT_EQ(s.label(), "defaults");
  EXPECT_EQ(s.layer_tokens_size(), 4);
  for (uint64_t n : s.layer_tokens()) EXPECT_EQ(n, 0u);
  EXPECT_EQ(s.num_tokens(), 0u);
  EXPECT_EQ(s.durable_tokens(), 0u);
  EXPECT_GE(s.created_unix_ms(), before_ms - 1000);
  EXPECT_LE(s.created_unix_ms(), absl::ToUnixMillis(absl::Now()) + 1000);

  // GetSession answers the same.
  auto got = CallGetSession(stub(), kNoToken, s.session_id());
  ASSERT_TRUE(got.ok()) << StatusText(got.status);
  std::string diff;
  EXPECT_TRUE(SameMessage(StableView(got.response), StableView(s), &diff))
      << diff;
}

TEST_F(IntegrationTest, CreateSessionKeepsSetOptionsAndResolvesTheRest) {
  v1::CreateSessionRequest request =
      SessionRequest(MakeShape(2, 4, 4, 128, v1::DTYPE_BF16));
  request.mutable_index_options()->set_cluster_size(32);
  request.mutable_index_options()->set_update_tokens(2048);
  request.mutable_index_options()->set_retrieval_fraction(0.05f);
  request.mutable_index_options()->set_sink_tokens(0);  // set, not default
  request.set_max_tokens(5000);
  v1::SessionInfo s = Create(request);
  EXPECT_EQ(s.index_options().cluster_size(), 32u);
  EXPECT_EQ(s.index_options().update_tokens(), 2048u);
  EXPECT_FLOAT_EQ(s.index_options().retrieval_fraction(), 0.05f);
  EXPECT_TRUE(s.index_options().has_sink_tokens());
  EXPECT_EQ(s.index_options().sink_tokens(), 0u);
  EXPECT_EQ(s.index_options().recent_tokens(), 64u);
  EXPECT_FLOAT_EQ(s.index_options().estimation_fraction(), 0.232f);
  EXPECT_EQ(s.max_tokens(), 5000u);
  EXPECT_EQ(s.shape().dtype(), v1::DTYPE_BF16);
  // Two sessions never share an id.
  v1::SessionInfo other = Create(request);
  EXPECT_NE(other.session_id(), s.session_id());
}

TEST_F(IntegrationTest, AppendPrefillChunksAcrossLayersThenDecodeSteps) {
  const v1::ModelShape shape = MakeShape(3, 4, 2, 32, v1::DTYPE_FP16);
  KvPattern pattern(11, shape);
  v1::SessionInfo s = Create(SessionRequest(shape, "append"));
  const std::string& id = s.session_id();

  // Prefill of 200 tokens in chunks of 64, 64, 72: each chunk first for
  // layers 0 and 1, then for layer 2, so layers are briefly uneven.
  const std::vector<uint32_t> chunks = {64, 64, 72};
  uint64_t at = 0;
  for (uint32_t n : chunks) {
    v1::AppendRequest first;
    first.set_session_id(id);
    *first.add_layers() = pattern.Layer(1, at, n);  // any layer order
    *first.add_layers() = pattern.Layer(0, at, n);
    auto a = CallAppend(stub(), kNoToken, first);
    ASSERT_TRUE(a.ok()) << StatusText(a.status);
    ASSERT_EQ(a.response.layer_tokens_size(), 3);
    EXPECT_EQ(a.response.layer_tokens(0), at + n);
    EXPECT_EQ(a.response.layer_tokens(1), at + n);
    EXPECT_EQ(a.response.layer_tokens(2), at);
    EXPECT_EQ(a.response.num_tokens(), at);
    EXPECT_LE(a.response.durable_tokens(), a.response.num_tokens());

    v1::AppendRequest second;
    second.set_session_id(id);
    *second.add_layers() = pattern.Layer(2, at, n);
    auto b = CallAppend(stub(), kNoToken, second);
    ASSERT_TRUE(b.ok()) << StatusText(b.status);
    at += n;
    EXPECT_EQ(b.response.layer_tokens(2), at);
    EXPECT_EQ(b.response.num_tokens(), at);
  }
  // Decode: one token for every layer per call.
  for (int step = 0; step < 12; ++step) {
    v1::AppendRequest request;
    request.set_session_id(id);
    for (uint32_t l = 0; l < 3; ++l)
      *request.add_layers() = pattern.Layer(l, at, 1);
    auto a = CallAppend(stub(), kNoToken, request);
    ASSERT_TRUE(a.ok()) << StatusText(a.status);
    ++at;
    for (uint64_t n : a.response.layer_tokens()) EXPECT_EQ(n, at);
    EXPECT_EQ(a.response.num_tokens(), at);
  }
  auto got = CallGetSession(stub(), kNoToken, id);
  ASSERT_TRUE(got.ok()) << StatusText(got.status);
  EXPECT_EQ(got.response.num_tokens(), 212u);
  ASSERT_EQ(got.response.layer_tokens_size(), 3);
  for (uint64_t n : got.response.layer_tokens()) EXPECT_EQ(n, 212u);
  const uint64_t raw_bytes = 212 * 3 * 2 * TokenLayerBytes(shape);
  EXPECT_GE(got.response.memory_bytes(), raw_bytes);
  EXPECT_LE(got.response.memory_bytes(), 4 * raw_bytes + (1 << 20))
      << "memory_bytes should be the K/V held, not a wild over-estimate";
  EXPECT_GE(got.response.last_access_unix_ms(), got.response.created_unix_ms());

  // Every layer holds exactly what was appended, in any slot order.
  for (uint32_t layer = 0; layer < 3; ++layer) {
    v1::RetrieveRequest request =
        RetrieveRequestFor(layer, v1::RETRIEVE_MODE_EXACT, true);
    AddQuery(request, id, pattern.Query(layer, 0));
    auto r = CallRetrieve(stub(), kNoToken, request);
    ASSERT_TRUE(r.ok()) << StatusText(r.status);
    ASSERT_EQ(r.response.results_size(), 1);
    EXPECT_EQ(r.response.results(0).num_tokens(), 212u);
    auto checked =
        CheckExactResult(r.response.results(0), pattern, layer, true);
    EXPECT_TRUE(checked.ok()) << checked.status();
  }
}

TEST_F(IntegrationTest, RetrieveExactBatchReturnsEveryTokenInline) {
  struct Case {
    v1::ModelShape shape;
    uint64_t tokens;  // appended to every layer
  };
  const std::vector<Case> cases = {
      {MakeShape(2, 8, 2, 64, v1::DTYPE_FP16), 150},
      {MakeShape(3, 4, 4, 16, v1::DTYPE_FP32), 37},
      {MakeShape(2, 6, 3, 128, v1::DTYPE_BF16), 1},
      {MakeShape(4, 2, 1, 256, v1::DTYPE_FP16), 90},
  };
  std::vector<KvPattern> patterns;
  std::vector<std::string> ids;
  for (size_t i = 0; i < cases.size(); ++i) {
    patterns.emplace_back(100 + i, cases[i].shape);
    v1::SessionInfo s = Create(SessionRequest(cases[i].shape, "batch"));
    ids.push_back(s.session_id());
    grpc::Status st = AppendTokens(stub(), kNoToken, s.session_id(),
                                   patterns[i], 0, cases[i].tokens, 40);
    ASSERT_TRUE(st.ok()) << StatusText(st);
  }
  // A fifth session that has tokens in layer 0 only: empty at layer 1.
  const v1::ModelShape partial_shape = MakeShape(2, 2, 2, 32, v1::DTYPE_FP16);
  KvPattern partial(200, partial_shape);
  v1::SessionInfo p = Create(SessionRequest(partial_shape, "partial"));
  {
    v1::AppendRequest request;
    request.set_session_id(p.session_id());
    *request.add_layers() = partial.Layer(0, 0, 10);
    ASSERT_TRUE(CallAppend(stub(), kNoToken, request).ok());
  }

  for (bool include_kv : {true, false}) {
    v1::RetrieveRequest request;
    request.set_layer(1);
    request.set_mode(v1::RETRIEVE_MODE_EXACT);
    request.set_include_kv(include_kv);
    // Request order differs from creation order; the answer keeps it.
    const std::vector<size_t> order = {2, 0, 3, 1};
    for (size_t i : order) {
      v1::SessionQuery* q = request.add_queries();
      q->set_session_id(ids[i]);
      q->set_query(patterns[i].Query(1, 7));
    }
    v1::SessionQuery* q = request.add_queries();
    q->set_session_id(p.session_id());
    q->set_query(partial.Query(1, 7));

    auto r = CallRetrieve(stub(), kNoToken, request);
    ASSERT_TRUE(r.ok()) << StatusText(r.status);
    ASSERT_EQ(r.response.results_size(), 5);
    for (size_t k = 0; k < order.size(); ++k) {
      const size_t i = order[k];
      const v1::SessionResult& result = r.response.results(k);
      EXPECT_EQ(result.session_id(), ids[i]);
      EXPECT_EQ(result.num_tokens(), cases[i].tokens);
      EXPECT_LE(result.indexed_tokens(), result.num_tokens());
      auto checked = CheckExactResult(result, patterns[i], 1, include_kv);
      EXPECT_TRUE(checked.ok()) << "case " << i << ": " << checked.status();
    }
    const v1::SessionResult& empty = r.response.results(4);
    EXPECT_EQ(empty.session_id(), p.session_id());
    EXPECT_EQ(empty.num_tokens(), 0u);
    auto checked = CheckExactResult(empty, partial, 1, include_kv);
    EXPECT_TRUE(checked.ok()) << checked.status();
  }
}

TEST_F(IntegrationTest, FetchClustersStreamsSmallChunksOfTheAppendedData) {
  // FP32, head_dim 128: 512-byte rows, so a 4 KiB chunk holds 4 slots of K+V.
  const v1::ModelShape shape = MakeShape(2, 4, 2, 128, v1::DTYPE_FP32);
  KvPattern pattern(21, shape);
  v1::SessionInfo s = Create(SessionRequest(shape, "fetch"));
  ASSERT_TRUE(
      AppendTokens(stub(), kNoToken, s.session_id(), pattern, 0, 101, 33).ok());

  v1::RetrieveRequest request =
      RetrieveRequestFor(1, v1::RETRIEVE_MODE_EXACT, true);
  AddQuery(request, s.session_id(), pattern.Query(1, 0));
  auto r = CallRetrieve(stub(), kNoToken, request);
  ASSERT_TRUE(r.ok()) << StatusText(r.status);
  const v1::SessionResult& result = r.response.results(0);
  auto inline_data = CheckExactResult(result, pattern, 1, true);
  ASSERT_TRUE(inline_data.ok()) << inline_data.status();

  const v1::FetchClustersRequest fetch = FetchRequestFor(result, 1, 4096);
  FetchAnswer answer = CallFetchClusters(stub(), kNoToken, fetch);
  ASSERT_TRUE(answer.ok()) << StatusText(answer.status);
  EXPECT_GE(answer.chunks.size(), 2u * 101 / 4);
  auto fetched = CheckFetchedChunks(fetch, answer.chunks, pattern, 101);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ASSERT_EQ(fetched->size(), 2u);
  for (size_t h = 0; h < 2; ++h) {
    const HeadData& f = (*fetched)[h];
    const HeadData& in = (*inline_data)[h];
    // Streamed bytes and positions equal the inline answer's, slot by slot.
    EXPECT_EQ(f.keys, in.keys) << "head " << h;
    EXPECT_EQ(f.values, in.values) << "head " << h;
    EXPECT_EQ(f.positions, in.positions) << "head " << h;
    std::vector<uint64_t> sorted = f.positions;
    std::sort(sorted.begin(), sorted.end());
    for (uint64_t p = 0; p < sorted.size(); ++p) ASSERT_EQ(sorted[p], p);
  }

  // A sub-range of one head, default chunk size, epoch unchecked.
  v1::FetchClustersRequest part;
  part.set_session_id(s.session_id());
  part.set_layer(1);
  v1::HeadSlots* hs = part.add_heads();
  hs->set_kv_head(1);
  const v1::SlotRange& whole = result.heads(1).retrieval(0);
  v1::SlotRange* sub = hs->add_ranges();
  sub->set_cluster_id(whole.cluster_id());
  sub->set_first_slot(whole.first_slot() + 10);
  sub->set_num_slots(std::min<uint32_t>(20, whole.num_slots() - 10));
  FetchAnswer part_answer = CallFetchClusters(stub(), kNoToken, part);
  ASSERT_TRUE(part_answer.ok()) << StatusText(part_answer.status);
  EXPECT_EQ(part_answer.chunks.size(), 1u) << "20 slots fit one 1 MiB chunk";
  auto part_data = CheckFetchedChunks(part, part_answer.chunks, pattern, 101);
  EXPECT_TRUE(part_data.ok()) << part_data.status();
}

// Small wave-index parameters so that a few hundred tokens get clustered.
v1::CreateSessionRequest WaveSessionRequest(const v1::ModelShape& shape,
                                            float retrieval_fraction,
                                            float estimation_fraction) {
  v1::CreateSessionRequest create = SessionRequest(shape, "wave");
  v1::IndexOptions* o = create.mutable_index_options();
  o->set_sink_tokens(4);
  o->set_recent_tokens(16);
  o->set_segment_tokens(128);
  o->set_cluster_size(8);
  o->set_update_tokens(32);
  o->set_retrieval_fraction(retrieval_fraction);
  o->set_estimation_fraction(estimation_fraction);
  return create;
}

// Waits (bounded) until the session's index is READY; returns its info.
Answer<v1::SessionInfo> WaitIndexReady(v1::WaveKv::Stub& stub,
                                       const std::string& id) {
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (true) {
    auto info = CallGetSession(stub, kNoToken, id);
    if (!info.ok() || info.response.index_state() == v1::INDEX_STATE_READY ||
        info.response.index_state() == v1::INDEX_STATE_FAILED ||
        absl::Now() > deadline) {
      return info;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

TEST_F(IntegrationTest, CreateSessionStartsWithAnEmptyIndex) {
  v1::SessionInfo s =
      Create(SessionRequest(MakeShape(3, 2, 2, 16, v1::DTYPE_FP16)));
  EXPECT_EQ(s.index_state(), v1::INDEX_STATE_EMPTY);
  ASSERT_EQ(s.layer_indexed_tokens_size(), 3);
  for (uint64_t n : s.layer_indexed_tokens()) EXPECT_EQ(n, 0u);
  EXPECT_TRUE(s.index_error().empty());
}

TEST_F(IntegrationTest, RetrieveWaveSplitsSteadyZoneAndClusters) {
  const v1::ModelShape shape = MakeShape(2, 4, 2, 32, v1::DTYPE_FP32);
  KvPattern pattern(31, shape);
  v1::SessionInfo s = Create(WaveSessionRequest(shape, 0.1f, 0.5f));
  const uint64_t n = 400;
  ASSERT_TRUE(
      AppendTokens(stub(), kNoToken, s.session_id(), pattern, 0, n, 100).ok());
  auto info = WaitIndexReady(stub(), s.session_id());
  ASSERT_TRUE(info.ok()) << StatusText(info.status);
  ASSERT_EQ(info.response.index_state(), v1::INDEX_STATE_READY)
      << info.response.index_error();

  for (uint32_t layer = 0; layer < 2; ++layer) {
    v1::RetrieveRequest request =
        RetrieveRequestFor(layer, v1::RETRIEVE_MODE_WAVE, /*include_kv=*/true);
    AddQuery(request, s.session_id(), pattern.Query(layer, 3));
    auto r = CallRetrieve(stub(), kNoToken, request);
    ASSERT_TRUE(r.ok()) << StatusText(r.status);
    ASSERT_EQ(r.response.results_size(), 1);
    const v1::SessionResult& result = r.response.results(0);
    EXPECT_EQ(result.num_tokens(), n);
    EXPECT_GT(result.indexed_tokens(), 0u);
    EXPECT_LE(result.indexed_tokens() + 4 + 16, n);
    EXPECT_EQ(result.indexed_tokens(),
              info.response.layer_indexed_tokens(layer));
    auto inline_data = CheckWaveResult(result, pattern, layer, true,
                                       request.queries(0).query());
    ASSERT_TRUE(inline_data.ok()) << inline_data.status();
    const std::vector<bool> steady = SteadyMask(result);
    for (uint64_t p = 0; p < 4; ++p) EXPECT_TRUE(steady[p]) << "sink " << p;
    for (uint64_t p = n - 16; p < n; ++p) {
      EXPECT_TRUE(steady[p]) << "recent " << p;
    }
    for (const v1::KvHeadResult& head : result.heads()) {
      EXPECT_FALSE(head.retrieval().empty()) << "10% of the clusters";
      for (const v1::TailStats& t : head.tail()) {
        EXPECT_GT(t.denominator(), 0.0f) << "half of the clusters estimated";
      }
    }
    // FetchClusters streams the same clusters, slot for slot.
    const v1::FetchClustersRequest fetch = FetchRequestFor(result, layer, 4096);
    auto fetched = CallFetchClusters(stub(), kNoToken, fetch);
    ASSERT_TRUE(fetched.ok()) << StatusText(fetched.status);
    auto data = CheckFetchedChunks(fetch, fetched.chunks, pattern, n);
    ASSERT_TRUE(data.ok()) << data.status();
    for (size_t h = 0; h < data->size(); ++h) {
      EXPECT_EQ((*data)[h].positions, (*inline_data)[h].positions);
      EXPECT_EQ((*data)[h].keys, (*inline_data)[h].keys);
      EXPECT_EQ((*data)[h].values, (*inline_data)[h].values);
      for (uint64_t p : (*data)[h].positions) {
        EXPECT_FALSE(steady[p]) << "steady token " << p << " in a cluster";
      }
    }
  }
}

TEST_F(IntegrationTest, RetrieveWaveOfEveryClusterCoversEveryIndexedToken) {
  // retrieval_fraction 1: every cluster is retrieved, the estimation zone
  // is empty, and steady + retrieved tokens are exactly all tokens.
  const v1::ModelShape shape = MakeShape(1, 6, 3, 16, v1::DTYPE_BF16);
  KvPattern pattern(32, shape);
  v1::SessionInfo s = Create(WaveSessionRequest(shape, 1.0f, 0.0f));
  const uint64_t n = 333;
  ASSERT_TRUE(
      AppendTokens(stub(), kNoToken, s.session_id(), pattern, 0, n, 111).ok());
  auto info = WaitIndexReady(stub(), s.session_id());
  ASSERT_TRUE(info.ok()) << StatusText(info.status);
  ASSERT_EQ(info.response.index_state(), v1::INDEX_STATE_READY);

  v1::RetrieveRequest request =
      RetrieveRequestFor(0, v1::RETRIEVE_MODE_WAVE, /*include_kv=*/true);
  AddQuery(request, s.session_id(), pattern.Query(0, 1));
  auto r = CallRetrieve(stub(), kNoToken, request);
  ASSERT_TRUE(r.ok()) << StatusText(r.status);
  const v1::SessionResult& result = r.response.results(0);
  auto data =
      CheckWaveResult(result, pattern, 0, true, request.queries(0).query());
  ASSERT_TRUE(data.ok()) << data.status();
  const std::vector<bool> steady = SteadyMask(result);
  for (const HeadData& head : *data) {
    std::vector<bool> covered = steady;
    for (uint64_t p : head.positions) covered[p] = true;
    EXPECT_EQ(head.positions.size(), result.indexed_tokens());
    for (uint64_t p = 0; p < n; ++p) {
      EXPECT_TRUE(covered[p]) << "head " << head.kv_head << " token " << p;
    }
  }
  for (const v1::KvHeadResult& head : result.heads()) {
    for (const v1::TailStats& t : head.tail()) {
      EXPECT_EQ(t.denominator(), 0.0f) << "nothing is left to estimate";
    }
  }
}

TEST_F(IntegrationTest, RetrieveWaveFallsBackToExactOnlyWhenAsked) {
  const v1::ModelShape shape = MakeShape(2, 2, 1, 32, v1::DTYPE_FP16);
  KvPattern ready_pattern(33, shape), young_pattern(34, shape);
  v1::SessionInfo ready = Create(WaveSessionRequest(shape, 0.2f, 0.3f));
  ASSERT_TRUE(AppendTokens(stub(), kNoToken, ready.session_id(), ready_pattern,
                           0, 300, 150)
                  .ok());
  auto info = WaitIndexReady(stub(), ready.session_id());
  ASSERT_TRUE(info.ok()) << StatusText(info.status);
  ASSERT_EQ(info.response.index_state(), v1::INDEX_STATE_READY);
  // A session too short to have an index.
  v1::SessionInfo young = Create(WaveSessionRequest(shape, 0.2f, 0.3f));
  ASSERT_TRUE(AppendTokens(stub(), kNoToken, young.session_id(), young_pattern,
                           0, 10, 10)
                  .ok());

  v1::RetrieveRequest request =
      RetrieveRequestFor(1, v1::RETRIEVE_MODE_WAVE, /*include_kv=*/true);
  AddQuery(request, ready.session_id(), ready_pattern.Query(1, 0));
  AddQuery(request, young.session_id(), young_pattern.Query(1, 0));
  // Without exact_if_not_ready, either UNAVAILABLE (no index) or an answer
  // whose young session is all steady.
  auto strict = CallRetrieve(stub(), kNoToken, request);
  if (strict.ok()) {
    ASSERT_EQ(strict.response.results_size(), 2);
    auto checked = CheckWaveResult(strict.response.results(1), young_pattern, 1,
                                   true, request.queries(1).query());
    EXPECT_TRUE(checked.ok()) << checked.status();
    EXPECT_EQ(strict.response.results(1).indexed_tokens(), 0u);
  } else {
    EXPECT_EQ(strict.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << StatusText(strict.status);
  }

  request.set_exact_if_not_ready(true);
  auto lenient = CallRetrieve(stub(), kNoToken, request);
  ASSERT_TRUE(lenient.ok()) << StatusText(lenient.status);
  ASSERT_EQ(lenient.response.results_size(), 2);
  const v1::SessionResult& a = lenient.response.results(0);
  const v1::SessionResult& b = lenient.response.results(1);
  EXPECT_EQ(a.mode(), v1::RETRIEVE_MODE_WAVE) << "the ready one is WAVE";
  auto checked_a =
      CheckWaveResult(a, ready_pattern, 1, true, request.queries(0).query());
  EXPECT_TRUE(checked_a.ok()) << checked_a.status();
  if (b.mode() == v1::RETRIEVE_MODE_EXACT) {
    auto checked_b = CheckExactResult(b, young_pattern, 1, true);
    EXPECT_TRUE(checked_b.ok()) << checked_b.status();
  } else {
    auto checked_b =
        CheckWaveResult(b, young_pattern, 1, true, request.queries(1).query());
    EXPECT_TRUE(checked_b.ok()) << checked_b.status();
  }
  EXPECT_EQ(b.num_tokens(), 10u);
}

// Ranges from an EXACT answer go stale once the background build moves
// their tokens into clusters. A stale fetch must fail FAILED_PRECONDITION
// or stream the right tokens; it never serves wrong bytes.
TEST_F(IntegrationTest, FetchOfRangesMadeStaleByAnIndexBuild) {
  const v1::ModelShape shape = MakeShape(1, 2, 2, 32, v1::DTYPE_FP32);
  KvPattern pattern(35, shape);
  v1::SessionInfo s = Create(WaveSessionRequest(shape, 0.2f, 0.3f));
  ASSERT_TRUE(
      AppendTokens(stub(), kNoToken, s.session_id(), pattern, 0, 40, 40).ok());
  v1::RetrieveRequest exact =
      RetrieveRequestFor(0, v1::RETRIEVE_MODE_EXACT, false);
  AddQuery(exact, s.session_id(), pattern.Query(0, 0));
  auto before = CallRetrieve(stub(), kNoToken, exact);
  ASSERT_TRUE(before.ok()) << StatusText(before.status);
  const v1::SessionResult old_result = before.response.results(0);

  ASSERT_TRUE(
      AppendTokens(stub(), kNoToken, s.session_id(), pattern, 40, 300, 130)
          .ok());
  auto info = WaitIndexReady(stub(), s.session_id());
  ASSERT_TRUE(info.ok()) << StatusText(info.status);
  ASSERT_EQ(info.response.index_state(), v1::INDEX_STATE_READY);
  ASSERT_GT(info.response.layer_indexed_tokens(0), 0u);

  for (bool check_epoch : {true, false}) {
    v1::FetchClustersRequest stale = FetchRequestFor(old_result, 0, 4096);
    if (!check_epoch) stale.set_layout_epoch(0);
    auto fetched = CallFetchClusters(stub(), kNoToken, stale);
    if (fetched.ok()) {
      auto data = CheckFetchedChunks(stale, fetched.chunks, pattern, 300);
      EXPECT_TRUE(data.ok())
          << "epoch " << check_epoch << ": " << data.status();
    } else {
      EXPECT_EQ(fetched.status.error_code(),
                grpc::StatusCode::FAILED_PRECONDITION)
          << StatusText(fetched.status);
    }
  }
  // A fresh answer covers every token again, and streams back intact.
  exact.set_include_kv(true);
  auto after = CallRetrieve(stub(), kNoToken, exact);
  ASSERT_TRUE(after.ok()) << StatusText(after.status);
  const v1::SessionResult& result = after.response.results(0);
  EXPECT_EQ(result.num_tokens(), 300u);
  auto inline_data = CheckExactResult(result, pattern, 0, true);
  ASSERT_TRUE(inline_data.ok()) << inline_data.status();
  const v1::FetchClustersRequest fresh = FetchRequestFor(result, 0, 8192);
  auto fetched = CallFetchClusters(stub(), kNoToken, fresh);
  ASSERT_TRUE(fetched.ok()) << StatusText(fetched.status);
  auto data = CheckFetchedChunks(fresh, fetched.chunks, pattern, 300);
  ASSERT_TRUE(data.ok()) << data.status();
  for (size_t h = 0; h < data->size(); ++h) {
    EXPECT_EQ((*data)[h].positions, (*inline_data)[h].positions);
  }
}

TEST_F(IntegrationTest, GetTransportInfoReportsLimits) {
  v1::GetTransportInfoRequest request;
  auto info = CallGetTransportInfo(stub(), kNoToken, request);
  ASSERT_TRUE(info.ok()) << StatusText(info.status);
  const auto& t = info.response.transports();
  EXPECT_NE(std::find(t.begin(), t.end(), "grpc-stream"), t.end());
  EXPECT_EQ(info.response.max_receive_message_bytes(), 64u << 20);
  EXPECT_EQ(info.response.max_send_message_bytes(), 64u << 20);
  EXPECT_EQ(info.response.max_inline_kv_bytes(), kMaxInlineKvBytes);

  v1::SessionInfo s =
      Create(SessionRequest(MakeShape(1, 1, 1, 16, v1::DTYPE_FP16)));
  request.set_session_id(s.session_id());
  auto per_session = CallGetTransportInfo(stub(), kNoToken, request);
  ASSERT_TRUE(per_session.ok()) << StatusText(per_session.status);
  EXPECT_EQ(per_session.response.max_inline_kv_bytes(), kMaxInlineKvBytes);
}

TEST_F(IntegrationTest, ListSessionsPagesInIdOrder) {
  auto before = ListAllSessions(stub(), kNoToken);
  ASSERT_TRUE(before.ok()) << StatusText(before.status);
  std::set<std::string> expected;
  for (const auto& s : before.response) expected.insert(s.session_id());
  for (int i = 0; i < 7; ++i) {
    v1::SessionInfo s = Create(SessionRequest(
        MakeShape(1, 2, 1, 16, v1::DTYPE_FP16), absl::StrCat("page-", i)));
    expected.insert(s.session_id());
  }
  v1::ListSessionsRequest request;
  request.set_page_size(3);
  std::vector<std::string> ids;
  int pages = 0;
  while (true) {
    auto page = CallListSessions(stub(), kNoToken, request);
    ASSERT_TRUE(page.ok()) << StatusText(page.status);
    ++pages;
    EXPECT_LE(page.response.sessions_size(), 3);
    for (const auto& s : page.response.sessions()) {
      ids.push_back(s.session_id());
      EXPECT_EQ(s.layer_tokens_size(),
                static_cast<int>(s.shape().num_layers()));
    }
    if (page.response.next_page_token().empty()) break;
    EXPECT_EQ(page.response.sessions_size(), 3)
        << "only the last page is short";
    request.set_page_token(page.response.next_page_token());
    ASSERT_LT(pages, 1000);
  }
  EXPECT_GE(pages, 3);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size())
      << "no session on two pages";
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()), expected);

  // Closing the last session of a page does not break the next page.
  v1::ListSessionsRequest first_page;
  first_page.set_page_size(3);
  auto page1 = CallListSessions(stub(), kNoToken, first_page);
  ASSERT_TRUE(page1.ok()) << StatusText(page1.status);
  ASSERT_EQ(page1.response.sessions_size(), 3);
  ASSERT_FALSE(page1.response.next_page_token().empty());
  const std::string last = page1.response.sessions(2).session_id();
  ASSERT_TRUE(CallCloseSession(stub(), kNoToken, last).ok());
  expected.erase(last);
  v1::ListSessionsRequest rest;
  rest.set_page_size(1000);
  rest.set_page_token(page1.response.next_page_token());
  auto page2 = CallListSessions(stub(), kNoToken, rest);
  ASSERT_TRUE(page2.ok()) << StatusText(page2.status);
  std::set<std::string> walked;
  for (const auto& s : page1.response.sessions()) walked.insert(s.session_id());
  walked.erase(last);
  for (const auto& s : page2.response.sessions()) {
    EXPECT_GT(s.session_id(), last) << "page 2 restarted";
    walked.insert(s.session_id());
  }
  EXPECT_EQ(walked, expected);

  // page_size 0 means 100: everything here fits one page.
  v1::ListSessionsRequest one;
  auto all = CallListSessions(stub(), kNoToken, one);
  ASSERT_TRUE(all.ok()) << StatusText(all.status);
  EXPECT_EQ(static_cast<size_t>(all.response.sessions_size()),
            std::min<size_t>(expected.size(), 100));
}

TEST_F(IntegrationTest, CloseSessionFreesItAndThenItIsNotFound) {
  const v1::ModelShape shape = MakeShape(2, 2, 2, 64, v1::DTYPE_FP16);
  KvPattern pattern(41, shape);
  v1::SessionInfo s = Create(SessionRequest(shape, "close"));
  ASSERT_TRUE(
      AppendTokens(stub(), kNoToken, s.session_id(), pattern, 0, 50, 50).ok());
  auto info = CallGetSession(stub(), kNoToken, s.session_id());
  ASSERT_TRUE(info.ok());
  auto closed = CallCloseSession(stub(), kNoToken, s.session_id());
  ASSERT_TRUE(closed.ok()) << StatusText(closed.status);
  EXPECT_EQ(closed.response.freed_bytes(), info.response.memory_bytes());
  EXPECT_GT(closed.response.freed_bytes(), 0u);

  auto get = CallGetSession(stub(), kNoToken, s.session_id());
  EXPECT_EQ(get.status.error_code(), grpc::StatusCode::NOT_FOUND)
      << StatusText(get.status);
  auto again = CallCloseSession(stub(), kNoToken, s.session_id());
  EXPECT_EQ(again.status.error_code(), grpc::StatusCode::NOT_FOUND);
  v1::AppendRequest append;
  append.set_session_id(s.session_id());
  *append.add_layers() = pattern.Layer(0, 50, 1);
  EXPECT_EQ(CallAppend(stub(), kNoToken, append).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  v1::RetrieveRequest retrieve =
      RetrieveRequestFor(0, v1::RETRIEVE_MODE_EXACT, false);
  AddQuery(retrieve, s.session_id(), pattern.Query(0, 0));
  EXPECT_EQ(CallRetrieve(stub(), kNoToken, retrieve).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  auto list = ListAllSessions(stub(), kNoToken);
  ASSERT_TRUE(list.ok());
  for (const auto& other : list.response) {
    EXPECT_NE(other.session_id(), s.session_id());
  }
}

TEST_F(IntegrationTest, HealthCheckAndReflection) {
  auto health = grpc::health::v1::Health::NewStub(*channel_);
  for (const std::string service : {"", "wavekv.v1.WaveKv"}) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, kNoToken);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status st = health->Check(&ctx, request, &response);
    ASSERT_TRUE(st.ok()) << "\"" << service << "\": " << StatusText(st);
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING)
        << "\"" << service << "\"";
  }
  {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, kNoToken);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service("no.such.Service");
    grpc::health::v1::HealthCheckResponse response;
    EXPECT_EQ(health->Check(&ctx, request, &response).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }

  auto reflection =
      grpc::reflection::v1alpha::ServerReflection::NewStub(*channel_);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, kNoToken);
  auto stream = reflection->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  request.set_file_containing_symbol("wavekv.v1.WaveKv");
  ASSERT_TRUE(stream->Write(request));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::set<std::string> services;
  for (const auto& s : response.list_services_response().service()) {
    services.insert(s.name());
  }
  EXPECT_TRUE(services.count("wavekv.v1.WaveKv")) << response.DebugString();
  EXPECT_TRUE(services.count("grpc.health.v1.Health"))
      << response.DebugString();
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_TRUE(response.has_file_descriptor_response())
      << response.DebugString();
  EXPECT_FALSE(
      response.file_descriptor_response().file_descriptor_proto().empty());
  while (stream->Read(&response)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
}

absl::StatusOr<std::vector<MetricSample>> Scrape(int port) {
  auto body = HttpGet(port, "/metrics");
  if (!body.ok()) return body.status();
  return ParsePrometheusText(*body);
}

// Runs `promtool check metrics` on `exposition`; returns its exit code and
// output, or nullopt when promtool is not installed.
std::optional<std::pair<int, std::string>> PromtoolCheck(
    const std::string& exposition) {
  const char kPromtool[] = "/usr/bin/promtool";
  if (::access(kPromtool, X_OK) != 0) return std::nullopt;
  auto dir = MakeTempDir("promtool");
  if (!dir.ok() || !WriteFile(*dir + "/metrics.txt", exposition).ok()) {
    return std::make_pair(-1, std::string("cannot write the exposition"));
  }
  const std::string command =
      absl::StrCat(kPromtool, " check metrics < ", *dir, "/metrics.txt 2>&1");
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return std::make_pair(-1, std::string("popen failed"));
  std::string output;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) output.append(buf, n);
  const int status = ::pclose(pipe);
  return std::make_pair(WIFEXITED(status) ? WEXITSTATUS(status) : -1, output);
}

TEST_F(IntegrationTest, MetricsPassPromtoolCheck) {
  ASSERT_GT(server_->metrics_port(), 0);
  // Some traffic first, so that histograms and error codes have samples.
  EXPECT_FALSE(CallGetSession(stub(), kNoToken, "no-such-session").ok());
  Create(SessionRequest(MakeShape(1, 1, 1, 16, v1::DTYPE_FP16)));
  auto body = HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  auto checked = PromtoolCheck(*body);
  if (!checked.has_value()) GTEST_SKIP() << "promtool is not installed";
  EXPECT_EQ(checked->first, 0) << checked->second;
  EXPECT_EQ(checked->second, "") << "lint problems";
}

TEST_F(IntegrationTest, MetricsCountEveryRpcByMethodAndCode) {
  ASSERT_GT(server_->metrics_port(), 0);
  auto before = Scrape(server_->metrics_port());
  ASSERT_TRUE(before.ok()) << before.status();
  const std::string kRequests = "wavekv_rpc_requests_total";
  auto count = [&](const std::vector<MetricSample>& m,
                   const std::string& method, const std::string& code) {
    return SumSamples(m, kRequests, {{"method", method}, {"code", code}});
  };
  const double creates = count(*before, "CreateSession", "OK");
  const double not_found = count(*before, "GetSession", "NOT_FOUND");
  const double create_latency =
      SumSamples(*before, "wavekv_rpc_latency_seconds_count",
                 {{"method", "CreateSession"}});

  v1::SessionInfo a =
      Create(SessionRequest(MakeShape(1, 1, 1, 16, v1::DTYPE_FP16)));
  v1::SessionInfo b =
      Create(SessionRequest(MakeShape(1, 1, 1, 16, v1::DTYPE_FP16)));
  EXPECT_EQ(
      CallGetSession(stub(), kNoToken, "no-such-session").status.error_code(),
      grpc::StatusCode::NOT_FOUND);

  // Counters are recorded as calls finish; allow the server a moment.
  std::vector<MetricSample> after;
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  do {
    auto scraped = Scrape(server_->metrics_port());
    ASSERT_TRUE(scraped.ok()) << scraped.status();
    after = *scraped;
    if (count(after, "CreateSession", "OK") >= creates + 2 &&
        count(after, "GetSession", "NOT_FOUND") >= not_found + 1) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < deadline);
  EXPECT_EQ(count(after, "CreateSession", "OK"), creates + 2);
  EXPECT_EQ(count(after, "GetSession", "NOT_FOUND"), not_found + 1);
  EXPECT_EQ(SumSamples(after, "wavekv_rpc_latency_seconds_count",
                       {{"method", "CreateSession"}}),
            create_latency + 2);
  EXPECT_GT(SumSamples(after, "wavekv_rpc_received_bytes_total",
                       {{"method", "CreateSession"}}),
            0);
  EXPECT_GT(SumSamples(after, "wavekv_rpc_sent_bytes_total",
                       {{"method", "CreateSession"}}),
            0);
  for (const std::string method :
       {"CreateSession", "Append", "Retrieve", "FetchClusters",
        "GetTransportInfo", "GetSession", "ListSessions", "CloseSession"}) {
    bool present = false;
    for (const MetricSample& m : after) {
      if (m.name == kRequests && m.labels.count("method") &&
          m.labels.at("method") == method) {
        present = true;
      }
    }
    EXPECT_TRUE(present) << method << " has no requests counter";
  }
  // Labels are bounded: never a session id.
  for (const MetricSample& m : after) {
    for (const auto& [key, value] : m.labels) {
      EXPECT_NE(value, a.session_id()) << m.name << "{" << key << "}";
    }
  }
  EXPECT_EQ(SumSamples(after, "wavekv_up"), 1);
  EXPECT_EQ(SumSamples(after, "wavekv_memory_budget_bytes"),
            static_cast<double>(kMemoryBudgetBytes));
  auto sessions = ListAllSessions(stub(), kNoToken);
  ASSERT_TRUE(sessions.ok());
  EXPECT_EQ(SumSamples(after, "wavekv_sessions"),
            static_cast<double>(sessions.response.size()));
  uint64_t memory = 0;
  for (const auto& s : sessions.response) memory += s.memory_bytes();
  EXPECT_EQ(SumSamples(after, "wavekv_memory_bytes"),
            static_cast<double>(memory));
  EXPECT_EQ(CountSamples(after, "wavekv_tokens"), 1);
}

// ---------------------------------------------------------------------------
// Tests with servers of their own.

TEST(ServerLifecycleTest, SigtermDrainsAnInFlightFetchAndExitsZero) {
  auto started = ServerProcess::Start(
      {.name = "drain", .args = {"--drain_timeout_ms=30000"}});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<ServerProcess> server = std::move(*started);
  auto channel = Connect(server->grpc_address());
  auto stub = v1::WaveKv::NewStub(channel);

  // 24 MiB of K+V: far more than gRPC's flow-control windows and socket
  // buffers, so the stream cannot finish while the client does not read.
  const v1::ModelShape shape = MakeShape(1, 4, 4, 128, v1::DTYPE_FP32);
  KvPattern pattern(51, shape);
  // A recent window longer than the session keeps every token steady: no
  // background index build moves slots while the stream is paused.
  v1::CreateSessionRequest create = SessionRequest(shape);
  create.mutable_index_options()->set_recent_tokens(65536);
  auto created = CallCreateSession(*stub, kNoToken, create);
  ASSERT_TRUE(created.ok()) << StatusText(created.status);
  const std::string id = created.response.session().session_id();
  const uint64_t n = 6144;
  grpc::Status appended =
      AppendTokens(*stub, kNoToken, id, pattern, 0, n, 1024);
  ASSERT_TRUE(appended.ok()) << StatusText(appended);

  v1::RetrieveRequest retrieve =
      RetrieveRequestFor(0, v1::RETRIEVE_MODE_EXACT, false);
  AddQuery(retrieve, id, pattern.Query(0, 0));
  auto r = CallRetrieve(*stub, kNoToken, retrieve);
  ASSERT_TRUE(r.ok()) << StatusText(r.status);
  const v1::FetchClustersRequest fetch =
      FetchRequestFor(r.response.results(0), 0, 64 << 10);

  grpc::ClientContext ctx;
  PrepareContext(&ctx, kNoToken, absl::Seconds(60));
  auto reader = stub->FetchClusters(&ctx, fetch);
  std::vector<v1::ClusterChunk> chunks(1);
  ASSERT_TRUE(reader->Read(&chunks[0])) << "first chunk";

  ASSERT_TRUE(server->Signal(SIGTERM).ok());
  // New calls are refused once the server drains (a fresh connection, so the
  // refusal is not an artefact of the busy one).
  auto fresh_channel = Connect(server->grpc_address(), absl::Seconds(2));
  auto fresh = v1::WaveKv::NewStub(fresh_channel);
  grpc::StatusCode refused = grpc::StatusCode::OK;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    v1::GetTransportInfoRequest info_request;
    grpc::ClientContext info_ctx;
    PrepareContext(&info_ctx, kNoToken, absl::Seconds(1));
    v1::GetTransportInfoResponse info;
    refused =
        fresh->GetTransportInfo(&info_ctx, info_request, &info).error_code();
    if (refused != grpc::StatusCode::OK) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(refused, grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(server->Running()) << "exited with a stream in flight";
  // Still draining (the stream is in flight): health checks get through
  // and report NOT_SERVING, so load balancers stop routing here.
  auto health = grpc::health::v1::Health::NewStub(fresh_channel);
  for (const std::string service : {"", "wavekv.v1.WaveKv"}) {
    grpc::ClientContext health_ctx;
    PrepareContext(&health_ctx, kNoToken, absl::Seconds(2));
    grpc::health::v1::HealthCheckRequest health_request;
    health_request.set_service(service);
    grpc::health::v1::HealthCheckResponse health_response;
    grpc::Status hs =
        health->Check(&health_ctx, health_request, &health_response);
    ASSERT_TRUE(hs.ok()) << "\"" << service << "\": " << StatusText(hs);
    EXPECT_EQ(health_response.status(),
              grpc::health::v1::HealthCheckResponse::NOT_SERVING)
        << "\"" << service << "\"";
  }

  // The in-flight stream still completes, with every byte right.
  v1::ClusterChunk chunk;
  while (reader->Read(&chunk)) chunks.push_back(std::move(chunk));
  grpc::Status st = reader->Finish();
  ASSERT_TRUE(st.ok()) << StatusText(st);
  auto data = CheckFetchedChunks(fetch, chunks, pattern, n);
  EXPECT_TRUE(data.ok()) << data.status();

  auto exit = server->Wait(absl::Seconds(20));
  ASSERT_TRUE(exit.ok()) << exit.status() << "\n" << server->StderrTail();
  EXPECT_TRUE(exit->ok()) << exit->ToString() << "\n" << server->StderrTail();
  // Logs are JSON lines.
  const std::string log = server->StderrTail(1 << 20);
  EXPECT_TRUE(absl::StrContains(log, "{\"ts\":\"")) << log;
}

// DESIGN.md: an Append acknowledged at DURABILITY_SYNC survives kill -9.
// The server's persistent tier is its --data_dir: SYNC is served (the
// memory-only refusal is covered by kvstore's engine_test).
TEST(ServerLifecycleTest, SyncAppendsSurviveKillNine) {
  auto started = ServerProcess::Start({.name = "sync"});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<ServerProcess> server = std::move(*started);
  auto stub = v1::WaveKv::NewStub(Connect(server->grpc_address()));
  const v1::ModelShape shape = MakeShape(2, 2, 2, 32, v1::DTYPE_FP16);
  KvPattern pattern(61, shape);

  v1::CreateSessionRequest create = SessionRequest(shape, "sync");
  create.set_durability(v1::DURABILITY_SYNC);
  auto created = CallCreateSession(*stub, kNoToken, create);
  ASSERT_TRUE(created.ok()) << StatusText(created.status);
  // Persistent tier present: acknowledged tokens survive SIGKILL.
  const std::string id = created.response.session().session_id();
  const uint64_t n = 100;
  ASSERT_TRUE(AppendTokens(*stub, kNoToken, id, pattern, 0, n, 25).ok());
  const std::string data_dir = server->data_dir();
  server->Kill();
  auto restarted =
      ServerProcess::Start({.name = "sync-restart", .data_dir = data_dir});
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto stub2 = v1::WaveKv::NewStub(Connect((*restarted)->grpc_address()));
  auto info = CallGetSession(*stub2, kNoToken, id);
  ASSERT_TRUE(info.ok()) << StatusText(info.status);
  EXPECT_EQ(info.response.num_tokens(), n);
  EXPECT_EQ(info.response.durable_tokens(), n);
  for (uint32_t layer = 0; layer < shape.num_layers(); ++layer) {
    v1::RetrieveRequest request =
        RetrieveRequestFor(layer, v1::RETRIEVE_MODE_EXACT, true);
    AddQuery(request, id, pattern.Query(layer, 0));
    auto r = CallRetrieve(*stub2, kNoToken, request);
    ASSERT_TRUE(r.ok()) << StatusText(r.status);
    auto checked =
        CheckExactResult(r.response.results(0), pattern, layer, true);
    EXPECT_TRUE(checked.ok()) << checked.status();
  }
  auto exit = (*restarted)->Terminate();
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->ok()) << exit->ToString();
}

TEST(ServerLifecycleTest, SecondServerOnTheSameDataDirFailsClearly) {
  auto first = ServerProcess::Start({.name = "lock-a"});
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = ServerProcess::Start({.name = "lock-b",
                                      .data_dir = (*first)->data_dir(),
                                      .ready_timeout = absl::Seconds(10)});
  ASSERT_FALSE(second.ok()) << "two servers share " << (*first)->data_dir();
  EXPECT_EQ(second.status().code(), absl::StatusCode::kInternal)
      << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), "data_dir") ||
              absl::StrContains(second.status().message(), "lock"))
      << second.status();
  // The first one is unharmed.
  auto stub = v1::WaveKv::NewStub(Connect((*first)->grpc_address()));
  EXPECT_TRUE(CallGetTransportInfo(*stub, kNoToken, {}).ok());
  auto exit = (*first)->Terminate();
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->ok()) << exit->ToString();
  // A clean stop releases the lock: a replacement starts on the same dir.
  auto replacement = ServerProcess::Start(
      {.name = "lock-c", .data_dir = (*first)->data_dir()});
  ASSERT_TRUE(replacement.ok()) << replacement.status();
  auto exit2 = (*replacement)->Terminate();
  ASSERT_TRUE(exit2.ok()) << exit2.status();
  EXPECT_TRUE(exit2->ok()) << exit2->ToString();
}

TEST(ServerLifecycleTest, ConfigFileAppliesAndFlagsOverrideIt) {
  auto dir = MakeTempDir("config");
  ASSERT_TRUE(dir.ok());
  const std::string config = *dir + "/wavekv.conf";
  ASSERT_TRUE(WriteFile(config,
                        "# limits for the test\n"
                        "max_inline_kv_bytes = 12345\n"
                        "memory_budget = 64MiB\n"
                        "\n"
                        "max_message_bytes = 8MiB  \n")
                  .ok());
  auto server = ServerProcess::Start(
      {.name = "config",
       .args = {"--config=" + config, "--max_inline_kv_bytes=54321"}});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::WaveKv::NewStub(Connect((*server)->grpc_address()));
  auto info = CallGetTransportInfo(*stub, kNoToken, {});
  ASSERT_TRUE(info.ok()) << StatusText(info.status);
  EXPECT_EQ(info.response.max_inline_kv_bytes(), 54321u) << "flag wins";
  EXPECT_EQ(info.response.max_receive_message_bytes(), 8u << 20);
  auto metrics = Scrape((*server)->metrics_port());
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(SumSamples(*metrics, "wavekv_memory_budget_bytes"),
            static_cast<double>(64 << 20));
  ASSERT_TRUE((*server)->Terminate().ok());

  // An unknown name is an error naming the line; the server does not start.
  ASSERT_TRUE(
      WriteFile(config, "memory_budget = 64MiB\nmax_sesions = 3\n").ok());
  auto bad = ServerProcess::Start(
      {.name = "bad-config", .args = {"--config=" + config}});
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "max_sesions"))
      << bad.status();
  EXPECT_TRUE(absl::StrContains(bad.status().message(), ":2"))
      << "names line 2: " << bad.status();
}

}  // namespace
}  // namespace wavekv::testing
