#include "kvstore/cluster_store.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace wavekv {
namespace {

constexpr size_t kRow = 24;

uint8_t Byte(uint64_t token, size_t b, int v) {
  return static_cast<uint8_t>((token * 37 + b * 11 + v * 101) & 0xFF);
}

// A segment for tokens [first_token, first_token + n) at `first_slot`, laid
// out in the order `order` (slot i holds token first_token + order[i]).
ClusterStore::Segment MakeSegment(uint64_t first_slot, uint64_t first_token,
                                  const std::vector<uint64_t>& order) {
  auto seg = ClusterStore::Segment::Allocate(first_slot, order.size(), kRow);
  EXPECT_TRUE(seg.ok()) << seg.status();
  // Token order first, as a build copies it from the token store.
  for (uint64_t t = 0; t < order.size(); ++t) {
    for (size_t b = 0; b < kRow; ++b) {
      seg->keys()[t * kRow + b] = Byte(first_token + t, b, 0);
      seg->values()[t * kRow + b] = Byte(first_token + t, b, 1);
    }
  }
  seg->Permute(order);
  for (uint64_t i = 0; i < order.size(); ++i) {
    seg->positions()[i] = first_token + order[i];
  }
  return *std::move(seg);
}

std::vector<uint64_t> Shuffled(uint64_t n, uint64_t seed) {
  std::vector<uint64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  return order;
}

void ExpectSlots(const ClusterStore& store, uint64_t first, uint64_t n) {
  std::vector<uint8_t> keys(n * kRow), values(n * kRow);
  std::vector<uint64_t> positions(n);
  store.CopyOut(first, n, keys.data(), values.data(), positions.data());
  for (uint64_t i = 0; i < n; ++i) {
    for (size_t b = 0; b < kRow; ++b) {
      ASSERT_EQ(keys[i * kRow + b], Byte(positions[i], b, 0)) << "slot " << i;
      ASSERT_EQ(values[i * kRow + b], Byte(positions[i], b, 1));
    }
  }
}

TEST(ClusterStoreTest, PermuteIsAGather) {
  for (uint64_t n : {1u, 2u, 7u, 100u, 1000u}) {
    const std::vector<uint64_t> order = Shuffled(n, n);
    ClusterStore::Segment seg = MakeSegment(0, 500, order);
    for (uint64_t i = 0; i < n; ++i) {
      ASSERT_EQ(seg.keys()[i * kRow], Byte(500 + order[i], 0, 0)) << n;
      ASSERT_EQ(seg.values()[i * kRow + 5], Byte(500 + order[i], 5, 1)) << n;
    }
  }
}

TEST(ClusterStoreTest, InstallAndCopyAcrossSegments) {
  ClusterStore store(kRow);
  EXPECT_EQ(store.num_slots(), 0u);
  EXPECT_EQ(store.memory_bytes(), 0u);
  store.Install(MakeSegment(0, 4, Shuffled(300, 1)));
  store.Install(MakeSegment(300, 304, Shuffled(64, 2)));
  store.Install(MakeSegment(364, 368, Shuffled(5, 3)));
  EXPECT_EQ(store.num_slots(), 369u);
  // One arena block per segment.
  const uint64_t bytes = ClusterStore::Segment::BytesFor(300, kRow) +
                         ClusterStore::Segment::BytesFor(64, kRow) +
                         ClusterStore::Segment::BytesFor(5, kRow);
  EXPECT_EQ(store.memory_bytes(), bytes);
  ExpectSlots(store, 0, 369);
  ExpectSlots(store, 299, 2);
  ExpectSlots(store, 363, 6);
  // Every token once.
  std::vector<uint64_t> positions(369);
  store.CopyOut(0, 369, nullptr, nullptr, positions.data());
  std::sort(positions.begin(), positions.end());
  for (uint64_t i = 0; i < 369; ++i) ASSERT_EQ(positions[i], 4 + i);
  EXPECT_EQ(store.Clear(), bytes);
  EXPECT_EQ(store.num_slots(), 0u);
  EXPECT_EQ(store.memory_bytes(), 0u);
}

}  // namespace
}  // namespace wavekv
