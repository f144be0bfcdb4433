// wavekv-crash: the soak mode of the kill -9 test (crash_driver.h). Runs
// --rounds rounds of "append from several threads, SIGKILL the server at a
// random moment, restart it on --data_dir, verify every acknowledged token"
// and prints a summary. Re-running with the same --data_dir resumes from the
// state file (verifying it first).
//
//   bazel run //tests:wavekv-crash -- --rounds=500 --seed=3
//       --data_dir=/tmp/wavekv-soak/data
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/crash_driver.h"

ABSL_FLAG(uint32_t, rounds, 100, "kill -9 rounds");
ABSL_FLAG(uint64_t, seed, 1, "seed of kill delays, op mix and K/V patterns");
ABSL_FLAG(uint32_t, sessions, 8, "sessions written concurrently");
ABSL_FLAG(uint32_t, threads, 4, "writer threads");
ABSL_FLAG(std::string, data_dir, "", "server data directory (required)");
ABSL_FLAG(std::string, state_file, "",
          "acknowledgement record; default <data_dir>.crash-state");
ABSL_FLAG(int64_t, min_kill_ms, 30, "shortest delay before SIGKILL");
ABSL_FLAG(int64_t, max_kill_ms, 1500, "longest delay before SIGKILL");
ABSL_FLAG(uint64_t, max_session_tokens, 4096,
          "tokens per layer after which a session is closed and replaced");
ABSL_FLAG(uint32_t, async_every, 3, "every Nth session is ASYNC (0 = none)");
ABSL_FLAG(uint32_t, none_every, 5,
          "every Nth session is NONE (0 = none; wins over async_every)");
ABSL_FLAG(std::string, server, "",
          "wavekv-server binary; default: the one in this tool's runfiles");
ABSL_FLAG(std::string, server_args, "",
          "extra server flags, comma-separated (e.g. "
          "--memory_budget=64MiB,--max_sessions=100)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kill -9 soak test of wavekv-server: wavekv-crash --data_dir=DIR "
      "[--rounds=N --seed=S --sessions=N --threads=N]");
  absl::ParseCommandLine(argc, argv);
  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  if (data_dir.empty()) {
    std::cerr << "wavekv-crash: --data_dir is required (see --help)\n";
    return 2;
  }
  std::string server = absl::GetFlag(FLAGS_server);
  if (server.empty() && std::getenv("WAVEKV_SERVER") == nullptr) {
    server = absl::StrCat(argv[0], ".runfiles/wavekv/transport/wavekv-server");
  }
  if (!server.empty()) ::setenv("WAVEKV_SERVER", server.c_str(), 1);
  // ServerProcess keeps each start's stderr log and ready file here.
  if (std::getenv("TEST_TMPDIR") == nullptr) {
    const std::string run_dir = data_dir + ".run";
    std::error_code ec;
    std::filesystem::create_directories(run_dir, ec);
    if (ec) {
      std::cerr << "wavekv-crash: mkdir " << run_dir << ": " << ec.message()
                << "\n";
      return 2;
    }
    ::setenv("TEST_TMPDIR", run_dir.c_str(), 1);
  }

  wavekv::testing::CrashDriverOptions options;
  options.rounds = absl::GetFlag(FLAGS_rounds);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.sessions = absl::GetFlag(FLAGS_sessions);
  options.writer_threads = absl::GetFlag(FLAGS_threads);
  options.data_dir = data_dir;
  options.state_file = absl::GetFlag(FLAGS_state_file);
  options.min_kill_delay = absl::Milliseconds(absl::GetFlag(FLAGS_min_kill_ms));
  options.max_kill_delay = absl::Milliseconds(absl::GetFlag(FLAGS_max_kill_ms));
  options.max_session_tokens = absl::GetFlag(FLAGS_max_session_tokens);
  options.async_every = absl::GetFlag(FLAGS_async_every);
  options.none_every = absl::GetFlag(FLAGS_none_every);
  for (absl::string_view arg : absl::StrSplit(absl::GetFlag(FLAGS_server_args),
                                              ',', absl::SkipEmpty())) {
    options.server_args.emplace_back(arg);
  }
  options.progress = [](const std::string& line) {
    std::cerr << "wavekv-crash: " << line << std::endl;
  };
  auto report = wavekv::testing::RunCrashRounds(options);
  if (!report.ok()) {
    std::cerr << "wavekv-crash: FAILED: " << report.status() << std::endl;
    return 1;
  }
  std::cout << "wavekv-crash: OK: " << report->ToString() << std::endl;
  return 0;
}
