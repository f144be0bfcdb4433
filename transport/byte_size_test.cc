#include "transport/byte_size.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

using ::testing::HasSubstr;

TEST(ByteSizeTest, ParsesPlainBytesAndUnits) {
  EXPECT_EQ(*ParseByteSize("0"), 0u);
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("4096B"), 4096u);
  EXPECT_EQ(*ParseByteSize("64KiB"), 64u << 10);
  EXPECT_EQ(*ParseByteSize("512MiB"), 512u << 20);
  EXPECT_EQ(*ParseByteSize("8GiB"), 8ull << 30);
  EXPECT_EQ(*ParseByteSize("2TiB"), 2ull << 40);
  EXPECT_EQ(*ParseByteSize("3kB"), 3000u);
  EXPECT_EQ(*ParseByteSize("3KB"), 3000u);
  EXPECT_EQ(*ParseByteSize("5MB"), 5000000u);
  EXPECT_EQ(*ParseByteSize("1GB"), 1000000000u);
  EXPECT_EQ(*ParseByteSize("1TB"), 1000000000000u);
  EXPECT_EQ(*ParseByteSize(" 8 GiB "), 8ull << 30);
  EXPECT_EQ(*ParseByteSize("18446744073709551615"), UINT64_MAX);
}

TEST(ByteSizeTest, RejectsMalformedText) {
  for (const char* bad : {"", " ", "GiB", "-1", "1.5GiB", "8gib", "8 G",
                          "8GiBs", "0x10", "8 8"}) {
    const absl::StatusOr<uint64_t> r = ParseByteSize(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("8GiB")) << bad;
  }
}

TEST(ByteSizeTest, RejectsOverflow) {
  EXPECT_THAT(ParseByteSize("18446744073709551616").status().message(),
              HasSubstr("does not fit in 64 bits"));
  EXPECT_THAT(ParseByteSize("16777216TiB").status().message(),
              HasSubstr("does not fit in 64 bits"));
  EXPECT_EQ(*ParseByteSize("16777215TiB"), 16777215ull << 40);
}

TEST(ByteSizeTest, FormatsExactlyAndRoundTrips) {
  EXPECT_EQ(FormatByteSize(0), "0");
  EXPECT_EQ(FormatByteSize(1000), "1000");
  EXPECT_EQ(FormatByteSize(1024), "1KiB");
  EXPECT_EQ(FormatByteSize(1536ull << 20), "1536MiB");
  EXPECT_EQ(FormatByteSize(8ull << 30), "8GiB");
  for (uint64_t v : std::vector<uint64_t>{0, 1, 1023, 4096, 3ull << 30,
                                          5ull << 40, UINT64_MAX}) {
    EXPECT_EQ(*ParseByteSize(FormatByteSize(v)), v) << v;
  }
}

TEST(ByteSizeTest, FlagHooks) {
  ByteSize size;
  std::string error;
  EXPECT_TRUE(AbslParseFlag("512MiB", &size, &error));
  EXPECT_EQ(size.bytes, 512u << 20);
  EXPECT_EQ(AbslUnparseFlag(size), "512MiB");
  EXPECT_FALSE(AbslParseFlag("lots", &size, &error));
  EXPECT_THAT(error, HasSubstr("'lots'"));
  EXPECT_EQ(size.bytes, 512u << 20);  // unchanged on error
}

}  // namespace
}  // namespace wavekv
