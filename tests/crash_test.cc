// kill -9 of the real server at random moments during prefill and decode
// appends, 20 rounds with a fixed seed (crash_driver.h says what each round
// checks). The soak version of the same driver is //tests:wavekv-crash.
#include <iostream>

#include "gtest/gtest.h"
#include "tests/crash_driver.h"
#include "tests/crash_state.h"
#include "tests/server_process.h"

namespace wavekv::testing {
namespace {

void PrintProgress(const std::string& line) { std::cerr << line << std::endl; }

TEST(CrashTest, TwentyKillNineRoundsKeepEveryAcknowledgedToken) {
  auto dir = MakeTempDir("crash");
  ASSERT_TRUE(dir.ok()) << dir.status();
  CrashDriverOptions options;
  options.seed = 20261123;
  options.rounds = 20;
  options.sessions = 6;
  options.writer_threads = 3;
  options.data_dir = *dir + "/data";
  options.progress = PrintProgress;
  auto report = RunCrashRounds(options);
  ASSERT_TRUE(report.ok()) << report.status();
  std::cerr << report->ToString() << std::endl;
  EXPECT_EQ(report->rounds, 20u);
  // The kills landed where they should: appends of both kinds in flight.
  EXPECT_GT(report->kills_during_prefill, 0u);
  EXPECT_GT(report->kills_during_decode, 0u);
  EXPECT_GT(report->prefill_appends, 0u);
  EXPECT_GT(report->decode_appends, 0u);
  EXPECT_GT(report->tokens_verified, 0u);
  EXPECT_GT(report->wave_checks, 0u);
}

// A run stopped between rounds (the soak tool killed, a CI timeout) resumes
// from its state file: the first thing it does is verify what the file says
// was acknowledged.
TEST(CrashTest, ResumesFromTheStateFile) {
  auto dir = MakeTempDir("crash-resume");
  ASSERT_TRUE(dir.ok()) << dir.status();
  CrashDriverOptions options;
  options.seed = 7;
  options.rounds = 2;
  options.sessions = 3;
  options.writer_threads = 2;
  options.data_dir = *dir + "/data";
  options.progress = PrintProgress;
  auto first = RunCrashRounds(options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->rounds, 2u);

  options.rounds = 4;
  auto second = RunCrashRounds(options);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->rounds, 2u);  // rounds 3 and 4
  // The resumed run verified the first run's sessions before writing.
  EXPECT_GT(second->sessions_verified, 3u * 2u);
  auto state = LoadExpectedState(options.data_dir + ".crash-state");
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(state->rounds_done, 4u);
  EXPECT_EQ(state->seed, 7u);
}

TEST(CrashTest, OptionsAreValidated) {
  CrashDriverOptions options;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  options.data_dir = "/nonexistent-ok";
  EXPECT_TRUE(options.Validate().ok());
  options.max_kill_delay = absl::ZeroDuration();
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace wavekv::testing
