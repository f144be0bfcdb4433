// Test support: two Retrieve answers are the same to the bit (mode, token
// counts, steady ranges, retrieval clusters and their slots, tail
// statistics, inline K/V). For tests that rebuild, restore or reopen a
// session and expect identical answers.
#ifndef WAVEKV_KVSTORE_SAME_ANSWER_H_
#define WAVEKV_KVSTORE_SAME_ANSWER_H_

#include "kvstore/types.h"

namespace wavekv {

// Records gtest failures for every difference.
void ExpectSameAnswer(const SessionResult& a, const SessionResult& b);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_SAME_ANSWER_H_
