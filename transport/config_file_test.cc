#include "transport/config_file.h"

#include <cstdio>
#include <fstream>

#include "absl/flags/flag.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transport/byte_size.h"

ABSL_FLAG(std::string, cfgtest_listen, "127.0.0.1:7070", "test flag");
ABSL_FLAG(uint32_t, cfgtest_max_sessions, 4096, "test flag");
ABSL_FLAG(wavekv::ByteSize, cfgtest_memory_budget, wavekv::ByteSize{1},
          "test flag");

namespace wavekv {
namespace {

using ::testing::HasSubstr;

const absl::flat_hash_set<std::string> kKnown = {"listen", "memory_budget",
                                                 "metrics_listen"};

TEST(ConfigFileTest, ParsesNamesValuesCommentsAndQuotes) {
  const auto entries = ParseConfigText(
      "# header comment\n"
      "\n"
      "  listen = 0.0.0.0:7070\n"
      "memory_budget=32GiB   # trailing comment\n"
      "metrics_listen = \"\"  # disabled\n",
      "w.conf", kKnown);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].name, "listen");
  EXPECT_EQ((*entries)[0].value, "0.0.0.0:7070");
  EXPECT_EQ((*entries)[0].line, 3);
  EXPECT_EQ((*entries)[1].name, "memory_budget");
  EXPECT_EQ((*entries)[1].value, "32GiB");
  EXPECT_EQ((*entries)[1].line, 4);
  EXPECT_EQ((*entries)[2].value, "");
}

TEST(ConfigFileTest, HashInsideAValueIsKeptUnlessAfterWhitespace) {
  const auto entries = ParseConfigText(
      "listen = a#b\nmetrics_listen = \"x # y\"\n", "w.conf", kKnown);
  ASSERT_TRUE(entries.ok()) << entries.status();
  EXPECT_EQ((*entries)[0].value, "a#b");
  EXPECT_EQ((*entries)[1].value, "x # y");
}

TEST(ConfigFileTest, ErrorsNameFileAndLine) {
  struct Case {
    const char* text;
    const char* want;
  } cases[] = {
      {"listen = x\nbogus = 1\n", "w.conf:2: unknown setting 'bogus'"},
      {"\n\nlisten 1\n", "w.conf:3: expected 'name = value'"},
      {"= 1\n", "w.conf:1: expected 'name = value'"},
      {"list en = 1\n", "w.conf:1: expected 'name = value'"},
      {"listen = \"abc\n", "w.conf:1: unterminated quote"},
      {"listen = \"a\" b\n", "w.conf:1: unexpected text after the quoted"},
      {"listen = a\n# c\nlisten = b\n",
       "w.conf:3: 'listen' already set on line 1"},
  };
  for (const Case& c : cases) {
    const auto r = ParseConfigText(c.text, "w.conf", kKnown);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(c.want)) << c.text;
  }
}

TEST(ConfigFileTest, UnknownNameListsTheKnownOnes) {
  const auto r = ParseConfigText("x = 1", "w.conf", kKnown);
  EXPECT_THAT(r.status().message(),
              HasSubstr("(known: listen, memory_budget, metrics_listen)"));
}

TEST(ConfigFileTest, ReadsAFileAndReportsAMissingOne) {
  const std::string path =
      std::string(std::getenv("TEST_TMPDIR")) + "/server.conf";
  {
    std::ofstream out(path);
    out << "listen = 127.0.0.1:0\n";
  }
  const auto entries = ReadConfigFile(path, kKnown);
  ASSERT_TRUE(entries.ok()) << entries.status();
  EXPECT_EQ((*entries)[0].value, "127.0.0.1:0");
  std::remove(path.c_str());
  EXPECT_EQ(ReadConfigFile(path, kKnown).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ConfigFileTest, AppliesToFlagsAndReportsBadValues) {
  const absl::flat_hash_set<std::string> known = {
      "cfgtest_listen", "cfgtest_max_sessions", "cfgtest_memory_budget"};
  auto entries = ParseConfigText(
      "cfgtest_listen = 0.0.0.0:1\ncfgtest_memory_budget = 2GiB\n", "a.conf",
      known);
  ASSERT_TRUE(entries.ok());
  ASSERT_TRUE(ApplyConfigToFlags(*entries, "a.conf").ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_listen), "0.0.0.0:1");
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_memory_budget).bytes, 2ull << 30);

  entries = ParseConfigText("\ncfgtest_max_sessions = many\n", "b.conf", known);
  ASSERT_TRUE(entries.ok());
  const absl::Status s = ApplyConfigToFlags(*entries, "b.conf");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              HasSubstr("b.conf:2: Illegal value 'many' specified for flag "
                        "'cfgtest_max_sessions'"));
  EXPECT_EQ(absl::GetFlag(FLAGS_cfgtest_max_sessions), 4096u);

  entries =
      ParseConfigText("cfgtest_memory_budget = 1.5GiB\n", "c.conf", known);
  ASSERT_TRUE(entries.ok());
  EXPECT_THAT(std::string(ApplyConfigToFlags(*entries, "c.conf").message()),
              HasSubstr("c.conf:1: Illegal value '1.5GiB' specified for flag "
                        "'cfgtest_memory_budget'; expected a byte size"));
}

TEST(ConfigFileTest, FindsTheConfigFlagInArgv) {
  const char* a[] = {"prog", "--listen=x", "--config=/etc/w.conf"};
  EXPECT_EQ(FindConfigFlag(3, a), "/etc/w.conf");
  const char* b[] = {"prog", "-config", "w.conf", "--max_sessions=3"};
  EXPECT_EQ(FindConfigFlag(4, b), "w.conf");
  const char* c[] = {"prog", "--", "--config=ignored"};
  EXPECT_EQ(FindConfigFlag(3, c), "");
  const char* d[] = {"prog", "--configx=1"};
  EXPECT_EQ(FindConfigFlag(2, d), "");
}

}  // namespace
}  // namespace wavekv
