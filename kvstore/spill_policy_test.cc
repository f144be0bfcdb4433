#include "kvstore/spill_policy.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

SpillCandidate C(std::string id, std::string tenant, uint64_t bytes,
                 int64_t last_access, bool busy = false) {
  SpillCandidate c;
  c.session_id = std::move(id);
  c.tenant = std::move(tenant);
  c.memory_bytes = bytes;
  c.last_access_unix_ms = last_access;
  c.busy = busy;
  return c;
}

TEST(SpillPolicyTest, OneTenantLeastRecentlyUsedFirst) {
  std::vector<SpillCandidate> c = {C("a", "t", 100, 30), C("b", "t", 100, 10),
                                   C("c", "t", 100, 20)};
  EXPECT_THAT(SpillOrder(c), ElementsAre(1, 2, 0));
  EXPECT_THAT(ChooseSpillVictims(c, 1), ElementsAre(1));
  EXPECT_THAT(ChooseSpillVictims(c, 100), ElementsAre(1));
  EXPECT_THAT(ChooseSpillVictims(c, 101), ElementsAre(1, 2));
  EXPECT_THAT(ChooseSpillVictims(c, 1000), ElementsAre(1, 2, 0));
  EXPECT_THAT(ChooseSpillVictims(c, 0), IsEmpty());
}

TEST(SpillPolicyTest, NeverBusyOrEmptySessions) {
  std::vector<SpillCandidate> c = {C("a", "t", 100, 1, /*busy=*/true),
                                   C("b", "t", 0, 2), C("c", "t", 100, 3)};
  EXPECT_THAT(SpillOrder(c), ElementsAre(2));
  std::vector<SpillCandidate> all_busy = {C("a", "t", 100, 1, true)};
  EXPECT_THAT(SpillOrder(all_busy), IsEmpty());
  EXPECT_THAT(SpillOrder({}), IsEmpty());
}

TEST(SpillPolicyTest, TenantAboveFairShareGoesFirst) {
  // Tenant "big" holds 900 of 1000 bytes (fair share 500): its sessions go
  // first even though "small"'s session is the least recently used.
  std::vector<SpillCandidate> c = {
      C("s1", "small", 100, 1), C("b1", "big", 300, 5), C("b2", "big", 300, 3),
      C("b3", "big", 300, 9)};
  // big: 900 -> b2 (LRU of big) -> 600 -> b1 -> 300 (at its share), then
  // LRU over all: s1, b3.
  EXPECT_THAT(SpillOrder(c), ElementsAre(2, 1, 0, 3));
  EXPECT_THAT(ChooseSpillVictims(c, 350), ElementsAre(2, 1));
}

TEST(SpillPolicyTest, FurthestAboveShareFirstAndBusyBytesCount) {
  // Total 1200 over three tenants: share 400. x holds 700 (300 busy), y 400,
  // z 100. Only x is over; after its idle session it is at 400.
  std::vector<SpillCandidate> c = {C("x1", "x", 300, 1, /*busy=*/true),
                                   C("x2", "x", 400, 50), C("y1", "y", 400, 2),
                                   C("z1", "z", 100, 3)};
  EXPECT_THAT(SpillOrder(c), ElementsAre(1, 2, 3));
}

TEST(SpillPolicyTest, DeterministicTies) {
  std::vector<SpillCandidate> c = {C("b", "t", 10, 5), C("a", "t", 10, 5),
                                   C("c", "u", 10, 5), C("d", "u", 10, 5)};
  EXPECT_THAT(SpillOrder(c), ElementsAre(1, 0, 2, 3));
}

}  // namespace
}  // namespace wavekv
