#include "index/wave_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"

namespace wavekv {
namespace {

// A layer buffer [tokens][num_kv_heads][head_dim] in `dtype`, plus its
// decoded fp32 values.
struct LayerKv {
  DType dtype;
  size_t heads, dim, tokens;
  std::vector<uint8_t> keys, values;
  std::vector<float> keys_f, values_f;

  KvRows Rows(size_t head, size_t begin, size_t end) const {
    const size_t eb = DTypeBytes(dtype);
    const size_t off = (begin * heads + head) * dim * eb;
    return KvRows{dtype,
                  dim,
                  end - begin,
                  keys.data() + off,
                  values.data() + off,
                  heads * dim * eb};
  }
  const float* Key(size_t head, size_t t) const {
    return &keys_f[(t * heads + head) * dim];
  }
  const float* Value(size_t head, size_t t) const {
    return &values_f[(t * heads + head) * dim];
  }
};

// Keys with topic structure: runs of tokens near one of 24 directions.
LayerKv MakeLayer(DType dtype, size_t heads, size_t dim, size_t tokens,
                  uint64_t seed) {
  LayerKv kv{dtype, heads, dim, tokens, {}, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> topics(24 * dim);
  for (auto& x : topics) x = 2.0f * normal(rng);
  const size_t n = tokens * heads * dim;
  std::vector<float> k(n), v(n);
  for (size_t t = 0; t < tokens; ++t) {
    const size_t topic = (t / 40 + t % 3) % 24;
    for (size_t h = 0; h < heads; ++h) {
      for (size_t j = 0; j < dim; ++j) {
        const size_t i = (t * heads + h) * dim + j;
        k[i] = topics[topic * dim + j] * (h + 1) + normal(rng);
        v[i] = normal(rng);
      }
    }
  }
  const size_t eb = DTypeBytes(dtype);
  kv.keys.resize(n * eb);
  kv.values.resize(n * eb);
  EncodeFromFloat(dtype, k.data(), n, kv.keys.data());
  EncodeFromFloat(dtype, v.data(), n, kv.values.data());
  kv.keys_f.resize(n);
  kv.values_f.resize(n);
  DecodeToFloat(dtype, kv.keys.data(), n, kv.keys_f.data());
  DecodeToFloat(dtype, kv.values.data(), n, kv.values_f.data());
  return kv;
}

// Every invariant a WaveIndex must satisfy against the tokens it indexed.
void ExpectIndexConsistent(const WaveIndex& index, const LayerKv& kv,
                           size_t head) {
  const size_t d = index.head_dim();
  const size_t k = index.num_clusters();
  ASSERT_EQ(index.cluster_offsets().size(), k + 1);
  ASSERT_EQ(index.cluster_offsets()[0], 0u);
  ASSERT_EQ(index.cluster_offsets()[k], index.num_slots());
  ASSERT_EQ(index.num_slots(), index.end_token() - index.begin_token());
  // The slots are a permutation of the indexed tokens.
  std::vector<uint64_t> tokens(index.slot_tokens().begin(),
                               index.slot_tokens().end());
  std::sort(tokens.begin(), tokens.end());
  for (size_t i = 0; i < tokens.size(); ++i) {
    ASSERT_EQ(tokens[i], index.begin_token() + i);
  }
  size_t nonempty = 0;
  for (ClusterId c = 0; c < k; ++c) {
    const uint64_t b = index.cluster_offset(c);
    const uint32_t s = index.cluster_size(c);
    ASSERT_EQ(index.cluster_offsets()[c + 1], b + s);
    nonempty += s > 0;
    std::vector<double> ksum(d, 0.0), vsum(d, 0.0);
    for (uint64_t slot = b; slot < b + s; ++slot) {
      const uint64_t t = index.slot_tokens()[slot];
      if (slot > b) {
        ASSERT_LT(index.slot_tokens()[slot - 1], t);  // token order
      }
      for (size_t j = 0; j < d; ++j) {
        ksum[j] += kv.Key(head, t)[j];
        vsum[j] += kv.Value(head, t)[j];
      }
    }
    const std::vector<float> centroid = index.centroid(c);
    for (size_t j = 0; j < d; ++j) {
      const double want_c = s ? ksum[j] / s : 0.0;
      ASSERT_NEAR(centroid[j], want_c, 1e-4 * (1 + std::fabs(want_c)));
      ASSERT_NEAR(index.value_sum(c)[j], vsum[j],
                  1e-4 * (1 + std::fabs(vsum[j])));
    }
  }
  ASSERT_EQ(index.num_nonempty_clusters(), nonempty);
}

class WaveIndexTest
    : public ::testing::TestWithParam<std::tuple<DType, size_t>> {};

TEST_P(WaveIndexTest, PrefillBuildThenDecodeUpdates) {
  const auto [dtype, dim] = GetParam();
  WaveIndexParams params;
  params.segment_tokens = 1024;  // several segments at test scale
  const size_t heads = 2, prefill = 3000, total = prefill + 2 * 1024 + 100;
  const LayerKv kv = MakeLayer(dtype, heads, dim, total, 11);
  for (size_t head = 0; head < heads; ++head) {
    WaveIndex index(dim);
    // Prefill.
    TokenSpan next = NextIndexBlock(params, prefill, index.end_token());
    ASSERT_EQ(next, (TokenSpan{4, prefill - 64}));
    auto layout = index.AddBlock(params, next.begin,
                                 kv.Rows(head, next.begin, next.end), 2);
    ASSERT_TRUE(layout.ok()) << layout.status();
    EXPECT_EQ(layout->first_cluster, 0u);
    EXPECT_EQ(layout->first_slot, 0u);
    // 2932 tokens: 3 segments of ~977 tokens, 61 clusters each.
    EXPECT_EQ(layout->num_clusters, 183u);
    EXPECT_EQ(index.num_clusters(), 183u);
    EXPECT_EQ(layout->slot_tokens.size(), next.num_tokens());
    ExpectIndexConsistent(index, kv, head);
    const std::vector<float> first_centroid = index.centroid(0);
    const std::vector<uint64_t> first_slots(index.slot_tokens().begin(),
                                            index.slot_tokens().end());
    // Decode, one token at a time.
    size_t updates = 0;
    for (size_t n = prefill + 1; n <= total; ++n) {
      next = NextIndexBlock(params, n, index.end_token());
      if (next.empty()) continue;
      ASSERT_EQ(next.num_tokens(), params.update_tokens);
      const size_t before = index.num_clusters();
      layout = index.AddBlock(params, next.begin,
                              kv.Rows(head, next.begin, next.end));
      ASSERT_TRUE(layout.ok()) << layout.status();
      EXPECT_EQ(layout->first_cluster, before);
      EXPECT_EQ(layout->num_clusters, 64u);  // update_tokens / cluster_size
      EXPECT_EQ(index.num_clusters(), before + 64);
      EXPECT_EQ(layout->first_slot + layout->slot_tokens.size(),
                index.num_slots());
      ++updates;
    }
    EXPECT_EQ(updates, 2u);
    EXPECT_EQ(index.end_token(), prefill - 64 + 2 * 1024);
    ExpectIndexConsistent(index, kv, head);
    // Old clusters and their slots never change.
    EXPECT_EQ(index.centroid(0), first_centroid);
    EXPECT_TRUE(std::equal(first_slots.begin(), first_slots.end(),
                           index.slot_tokens().begin()));
  }
}

INSTANTIATE_TEST_SUITE_P(
    DTypesAndDims, WaveIndexTest,
    ::testing::Combine(::testing::Values(DType::kFp16, DType::kBf16,
                                         DType::kFp32),
                       ::testing::Values(size_t{64}, size_t{128}, size_t{256})),
    [](const auto& info) {
      return std::string(DTypeName(std::get<0>(info.param))) + "_d" +
             std::to_string(std::get<1>(info.param));
    });

TEST(WaveIndexBasicsTest, EmptyIndexAndEmptyBlock) {
  WaveIndex index(128);
  EXPECT_EQ(index.num_clusters(), 0u);
  EXPECT_EQ(index.num_slots(), 0u);
  EXPECT_TRUE(index.indexed_span().empty());
  EXPECT_EQ(index.cluster_offsets().size(), 1u);
  auto layout = index.AddBlock({}, 4, KvRows{DType::kFp16, 128, 0});
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->num_clusters, 0u);
  EXPECT_EQ(index.num_clusters(), 0u);
}

TEST(WaveIndexBasicsTest, FewerTokensThanAClusterSize) {
  const LayerKv kv = MakeLayer(DType::kFp16, 1, 64, 5, 3);
  WaveIndex index(64);
  auto layout = index.AddBlock({}, 100, kv.Rows(0, 0, 5));
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->num_clusters, 1u);
  EXPECT_EQ(index.cluster_size(0), 5u);
  EXPECT_EQ(index.begin_token(), 100u);
  EXPECT_EQ(index.end_token(), 105u);
  EXPECT_EQ(layout->slot_tokens,
            (std::vector<uint64_t>{100, 101, 102, 103, 104}));
}

TEST(WaveIndexBasicsTest, LargeClusterSizesAreExact) {
  // 5000 identical keys: one cluster of 5000 members (a bf16 size would
  // round to 4992), the other clusters empty.
  const size_t dim = 64, n = 5000;
  std::vector<uint16_t> keys(n * dim), values(n * dim);
  for (size_t i = 0; i < n * dim; ++i) {
    keys[i] = FloatToBf16(0.5f + (i % dim) * 0.01f);
    values[i] = FloatToBf16(1.0f);
  }
  WaveIndexParams params;
  params.segment_tokens = 8192;
  WaveIndex index(dim);
  auto layout = index.AddBlock(
      params, 4,
      KvRows{DType::kBf16, dim, n, reinterpret_cast<uint8_t*>(keys.data()),
             reinterpret_cast<uint8_t*>(values.data())});
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(index.num_clusters(), 313u);  // round(5000 / 16)
  EXPECT_EQ(index.cluster_size(0), 5000u);
  EXPECT_EQ(index.num_nonempty_clusters(), 1u);
  EXPECT_EQ(index.value_sum(0)[7], 5000.0f);
  for (ClusterId c = 1; c < index.num_clusters(); ++c) {
    EXPECT_EQ(index.cluster_size(c), 0u);
    EXPECT_EQ(index.cluster_offset(c), 5000u);
    for (float x : index.centroid(c)) ASSERT_EQ(x, 0.0f);
  }
}

TEST(WaveIndexBasicsTest, DeterministicAcrossThreadCounts) {
  const LayerKv kv = MakeLayer(DType::kFp16, 1, 128, 4000, 5);
  WaveIndexParams params;
  params.segment_tokens = 1024;
  WaveIndex a(128), b(128);
  ASSERT_TRUE(a.AddBlock(params, 0, kv.Rows(0, 0, 4000), 1).ok());
  ASSERT_TRUE(b.AddBlock(params, 0, kv.Rows(0, 0, 4000), 3).ok());
  ASSERT_EQ(a.num_clusters(), b.num_clusters());
  EXPECT_TRUE(std::equal(a.slot_tokens().begin(), a.slot_tokens().end(),
                         b.slot_tokens().begin()));
  EXPECT_TRUE(std::equal(a.value_sums().begin(), a.value_sums().end(),
                         b.value_sums().begin()));
  for (ClusterId c = 0; c < a.num_clusters(); ++c) {
    ASSERT_EQ(a.centroid(c), b.centroid(c));
  }
}

TEST(WaveIndexBasicsTest, StridedRowsEqualContiguousRows) {
  const LayerKv kv = MakeLayer(DType::kBf16, 3, 64, 700, 8);
  // Head 1 copied out contiguously.
  std::vector<uint8_t> k, v;
  for (size_t t = 0; t < 700; ++t) {
    const KvRows r = kv.Rows(1, t, t + 1);
    k.insert(k.end(), r.keys, r.keys + 128);
    v.insert(v.end(), r.values, r.values + 128);
  }
  WaveIndex strided(64), contiguous(64);
  ASSERT_TRUE(strided.AddBlock({}, 0, kv.Rows(1, 0, 700)).ok());
  ASSERT_TRUE(
      contiguous
          .AddBlock({}, 0, KvRows{DType::kBf16, 64, 700, k.data(), v.data()})
          .ok());
  EXPECT_TRUE(std::equal(strided.slot_tokens().begin(),
                         strided.slot_tokens().end(),
                         contiguous.slot_tokens().begin()));
  ExpectIndexConsistent(strided, kv, 1);
}

TEST(WaveIndexBasicsTest, ErrorsChangeNothing) {
  const LayerKv kv = MakeLayer(DType::kFp32, 1, 64, 2000, 9);
  WaveIndex index(64);
  ASSERT_TRUE(index.AddBlock({}, 4, kv.Rows(0, 4, 1028)).ok());
  const size_t clusters = index.num_clusters();
  // Not contiguous with the index.
  auto s = index.AddBlock({}, 1029, kv.Rows(0, 1029, 1100));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  // Wrong head_dim.
  KvRows wrong = kv.Rows(0, 1028, 1100);
  wrong.head_dim = 128;
  EXPECT_EQ(index.AddBlock({}, 1028, wrong).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Invalid params.
  WaveIndexParams bad;
  bad.cluster_size = 0;
  EXPECT_EQ(index.AddBlock(bad, 1028, kv.Rows(0, 1028, 1100)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Non-finite key.
  std::vector<float> keys(kv.keys_f.begin() + 1028 * 64,
                          kv.keys_f.begin() + 1100 * 64);
  keys[70] = std::numeric_limits<float>::quiet_NaN();
  KvRows nan_rows{DType::kFp32, 64, 72,
                  reinterpret_cast<const uint8_t*>(keys.data()),
                  kv.Rows(0, 1028, 1100).values};
  auto nan = index.AddBlock({}, 1028, nan_rows);
  EXPECT_EQ(nan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(nan.status().message().find("keys"), std::string::npos);
  // Null data.
  EXPECT_EQ(
      index.AddBlock({}, 1028, KvRows{DType::kFp32, 64, 3}).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index.num_clusters(), clusters);
  EXPECT_EQ(index.end_token(), 1028u);
  ExpectIndexConsistent(index, kv, 0);
  // The correct next block still works.
  ASSERT_TRUE(index.AddBlock({}, 1028, kv.Rows(0, 1028, 1100)).ok());
  ExpectIndexConsistent(index, kv, 0);
}

TEST(WaveIndexBasicsTest, PrepareThenCommitMatchesAddBlockAndPredictsMemory) {
  const LayerKv kv = MakeLayer(DType::kFp16, 1, 64, 6000, 12);
  WaveIndexParams params;
  params.update_tokens = 256;
  WaveIndex added(64), staged(64);
  uint64_t end = 4;
  for (uint64_t block_end : {2000u, 2256u, 2600u, 2856u, 5000u, 5300u}) {
    ASSERT_TRUE(added.AddBlock(params, end, kv.Rows(0, end, block_end)).ok());
    auto prepared =
        staged.PrepareBlock(params, end, kv.Rows(0, end, block_end));
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    EXPECT_EQ(staged.end_token(), end == 4 ? 0u : end) << "prepare is const";
    const size_t before = staged.memory_bytes();
    const size_t growth = staged.CommitGrowthBytes(*prepared);
    auto layout = staged.CommitBlock(*std::move(prepared));
    ASSERT_TRUE(layout.ok()) << layout.status();
    EXPECT_EQ(staged.memory_bytes(), before + growth)
        << "block end " << block_end;
    end = block_end;
  }
  ASSERT_EQ(staged.num_clusters(), added.num_clusters());
  EXPECT_EQ(staged.ToParts().slot_tokens, added.ToParts().slot_tokens);
  EXPECT_EQ(staged.ToParts().centroids, added.ToParts().centroids);
  EXPECT_EQ(staged.ToParts().value_sums, added.ToParts().value_sums);
  ExpectIndexConsistent(staged, kv, 0);

  // A block prepared against an older state is refused, changing nothing.
  auto first = staged.PrepareBlock(params, end, kv.Rows(0, end, 5600));
  auto second = staged.PrepareBlock(params, end, kv.Rows(0, end, 5600));
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(staged.CommitBlock(*std::move(first)).ok());
  const size_t clusters = staged.num_clusters();
  EXPECT_EQ(staged.CommitBlock(*std::move(second)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(staged.num_clusters(), clusters);
  ExpectIndexConsistent(staged, kv, 0);
}

}  // namespace
}  // namespace wavekv
