#include "transport/convert.h"

#include <cstring>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

v1::CreateSessionRequest ValidCreate() {
  v1::CreateSessionRequest req;
  v1::ModelShape* shape = req.mutable_shape();
  shape->set_num_layers(2);
  shape->set_num_q_heads(8);
  shape->set_num_kv_heads(2);
  shape->set_head_dim(64);
  shape->set_dtype(v1::DTYPE_BF16);
  return req;
}

TEST(ConvertTest, DTypesMapBothWays) {
  for (DType d : {DType::kFp16, DType::kBf16, DType::kFp32}) {
    EXPECT_EQ(*DTypeFromProto(DTypeToProto(d), "x"), d);
  }
}

TEST(ConvertTest, UnspecifiedAndUnknownEnumsNameTheField) {
  absl::Status s =
      DTypeFromProto(v1::DTYPE_UNSPECIFIED, "shape.dtype").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Msg(s),
            "shape.dtype: must be DTYPE_FP16, DTYPE_BF16 or DTYPE_FP32, got "
            "DTYPE_UNSPECIFIED (0)");
  s = DTypeFromProto(static_cast<v1::DType>(7), "shape.dtype").status();
  EXPECT_EQ(Msg(s),
            "shape.dtype: unknown value 7 (expected DTYPE_FP16, DTYPE_BF16 or "
            "DTYPE_FP32)");
  s = RetrieveModeFromProto(v1::RETRIEVE_MODE_UNSPECIFIED).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("mode: must be RETRIEVE_MODE_EXACT or "
                                "RETRIEVE_MODE_WAVE, got "
                                "RETRIEVE_MODE_UNSPECIFIED (0)"));
  s = RetrieveModeFromProto(static_cast<v1::RetrieveMode>(-3)).status();
  EXPECT_THAT(Msg(s), HasSubstr("mode: unknown value -3"));
  s = DurabilityFromProto(static_cast<v1::Durability>(4), "durability")
          .status();
  EXPECT_THAT(Msg(s), HasSubstr("durability: unknown value 4"));
}

TEST(ConvertTest, DurabilityUnspecifiedIsUnset) {
  EXPECT_EQ(*DurabilityFromProto(v1::DURABILITY_UNSPECIFIED, "d"),
            std::nullopt);
  EXPECT_EQ(*DurabilityFromProto(v1::DURABILITY_SYNC, "d"), Durability::kSync);
  for (Durability d :
       {Durability::kNone, Durability::kAsync, Durability::kSync}) {
    EXPECT_EQ(**DurabilityFromProto(DurabilityToProto(d), "d"), d);
  }
  EXPECT_EQ(*RetrieveModeFromProto(v1::RETRIEVE_MODE_WAVE),
            RetrieveMode::kWave);
  EXPECT_EQ(*RetrieveModeFromProto(v1::RETRIEVE_MODE_EXACT),
            RetrieveMode::kExact);
}

TEST(ConvertTest, SessionOptionsTakeDefaultsForUnsetIndexFields) {
  v1::CreateSessionRequest req = ValidCreate();
  req.mutable_index_options()->set_cluster_size(32);
  req.mutable_index_options()->set_sink_tokens(0);  // set to 0 != unset
  req.mutable_index_options()->set_retrieval_fraction(0.05f);
  req.set_max_tokens(1000);
  req.set_label("chat-1");
  req.set_durability(v1::DURABILITY_ASYNC);
  const absl::StatusOr<SessionOptions> opts = SessionOptionsFromProto(req);
  ASSERT_TRUE(opts.ok()) << opts.status();
  EXPECT_EQ(opts->shape.num_layers, 2u);
  EXPECT_EQ(opts->shape.num_q_heads, 8u);
  EXPECT_EQ(opts->shape.num_kv_heads, 2u);
  EXPECT_EQ(opts->shape.head_dim, 64u);
  EXPECT_EQ(opts->shape.dtype, DType::kBf16);
  const IndexOptions defaults;
  EXPECT_EQ(opts->index.cluster_size, 32u);
  EXPECT_EQ(opts->index.sink_tokens, 0u);
  EXPECT_FLOAT_EQ(opts->index.retrieval_fraction, 0.05f);
  EXPECT_EQ(opts->index.recent_tokens, defaults.recent_tokens);
  EXPECT_EQ(opts->index.segment_tokens, defaults.segment_tokens);
  EXPECT_EQ(opts->index.kmeans_iterations, defaults.kmeans_iterations);
  EXPECT_EQ(opts->index.update_tokens, defaults.update_tokens);
  EXPECT_FLOAT_EQ(opts->index.estimation_fraction,
                  defaults.estimation_fraction);
  EXPECT_EQ(opts->durability, Durability::kAsync);
  EXPECT_EQ(opts->max_tokens, 1000u);
  EXPECT_EQ(opts->label, "chat-1");

  req.clear_durability();
  EXPECT_EQ(SessionOptionsFromProto(req)->durability, Durability::kNone);
}

TEST(ConvertTest, SessionOptionsErrors) {
  v1::CreateSessionRequest req = ValidCreate();
  req.clear_shape();
  EXPECT_EQ(Msg(SessionOptionsFromProto(req).status()), "shape: required");
  req = ValidCreate();
  req.mutable_shape()->clear_dtype();
  EXPECT_THAT(Msg(SessionOptionsFromProto(req).status()),
              HasSubstr("shape.dtype: must be"));
  req = ValidCreate();
  req.set_durability(static_cast<v1::Durability>(9));
  EXPECT_THAT(Msg(SessionOptionsFromProto(req).status()),
              HasSubstr("durability: unknown value 9"));
}

TEST(ConvertTest, SessionInfoSetsEveryIndexField) {
  SessionInfo info;
  info.session_id = "s-1";
  info.tenant = "tenant-a";
  info.shape = ModelShape{4, 32, 8, 128, DType::kFp16};
  info.durability = Durability::kSync;
  info.max_tokens = 4096;
  info.label = "l";
  info.layer_tokens = {10, 9, 10, 10};
  info.num_tokens = 9;
  info.durable_tokens = 8;
  info.memory_bytes = 123456;
  info.created_unix_ms = 1000;
  info.last_access_unix_ms = 2000;
  info.layer_indexed_tokens = {0, 1024, 2048, 0};
  info.index_state = IndexState::kFailed;
  info.index_error = "layer 3: boom";
  v1::SessionInfo out;
  SessionInfoToProto(info, &out);
  EXPECT_EQ(out.session_id(), "s-1");
  EXPECT_EQ(out.shape().num_layers(), 4u);
  EXPECT_EQ(out.shape().head_dim(), 128u);
  EXPECT_EQ(out.shape().dtype(), v1::DTYPE_FP16);
  EXPECT_TRUE(out.index_options().has_sink_tokens());
  EXPECT_TRUE(out.index_options().has_recent_tokens());
  EXPECT_TRUE(out.index_options().has_segment_tokens());
  EXPECT_TRUE(out.index_options().has_cluster_size());
  EXPECT_TRUE(out.index_options().has_kmeans_iterations());
  EXPECT_TRUE(out.index_options().has_update_tokens());
  EXPECT_TRUE(out.index_options().has_retrieval_fraction());
  EXPECT_TRUE(out.index_options().has_estimation_fraction());
  EXPECT_EQ(out.index_options().update_tokens(), 1024u);
  EXPECT_EQ(out.durability(), v1::DURABILITY_SYNC);
  EXPECT_THAT(out.layer_tokens(), ElementsAre(10, 9, 10, 10));
  EXPECT_EQ(out.num_tokens(), 9u);
  EXPECT_EQ(out.durable_tokens(), 8u);
  EXPECT_EQ(out.memory_bytes(), 123456u);
  EXPECT_EQ(out.created_unix_ms(), 1000);
  EXPECT_EQ(out.last_access_unix_ms(), 2000);
  EXPECT_THAT(out.layer_indexed_tokens(), ElementsAre(0, 1024, 2048, 0));
  EXPECT_EQ(out.index_state(), v1::INDEX_STATE_FAILED);
  EXPECT_EQ(out.index_error(), "layer 3: boom");
  for (auto [state, wire] :
       {std::pair{IndexState::kEmpty, v1::INDEX_STATE_EMPTY},
        std::pair{IndexState::kBuilding, v1::INDEX_STATE_BUILDING},
        std::pair{IndexState::kReady, v1::INDEX_STATE_READY}}) {
    info.index_state = state;
    info.index_error.clear();
    SessionInfoToProto(info, &out);
    EXPECT_EQ(out.index_state(), wire);
    EXPECT_EQ(out.index_error(), "");
  }
  // The round trip through the wire keeps the index options.
  EXPECT_EQ(IndexOptionsFromProto(out.index_options()).cluster_size, 16u);

  SessionPage page;
  page.sessions = {info, info};
  page.next_page_token = "next";
  v1::ListSessionsResponse list;
  SessionPageToProto(page, &list);
  EXPECT_EQ(list.sessions_size(), 2);
  EXPECT_EQ(list.next_page_token(), "next");
}

TEST(ConvertTest, LayerAppendsPointIntoTheRequest) {
  v1::AppendRequest req;
  req.set_session_id("s");
  v1::LayerKV* l = req.add_layers();
  l->set_layer(1);
  l->set_start_token(7);
  l->set_num_tokens(2);
  l->set_keys(std::string(512, 'k'));
  l->set_values(std::string(512, 'v'));
  req.add_layers()->set_layer(0);
  const std::vector<LayerAppend> appends = LayerAppendsFromProto(req);
  ASSERT_EQ(appends.size(), 2u);
  EXPECT_EQ(appends[0].layer, 1u);
  EXPECT_EQ(appends[0].start_token, 7u);
  EXPECT_EQ(appends[0].num_tokens, 2u);
  EXPECT_EQ(reinterpret_cast<const char*>(appends[0].keys.data()),
            req.layers(0).keys().data());
  EXPECT_EQ(appends[0].keys.size(), 512u);
  EXPECT_EQ(reinterpret_cast<const char*>(appends[0].values.data()),
            req.layers(0).values().data());
  EXPECT_TRUE(appends[1].keys.empty());

  AppendResult result{{3, 4}, 3, 2};
  v1::AppendResponse resp;
  AppendResultToProto(result, &resp);
  EXPECT_THAT(resp.layer_tokens(), ElementsAre(3, 4));
  EXPECT_EQ(resp.num_tokens(), 3u);
  EXPECT_EQ(resp.durable_tokens(), 2u);
}

TEST(ConvertTest, RetrieveBatchViewsQueriesAsFloats) {
  v1::RetrieveRequest req;
  req.set_layer(3);
  req.set_mode(v1::RETRIEVE_MODE_WAVE);
  req.set_include_kv(true);
  req.set_exact_if_not_ready(true);
  const std::vector<float> q = {1.0f, -2.5f, 3.0f, 0.25f};
  for (const char* id : {"a", "b"}) {
    v1::SessionQuery* sq = req.add_queries();
    sq->set_session_id(id);
    sq->set_query(std::string(reinterpret_cast<const char*>(q.data()),
                              q.size() * sizeof(float)));
  }
  absl::StatusOr<RetrieveBatch> batch = RetrieveBatchFromProto(req);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->options.layer, 3u);
  EXPECT_EQ(batch->options.mode, RetrieveMode::kWave);
  EXPECT_TRUE(batch->options.include_kv);
  EXPECT_TRUE(batch->options.exact_if_not_ready);
  req.set_exact_if_not_ready(false);
  EXPECT_FALSE(RetrieveBatchFromProto(req)->options.exact_if_not_ready);
  ASSERT_EQ(batch->queries.size(), 2u);
  EXPECT_EQ(batch->queries[1].session_id, "b");
  EXPECT_THAT(batch->queries[0].query, ElementsAre(1.0f, -2.5f, 3.0f, 0.25f));
  // Moving the batch keeps the spans valid.
  RetrieveBatch moved = *std::move(batch);
  EXPECT_THAT(moved.queries[1].query, ElementsAre(1.0f, -2.5f, 3.0f, 0.25f));
}

TEST(ConvertTest, RetrieveBatchErrors) {
  v1::RetrieveRequest req;
  req.set_mode(v1::RETRIEVE_MODE_EXACT);
  req.add_queries()->set_query(std::string(8, '\0'));
  req.add_queries()->set_query(std::string(10, '\0'));
  EXPECT_EQ(Msg(RetrieveBatchFromProto(req).status()),
            "queries[1].query: expected a multiple of 4 bytes (fp32), got 10");
  req.clear_mode();
  EXPECT_THAT(Msg(RetrieveBatchFromProto(req).status()), HasSubstr("mode: "));
}

TEST(ConvertTest, UnalignedQueryBytesAreCopied) {
  alignas(8) char buffer[1 + 3 * sizeof(float)];
  const float values[3] = {0.5f, -1.0f, 7.0f};
  std::memcpy(buffer + 1, values, sizeof(values));
  std::vector<std::unique_ptr<float[]>> copies;
  const absl::Span<const float> view =
      Fp32SpanFromBytes(absl::string_view(buffer + 1, sizeof(values)), &copies);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(view.data(), copies[0].get());
  EXPECT_THAT(view, ElementsAre(0.5f, -1.0f, 7.0f));
  // Aligned bytes are viewed in place.
  std::memcpy(buffer, values, sizeof(float));
  const absl::Span<const float> in_place =
      Fp32SpanFromBytes(absl::string_view(buffer, sizeof(float)), &copies);
  EXPECT_EQ(reinterpret_cast<const char*>(in_place.data()), buffer);
  EXPECT_EQ(copies.size(), 1u);
  EXPECT_TRUE(Fp32SpanFromBytes(absl::string_view(), &copies).empty());
}

TEST(ConvertTest, SessionResultMovesBytesAndEncodesTails) {
  SessionResult r;
  r.session_id = "s";
  r.num_tokens = 100;
  r.indexed_tokens = 32;
  r.steady = {{0, 4}, {36, 100}};
  r.layout_epoch = 5;
  r.mode = RetrieveMode::kWave;
  KvHeadResult head;
  head.kv_head = 1;
  head.retrieval = {{3, 16, 8}, {9, 40, 4}};
  head.tail = {{1.5f, 2.0f, {0.25f, -0.5f}},
               {-std::numeric_limits<float>::infinity(), 0.0f, {0.0f, 0.0f}}};
  head.keys = std::string(4096, 'k');
  head.values = std::string(4096, 'v');
  const char* keys_data = head.keys.data();
  r.heads.push_back(std::move(head));
  v1::SessionResult out;
  SessionResultToProto(std::move(r), &out);
  EXPECT_EQ(out.session_id(), "s");
  EXPECT_EQ(out.num_tokens(), 100u);
  EXPECT_EQ(out.indexed_tokens(), 32u);
  ASSERT_EQ(out.steady_size(), 2);
  EXPECT_EQ(out.steady(1).begin(), 36u);
  EXPECT_EQ(out.steady(1).end(), 100u);
  EXPECT_EQ(out.layout_epoch(), 5u);
  EXPECT_EQ(out.mode(), v1::RETRIEVE_MODE_WAVE);
  ASSERT_EQ(out.heads_size(), 1);
  const v1::KvHeadResult& h = out.heads(0);
  EXPECT_EQ(h.kv_head(), 1u);
  ASSERT_EQ(h.retrieval_size(), 2);
  EXPECT_EQ(h.retrieval(1).cluster_id(), 9u);
  EXPECT_EQ(h.retrieval(1).first_slot(), 40u);
  EXPECT_EQ(h.retrieval(1).num_slots(), 4u);
  ASSERT_EQ(h.tail_size(), 2);
  EXPECT_FLOAT_EQ(h.tail(0).max_logit(), 1.5f);
  EXPECT_FLOAT_EQ(h.tail(0).denominator(), 2.0f);
  float num[2];
  ASSERT_EQ(h.tail(0).numerator().size(), sizeof(num));
  std::memcpy(num, h.tail(0).numerator().data(), sizeof(num));
  EXPECT_FLOAT_EQ(num[0], 0.25f);
  EXPECT_FLOAT_EQ(num[1], -0.5f);
  EXPECT_TRUE(std::isinf(h.tail(1).max_logit()));
  EXPECT_EQ(h.keys().size(), 4096u);
  EXPECT_EQ(h.keys().data(), keys_data);  // moved, not copied
  EXPECT_EQ(h.values(), std::string(4096, 'v'));
}

TEST(ConvertTest, FetchRequestAndChunks) {
  v1::FetchClustersRequest req;
  req.set_session_id("s");
  req.set_layer(2);
  req.set_layout_epoch(9);
  req.set_max_chunk_bytes(8192);
  v1::HeadSlots* h = req.add_heads();
  h->set_kv_head(1);
  v1::SlotRange* r = h->add_ranges();
  r->set_cluster_id(4);
  r->set_first_slot(64);
  r->set_num_slots(16);
  const FetchRequest f = FetchRequestFromProto(req);
  EXPECT_EQ(f.session_id, "s");
  EXPECT_EQ(f.layer, 2u);
  EXPECT_EQ(f.layout_epoch, 9u);
  EXPECT_EQ(f.max_chunk_bytes, 8192u);
  ASSERT_EQ(f.heads.size(), 1u);
  EXPECT_EQ(f.heads[0].kv_head, 1u);
  ASSERT_EQ(f.heads[0].ranges.size(), 1u);
  EXPECT_EQ(f.heads[0].ranges[0].cluster_id, 4u);
  EXPECT_EQ(f.heads[0].ranges[0].first_slot, 64u);
  EXPECT_EQ(f.heads[0].ranges[0].num_slots, 16u);

  SlotChunk chunk{1,         4, 64, 2, std::string(8, 'k'), std::string(8, 'v'),
                  {100, 101}};
  v1::ClusterChunk out;
  SlotChunkToProto(std::move(chunk), &out);
  EXPECT_EQ(out.kv_head(), 1u);
  EXPECT_EQ(out.cluster_id(), 4u);
  EXPECT_EQ(out.first_slot(), 64u);
  EXPECT_EQ(out.num_slots(), 2u);
  EXPECT_EQ(out.keys(), std::string(8, 'k'));
  EXPECT_EQ(out.values(), std::string(8, 'v'));
  EXPECT_THAT(out.positions(), ElementsAre(100, 101));
}

}  // namespace
}  // namespace wavekv
