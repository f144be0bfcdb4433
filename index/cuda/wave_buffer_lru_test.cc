// The wave buffer's CPU policy (runs in CI, no GPU): hits, LRU eviction order,
// never evicting this step's selection, overflow and uncacheable counting,
// empty clusters, and the table writes a GPU copy would apply.
#include "index/cuda/wave_buffer_lru.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <list>
#include <map>
#include <random>
#include <set>
#include <unordered_map>
#include <vector>

namespace wavekv::cuda {
namespace {

constexpr int kSlot = 8;

// Applies a plan to host mirrors of the two device tables, as the copy
// kernel does.
struct Tables {
  std::vector<int32_t> slot_ids, slot_list;
  void Apply(const WaveBufferPlan& p) {
    for (const auto& w : p.slot_id_writes) slot_ids[w.index] = w.value;
    for (const auto& w : p.slot_list_writes) slot_list[w.index] = w.value;
  }
};

TEST(WaveBufferLru, HitsAfterAdmissionAndLruEviction) {
  // One row, 6 clusters of 8 tokens (one slot each), room for 3.
  auto lru = WaveBufferLru::Create(1, 6, {8, 8, 8, 8, 8, 8}, 3, kSlot);
  ASSERT_TRUE(lru.ok()) << lru.status();
  WaveBufferPlan plan;
  lru->Step({0, 1, 2}, 3, &plan);
  EXPECT_EQ(lru->stats().lookups, 3u);
  EXPECT_EQ(lru->stats().hits, 0u);
  EXPECT_EQ(plan.copies.size(), 3u);
  EXPECT_EQ(lru->free_slots(0), 0);
  lru->Step({1}, 1, &plan);  // hit; LRU order now 1, 0, 2? (rank order)
  EXPECT_EQ(lru->stats().hits, 1u);
  EXPECT_TRUE(plan.copies.empty());
  // Step 1 admitted 0, 1, 2 in rank order, each pushed to the front: order
  // 2, 1, 0; touching 1 gives 1, 2, 0. Two misses evict 0 then 2.
  lru->Step({3, 4}, 2, &plan);
  EXPECT_FALSE(lru->resident(0, 0));
  EXPECT_FALSE(lru->resident(0, 2));
  EXPECT_TRUE(lru->resident(0, 1));
  EXPECT_TRUE(lru->resident(0, 3));
  EXPECT_TRUE(lru->resident(0, 4));
  EXPECT_EQ(lru->stats().evicted_clusters, 2u);
  EXPECT_EQ(lru->stats().admitted_clusters, 5u);
}

TEST(WaveBufferLru, NeverEvictsThisStepsSelectionAndCountsOverflow) {
  auto lru = WaveBufferLru::Create(1, 8, std::vector<int32_t>(8, 16), 4,
                                   kSlot);  // 2 slots per cluster, room for 2
  ASSERT_TRUE(lru.ok());
  WaveBufferPlan plan;
  lru->Step({0, 1, 2, 3}, 4, &plan);
  // 0 and 1 admitted; 2 and 3 would need to evict 0/1 (selected now).
  EXPECT_TRUE(lru->resident(0, 0));
  EXPECT_TRUE(lru->resident(0, 1));
  EXPECT_FALSE(lru->resident(0, 2));
  EXPECT_EQ(lru->stats().overflow_clusters, 2u);
  EXPECT_EQ(lru->stats().evicted_clusters, 0u);
  EXPECT_EQ(lru->stats().lookups, 4u);
}

TEST(WaveBufferLru, UncacheableEmptyDuplicateAndInvalidIds) {
  auto lru = WaveBufferLru::Create(1, 4, {0, 40, 8, 8}, 3, kSlot);
  ASSERT_TRUE(lru.ok());
  WaveBufferPlan plan;
  // Cluster 0 is empty, 1 needs 5 slots > 3, 2 twice, -1 and 9 are no ids.
  lru->Step({0, 1, 2, 2, -1, 9}, 6, &plan);
  EXPECT_EQ(lru->stats().lookups, 2u);  // 1 and 2
  EXPECT_EQ(lru->stats().uncacheable_clusters, 1u);
  EXPECT_TRUE(lru->resident(0, 2));
  EXPECT_FALSE(lru->resident(0, 0));
  EXPECT_EQ(plan.copies.size(), 1u);
}

TEST(WaveBufferLru, PlansKeepTablesConsistentUnderRandomSelections) {
  const int rows = 3, clusters = 50, slots = 20, sel = 6;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> size_dist(0, 30);
  std::vector<int32_t> sizes(rows * clusters);
  for (int32_t& s : sizes) s = size_dist(rng);
  auto lru = WaveBufferLru::Create(rows, clusters, sizes, slots, kSlot);
  ASSERT_TRUE(lru.ok());
  Tables t;
  t.slot_ids.assign(lru->slot_table_size(), -1);
  t.slot_list.assign(rows * clusters, -1);
  // slot -> (row, cluster, piece) owner, as the GPU pool would hold.
  std::map<int32_t, std::tuple<int, int, int>> owner;
  WaveBufferPlan plan;
  std::vector<int> center(rows, 0);
  uint64_t hits = 0, lookups = 0;
  for (int step = 0; step < 300; ++step) {
    std::vector<int32_t> ids(rows * sel);
    for (int r = 0; r < rows; ++r) {
      center[r] = (center[r] + (rng() % 3) + clusters - 1) % clusters;
      for (int i = 0; i < sel; ++i) {
        ids[r * sel + i] = (center[r] + i * (1 + rng() % 2)) % clusters;
      }
    }
    // Expected hits from the tables before this step's plan.
    for (int r = 0; r < rows; ++r) {
      std::set<int> seen;
      for (int i = 0; i < sel; ++i) {
        const int c = ids[r * sel + i];
        if (sizes[r * clusters + c] == 0 || !seen.insert(c).second) continue;
        ++lookups;
        if (t.slot_list[r * clusters + c] >= 0) ++hits;
      }
    }
    lru->Step(ids, sel, &plan);
    for (const auto& c : plan.copies) {
      ASSERT_GE(c.slot, c.row * slots);
      ASSERT_LT(c.slot, (c.row + 1) * slots);
      owner[c.slot] = {c.row, c.cluster, c.piece};
    }
    t.Apply(plan);
    // Every resident cluster's slot list points at slots it owns.
    for (int r = 0; r < rows; ++r) {
      int used = 0;
      for (int c = 0; c < clusters; ++c) {
        const int32_t list = t.slot_list[r * clusters + c];
        ASSERT_EQ(list >= 0, lru->resident(r, c));
        if (list < 0) continue;
        ASSERT_EQ(list, lru->SlotListIndex(r, c));
        const int pieces = (sizes[r * clusters + c] + kSlot - 1) / kSlot;
        for (int j = 0; j < pieces; ++j) {
          const int32_t slot = t.slot_ids[list + j];
          ASSERT_EQ(owner[slot], std::make_tuple(r, c, j));
        }
        used += pieces;
      }
      ASSERT_EQ(used + lru->free_slots(r), slots);
    }
  }
  EXPECT_EQ(lru->stats().hits, hits);
  EXPECT_EQ(lru->stats().lookups, lookups);
  EXPECT_GT(hits, lookups / 3);  // the walk has locality
}

TEST(WaveBufferLru, CopiesCarryRowPositionsOfThisStep) {
  // Sizes 20, 8, 12, 3; steady zone of 5 tokens before the selection.
  auto lru = WaveBufferLru::Create(1, 4, {20, 8, 12, 3}, 20, kSlot);
  ASSERT_TRUE(lru.ok());
  WaveBufferPlan plan;
  const std::vector<int32_t> first = {5};
  lru->Step({2, -1, 0, 9, 1}, 5, &plan, first);
  std::map<std::pair<int, int>, int> pos;  // (cluster, piece) -> position
  for (const auto& c : plan.copies) pos[{c.cluster, c.piece}] = c.first_token;
  EXPECT_EQ(pos[std::make_pair(2, 0)], 5);
  EXPECT_EQ(pos[std::make_pair(2, 1)], 5 + kSlot);
  EXPECT_EQ(pos[std::make_pair(0, 0)], 5 + 12);
  EXPECT_EQ(pos[std::make_pair(0, 2)], 5 + 12 + 2 * kSlot);
  EXPECT_EQ(pos[std::make_pair(1, 0)], 5 + 12 + 20);
  // Without positions the copies say so.
  lru->Step({3}, 1, &plan);
  ASSERT_EQ(plan.copies.size(), 1u);
  EXPECT_EQ(plan.copies[0].first_token, -1);
}

TEST(WaveBufferLru, StepRowsInPartsEqualsOneStep) {
  const int rows = 6, clusters = 40, sel = 5;
  std::mt19937 rng(3);
  std::vector<int32_t> sizes(rows * clusters);
  for (int32_t& s : sizes) s = rng() % 25;
  auto one = WaveBufferLru::Create(rows, clusters, sizes, 8, kSlot);
  auto parts = WaveBufferLru::Create(rows, clusters, sizes, 8, kSlot);
  ASSERT_TRUE(one.ok() && parts.ok());
  WaveBufferPlan plan, p1, p2;
  for (int step = 0; step < 50; ++step) {
    std::vector<int32_t> ids(rows * sel);
    for (int32_t& id : ids) id = rng() % clusters;
    one->Step(ids, sel, &plan);
    parts->BeginStep();
    WaveBufferStats s1, s2;
    p1.Clear();
    p2.Clear();
    parts->StepRows(ids, sel, {}, 0, 2, &p1, &s1);
    parts->StepRows(ids, sel, {}, 2, rows, &p2, &s2);
    parts->AddStats(s1);
    parts->AddStats(s2);
    EXPECT_EQ(plan.copies.size(), p1.copies.size() + p2.copies.size());
  }
  EXPECT_EQ(one->stats().hits, parts->stats().hits);
  EXPECT_EQ(one->stats().lookups, parts->stats().lookups);
  EXPECT_EQ(one->stats().evicted_clusters, parts->stats().evicted_clusters);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < clusters; ++c) {
      EXPECT_EQ(one->resident(r, c), parts->resident(r, c));
    }
  }
}

// The documented policy, written the obvious way (a list per row, front =
// most recent), to compare the packed implementation with.
class ReferenceLru {
 public:
  ReferenceLru(int rows, int clusters, std::vector<int32_t> sizes, int slots)
      : clusters_(clusters),
        slots_(slots),
        sizes_(std::move(sizes)),
        order_(rows),
        free_(rows, slots) {}
  void Step(const std::vector<int32_t>& ids, int sel) {
    for (int r = 0; r < static_cast<int>(order_.size()); ++r) {
      std::set<int> seen;
      std::vector<int> hit, miss;
      for (int i = 0; i < sel; ++i) {
        const int c = ids[r * sel + i];
        if (c < 0 || c >= clusters_ || Size(r, c) == 0) continue;
        if (!seen.insert(c).second) continue;
        ++lookups;
        if (where_.count(Key(r, c))) {
          ++hits;
          hit.push_back(c);
        } else {
          miss.push_back(c);
        }
      }
      std::list<int>& o = order_[r];
      for (auto it = hit.rbegin(); it != hit.rend(); ++it) {
        o.erase(where_[Key(r, *it)]);
        o.push_front(*it);
        where_[Key(r, *it)] = o.begin();
      }
      for (int c : miss) {
        const int need = Pieces(r, c);
        if (need > slots_) {
          ++uncacheable;
          continue;
        }
        while (free_[r] < need && !o.empty() && !seen.count(o.back())) {
          free_[r] += Pieces(r, o.back());
          where_.erase(Key(r, o.back()));
          o.pop_back();
          ++evicted;
        }
        if (free_[r] < need) {
          ++overflow;
          continue;
        }
        free_[r] -= need;
        o.push_front(c);
        where_[Key(r, c)] = o.begin();
      }
    }
  }
  bool resident(int r, int c) const { return where_.count(Key(r, c)) > 0; }
  int free_slots(int r) const { return free_[r]; }
  uint64_t lookups = 0, hits = 0, evicted = 0, overflow = 0, uncacheable = 0;

 private:
  int64_t Key(int r, int c) const { return int64_t{r} * clusters_ + c; }
  int Size(int r, int c) const { return sizes_[Key(r, c)]; }
  int Pieces(int r, int c) const { return (Size(r, c) + kSlot - 1) / kSlot; }
  int clusters_, slots_;
  std::vector<int32_t> sizes_;
  std::vector<std::list<int>> order_;
  std::vector<int> free_;
  std::unordered_map<int64_t, std::list<int>::iterator> where_;
};

TEST(WaveBufferLru, MatchesReferenceLruOverLongWalks) {
  // Sizes 0..40 plus a few over 255 tokens (stored outside the packed
  // cells) and one over the row capacity; a hot set that stays resident for
  // hundreds of steps (the touch queue compacts many times), drifting
  // selections with duplicates and invalid ids.
  const int rows = 3, clusters = 400, slots = 90, sel = 24;
  std::mt19937 rng(17);
  std::vector<int32_t> sizes(rows * clusters);
  for (int32_t& x : sizes) x = rng() % 41;
  sizes[5] = 300;                 // 38 slots
  sizes[clusters + 7] = 700;      // 88 slots
  sizes[2 * clusters + 9] = 800;  // 100 slots: uncacheable
  auto lru = WaveBufferLru::Create(rows, clusters, sizes, slots, kSlot);
  ASSERT_TRUE(lru.ok()) << lru.status();
  ReferenceLru ref(rows, clusters, sizes, slots);
  WaveBufferPlan plan;
  std::vector<int> center(rows, 0);
  for (int step = 0; step < 3000; ++step) {
    std::vector<int32_t> ids(rows * sel);
    for (int r = 0; r < rows; ++r) {
      if (step % 7 == 0) center[r] = (center[r] + 1 + rng() % 5) % clusters;
      for (int i = 0; i < sel; ++i) {
        int32_t& id = ids[r * sel + i];
        const int u = rng() % 100;
        if (u < 3) {
          id = u == 0 ? -1 : clusters + u;  // no cluster
        } else if (u < 8 && i > 0) {
          id = ids[r * sel + rng() % i];  // duplicate
        } else if (u < 30) {
          id = (r * 2 * clusters + 5 + r * 2 + (rng() % 3)) % clusters;
        } else {
          id = (center[r] + rng() % 40) % clusters;
        }
      }
    }
    ref.Step(ids, sel);
    lru->Step(ids, sel, &plan);
    for (const auto& c : plan.copies) {
      const int32_t size = sizes[c.row * clusters + c.cluster];
      ASSERT_EQ(c.num_tokens, std::min(kSlot, size - c.piece * kSlot));
    }
    for (int r = 0; r < rows; ++r) {
      ASSERT_EQ(lru->free_slots(r), ref.free_slots(r)) << "step " << step;
      for (int c = 0; c < clusters; ++c) {
        ASSERT_EQ(lru->resident(r, c), ref.resident(r, c))
            << "step " << step << " row " << r << " cluster " << c;
      }
    }
  }
  EXPECT_EQ(lru->stats().lookups, ref.lookups);
  EXPECT_EQ(lru->stats().hits, ref.hits);
  EXPECT_EQ(lru->stats().evicted_clusters, ref.evicted);
  EXPECT_EQ(lru->stats().overflow_clusters, ref.overflow);
  EXPECT_EQ(lru->stats().uncacheable_clusters, ref.uncacheable);
  EXPECT_GT(ref.evicted, 1000u);
  EXPECT_GT(ref.overflow, 0u);
  EXPECT_GT(ref.uncacheable, 0u);
  EXPECT_GT(ref.hits, ref.lookups / 2);
}

TEST(WaveBufferLru, StepParallelEqualsStep) {
  const int rows = 7, clusters = 120, sel = 16;
  std::mt19937 rng(5);
  std::vector<int32_t> sizes(rows * clusters);
  for (int32_t& s : sizes) s = rng() % 30;
  auto one = WaveBufferLru::Create(rows, clusters, sizes, 40, kSlot);
  auto par = WaveBufferLru::Create(rows, clusters, sizes, 40, kSlot);
  ASSERT_TRUE(one.ok() && par.ok());
  WaveBufferWorkers workers(4);
  WaveBufferPlan plan;
  std::vector<WaveBufferPlan> plans;
  const std::vector<int32_t> first = {3, 0, 9, 580, 1, 2, 7};
  for (int step = 0; step < 200; ++step) {
    std::vector<int32_t> ids(rows * sel);
    for (int32_t& id : ids) id = rng() % (clusters + 4) - 2;
    one->Step(ids, sel, &plan, first);
    const int tasks = 1 + step % 4;
    par->StepParallel(ids, sel, first, tasks, &workers, &plans);
    ASSERT_EQ(static_cast<int>(plans.size()), tasks);
    WaveBufferPlan joined;
    for (const WaveBufferPlan& p : plans) {
      joined.copies.insert(joined.copies.end(), p.copies.begin(),
                           p.copies.end());
      joined.slot_id_writes.insert(joined.slot_id_writes.end(),
                                   p.slot_id_writes.begin(),
                                   p.slot_id_writes.end());
      joined.slot_list_writes.insert(joined.slot_list_writes.end(),
                                     p.slot_list_writes.begin(),
                                     p.slot_list_writes.end());
    }
    ASSERT_EQ(joined.copies.size(), plan.copies.size());
    for (size_t i = 0; i < plan.copies.size(); ++i) {
      const auto &a = plan.copies[i], &b = joined.copies[i];
      ASSERT_EQ(std::make_tuple(a.row, a.cluster, a.piece, a.slot,
                                a.first_token, a.num_tokens),
                std::make_tuple(b.row, b.cluster, b.piece, b.slot,
                                b.first_token, b.num_tokens));
    }
    ASSERT_EQ(joined.slot_id_writes.size(), plan.slot_id_writes.size());
    for (size_t i = 0; i < plan.slot_id_writes.size(); ++i) {
      ASSERT_EQ(joined.slot_id_writes[i].index, plan.slot_id_writes[i].index);
      ASSERT_EQ(joined.slot_id_writes[i].value, plan.slot_id_writes[i].value);
    }
    ASSERT_EQ(joined.slot_list_writes.size(), plan.slot_list_writes.size());
    for (size_t i = 0; i < plan.slot_list_writes.size(); ++i) {
      ASSERT_EQ(joined.slot_list_writes[i].index,
                plan.slot_list_writes[i].index);
      ASSERT_EQ(joined.slot_list_writes[i].value,
                plan.slot_list_writes[i].value);
    }
  }
  EXPECT_EQ(one->stats().steps, par->stats().steps);
  EXPECT_EQ(one->stats().hits, par->stats().hits);
  EXPECT_EQ(one->stats().lookups, par->stats().lookups);
  EXPECT_EQ(one->stats().admitted_slots, par->stats().admitted_slots);
  EXPECT_EQ(one->stats().evicted_clusters, par->stats().evicted_clusters);
  EXPECT_EQ(one->stats().overflow_clusters, par->stats().overflow_clusters);
  EXPECT_GT(one->stats().evicted_clusters, 100u);
}

TEST(WaveBufferLru, RejectsBadShapes) {
  EXPECT_FALSE(WaveBufferLru::Create(0, 4, {}, 1, kSlot).ok());
  auto s = WaveBufferLru::Create(1, 2, {1}, 1, kSlot);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("cluster_sizes"), std::string::npos);
  EXPECT_FALSE(WaveBufferLru::Create(1, 1, {-3}, 1, kSlot).ok());
  EXPECT_FALSE(WaveBufferLru::Create(1, 1, {8},
                                     WaveBufferLru::kMaxSlotsPerRow + 1, kSlot)
                   .ok());
}

}  // namespace
}  // namespace wavekv::cuda
