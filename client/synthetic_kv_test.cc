#include "client/synthetic_kv.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "client/attention_reference.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

SyntheticKvOptions Small() {
  SyntheticKvOptions o;
  o.num_layers = 2;
  o.num_q_heads = 4;
  o.num_kv_heads = 2;
  o.head_dim = 32;
  o.dtype = DType::kFp16;
  o.seed = 9;
  o.clusters_per_head = 8;
  return o;
}

TEST(SyntheticKvTest, TokensDependOnlyOnSeedLayerAndPosition) {
  SyntheticKv kv(Small());
  const uint64_t b = kv.TokenBytes();
  ASSERT_EQ(b, 2u * 32 * 2);
  std::vector<uint8_t> k1(100 * b), v1(100 * b), k2(30 * b), v2(30 * b);
  kv.Generate(1, 0, 100, k1.data(), v1.data());
  kv.Generate(1, 50, 30, k2.data(), v2.data());  // a sub-range, later
  EXPECT_TRUE(std::equal(k2.begin(), k2.end(), k1.begin() + 50 * b));
  EXPECT_TRUE(std::equal(v2.begin(), v2.end(), v1.begin() + 50 * b));
  kv.Generate(0, 50, 30, k2.data(), v2.data());  // another layer differs
  EXPECT_FALSE(std::equal(k2.begin(), k2.end(), k1.begin() + 50 * b));
  SyntheticKvOptions other = Small();
  other.seed = 10;
  SyntheticKv kv2(other);
  kv2.Generate(1, 50, 30, k2.data(), v2.data());  // another seed differs
  EXPECT_FALSE(std::equal(k2.begin(), k2.end(), k1.begin() + 50 * b));
  EXPECT_EQ(kv.Query(1, 3), SyntheticKv(Small()).Query(1, 3));
  EXPECT_NE(kv.Query(1, 3), kv.Query(1, 4));
}

TEST(SyntheticKvTest, QueriesConcentrateAttentionOnOneCluster) {
  // With 8 clusters, a query aimed at one centre should put most of its
  // softmax mass on ~1/8 of the tokens: check the top 1/4 of tokens by
  // logit hold > 90% of the mass for every q head.
  SyntheticKv kv(Small());
  const uint64_t n = 512;
  std::vector<uint8_t> k(n * kv.TokenBytes()), v(n * kv.TokenBytes());
  kv.Generate(0, 0, n, k.data(), v.data());
  const std::vector<float> q = kv.Query(0, 0);
  std::vector<float> key(32);
  for (uint32_t qh = 0; qh < 4; ++qh) {
    std::vector<double> logits;
    for (uint64_t t = 0; t < n; ++t) {
      DecodeToFloat(DType::kFp16,
                    k.data() + t * kv.TokenBytes() + (qh / 2) * 64, 32,
                    key.data());
      double dot = 0;
      for (int j = 0; j < 32; ++j) dot += q[qh * 32 + j] * key[j];
      logits.push_back(dot / std::sqrt(32.0));
    }
    std::sort(logits.rbegin(), logits.rend());
    double total = 0, top = 0;
    for (size_t i = 0; i < n; ++i) {
      const double w = std::exp(logits[i] - logits[0]);
      total += w;
      if (i < n / 4) top += w;
    }
    EXPECT_GT(top / total, 0.9) << "q head " << qh;
  }
}

TEST(SyntheticKvTest, RejectsBadOptions) {
  SyntheticKvOptions o = Small();
  o.num_q_heads = 3;
  EXPECT_FALSE(o.Validate().ok());
  o = Small();
  o.outlier_channels = 33;
  EXPECT_FALSE(o.Validate().ok());
  EXPECT_TRUE(Small().Validate().ok());
}

}  // namespace
}  // namespace wavekv
