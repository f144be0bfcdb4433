#include "index/attention.h"

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"

namespace wavekv {
namespace {

// K/V of `num_tokens` tokens stored in `dtype`, plus the exact fp32 values
// they decode to (what a reference must use).
struct TestKv {
  DType dtype;
  size_t head_dim;
  size_t num_tokens;
  std::vector<uint8_t> keys, values;
  std::vector<float> keys_f, values_f;

  KvView View(size_t begin, size_t end) const {
    const size_t row = head_dim * DTypeBytes(dtype);
    return KvView{dtype, head_dim, end - begin, keys.data() + begin * row,
                  values.data() + begin * row};
  }
  KvView View() const { return View(0, num_tokens); }
};

TestKv MakeKv(DType dtype, size_t head_dim, size_t num_tokens, float key_scale,
              uint64_t seed) {
  TestKv kv{dtype, head_dim, num_tokens, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = head_dim * num_tokens;
  std::vector<float> k(n), v(n);
  for (auto& x : k) x = key_scale * normal(rng);
  for (auto& x : v) x = normal(rng);
  kv.keys.resize(n * DTypeBytes(dtype));
  kv.values.resize(n * DTypeBytes(dtype));
  EncodeFromFloat(dtype, k.data(), n, kv.keys.data());
  EncodeFromFloat(dtype, v.data(), n, kv.values.data());
  kv.keys_f.resize(n);
  kv.values_f.resize(n);
  DecodeToFloat(dtype, kv.keys.data(), n, kv.keys_f.data());
  DecodeToFloat(dtype, kv.values.data(), n, kv.values_f.data());
  return kv;
}

std::vector<float> RandomQuery(size_t head_dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(head_dim);
  for (auto& x : q) x = normal(rng);
  return q;
}

// Double-precision softmax attention over [begin, end).
std::vector<double> Reference(const std::vector<float>& q, const TestKv& kv,
                              float scale, size_t begin, size_t end) {
  const size_t d = kv.head_dim;
  std::vector<double> logits;
  double m = -INFINITY;
  for (size_t t = begin; t < end; ++t) {
    double l = 0;
    for (size_t j = 0; j < d; ++j) l += double(q[j]) * kv.keys_f[t * d + j];
    l *= scale;
    logits.push_back(l);
    m = std::max(m, l);
  }
  std::vector<double> out(d, 0.0);
  double den = 0;
  for (size_t t = begin; t < end; ++t) {
    const double p = std::exp(logits[t - begin] - m);
    den += p;
    for (size_t j = 0; j < d; ++j) out[j] += p * kv.values_f[t * d + j];
  }
  for (auto& x : out) x /= den;
  return out;
}

void ExpectNear(const std::vector<float>& got, const std::vector<double>& want,
                double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t j = 0; j < got.size(); ++j) {
    ASSERT_TRUE(std::isfinite(got[j])) << j;
    ASSERT_NEAR(got[j], want[j], tol) << "j=" << j;
  }
}

class AttentionTest
    : public ::testing::TestWithParam<std::tuple<DType, size_t>> {};

TEST_P(AttentionTest, MatchesDoubleReference) {
  const auto [dtype, d] = GetParam();
  for (size_t n :
       {size_t{1}, size_t{31}, size_t{32}, size_t{33}, size_t{517}}) {
    const TestKv kv = MakeKv(dtype, d, n, 1.0f, 10 + n);
    const auto q = RandomQuery(d, 20 + n);
    const float scale = DefaultScale(d);
    ExpectNear(FullAttention(q, kv.View(), scale),
               Reference(q, kv, scale, 0, n), 2e-5);
  }
}

TEST_P(AttentionTest, MergeOfSplitsEqualsFull) {
  const auto [dtype, d] = GetParam();
  const size_t n = 300;
  const TestKv kv = MakeKv(dtype, d, n, 1.5f, 7);
  const auto q = RandomQuery(d, 8);
  const float scale = DefaultScale(d);
  const auto want = Reference(q, kv, scale, 0, n);
  // Split points, including empty pieces at the ends and in the middle.
  const std::vector<std::vector<size_t>> splits = {
      {0, n},           {0, 0, n},
      {0, n, n},        {0, 1, n},
      {0, 150, 150, n}, {0, 32, 64, 65, 200, n},
      {0, 299, n},      {0, 7, 13, 100, 101, 102, 250, n}};
  for (const auto& cuts : splits) {
    AttentionPartial acc = AttentionPartial::Empty(d);
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      const AttentionPartial part =
          PartialAttention(q, kv.View(cuts[i], cuts[i + 1]), scale);
      EXPECT_EQ(part.empty(), cuts[i] == cuts[i + 1]);
      MergeInto(acc, part);
    }
    ExpectNear(Finalize(acc), want, 2e-5);
    // Merging in reverse order gives the same result.
    AttentionPartial rev = AttentionPartial::Empty(d);
    for (size_t i = cuts.size() - 1; i > 0; --i) {
      MergeInto(rev, PartialAttention(q, kv.View(cuts[i - 1], cuts[i]), scale));
    }
    ExpectNear(Finalize(rev), want, 2e-5);
  }
}

TEST_P(AttentionTest, LargeLogitsDoNotOverflow) {
  const auto [dtype, d] = GetParam();
  const size_t n = 200;
  // Keys ~ N(0, 300^2) (fp16 tops out at 65504): logits reach ~1e5, far
  // beyond exp's float range (~88).
  const TestKv kv = MakeKv(dtype, d, n, 300.0f, 3);
  auto q = RandomQuery(d, 4);
  for (auto& x : q) x *= 10.0f;
  const float scale = DefaultScale(d);
  const AttentionPartial p = PartialAttention(q, kv.View(), scale);
  EXPECT_TRUE(std::isfinite(p.max_logit));
  EXPECT_GT(std::fabs(p.max_logit), 1000.0f);
  EXPECT_GE(p.denominator, 1.0f);  // the max token contributes e^0
  ExpectNear(Finalize(p), Reference(q, kv, scale, 0, n), 1e-4);
  // Partials with wildly different maxima merge without overflow.
  AttentionPartial a = PartialAttention(q, kv.View(0, 100), scale);
  MergeInto(a, PartialAttention(q, kv.View(100, n), scale));
  ExpectNear(Finalize(a), Reference(q, kv, scale, 0, n), 1e-4);
}

TEST_P(AttentionTest, GroupEqualsPerHead) {
  const auto [dtype, d] = GetParam();
  const size_t n = 77, g = 5;
  const TestKv kv = MakeKv(dtype, d, n, 2.0f, 30);
  std::vector<float> queries;
  for (size_t h = 0; h < g; ++h) {
    const auto q = RandomQuery(d, 40 + h);
    queries.insert(queries.end(), q.begin(), q.end());
  }
  const float scale = DefaultScale(d);
  const auto group = PartialAttentionGroup(queries, g, kv.View(), scale);
  ASSERT_EQ(group.size(), g);
  for (size_t h = 0; h < g; ++h) {
    const std::vector<float> q(queries.begin() + h * d,
                               queries.begin() + (h + 1) * d);
    const AttentionPartial one = PartialAttention(q, kv.View(), scale);
    EXPECT_EQ(group[h].max_logit, one.max_logit);
    EXPECT_EQ(group[h].denominator, one.denominator);
    EXPECT_EQ(group[h].numerator, one.numerator);
    ExpectNear(Finalize(group[h]), Reference(q, kv, scale, 0, n), 2e-5);
  }
  EXPECT_TRUE(
      PartialAttentionGroup(queries, g, kv.View(0, 0), scale)[4].empty());
}

INSTANTIATE_TEST_SUITE_P(
    DTypesAndDims, AttentionTest,
    ::testing::Combine(
        ::testing::Values(DType::kFp16, DType::kBf16, DType::kFp32),
        ::testing::Values(size_t{64}, size_t{128}, size_t{256}, size_t{72})),
    [](const auto& info) {
      return std::string(DTypeName(std::get<0>(info.param))) + "_d" +
             std::to_string(std::get<1>(info.param));
    });

TEST(AttentionPartialTest, EmptyPartials) {
  const AttentionPartial e = AttentionPartial::Empty(64);
  EXPECT_TRUE(e.empty());
  EXPECT_EQ(e.numerator.size(), 64u);
  EXPECT_EQ(e.max_logit, -INFINITY);
  const auto q = RandomQuery(64, 1);
  const TestKv kv = MakeKv(DType::kFp32, 64, 0, 1.0f, 1);
  EXPECT_TRUE(PartialAttention(q, kv.View(), DefaultScale(64)).empty());
  // Empty merged into empty stays empty; a default-constructed partial (no
  // numerator) takes the other side's contents.
  AttentionPartial a = AttentionPartial::Empty(64);
  MergeInto(a, e);
  EXPECT_TRUE(a.empty());
  const TestKv kv2 = MakeKv(DType::kFp32, 64, 5, 1.0f, 2);
  const AttentionPartial p = PartialAttention(q, kv2.View(), DefaultScale(64));
  AttentionPartial none;
  MergeInto(none, p);
  EXPECT_EQ(none.max_logit, p.max_logit);
  EXPECT_EQ(none.denominator, p.denominator);
  EXPECT_EQ(none.numerator, p.numerator);
  AttentionPartial q2 = p;
  MergeInto(q2, e);
  EXPECT_EQ(q2.numerator, p.numerator);
}

TEST(AttentionPartialTest, MergeIsExactForKnownTriples) {
  AttentionPartial a{1.0f, 2.0f, {2.0f, 4.0f}};
  const AttentionPartial b{3.0f, 1.0f, {5.0f, -1.0f}};
  MergeInto(a, b);
  const double ca = std::exp(-2.0);
  EXPECT_FLOAT_EQ(a.max_logit, 3.0f);
  EXPECT_NEAR(a.denominator, 2 * ca + 1, 1e-6);
  EXPECT_NEAR(a.numerator[0], 2 * ca + 5, 1e-6);
  EXPECT_NEAR(a.numerator[1], 4 * ca - 1, 1e-6);
  const auto o = Finalize(a);
  EXPECT_NEAR(o[0], (2 * ca + 5) / (2 * ca + 1), 1e-6);
}

TEST(AttentionPartialTest, DefaultScale) {
  EXPECT_FLOAT_EQ(DefaultScale(64), 0.125f);
  EXPECT_FLOAT_EQ(DefaultScale(128), 1.0f / std::sqrt(128.0f));
}

TEST(AttentionPartialTest, UnalignedFp32) {
  const size_t d = 64, n = 40;
  const TestKv kv = MakeKv(DType::kFp32, d, n, 1.0f, 9);
  std::vector<uint8_t> k(kv.keys.size() + 1), v(kv.values.size() + 1);
  std::memcpy(k.data() + 1, kv.keys.data(), kv.keys.size());
  std::memcpy(v.data() + 1, kv.values.data(), kv.values.size());
  const KvView view{DType::kFp32, d, n, k.data() + 1, v.data() + 1};
  const auto q = RandomQuery(d, 10);
  ExpectNear(FullAttention(q, view, DefaultScale(d)),
             Reference(q, kv, DefaultScale(d), 0, n), 2e-5);
}

}  // namespace
}  // namespace wavekv
