#include "transport/data_dir.h"

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

using ::testing::HasSubstr;

std::string TmpPath(const std::string& name) {
  return std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
}

TEST(DataDirTest, CreatesTheDirectoryAndCountsStarts) {
  const std::string path = TmpPath("dd_create/nested/dir");
  std::string id;
  {
    auto dir = DataDir::Open(path);
    ASSERT_TRUE(dir.ok()) << dir.status();
    EXPECT_EQ((*dir)->record().start_count, 1u);
    EXPECT_EQ((*dir)->record().server_id.size(), 32u);
    EXPECT_GT((*dir)->record().created_unix_ms, 0);
    id = (*dir)->record().server_id;
    EXPECT_NE((*dir)->storage(), nullptr);
  }
  auto again = DataDir::Open(path);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->record().start_count, 2u);
  EXPECT_EQ((*again)->record().server_id, id);
}

TEST(DataDirTest, ASecondOpenFailsClearlyUntilTheFirstCloses) {
  const std::string path = TmpPath("dd_lock");
  auto first = DataDir::Open(path);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = DataDir::Open(path);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(
      std::string(second.status().message()),
      HasSubstr("data_dir: '" + path + "' is in use by another wavekv-server"));
  first->reset();
  auto third = DataDir::Open(path);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ((*third)->record().start_count, 2u);
}

TEST(DataDirTest, RejectsAFileAndAnEmptyPath) {
  const std::string file = TmpPath("dd_file");
  std::ofstream(file) << "x";
  const auto r = DataDir::Open(file);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("data_dir: cannot create directory"));
  EXPECT_EQ(DataDir::Open("").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace wavekv
