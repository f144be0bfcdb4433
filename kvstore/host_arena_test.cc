#include "kvstore/host_arena.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

constexpr uint64_t kSlab = 1ull << 20;  // 256 pages

HostArenaOptions SmallSlabs(bool lock = false) {
  HostArenaOptions o;
  o.slab_bytes = kSlab;
  o.lock_memory = lock;
  return o;
}

TEST(HostArenaTest, OptionsValidate) {
  HostArenaOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.slab_bytes = 4096 * 15;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(o.Validate().message().find("slab_bytes"), std::string::npos);
  o.slab_bytes = (1 << 20) + 100;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostArenaTest, BlockBytesAreSizeClassesThenPages) {
  EXPECT_EQ(HostArena::BlockBytes(0), 0u);
  EXPECT_EQ(HostArena::BlockBytes(1), 256u);
  EXPECT_EQ(HostArena::BlockBytes(256), 256u);
  EXPECT_EQ(HostArena::BlockBytes(257), 512u);
  EXPECT_EQ(HostArena::BlockBytes(2048), 2048u);
  EXPECT_EQ(HostArena::BlockBytes(2049), 4096u);
  EXPECT_EQ(HostArena::BlockBytes(4097), 8192u);
  EXPECT_EQ(HostArena::BlockBytes(532480), 532480u);  // 130 pages exactly
}

TEST(HostArenaTest, UsedBytesAreExactAndReturnToZero) {
  HostArena arena(SmallSlabs());
  std::vector<HostBlock> blocks;
  uint64_t expected = 0;
  for (uint64_t bytes : {1ull, 300ull, 2048ull, 5000ull, 70000ull, 4096ull}) {
    absl::StatusOr<HostBlock> b = arena.Allocate(bytes);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->bytes(), HostArena::BlockBytes(bytes));
    std::memset(b->data(), 0xab, bytes);  // writable to the end
    expected += b->bytes();
    blocks.push_back(*std::move(b));
  }
  HostArenaStats s = arena.Stats();
  EXPECT_EQ(s.used_bytes, expected);
  EXPECT_EQ(s.slabs, 1u);
  EXPECT_EQ(s.reserved_bytes, kSlab);
  EXPECT_EQ(s.allocations, 6u);
  blocks.clear();
  s = arena.Stats();
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(s.frees, 6u);
  EXPECT_EQ(s.small_slack_bytes, 0u);
  // The one free slab is retained, and whole again.
  EXPECT_EQ(s.slabs, 1u);
  EXPECT_EQ(s.free_bytes, kSlab);
  EXPECT_EQ(s.largest_free_bytes, kSlab);
  EXPECT_EQ(s.fragmentation, 0.0);
}

TEST(HostArenaTest, PageBlocksArePageAlignedAndDisjoint) {
  HostArena arena(SmallSlabs());
  std::vector<HostBlock> blocks;
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<HostBlock> b = arena.Allocate(4096 * (1 + i % 5));
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 4096, 0u);
    std::memset(b->data(), i, b->bytes());
    blocks.push_back(*std::move(b));
  }
  for (int i = 0; i < 20; ++i) {
    const uint8_t* p = blocks[i].data();
    EXPECT_TRUE(std::all_of(p, p + blocks[i].bytes(),
                            [i](uint8_t x) { return x == i; }))
        << "block " << i << " was overwritten";
  }
}

TEST(HostArenaTest, SmallBlocksShareAPage) {
  HostArena arena(SmallSlabs());
  std::vector<HostBlock> blocks;
  for (int i = 0; i < 16; ++i) {
    absl::StatusOr<HostBlock> b = arena.Allocate(200);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data()) % 256, 0u);
    blocks.push_back(*std::move(b));
  }
  // 16 blocks of 256 bytes: one page, no slack.
  HostArenaStats s = arena.Stats();
  EXPECT_EQ(s.free_bytes, kSlab - 4096);
  EXPECT_EQ(s.small_slack_bytes, 0u);
  absl::StatusOr<HostBlock> b17 = arena.Allocate(200);
  ASSERT_TRUE(b17.ok());
  EXPECT_EQ(arena.Stats().free_bytes, kSlab - 2 * 4096);
  EXPECT_EQ(arena.Stats().small_slack_bytes, 4096u - 256);
  // A freed slot is reused before a new page is taken.
  uint8_t* freed = blocks[5].data();
  blocks[5].reset();
  absl::StatusOr<HostBlock> again = arena.Allocate(256);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->data(), freed);
}

TEST(HostArenaTest, FreeRunsCoalesce) {
  HostArena arena(SmallSlabs());
  std::vector<HostBlock> blocks;
  for (int i = 0; i < 8; ++i) {
    blocks.push_back(*arena.Allocate(32 * 4096));  // 8 x 32 pages = slab
  }
  EXPECT_EQ(arena.Stats().free_bytes, 0u);
  // Free every other block: four separate runs of 32 pages.
  for (int i = 0; i < 8; i += 2) blocks[i].reset();
  HostArenaStats s = arena.Stats();
  EXPECT_EQ(s.free_bytes, 128u * 4096);
  EXPECT_EQ(s.largest_free_bytes, 32u * 4096);
  EXPECT_DOUBLE_EQ(s.fragmentation, 0.75);
  // A 64-page block does not fit in any run: a second slab.
  absl::StatusOr<HostBlock> big = arena.Allocate(64 * 4096);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(arena.Stats().slabs, 2u);
  big->reset();
  // Free the rest: the first slab's runs merge back into one.
  for (int i = 1; i < 8; i += 2) blocks[i].reset();
  s = arena.Stats();
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(s.slabs, 1u);  // one free slab retained, the other unmapped
  EXPECT_EQ(s.largest_free_bytes, kSlab);
  EXPECT_EQ(s.slabs_unmapped, 1u);
}

TEST(HostArenaTest, BlockLargerThanASlabGetsItsOwnSlab) {
  HostArena arena(SmallSlabs());
  absl::StatusOr<HostBlock> big = arena.Allocate(3 * kSlab + 1);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->bytes(), 3 * kSlab + 4096);
  std::memset(big->data(), 1, big->bytes());
  EXPECT_EQ(arena.Stats().reserved_bytes, 3 * kSlab + 4096);
  big->reset();
  // Never retained: its memory goes back at once.
  EXPECT_EQ(arena.Stats().slabs, 0u);
  EXPECT_EQ(arena.Stats().reserved_bytes, 0u);
}

TEST(HostArenaTest, RegistrationHooksSeeEverySlabOnce) {
  absl::Mutex mu;
  std::vector<std::pair<void*, uint64_t>> registered, unregistered;
  HostArenaOptions o = SmallSlabs();
  o.retain_free_slabs = 0;
  o.register_slab = [&](void* base, uint64_t bytes) {
    absl::MutexLock lock(&mu);
    registered.emplace_back(base, bytes);
    return absl::OkStatus();
  };
  o.unregister_slab = [&](void* base, uint64_t bytes) {
    absl::MutexLock lock(&mu);
    unregistered.emplace_back(base, bytes);
  };
  HostArena arena(o);
  {
    std::vector<HostBlock> blocks;
    for (int i = 0; i < 3; ++i) blocks.push_back(*arena.Allocate(kSlab));
    int seen = 0;
    arena.ForEachSlab([&](void* base, uint64_t bytes) {
      ++seen;
      EXPECT_EQ(bytes, kSlab);
    });
    EXPECT_EQ(seen, 3);
  }
  absl::MutexLock lock(&mu);
  ASSERT_EQ(registered.size(), 3u);
  std::sort(registered.begin(), registered.end());
  std::sort(unregistered.begin(), unregistered.end());
  EXPECT_EQ(registered, unregistered);
}

TEST(HostArenaTest, RefusedRegistrationFailsTheAllocation) {
  HostArenaOptions o = SmallSlabs();
  o.register_slab = [](void*, uint64_t) {
    return absl::UnavailableError("no device");
  };
  HostArena arena(o);
  absl::StatusOr<HostBlock> b = arena.Allocate(100);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(b.status().message().find("no device"), std::string::npos);
  EXPECT_EQ(arena.Stats().slabs, 0u);
  EXPECT_EQ(arena.Stats().failed_allocations, 1u);
}

TEST(HostArenaTest, LockingIsBestEffortAndCounted) {
  HostArena arena(SmallSlabs(/*lock=*/true));
  absl::StatusOr<HostBlock> b = arena.Allocate(8192);
  ASSERT_TRUE(b.ok());
  const HostArenaStats s = arena.Stats();
  // Either the slab is locked or the refusal is counted; never both.
  EXPECT_EQ(s.locked_bytes + s.lock_failures * kSlab, kSlab);
}

TEST(HostArenaTest, ConcurrentAllocateAndFreeKeepAccounting) {
  HostArena arena(SmallSlabs());
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&arena, t] {
      std::mt19937_64 rng(1234 + t);
      std::vector<HostBlock> mine;
      for (int i = 0; i < 3000; ++i) {
        if (!mine.empty() && rng() % 3 == 0) {
          const size_t k = rng() % mine.size();
          const uint8_t tag = mine[k].data()[0];
          ASSERT_EQ(mine[k].data()[mine[k].bytes() - 1], tag);
          mine.erase(mine.begin() + static_cast<long>(k));
          continue;
        }
        const uint64_t bytes = 1 + rng() % (rng() % 2 ? 2048 : 200000);
        absl::StatusOr<HostBlock> b = arena.Allocate(bytes);
        ASSERT_TRUE(b.ok());
        const auto tag = static_cast<uint8_t>(rng());
        std::memset(b->data(), tag, b->bytes());
        mine.push_back(*std::move(b));
      }
    });
  }
  for (std::thread& th : threads) th.join();
  const HostArenaStats s = arena.Stats();
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(s.allocations, s.frees);
  EXPECT_EQ(s.small_slack_bytes, 0u);
  EXPECT_LE(s.slabs, 1u);
}

}  // namespace
}  // namespace wavekv
