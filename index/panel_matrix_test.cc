#include "index/panel_matrix.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "index/parallel.h"

namespace wavekv {
namespace {

std::vector<float> RandomRows(size_t rows, size_t dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> out(rows * dim);
  for (auto& x : out) x = normal(rng);
  return out;
}

PanelMatrix Pack(const std::vector<float>& rows, size_t dim) {
  PanelMatrix m(dim);
  for (size_t r = 0; r < rows.size() / dim; ++r) m.AppendRow(&rows[r * dim]);
  return m;
}

double DotD(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t j = 0; j < n; ++j) s += double(a[j]) * b[j];
  return s;
}

TEST(PanelMatrixTest, RowsRoundTrip) {
  for (size_t dim : {1, 64, 72, 128}) {
    const auto rows = RandomRows(37, dim, dim);
    PanelMatrix m = Pack(rows, dim);
    EXPECT_EQ(m.rows(), 37u);
    EXPECT_EQ(m.num_panels(), 3u);
    std::vector<float> out(dim);
    for (size_t r = 0; r < 37; ++r) {
      m.CopyRow(r, out.data());
      EXPECT_EQ(0, std::memcmp(out.data(), &rows[r * dim], dim * 4)) << r;
    }
    m.SetRow(5, &rows[0]);
    m.CopyRow(5, out.data());
    EXPECT_EQ(0, std::memcmp(out.data(), &rows[0], dim * 4));
  }
}

TEST(PanelMatrixTest, InnerProductsMatchReference) {
  for (size_t dim : {64, 72, 128, 256}) {
    for (size_t k : {1, 15, 16, 17, 100}) {
      for (size_t n : {1, 2, 3, 4, 5, 7, 9}) {
        const auto rows = RandomRows(k, dim, 100 + k);
        const auto x = RandomRows(n, dim, 200 + n);
        const PanelMatrix m = Pack(rows, dim);
        std::vector<float> out(n * k, -1.0f);
        InnerProducts(x.data(), n, m, 0.5f, out.data());
        for (size_t i = 0; i < n; ++i) {
          for (size_t c = 0; c < k; ++c) {
            ASSERT_NEAR(out[i * k + c],
                        0.5 * DotD(&x[i * dim], &rows[c * dim], dim), 1e-3)
                << "dim=" << dim << " k=" << k << " n=" << n;
          }
        }
      }
    }
  }
}

TEST(PanelMatrixTest, ArgmaxMatchesReference) {
  for (size_t dim : {64, 128, 256}) {
    for (size_t k : {1, 16, 17, 100}) {
      const size_t n = 23;
      const auto rows = RandomRows(k, dim, 300 + k);
      const auto x = RandomRows(n, dim, 400);
      const PanelMatrix m = Pack(rows, dim);
      std::vector<uint32_t> best(n);
      std::vector<float> score(n);
      ArgmaxInnerProduct(x.data(), n, m, best.data(), score.data());
      for (size_t i = 0; i < n; ++i) {
        double want = -INFINITY;
        for (size_t c = 0; c < k; ++c) {
          want = std::max(want, DotD(&x[i * dim], &rows[c * dim], dim));
        }
        // The chosen row is (within rounding) a best one.
        EXPECT_NEAR(DotD(&x[i * dim], &rows[best[i] * dim], dim), want, 1e-3);
        EXPECT_NEAR(score[i], want, 1e-3);
        EXPECT_LT(best[i], k);
      }
    }
  }
}

TEST(PanelMatrixTest, ArgmaxTiesGoToLowestRowAndPaddingNeverWins) {
  const size_t dim = 64;
  // 40 identical rows: every query ties across all of them.
  std::vector<float> row(dim, 1.0f);
  PanelMatrix same(dim);
  for (int i = 0; i < 40; ++i) same.AppendRow(row.data());
  // Queries with all-negative scores: the zero padding lanes of the last
  // panel would win if not masked.
  std::vector<float> x(5 * dim, -1.0f);
  std::vector<uint32_t> best(5);
  std::vector<float> score(5);
  ArgmaxInnerProduct(x.data(), 5, same, best.data(), score.data());
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(best[i], 0u);
    EXPECT_FLOAT_EQ(score[i], -64.0f);
  }
  // Best row only in the last (partial) panel, at a lane whose padding
  // neighbours would score 0.
  PanelMatrix m(dim);
  std::vector<float> neg(dim, -1.0f), less_neg(dim, -0.5f);
  for (int i = 0; i < 33; ++i)
    m.AppendRow(i == 32 ? less_neg.data() : neg.data());
  std::vector<float> q(dim, 1.0f);
  ArgmaxInnerProduct(q.data(), 1, m, best.data(), score.data());
  EXPECT_EQ(best[0], 32u);
  EXPECT_FLOAT_EQ(score[0], -32.0f);
}

TEST(ParallelForTest, RunsEveryTaskOnce) {
  for (int threads : {0, 1, 2, 4, 16}) {
    for (size_t n : {0, 1, 3, 100}) {
      std::vector<std::atomic<int>> hits(n);
      ParallelFor(n, threads, [&](size_t i) { hits[i].fetch_add(1); });
      for (size_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1);
    }
  }
}

}  // namespace
}  // namespace wavekv
