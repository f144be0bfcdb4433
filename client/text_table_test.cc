#include "client/text_table.h"

#include <sstream>

#include "gtest/gtest.h"

namespace wavekv {
namespace {

TEST(TextTableTest, PadsColumnsAndRightAlignsNumbers) {
  TextTable t({"NAME", "TOKENS", "NOTE"});
  t.AddRow({"a", "5", "x"});
  t.AddRow({"longer", "32768", "-"});
  std::ostringstream out;
  t.Print(out);
  EXPECT_EQ(out.str(),
            "NAME    TOKENS  NOTE\n"
            "a            5  x\n"
            "longer   32768  -\n");
}

TEST(TextTableTest, HexIdsAndDatesStayLeftAligned) {
  TextTable t({"SESSION", "MEMORY", "SEEN"});
  t.AddRow({"1a71b3c2", "40.5 MiB", "never"});
  t.AddRow({"ff", "512 B", "2026-11-23 11:57:37"});
  std::ostringstream out;
  t.Print(out);
  EXPECT_EQ(out.str(),
            "SESSION     MEMORY  SEEN\n"
            "1a71b3c2  40.5 MiB  never\n"
            "ff           512 B  2026-11-23 11:57:37\n");
}

TEST(TextTableTest, Units) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(128ull << 20), "128.0 MiB");
  EXPECT_EQ(FormatBytes(8ull << 30), "8.00 GiB");
  EXPECT_EQ(FormatLatency(absl::Microseconds(850)), "850 us");
  EXPECT_EQ(FormatLatency(absl::Microseconds(12345)), "12.3 ms");
  EXPECT_EQ(FormatLatency(absl::Milliseconds(4210)), "4.21 s");
  EXPECT_EQ(FormatError(3.2e-7), "3.2e-07");
  EXPECT_EQ(FormatUnixMs(0), "-");
}

}  // namespace
}  // namespace wavekv
