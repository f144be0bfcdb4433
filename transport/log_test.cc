#include "transport/log.h"

#include <limits>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

using ::testing::HasSubstr;

absl::Time FixedTime() {
  return absl::FromCivil(absl::CivilSecond(2026, 11, 23, 12, 0, 0),
                         absl::UTCTimeZone()) +
         absl::Milliseconds(123);
}

TEST(LogTest, FormatsTheContractShape) {
  EXPECT_EQ(FormatLogLine(FixedTime(), LogLevel::kInfo, "listening",
                          {{"grpc", "127.0.0.1:7070"}, {"port", 7070}}),
            R"({"ts":"2026-11-23T12:00:00.123Z","level":"info",)"
            R"("msg":"listening","grpc":"127.0.0.1:7070","port":7070})");
}

TEST(LogTest, FormatsEveryValueType) {
  const std::string line =
      FormatLogLine(FixedTime(), LogLevel::kError, "m",
                    {{"i", -3},
                     {"u", uint64_t{18446744073709551615ull}},
                     {"d", 0.5},
                     {"inf", std::numeric_limits<double>::infinity()},
                     {"t", true},
                     {"f", false},
                     {"s", std::string("x")}});
  EXPECT_THAT(line, HasSubstr(R"("level":"error")"));
  EXPECT_THAT(line, HasSubstr(R"("i":-3,"u":18446744073709551615,"d":0.5,)"
                              R"("inf":null,"t":true,"f":false,"s":"x"})"));
}

TEST(LogTest, EscapesJsonStrings) {
  std::string out;
  AppendJsonString(&out, "a\"b\\c\nd\te\x01\x7f");
  EXPECT_EQ(out, R"("a\"b\\c\nd\te\u0001\u007f")");
}

TEST(LogTest, KeepsValidUtf8AndReplacesInvalidBytes) {
  std::string out;
  AppendJsonString(&out, "h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80");
  EXPECT_EQ(out, "\"h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80\"");
  out.clear();
  // Lone continuation byte, truncated sequence, overlong '/', surrogate.
  AppendJsonString(&out, "\x80|\xE2\x82|\xC0\xAF|\xED\xA0\x80");
  EXPECT_EQ(out, R"("\ufffd|\ufffd\ufffd|\ufffd\ufffd|\ufffd\ufffd\ufffd")");
}

TEST(LogTest, LoggerDropsLinesBelowItsLevel) {
  MemoryLogSink sink;
  Logger log(sink, LogLevel::kWarn);
  log.Info("quiet");
  log.Warn("loud", {{"k", "v"}});
  const std::vector<std::string> lines = sink.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr(R"("level":"warn","msg":"loud","k":"v"})"));
}

TEST(LogTest, ConcurrentLinesStayWhole) {
  MemoryLogSink sink;
  Logger log(sink);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&log, t] {
      for (int i = 0; i < 200; ++i) log.Info("tick", {{"t", t}, {"i", i}});
    });
  }
  for (std::thread& th : threads) th.join();
  const std::vector<std::string> lines = sink.lines();
  ASSERT_EQ(lines.size(), 800u);
  for (const std::string& line : lines) {
    ASSERT_EQ(line.front(), '{');
    ASSERT_EQ(line.back(), '}');
  }
}

}  // namespace
}  // namespace wavekv
