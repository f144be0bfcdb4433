#include "client/attention_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

using ::testing::HasSubstr;

// A layer of K/V in the wire layout plus a query, with fixed random data.
struct Fixture {
  AttentionShape shape;
  uint64_t num_tokens = 0;
  std::vector<uint8_t> keys, values;  // [tokens][kv_heads][head_dim], dtype
  std::vector<float> query;           // [q_heads][head_dim]

  Fixture(DType dtype, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim,
          uint64_t tokens, uint32_t seed) {
    shape = AttentionShape{q_heads, kv_heads, head_dim, dtype};
    num_tokens = tokens;
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const size_t n = tokens * kv_heads * head_dim;
    std::vector<float> k(n), v(n);
    for (float& x : k) x = 1.5f * normal(rng);
    for (float& x : v) x = normal(rng);
    keys.resize(n * DTypeBytes(dtype));
    values.resize(n * DTypeBytes(dtype));
    EncodeFromFloat(dtype, k.data(), n, keys.data());
    EncodeFromFloat(dtype, v.data(), n, values.data());
    query.resize(size_t{q_heads} * head_dim);
    for (float& x : query) x = normal(rng);
  }

  LayerKvView Local() const { return LayerKvView{keys, values, num_tokens}; }

  // Element j of token t's key (or value) of kv head h, as stored.
  double Key(uint64_t t, uint32_t h, uint32_t j) const {
    return Element(keys, t, h, j);
  }
  double Value(uint64_t t, uint32_t h, uint32_t j) const {
    return Element(values, t, h, j);
  }
  double Element(const std::vector<uint8_t>& data, uint64_t t, uint32_t h,
                 uint32_t j) const {
    const size_t index = (t * shape.num_kv_heads + h) * shape.head_dim + j;
    float f;
    DecodeToFloat(shape.dtype, data.data() + index * DTypeBytes(shape.dtype), 1,
                  &f);
    return f;
  }
  double Logit(uint32_t q, uint64_t t) const {
    const uint32_t h = q / shape.group_size();
    double dot = 0;
    for (uint32_t j = 0; j < shape.head_dim; ++j) {
      dot += double{query[q * shape.head_dim + j]} * Key(t, h, j);
    }
    return dot / std::sqrt(static_cast<double>(shape.head_dim));
  }

  // Slots of kv head h for `tokens` in that order: [slots][head_dim].
  std::string Gather(const std::vector<uint8_t>& data, uint32_t h,
                     const std::vector<uint64_t>& tokens) const {
    const size_t head_bytes = shape.head_dim * DTypeBytes(shape.dtype);
    std::string out;
    for (uint64_t t : tokens) {
      out.append(reinterpret_cast<const char*>(data.data()) +
                     (t * shape.num_kv_heads + h) * head_bytes,
                 head_bytes);
    }
    return out;
  }
};

// Double-precision softmax attention of q head q over `tokens`, plus an
// optional extra partial (m, den, num) standing in for an estimated tail.
std::vector<double> Truth(const Fixture& f, uint32_t q,
                          const std::vector<uint64_t>& tokens,
                          double tail_m = -INFINITY, double tail_den = 0,
                          const std::vector<double>& tail_num = {}) {
  const uint32_t h = q / f.shape.group_size();
  double m = tail_m;
  for (uint64_t t : tokens) m = std::max(m, f.Logit(q, t));
  double den = tail_den > 0 ? tail_den * std::exp(tail_m - m) : 0.0;
  std::vector<double> num(f.shape.head_dim, 0.0);
  if (tail_den > 0) {
    for (uint32_t j = 0; j < f.shape.head_dim; ++j) {
      num[j] = tail_num[j] * std::exp(tail_m - m);
    }
  }
  for (uint64_t t : tokens) {
    const double w = std::exp(f.Logit(q, t) - m);
    den += w;
    for (uint32_t j = 0; j < f.shape.head_dim; ++j) {
      num[j] += w * f.Value(t, h, j);
    }
  }
  for (double& x : num) x /= den;
  return num;
}

std::vector<uint64_t> Iota(uint64_t begin, uint64_t end) {
  std::vector<uint64_t> v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

void ExpectNear(const Fixture& f, const std::vector<float>& got,
                const std::vector<std::vector<double>>& want, double tol) {
  ASSERT_EQ(got.size(), size_t{f.shape.num_q_heads} * f.shape.head_dim);
  for (uint32_t q = 0; q < f.shape.num_q_heads; ++q) {
    for (uint32_t j = 0; j < f.shape.head_dim; ++j) {
      ASSERT_NEAR(got[q * f.shape.head_dim + j], want[q][j], tol)
          << "q head " << q << " element " << j;
    }
  }
}

// An answer whose kv heads all retrieve `tokens` (in that slot order, in
// ranges of at most `range_slots`), with the K/V inline.
v1::SessionResult ExactAnswer(const Fixture& f,
                              const std::vector<uint64_t>& tokens,
                              uint32_t range_slots) {
  v1::SessionResult r;
  r.set_session_id("s");
  r.set_num_tokens(f.num_tokens);
  for (uint32_t h = 0; h < f.shape.num_kv_heads; ++h) {
    v1::KvHeadResult* head = r.add_heads();
    head->set_kv_head(h);
    for (size_t i = 0; i < tokens.size(); i += range_slots) {
      v1::SlotRange* range = head->add_retrieval();
      range->set_cluster_id(static_cast<uint32_t>(i / range_slots));
      range->set_first_slot(i);
      range->set_num_slots(static_cast<uint32_t>(
          std::min<size_t>(range_slots, tokens.size() - i)));
    }
    head->set_keys(f.Gather(f.keys, h, tokens));
    head->set_values(f.Gather(f.values, h, tokens));
  }
  return r;
}

TEST(AttentionReferenceTest, ExactOnlyEqualsFullAttentionInAnySlotOrder) {
  Fixture f(DType::kFp32, /*q_heads=*/8, /*kv_heads=*/2, /*head_dim=*/16,
            /*tokens=*/50, /*seed=*/1);
  std::vector<uint64_t> order = Iota(0, f.num_tokens);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));  // cluster-major
  v1::SessionResult answer = ExactAnswer(f, order, /*range_slots=*/16);

  absl::StatusOr<std::vector<float>> out = RetrievedAttention(
      f.shape, answer, f.query, RetrievedKvInline(answer), LayerKvView{});
  ASSERT_TRUE(out.ok()) << out.status();
  std::vector<std::vector<double>> want;
  for (uint32_t q = 0; q < f.shape.num_q_heads; ++q) {
    want.push_back(Truth(f, q, Iota(0, f.num_tokens)));
  }
  ExpectNear(f, *out, want, 1e-5);

  absl::StatusOr<std::vector<float>> full =
      LocalFullAttention(f.shape, f.query, f.Local());
  ASSERT_TRUE(full.ok()) << full.status();
  ExpectNear(f, *full, want, 1e-5);
}

TEST(AttentionReferenceTest, Fp16ExactOnly) {
  Fixture f(DType::kFp16, 4, 1, 64, 33, 2);
  v1::SessionResult answer = ExactAnswer(f, Iota(0, f.num_tokens), 33);
  absl::StatusOr<std::vector<float>> out = RetrievedAttention(
      f.shape, answer, f.query, RetrievedKvInline(answer), LayerKvView{});
  ASSERT_TRUE(out.ok()) << out.status();
  std::vector<std::vector<double>> want;
  for (uint32_t q = 0; q < 4; ++q) {
    want.push_back(Truth(f, q, Iota(0, f.num_tokens)));
  }
  ExpectNear(f, *out, want, 1e-5);
}

TEST(AttentionReferenceTest, SteadyPlusRetrievalSplitEqualsFullAttention) {
  Fixture f(DType::kBf16, 6, 3, 32, 100, 3);
  // Sinks [0, 4) and recent [84, 100) are steady; the rest is retrieved,
  // fetched separately (FetchClusters layout) in shuffled slot order.
  std::vector<uint64_t> middle = Iota(4, 84);
  std::shuffle(middle.begin(), middle.end(), std::mt19937(11));
  v1::SessionResult answer = ExactAnswer(f, middle, 7);
  std::vector<std::string> fetched_k, fetched_v;
  for (v1::KvHeadResult& head : *answer.mutable_heads()) {
    fetched_k.push_back(head.keys());
    fetched_v.push_back(head.values());
    head.clear_keys();
    head.clear_values();
  }
  for (auto [b, e] : {std::pair{0, 4}, std::pair{84, 100}}) {
    v1::TokenRange* r = answer.add_steady();
    r->set_begin(b);
    r->set_end(e);
  }
  std::vector<RetrievedKv> retrieved;
  for (uint32_t h = 0; h < 3; ++h) {
    retrieved.push_back(RetrievedKv::Of(fetched_k[h], fetched_v[h]));
  }
  absl::StatusOr<std::vector<float>> out =
      RetrievedAttention(f.shape, answer, f.query, retrieved, f.Local());
  ASSERT_TRUE(out.ok()) << out.status();
  absl::StatusOr<std::vector<float>> full =
      LocalFullAttention(f.shape, f.query, f.Local());
  ASSERT_TRUE(full.ok()) << full.status();
  std::vector<std::vector<double>> want;
  for (uint32_t q = 0; q < 6; ++q) {
    want.push_back(Truth(f, q, Iota(0, f.num_tokens)));
  }
  ExpectNear(f, *out, want, 1e-5);
  ExpectNear(f, *full, want, 1e-5);

  // Without the steady zone the answer must differ: the test can fail.
  answer.clear_steady();
  absl::StatusOr<std::vector<float>> partial =
      RetrievedAttention(f.shape, answer, f.query, retrieved, f.Local());
  ASSERT_TRUE(partial.ok());
  double max_diff = 0;
  for (size_t i = 0; i < partial->size(); ++i) {
    max_diff = std::max(max_diff, std::abs((*partial)[i] - (*out)[i]) * 1.0);
  }
  EXPECT_GT(max_diff, 1e-3);
}

TEST(AttentionReferenceTest, ExactPlusTailMergesWithLogSumExp) {
  Fixture f(DType::kFp32, 4, 2, 16, 40, 4);
  const uint32_t g = f.shape.group_size();
  // Retrieval zone: tokens [0, 24). Estimation zone: tokens [24, 40) as one
  // cluster with centroid C = mean key and value sum VS (DESIGN.md step 3):
  // partial (m = q·C/√d, den = s, num = VS).
  std::vector<uint64_t> retrieved_tokens = Iota(0, 24);
  v1::SessionResult answer = ExactAnswer(f, retrieved_tokens, 24);
  std::vector<std::vector<double>> want;
  for (uint32_t h = 0; h < 2; ++h) {
    std::vector<double> centroid(16, 0.0), value_sum(16, 0.0);
    for (uint64_t t = 24; t < 40; ++t) {
      for (uint32_t j = 0; j < 16; ++j) {
        centroid[j] += f.Key(t, h, j) / 16.0;
        value_sum[j] += f.Value(t, h, j);
      }
    }
    for (uint32_t i = 0; i < g; ++i) {
      const uint32_t q = h * g + i;
      double logit = 0;
      for (uint32_t j = 0; j < 16; ++j) {
        logit += f.query[q * 16 + j] * centroid[j];
      }
      logit /= 4.0;  // sqrt(16)
      v1::TailStats* tail = answer.mutable_heads(h)->add_tail();
      tail->set_max_logit(static_cast<float>(logit));
      tail->set_denominator(16.0f);
      std::vector<float> num(value_sum.begin(), value_sum.end());
      tail->set_numerator(std::string(reinterpret_cast<const char*>(num.data()),
                                      num.size() * sizeof(float)));
      // The tail partial's numerator is Σ e^{l_c - m} VS = VS at m = l_c.
      std::vector<double> num_d(num.begin(), num.end());
      want.push_back(Truth(f, q, retrieved_tokens, static_cast<float>(logit),
                           16.0, num_d));
    }
  }
  absl::StatusOr<std::vector<float>> out = RetrievedAttention(
      f.shape, answer, f.query, RetrievedKvInline(answer), LayerKvView{});
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectNear(f, *out, want, 1e-5);

  // An empty tail (-inf, 0) changes nothing.
  for (v1::KvHeadResult& head : *answer.mutable_heads()) {
    for (v1::TailStats& tail : *head.mutable_tail()) {
      tail.set_max_logit(-INFINITY);
      tail.set_denominator(0.0f);
      tail.clear_numerator();
    }
  }
  out = RetrievedAttention(f.shape, answer, f.query, RetrievedKvInline(answer),
                           LayerKvView{});
  ASSERT_TRUE(out.ok()) << out.status();
  want.clear();
  for (uint32_t q = 0; q < 4; ++q)
    want.push_back(Truth(f, q, retrieved_tokens));
  ExpectNear(f, *out, want, 1e-5);
}

TEST(AttentionReferenceTest, RejectsAnswersThatDoNotFit) {
  Fixture f(DType::kFp16, 4, 2, 16, 20, 5);
  const v1::SessionResult good = ExactAnswer(f, Iota(0, 20), 20);

  v1::SessionResult answer = good;
  answer.mutable_heads(1)->mutable_keys()->resize(10);
  absl::StatusOr<std::vector<float>> out = RetrievedAttention(
      f.shape, answer, f.query, RetrievedKvInline(answer), LayerKvView{});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("heads[1].keys"));

  answer = good;
  v1::TokenRange* r = answer.add_steady();
  r->set_begin(18);
  r->set_end(25);
  out = RetrievedAttention(f.shape, answer, f.query, RetrievedKvInline(answer),
                           f.Local());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("steady[0]"));

  answer = good;
  answer.mutable_heads(0)->add_tail();
  out = RetrievedAttention(f.shape, answer, f.query, RetrievedKvInline(answer),
                           LayerKvView{});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("heads[0].tail"));

  answer = good;
  answer.mutable_heads()->RemoveLast();
  out = RetrievedAttention(f.shape, answer, f.query, RetrievedKvInline(answer),
                           LayerKvView{});
  EXPECT_THAT(out.status().message(), HasSubstr("heads: expected 2"));

  std::vector<float> short_query(10);
  out = RetrievedAttention(f.shape, good, short_query, RetrievedKvInline(good),
                           LayerKvView{});
  EXPECT_THAT(out.status().message(), HasSubstr("query: expected 64"));

  // Nothing to attend to at all.
  answer = ExactAnswer(f, {}, 1);
  out = RetrievedAttention(f.shape, answer, f.query, RetrievedKvInline(answer),
                           LayerKvView{});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);

  v1::ModelShape proto;
  proto.set_num_q_heads(6);
  proto.set_num_kv_heads(4);
  proto.set_head_dim(16);
  proto.set_dtype(v1::DTYPE_FP16);
  EXPECT_THAT(AttentionShape::FromProto(proto).status().message(),
              HasSubstr("shape.num_q_heads"));
}

}  // namespace
}  // namespace wavekv
