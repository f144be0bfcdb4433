#include "tests/crash_state.h"

#include <sys/stat.h>

#include "gtest/gtest.h"
#include "tests/kv_pattern.h"
#include "tests/server_process.h"

namespace wavekv::testing {
namespace {

ExpectedState Sample() {
  ExpectedState state;
  state.seed = 42;
  state.rounds_done = 3;
  state.next_ordinal = 5;
  state.shape = MakeShape(2, 4, 2, 64, v1::DTYPE_BF16);
  SessionRecord a;
  a.session_id = "s-1";
  a.pattern_seed = 0xfedcba9876543210ull;
  a.durability = v1::DURABILITY_SYNC;
  a.sent_tokens = 300;
  a.acked_tokens = 200;
  a.durable_tokens = 200;
  SessionRecord b = a;
  b.session_id = "s-2";
  b.durability = v1::DURABILITY_ASYNC;
  b.durable_tokens = 64;
  state.sessions = {a, b};
  return state;
}

TEST(CrashStateTest, RoundTrips) {
  auto text = SerializeExpectedState(Sample());
  ASSERT_TRUE(text.ok()) << text.status();
  auto parsed = ParseExpectedState(*text);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto again = SerializeExpectedState(*parsed);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*text, *again);
  EXPECT_EQ(parsed->sessions[0].pattern_seed, 0xfedcba9876543210ull);
  EXPECT_EQ(parsed->sessions[1].durability, v1::DURABILITY_ASYNC);
  EXPECT_EQ(parsed->shape.dtype(), v1::DTYPE_BF16);
}

TEST(CrashStateTest, RejectsMalformedText) {
  const std::string good = *SerializeExpectedState(Sample());
  EXPECT_FALSE(ParseExpectedState("").ok());
  EXPECT_FALSE(ParseExpectedState("wavekv-crash-state 2\n").ok());
  // Truncated: a session line cut short.
  EXPECT_FALSE(ParseExpectedState(good.substr(0, good.size() - 5)).ok());
  EXPECT_FALSE(ParseExpectedState(good + "session x 1 3 1 2 3\n").ok())
      << "durable > acked must be rejected";
  EXPECT_FALSE(ParseExpectedState(good + "session x 1 9 3 2 1\n").ok())
      << "unknown durability";
  EXPECT_FALSE(ParseExpectedState(good + "bogus 1\n").ok());
  auto missing = ParseExpectedState("wavekv-crash-state 1\nseed 1\n");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);

  ExpectedState spaced = Sample();
  spaced.sessions[0].session_id = "a b";
  EXPECT_FALSE(SerializeExpectedState(spaced).ok());
}

TEST(CrashStateTest, SavesAtomicallyAndLoads) {
  auto dir = MakeTempDir("crash-state");
  ASSERT_TRUE(dir.ok());
  const std::string path = *dir + "/state";
  EXPECT_EQ(LoadExpectedState(path).status().code(),
            absl::StatusCode::kNotFound);
  ExpectedState state = Sample();
  ASSERT_TRUE(SaveExpectedState(path, state).ok());
  state.sessions[0].acked_tokens = 250;
  ASSERT_TRUE(SaveExpectedState(path, state).ok());
  struct stat st;
  EXPECT_NE(::stat((path + ".tmp").c_str(), &st), 0) << "tmp file left";
  auto loaded = LoadExpectedState(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->sessions[0].acked_tokens, 250u);
  EXPECT_FALSE(SaveExpectedState(*dir + "/no/such/dir/state", state).ok());
}

}  // namespace
}  // namespace wavekv::testing
