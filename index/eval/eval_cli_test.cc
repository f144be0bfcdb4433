#include "index/eval/eval_cli.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace eval {
namespace {

using ::testing::HasSubstr;

TEST(EvalFlagsTest, DefaultsAndValues) {
  auto cmd = ParseEvalFlags({});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->harness.contexts,
            (std::vector<uint64_t>{4096, 32768, 131072, 1048576}));
  EXPECT_EQ(cmd->harness.workload.head_dim, 128u);
  EXPECT_EQ(cmd->harness.workload.needle_depths.size(), 11u);
  EXPECT_GE(cmd->harness.num_threads, 1);

  cmd = ParseEvalFlags({"--contexts=4K,12288,1M", "--head_dim=64", "--seed=9",
                        "--depths=0,25.5,100", "--kv_heads=2",
                        "--methods=wave,quest", "--needle_tokens=8",
                        "--needle_mass=0.25", "--threads=1", "--out=x.md"});
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->harness.contexts,
            (std::vector<uint64_t>{4096, 12288, 1048576}));
  EXPECT_EQ(cmd->harness.workload.head_dim, 64u);
  EXPECT_EQ(cmd->harness.seed, 9u);
  EXPECT_EQ(cmd->harness.workload.needle_depths,
            (std::vector<double>{0, 25.5, 100}));
  EXPECT_EQ(cmd->harness.kv_heads, 2u);
  EXPECT_EQ(cmd->harness.method_list,
            (std::vector<Method>{Method::kWave, Method::kQuest}));
  EXPECT_EQ(cmd->harness.workload.needle_tokens, 8u);
  EXPECT_FLOAT_EQ(cmd->harness.workload.needle_mass, 0.25f);
  EXPECT_EQ(cmd->harness.num_threads, 1);
  EXPECT_EQ(cmd->out_path, "x.md");
}

TEST(EvalFlagsTest, ErrorsNameTheFlag) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--contexts=4K,abc"}, "--contexts"},
      {{"--head_dim=-3"}, "--head_dim"},
      {{"--head_dim=63"}, "head_dim"},
      {{"--depths=10,x"}, "--depths"},
      {{"--methods=wave,h2o"}, "h2o"},
      {{"--methods=quest"}, "must include wave"},
      {{"--bogus=1"}, "unknown flag --bogus"},
      {{"contexts=4K"}, "expected --name=value"},
      {{"--contexts=512"}, "eval.contexts[0]"},
  };
  for (const auto& [args, want] : cases) {
    auto cmd = ParseEvalFlags(args);
    EXPECT_EQ(cmd.status().code(), absl::StatusCode::kInvalidArgument)
        << args[0];
    EXPECT_THAT(std::string(cmd.status().message()), HasSubstr(want));
  }
}

TEST(EvalCommandTest, RunsAndWritesTheReport) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(tmp ? tmp : "/tmp") + "/eval.md";
  std::ostringstream out, err;
  const int rc =
      RunEvalCommand({"--contexts=4K", "--head_dim=64", "--depths=0,50,100",
                      "--threads=2", "--out=" + path},
                     out, err);
  ASSERT_EQ(rc, 0) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("| 4K | wave |"));
  EXPECT_THAT(err.str(), HasSubstr("context 4096, kv head 0: index"));
  EXPECT_THAT(err.str(), HasSubstr("probes 9/9"));
  EXPECT_THAT(err.str(), HasSubstr("done"));
  std::ifstream file(path);
  std::stringstream contents;
  contents << file.rdbuf();
  EXPECT_EQ(contents.str(), out.str());
}

TEST(EvalCommandTest, UsageAndBadUsage) {
  std::ostringstream out, err;
  EXPECT_EQ(RunEvalCommand({"--help"}, out, err), 0);
  EXPECT_THAT(out.str(), HasSubstr("--contexts="));
  std::ostringstream out2, err2;
  EXPECT_EQ(RunEvalCommand({"--contexts=0"}, out2, err2), 2);
  EXPECT_THAT(err2.str(), HasSubstr("eval: --contexts"));
  EXPECT_TRUE(out2.str().empty());
  std::ostringstream out3, err3;
  EXPECT_EQ(RunEvalCommand({"--contexts=4K", "--head_dim=64",
                            "--depths=", "--out=/nonexistent-dir/x.md"},
                           out3, err3),
            1);
  EXPECT_THAT(err3.str(), HasSubstr("cannot write"));
}

}  // namespace
}  // namespace eval
}  // namespace wavekv
