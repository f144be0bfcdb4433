#include "index/eval/report.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace eval {
namespace {

using ::testing::HasSubstr;

TEST(ReportTest, MarkdownHasTheTablesOfARealRun) {
  HarnessOptions o;
  o.contexts = {4096, 8192};
  o.workload.head_dim = 64;
  o.workload.needle_depths = {0, 50, 100};
  o.num_threads = 2;
  auto r = RunEval(o, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::string md = RenderMarkdown(*r);
  EXPECT_THAT(md, HasSubstr("| context | method | exact tokens | rel. L2 error "
                            "(all) | needle probes | background probes |"));
  for (const char* ctx : {"4K", "8K"}) {
    for (Method m : kAllMethods) {
      EXPECT_THAT(md, HasSubstr(std::string("| ") + ctx + " | " +
                                std::string(MethodName(m)) + " | "));
    }
  }
  EXPECT_THAT(md, HasSubstr("| context | method | 0% | 50% | 100% | "
                            "multi-needle | multi-query |"));
  EXPECT_THAT(md,
              HasSubstr("| 4K | streaming | 0/4 | 0/4 | 4/4 | 0/16 | 0/4 |"));
  EXPECT_THAT(md, HasSubstr("Setup per context"));
  EXPECT_THAT(md, HasSubstr("head_dim 64, GQA group 4"));
  // One summary row per (context, method), one depth row, one setup row.
  size_t rows = 0;
  for (size_t pos = md.find("\n| 4K |"); pos != std::string::npos;
       pos = md.find("\n| 4K |", pos + 1)) {
    ++rows;
  }
  EXPECT_EQ(rows, 2 * std::size(kAllMethods) + 1);
}

}  // namespace
}  // namespace eval
}  // namespace wavekv
