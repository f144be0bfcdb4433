#include "kvstore/types.h"

#include <cmath>
#include <limits>
#include <string>

#include "gtest/gtest.h"
#include "kvstore/engine.h"

namespace wavekv {
namespace {

ModelShape GoodShape() {
  ModelShape s;
  s.num_layers = 32;
  s.num_q_heads = 32;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  s.dtype = DType::kFp16;
  return s;
}

void ExpectInvalid(const absl::Status& s, const std::string& message) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), message);
}

TEST(ModelShapeTest, AcceptsTypicalShapes) {
  EXPECT_TRUE(GoodShape().Validate().ok());
  for (uint32_t d : {16u, 64u, 128u, 256u, 512u}) {
    for (DType t : {DType::kFp16, DType::kBf16, DType::kFp32}) {
      ModelShape s = GoodShape();
      s.head_dim = d;
      s.dtype = t;
      EXPECT_TRUE(s.Validate().ok()) << d;
    }
  }
  ModelShape edge{1024, 1024, 256, 512, DType::kFp32};
  EXPECT_TRUE(edge.Validate().ok());
}

TEST(ModelShapeTest, RejectsEachFieldNamingIt) {
  ModelShape s = GoodShape();
  s.num_layers = 0;
  ExpectInvalid(s.Validate(), "shape.num_layers: 0 is out of range 1..1024");
  s = GoodShape();
  s.num_layers = 1025;
  ExpectInvalid(s.Validate(), "shape.num_layers: 1025 is out of range 1..1024");
  s = GoodShape();
  s.num_q_heads = 0;
  ExpectInvalid(s.Validate(), "shape.num_q_heads: 0 is out of range 1..1024");
  s = GoodShape();
  s.num_kv_heads = 257;
  ExpectInvalid(s.Validate(), "shape.num_kv_heads: 257 is out of range 1..256");
  s = GoodShape();
  s.num_q_heads = 12;
  ExpectInvalid(s.Validate(),
                "shape.num_q_heads: 12 is not a multiple of "
                "shape.num_kv_heads (8)");
  s = GoodShape();
  s.head_dim = 100;
  ExpectInvalid(s.Validate(), "shape.head_dim: 100 is not a multiple of 8");
  s = GoodShape();
  s.head_dim = 8;
  ExpectInvalid(s.Validate(), "shape.head_dim: 8 is out of range 16..512");
  s = GoodShape();
  s.head_dim = 520;
  ExpectInvalid(s.Validate(), "shape.head_dim: 520 is out of range 16..512");
  s = GoodShape();
  s.dtype = static_cast<DType>(0);
  ExpectInvalid(s.Validate(),
                "shape.dtype: 0 is not FP16 (1), BF16 (2) or FP32 (3)");
}

TEST(ModelShapeTest, TokenLayerBytesAndGroupSize) {
  ModelShape s = GoodShape();
  EXPECT_EQ(s.TokenLayerBytes(), 8u * 128 * 2);
  EXPECT_EQ(s.group_size(), 4u);
  s.dtype = DType::kFp32;
  s.head_dim = 64;
  EXPECT_EQ(s.TokenLayerBytes(), 8u * 64 * 4);
}

TEST(IndexOptionsTest, DefaultsAreValid) {
  EXPECT_TRUE(IndexOptions{}.Validate().ok());
}

TEST(IndexOptionsTest, RejectsOutOfRangeNamingTheField) {
  IndexOptions o;
  o.sink_tokens = 4097;
  ExpectInvalid(o.Validate(),
                "index_options.sink_tokens: 4097 is out of range 0..4096");
  o = {};
  o.recent_tokens = 65537;
  ExpectInvalid(o.Validate(),
                "index_options.recent_tokens: 65537 is out of range 0..65536");
  o = {};
  o.segment_tokens = 63;
  ExpectInvalid(o.Validate(),
                "index_options.segment_tokens: 63 is out of range 64..1048576");
  o = {};
  o.cluster_size = 0;
  ExpectInvalid(o.Validate(),
                "index_options.cluster_size: 0 is out of range 1..4096");
  o = {};
  o.kmeans_iterations = 101;
  ExpectInvalid(o.Validate(),
                "index_options.kmeans_iterations: 101 is out of range 1..100");
  o = {};
  o.update_tokens = 8;
  ExpectInvalid(o.Validate(),
                "index_options.update_tokens: 8 is out of range 16..1048576");
  o = {};
  o.update_tokens = 1000;  // cluster_size 16
  ExpectInvalid(o.Validate(),
                "index_options.update_tokens: 1000 is not a multiple of "
                "index_options.cluster_size (16)");
  o = {};
  o.segment_tokens = 64;
  o.cluster_size = 128;
  o.update_tokens = 128;
  ExpectInvalid(o.Validate(),
                "index_options.cluster_size: 128 exceeds "
                "index_options.segment_tokens (64); a segment must hold at "
                "least one cluster");
}

TEST(IndexOptionsTest, FractionsRejectedNeverClamped) {
  IndexOptions o;
  o.retrieval_fraction = 0.0f;
  ExpectInvalid(o.Validate(),
                "index_options.retrieval_fraction: 0 is outside (0, 1]");
  o.retrieval_fraction = 1.5f;
  ExpectInvalid(o.Validate(),
                "index_options.retrieval_fraction: 1.5 is outside (0, 1]");
  o.retrieval_fraction = std::nanf("");
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.estimation_fraction = -0.1f;
  ExpectInvalid(o.Validate(),
                "index_options.estimation_fraction: -0.1 is outside [0, 1]");
  o.estimation_fraction = std::numeric_limits<float>::infinity();
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.retrieval_fraction = 0.5f;
  o.estimation_fraction = 0.6f;
  absl::Status s = o.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message().rfind("index_options.estimation_fraction: 0.6 plus "
                              "index_options.retrieval_fraction (0.5)",
                              0),
            0u)
      << s;
  // Boundaries are accepted: everything retrieved; a sum of exactly 1 in
  // decimal that float rounding pushes just above 1.
  o.retrieval_fraction = 1.0f;
  o.estimation_fraction = 0.0f;
  EXPECT_TRUE(o.Validate().ok());
  o.retrieval_fraction = 0.018f;
  o.estimation_fraction = 0.982f;
  EXPECT_TRUE(o.Validate().ok());
}

TEST(SessionOptionsTest, ValidatesShapeIndexDurabilityLabel) {
  SessionOptions o;
  o.shape = GoodShape();
  EXPECT_TRUE(o.Validate().ok());

  SessionOptions bad = o;
  bad.shape.head_dim = 100;
  ExpectInvalid(bad.Validate(), "shape.head_dim: 100 is not a multiple of 8");
  bad = o;
  bad.index.cluster_size = 5000;
  ExpectInvalid(bad.Validate(),
                "index_options.cluster_size: 5000 is out of range 1..4096");
  bad = o;
  bad.durability = static_cast<Durability>(0);
  ExpectInvalid(bad.Validate(),
                "durability: 0 is not NONE (1), ASYNC (2) or SYNC (3)");
  bad = o;
  bad.label = std::string(128, 'x');
  EXPECT_TRUE(bad.Validate().ok());
  bad.label = std::string(129, 'x');
  ExpectInvalid(bad.Validate(), "label: 129 bytes, more than the limit of 128");
  bad.label = "ok \xC3\xA9 then \xC3";  // truncated 2-byte sequence
  ExpectInvalid(bad.Validate(), "label: invalid UTF-8 at byte 11");
  bad.label = "\xC0\x80";  // overlong NUL
  ExpectInvalid(bad.Validate(), "label: invalid UTF-8 at byte 0");
  bad.label = "\xED\xA0\x80";  // surrogate
  ExpectInvalid(bad.Validate(), "label: invalid UTF-8 at byte 0");
  bad.label = "na\xC3\xAFve \xF0\x9F\x98\x80";
  EXPECT_TRUE(bad.Validate().ok());
}

TEST(EngineOptionsTest, DefaultsValidAndEachFieldChecked) {
  EXPECT_TRUE(EngineOptions{}.Validate().ok());
  EngineOptions o;
  o.memory_budget_bytes = (1 << 20) - 1;
  ExpectInvalid(o.Validate(),
                "memory_budget_bytes: 1048575 is less than the minimum of "
                "1048576 (1 MiB)");
  o = {};
  o.max_sessions = 0;
  ExpectInvalid(o.Validate(), "max_sessions: 0 is less than 1");
  o = {};
  o.max_sessions_per_tenant = 0;
  ExpectInvalid(o.Validate(), "max_sessions_per_tenant: 0 is less than 1");
  o = {};
  o.max_tokens_per_session = 0;
  ExpectInvalid(o.Validate(),
                "max_tokens_per_session: 0 is out of range 1..4294967295");
  o.max_tokens_per_session = 1ull << 32;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.max_batch_sessions = 4097;
  ExpectInvalid(o.Validate(),
                "max_batch_sessions: 4097 is out of range 1..4096");
  o = {};
  o.max_inline_kv_bytes = 0;  // >= 0: inline K/V disabled
  EXPECT_TRUE(o.Validate().ok());
  o = {};
  EXPECT_EQ(o.index_threads, 2u);
  o.index_threads = 0;  // synchronous builds
  o.retrieve_threads = 0;
  EXPECT_TRUE(o.Validate().ok());
  o.index_threads = 65;
  ExpectInvalid(o.Validate(), "index_threads: 65 is out of range 0..64");
  o = {};
  o.retrieve_threads = 257;
  ExpectInvalid(o.Validate(), "retrieve_threads: 257 is out of range 0..256");
}

}  // namespace
}  // namespace wavekv
