#include "index/wave_index_codec.h"

#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "index/retrieval.h"

namespace wavekv {
namespace {

WaveIndex BuildIndex(size_t dim, size_t tokens, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> k(tokens * dim), v(tokens * dim);
  for (auto& x : k) x = normal(rng);
  for (auto& x : v) x = normal(rng);
  WaveIndexParams params;
  params.segment_tokens = 1024;
  WaveIndex index(dim);
  auto first =
      index.AddBlock(params, 4,
                     KvRows{DType::kFp32, dim, tokens - 1024,
                            reinterpret_cast<const uint8_t*>(k.data()),
                            reinterpret_cast<const uint8_t*>(v.data())});
  EXPECT_TRUE(first.ok()) << first.status();
  const size_t off = (tokens - 1024) * dim;
  auto update =
      index.AddBlock(params, 4 + tokens - 1024,
                     KvRows{DType::kFp32, dim, 1024,
                            reinterpret_cast<const uint8_t*>(k.data() + off),
                            reinterpret_cast<const uint8_t*>(v.data() + off)});
  EXPECT_TRUE(update.ok()) << update.status();
  return index;
}

void ExpectSameIndex(const WaveIndex& a, const WaveIndex& b) {
  ASSERT_EQ(a.head_dim(), b.head_dim());
  ASSERT_EQ(a.num_clusters(), b.num_clusters());
  EXPECT_EQ(a.num_nonempty_clusters(), b.num_nonempty_clusters());
  EXPECT_EQ(a.indexed_span(), b.indexed_span());
  EXPECT_TRUE(std::equal(a.cluster_offsets().begin(), a.cluster_offsets().end(),
                         b.cluster_offsets().begin()));
  EXPECT_TRUE(std::equal(a.slot_tokens().begin(), a.slot_tokens().end(),
                         b.slot_tokens().begin()));
  EXPECT_TRUE(std::equal(a.value_sums().begin(), a.value_sums().end(),
                         b.value_sums().begin()));
  for (ClusterId c = 0; c < a.num_clusters(); ++c) {
    ASSERT_EQ(a.centroid(c), b.centroid(c));
  }
}

TEST(WaveIndexCodecTest, RoundTripGivesTheSameRetrieval) {
  const WaveIndex index = BuildIndex(128, 3000, 1);
  const std::string bytes = EncodeWaveIndex(index);
  auto decoded = DecodeWaveIndex(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSameIndex(index, *decoded);
  EXPECT_EQ(EncodeWaveIndex(*decoded), bytes);
  std::vector<float> q(4 * 128, 0.05f);
  const WaveIndexParams params;
  auto a = PlanRetrieval(index, q, 4, params, DefaultScale(128));
  auto b = PlanRetrieval(*decoded, q, 4, params, DefaultScale(128));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->retrieval_clusters, b->retrieval_clusters);
  EXPECT_EQ(a->estimation_clusters, b->estimation_clusters);
  EXPECT_EQ(a->tail[3].numerator, b->tail[3].numerator);
  // The decoded index keeps growing like the original.
  EXPECT_EQ(decoded->end_token(), index.end_token());
}

TEST(WaveIndexCodecTest, EmptyIndexRoundTrips) {
  const WaveIndex index(64);
  auto decoded = DecodeWaveIndex(EncodeWaveIndex(index));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->num_clusters(), 0u);
  EXPECT_EQ(decoded->head_dim(), 64u);
}

TEST(WaveIndexCodecTest, CorruptionIsDetected) {
  const WaveIndex index = BuildIndex(64, 2000, 2);
  const std::string bytes = EncodeWaveIndex(index);
  // Every truncation fails.
  for (size_t len :
       {size_t{0}, size_t{5}, size_t{20}, bytes.size() / 2, bytes.size() - 1}) {
    EXPECT_EQ(DecodeWaveIndex(bytes.substr(0, len)).status().code(),
              absl::StatusCode::kDataLoss)
        << len;
  }
  EXPECT_EQ(DecodeWaveIndex(bytes + "x").status().code(),
            absl::StatusCode::kDataLoss);
  std::string bad = bytes;
  bad[0] = 'X';
  EXPECT_EQ(DecodeWaveIndex(bad).status().code(), absl::StatusCode::kDataLoss);
  // A duplicated slot token (the tail of the encoding is the slot tokens).
  bad = bytes;
  std::memcpy(&bad[bad.size() - 8], &bad[bad.size() - 16], 8);
  auto s = DecodeWaveIndex(bad);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.status().message().find("slot_tokens"), std::string::npos);
  // A NaN centroid (the first float after the 46-byte header).
  bad = bytes;
  const uint32_t nan = 0x7fc00000u;
  std::memcpy(&bad[46], &nan, 4);
  EXPECT_EQ(DecodeWaveIndex(bad).status().code(), absl::StatusCode::kDataLoss);
}

TEST(WaveIndexCodecTest, FromPartsRejectsInconsistentSizes) {
  WaveIndexParts parts = BuildIndex(64, 2000, 3).ToParts();
  parts.sizes[0] += 1;
  EXPECT_EQ(WaveIndex::FromParts(parts).status().code(),
            absl::StatusCode::kInvalidArgument);
  parts = BuildIndex(64, 2000, 3).ToParts();
  parts.centroids.pop_back();
  EXPECT_EQ(WaveIndex::FromParts(parts).status().code(),
            absl::StatusCode::kInvalidArgument);
  parts = BuildIndex(64, 2000, 3).ToParts();
  parts.head_dim = 0;
  EXPECT_EQ(WaveIndex::FromParts(parts).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace wavekv
