#include "kvstore/slot_store.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/host_arena.h"

namespace wavekv {
namespace {

// The arena block of a chunk of `slots` slots of `slot_bytes` each.
uint64_t Block(uint64_t slots, uint64_t slot_bytes) {
  return HostArena::BlockBytes(slots * slot_bytes);
}

// The blocks of the chunks holding `capacity` slots: first, 2*first, ...,
// max, max, ...
uint64_t ChunkBlocks(uint64_t capacity, uint64_t first, uint64_t max,
                     uint64_t slot_bytes) {
  uint64_t bytes = 0;
  for (uint64_t chunk = first, held = 0; held < capacity;
       held += chunk, chunk = std::min(2 * chunk, max)) {
    bytes += Block(chunk, slot_bytes);
  }
  return bytes;
}

// Deterministic contents of token t's key (v=0) or value (v=1) row.
std::vector<uint8_t> Row(size_t row_bytes, uint64_t t, int v) {
  std::vector<uint8_t> row(row_bytes);
  for (size_t b = 0; b < row_bytes; ++b) {
    row[b] = static_cast<uint8_t>((t * 131 + b * 7 + v * 29) & 0xFF);
  }
  return row;
}

// Appends tokens [first, first + n) in one call, from an interleaved
// [n][heads][row] buffer as Append requests carry them (head `head` of
// `heads`).
void AppendTokens(SlotStore& store, uint64_t first, uint64_t n, size_t heads,
                  size_t head) {
  const size_t row = store.row_bytes();
  std::vector<uint8_t> keys(n * heads * row), values(n * heads * row);
  for (uint64_t j = 0; j < n; ++j) {
    auto k = Row(row, first + j, 0);
    auto v = Row(row, first + j, 1);
    std::memcpy(&keys[(j * heads + head) * row], k.data(), row);
    std::memcpy(&values[(j * heads + head) * row], v.data(), row);
  }
  ASSERT_TRUE(store.Reserve(first + n).ok());
  store.Append(keys.data() + head * row, values.data() + head * row,
               heads * row, n, first);
}

void ExpectSlots(const SlotStore& store, uint64_t first, uint64_t n) {
  const size_t row = store.row_bytes();
  std::vector<uint8_t> keys(n * row), values(n * row);
  std::vector<uint64_t> positions(n);
  store.CopyOut(first, n, keys.data(), values.data(), positions.data());
  for (uint64_t j = 0; j < n; ++j) {
    const uint64_t t = first + j;
    ASSERT_EQ(positions[j], t);
    ASSERT_EQ(std::memcmp(&keys[j * row], Row(row, t, 0).data(), row), 0)
        << "key of slot " << t;
    ASSERT_EQ(std::memcmp(&values[j * row], Row(row, t, 1).data(), row), 0)
        << "value of slot " << t;
  }
}

TEST(ChunkGeometryTest, Validate) {
  EXPECT_TRUE(ChunkGeometry{}.Validate().ok());
  EXPECT_TRUE((ChunkGeometry{8, 8}).Validate().ok());
  EXPECT_EQ((ChunkGeometry{0, 8}).Validate().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((ChunkGeometry{3, 8}).Validate().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((ChunkGeometry{16, 8}).Validate().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((ChunkGeometry{16, 24}).Validate().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SlotStoreTest, EmptyStoreHoldsNoMemory) {
  SlotStore store(256);
  EXPECT_EQ(store.num_slots(), 0u);
  EXPECT_EQ(store.capacity_slots(), 0u);
  EXPECT_EQ(store.memory_bytes(), 0u);
  EXPECT_EQ(store.GrowthBytes(0), 0u);
}

TEST(SlotStoreTest, ChunksDoubleThenStayAtMaxAndAccountingIsExact) {
  const size_t row = 32;
  const uint64_t slot_bytes = 2 * row + 8;
  SlotStore store(row, ChunkGeometry{4, 16});
  // Ramp 4, 8, 16 (28 slots), then 16 per chunk.
  // Each chunk is one arena block: 288 -> 512, 576 -> 768, 1152 -> 1280.
  const uint64_t b4 = Block(4, slot_bytes), b8 = Block(8, slot_bytes),
                 b16 = Block(16, slot_bytes);
  EXPECT_EQ(b4, 512u);
  EXPECT_EQ(store.GrowthBytes(1), b4);
  EXPECT_EQ(store.GrowthBytes(5), b4 + b8);
  EXPECT_EQ(store.GrowthBytes(28), b4 + b8 + b16);
  EXPECT_EQ(store.GrowthBytes(29), b4 + b8 + 2 * b16);
  EXPECT_EQ(store.GrowthBytes(28 + 16 * 3), b4 + b8 + 4 * b16);
  EXPECT_EQ(store.GrowthBytes(28 + 16 * 3 + 1), b4 + b8 + 5 * b16);

  uint64_t expected_memory = 0;
  for (uint64_t n : {1, 3, 4, 5, 27, 28, 29, 100}) {
    const uint64_t growth = store.GrowthBytes(n);
    ASSERT_TRUE(store.Reserve(n).ok());
    expected_memory += growth;
    EXPECT_EQ(store.memory_bytes(), expected_memory) << n;
    EXPECT_EQ(store.memory_bytes(),
              ChunkBlocks(store.capacity_slots(), 4, 16, slot_bytes));
    EXPECT_GE(store.capacity_slots(), n);
    EXPECT_EQ(store.GrowthBytes(n), 0u);
  }
  EXPECT_EQ(store.capacity_slots(), 28u + 16 * 5);  // 100 -> 108
}

TEST(SlotStoreTest, AppendAndCopyOutAcrossChunkBoundaries) {
  const size_t row = 64;
  const size_t heads = 3;
  for (size_t head = 0; head < heads; ++head) {
    SlotStore store(row, ChunkGeometry{4, 32});
    std::mt19937_64 rng(42 + head);
    uint64_t n = 0;
    while (n < 500) {
      const uint64_t k = 1 + rng() % 37;
      AppendTokens(store, n, k, heads, head);
      n += k;
      ASSERT_EQ(store.num_slots(), n);
    }
    ExpectSlots(store, 0, n);
    // Random sub-ranges, many crossing chunk boundaries.
    for (int i = 0; i < 200; ++i) {
      const uint64_t first = rng() % n;
      const uint64_t len = 1 + rng() % (n - first);
      ExpectSlots(store, first, len);
    }
  }
}

TEST(SlotStoreTest, CopyOutSkipsNullOutputs) {
  SlotStore store(32, ChunkGeometry{2, 4});
  AppendTokens(store, 0, 10, 1, 0);
  std::vector<uint64_t> positions(7);
  store.CopyOut(3, 7, nullptr, nullptr, positions.data());
  for (uint64_t j = 0; j < 7; ++j) EXPECT_EQ(positions[j], 3 + j);
  std::vector<uint8_t> values(5 * 32);
  store.CopyOut(5, 5, nullptr, values.data(), nullptr);
  EXPECT_EQ(std::memcmp(values.data(), Row(32, 5, 1).data(), 32), 0);
}

TEST(SlotStoreTest, ReleaseUnusedRollsBackAReserve) {
  SlotStore store(32, ChunkGeometry{4, 8});
  AppendTokens(store, 0, 5, 1, 0);  // chunks 4 + 8
  const uint64_t memory = store.memory_bytes();
  const uint64_t capacity = store.capacity_slots();
  const uint64_t growth = store.GrowthBytes(100);
  ASSERT_TRUE(store.Reserve(100).ok());
  EXPECT_EQ(store.memory_bytes(), memory + growth);
  EXPECT_EQ(store.ReleaseUnused(), growth);
  EXPECT_EQ(store.memory_bytes(), memory);
  EXPECT_EQ(store.capacity_slots(), capacity);
  EXPECT_EQ(store.ReleaseUnused(), 0u);  // the used chunks stay
  ExpectSlots(store, 0, 5);
  AppendTokens(store, 5, 50, 1, 0);
  ExpectSlots(store, 0, 55);
}

TEST(SlotStoreTest, ClearFreesEverything) {
  SlotStore store(128);
  AppendTokens(store, 0, 3000, 2, 1);
  const uint64_t memory = store.memory_bytes();
  EXPECT_EQ(memory, ChunkBlocks(store.capacity_slots(), 16, 1024, 2 * 128 + 8));
  EXPECT_EQ(store.Clear(), memory);
  EXPECT_EQ(store.memory_bytes(), 0u);
  EXPECT_EQ(store.num_slots(), 0u);
  EXPECT_EQ(store.capacity_slots(), 0u);
  AppendTokens(store, 0, 10, 1, 0);  // usable again
  ExpectSlots(store, 0, 10);
}

TEST(SlotStoreTest, DefaultGeometryLargeStore) {
  // 16, 32, ..., 1024 (2032 slots), then 1024-slot chunks.
  SlotStore store(16);
  AppendTokens(store, 0, 5000, 1, 0);
  EXPECT_EQ(store.capacity_slots(), 2032u + 3 * 1024);
  ExpectSlots(store, 0, 5000);
  ExpectSlots(store, 2031, 2);
  ExpectSlots(store, 2032 + 1023, 2);
}

TEST(SlotStoreTest, DropRangeFreesWholeChunksAndKeepsTheRest) {
  // Chunks: [0,4) [4,12) [12,28) [28,44) [44,60) ...
  SlotStore store(16, ChunkGeometry{4, 16});
  AppendTokens(store, 0, 70, 1, 0);
  const uint64_t full = store.memory_bytes();
  const uint64_t per_slot = 2 * 16 + 8;
  const uint64_t b8 = Block(8, per_slot), b16 = Block(16, per_slot);
  EXPECT_EQ(store.DropRange(2, 2), 0u);
  // [2, 20): frees only [4, 12).
  EXPECT_EQ(store.DropRange(2, 20), b8);
  EXPECT_EQ(store.memory_bytes(), full - b8);
  EXPECT_FALSE(store.Holds(1, 2));
  EXPECT_FALSE(store.Holds(19, 1));
  EXPECT_TRUE(store.Holds(0, 2));
  EXPECT_TRUE(store.Holds(20, 50));
  EXPECT_FALSE(store.Holds(20, 51));
  ExpectSlots(store, 0, 2);
  ExpectSlots(store, 20, 50);
  // Growing the range frees [12, 28) and [28, 44); [44, 60) stays.
  EXPECT_EQ(store.DropRange(2, 50), 2 * b16);
  EXPECT_EQ(store.memory_bytes(), full - b8 - 2 * b16);
  EXPECT_EQ(store.dropped_begin(), 2u);
  EXPECT_EQ(store.dropped_end(), 50u);
  ExpectSlots(store, 50, 20);
  ExpectSlots(store, 0, 2);
  // Appends go on at the end; accounting stays exact.
  const uint64_t growth = store.GrowthBytes(100);
  AppendTokens(store, 70, 30, 1, 0);
  EXPECT_EQ(store.memory_bytes(), full - b8 - 2 * b16 + growth);
  ExpectSlots(store, 50, 50);
  EXPECT_EQ(store.Clear(), full - b8 - 2 * b16 + growth);
  EXPECT_EQ(store.memory_bytes(), 0u);
  EXPECT_FALSE(store.Holds(0, 1));
}

}  // namespace
}  // namespace wavekv
