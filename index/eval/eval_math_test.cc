#include "index/eval/eval_math.h"

#include <atomic>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace wavekv {
namespace eval {
namespace {

TEST(EvalMathTest, LogSumExpIsStable) {
  const double x[] = {1000.0, 1000.0};
  EXPECT_NEAR(LogSumExp(x, 2), 1000.0 + std::log(2.0), 1e-12);
  const double y[] = {-1.0, 2.0, 0.5};
  EXPECT_NEAR(LogSumExp(y, 3),
              std::log(std::exp(-1.0) + std::exp(2.0) + std::exp(0.5)), 1e-12);
  EXPECT_EQ(LogSumExp(y, 0), -INFINITY);
}

TEST(EvalMathTest, SolveGainHitsTheTargetFromEitherSide) {
  const std::vector<double> base = {0.0, 1.0, -2.0};
  const std::vector<double> slope = {1.0, 0.5, 2.0};
  for (double target : {-3.0, 0.0, 1.3132616875182228, 5.0, 40.0}) {
    const double beta = SolveGain(base, slope, target);
    std::vector<double> x(3);
    for (int i = 0; i < 3; ++i) x[i] = base[i] + beta * slope[i];
    EXPECT_NEAR(LogSumExp(x.data(), 3), target, 1e-9) << target;
  }
  // At beta = 0 the sum is exactly log(1 + e + e^-2): gain 0.
  EXPECT_NEAR(
      SolveGain(base, slope, std::log(1 + std::exp(1.0) + std::exp(-2.0))), 0.0,
      1e-9);
}

TEST(EvalMathTest, DotAndLogitsMatchDoublePrecision) {
  std::vector<float> a(37), b(37 * 3);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.1f * i - 1.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = 0.05f * (i % 11) - 0.2f;
  std::vector<double> out(3);
  Logits(a.data(), b.data(), 3, 37, 0.5, out.data());
  for (size_t t = 0; t < 3; ++t) {
    double want = 0;
    for (size_t j = 0; j < 37; ++j) want += double(a[j]) * b[t * 37 + j];
    EXPECT_NEAR(out[t], 0.5 * want, 1e-5);
    EXPECT_NEAR(Dot(a.data(), &b[t * 37], 37), want, 1e-5);
  }
}

TEST(EvalMathTest, SeedsAreDistinctAndParallelForRunsEachTaskOnce) {
  EXPECT_NE(DeriveSeed(1, 2, 3), DeriveSeed(1, 2, 4));
  EXPECT_NE(DeriveSeed(1, 2, 3), DeriveSeed(1, 3, 3));
  EXPECT_EQ(DeriveSeed(1, 2, 3), DeriveSeed(1, 2, 3));
  for (int threads : {1, 2, 5}) {
    std::vector<std::atomic<int>> hits(100);
    ParallelFor(100, threads, [&](size_t i) { hits[i]++; });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
}

}  // namespace
}  // namespace eval
}  // namespace wavekv
