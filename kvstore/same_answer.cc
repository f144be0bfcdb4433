#include "kvstore/same_answer.h"

#include "gtest/gtest.h"

namespace wavekv {

void ExpectSameAnswer(const SessionResult& a, const SessionResult& b) {
  EXPECT_EQ(a.mode, b.mode);
  EXPECT_EQ(a.num_tokens, b.num_tokens);
  EXPECT_EQ(a.indexed_tokens, b.indexed_tokens);
  ASSERT_EQ(a.steady.size(), b.steady.size());
  for (size_t i = 0; i < a.steady.size(); ++i) {
    EXPECT_EQ(a.steady[i].begin, b.steady[i].begin);
    EXPECT_EQ(a.steady[i].end, b.steady[i].end);
  }
  ASSERT_EQ(a.heads.size(), b.heads.size());
  for (size_t h = 0; h < a.heads.size(); ++h) {
    const KvHeadResult& x = a.heads[h];
    const KvHeadResult& y = b.heads[h];
    ASSERT_EQ(x.retrieval.size(), y.retrieval.size()) << "head " << h;
    for (size_t i = 0; i < x.retrieval.size(); ++i) {
      EXPECT_EQ(x.retrieval[i].cluster_id, y.retrieval[i].cluster_id);
      EXPECT_EQ(x.retrieval[i].first_slot, y.retrieval[i].first_slot);
      EXPECT_EQ(x.retrieval[i].num_slots, y.retrieval[i].num_slots);
    }
    ASSERT_EQ(x.tail.size(), y.tail.size());
    for (size_t i = 0; i < x.tail.size(); ++i) {
      // Bit-exact: the same index and the same bytes give the same floats.
      EXPECT_EQ(x.tail[i].max_logit, y.tail[i].max_logit);
      EXPECT_EQ(x.tail[i].denominator, y.tail[i].denominator);
      EXPECT_EQ(x.tail[i].numerator, y.tail[i].numerator);
    }
    EXPECT_TRUE(x.keys == y.keys) << "head " << h << " keys differ";
    EXPECT_TRUE(x.values == y.values) << "head " << h << " values differ";
  }
}

}  // namespace wavekv
