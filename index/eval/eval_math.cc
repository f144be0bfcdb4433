#include "index/eval/eval_math.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>

namespace wavekv {
namespace eval {

uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t DeriveSeed(uint64_t seed, uint64_t stream, uint64_t index) {
  return Mix64(Mix64(Mix64(seed) ^ stream) ^ index);
}

double Dot(const float* __restrict a, const float* __restrict b, size_t n) {
  constexpr size_t kLanes = 16;
  float acc[kLanes] = {};
  size_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (size_t u = 0; u < kLanes; ++u) acc[u] += a[j + u] * b[j + u];
  }
  double sum = 0.0;
  for (; j < n; ++j) sum += double(a[j]) * b[j];
  for (size_t u = 0; u < kLanes; ++u) sum += acc[u];
  return sum;
}

void Logits(const float* query, const float* keys, size_t num_tokens,
            size_t dim, double scale, double* out) {
  for (size_t t = 0; t < num_tokens; ++t) {
    out[t] = scale * Dot(query, keys + t * dim, dim);
  }
}

double LogSumExp(const double* x, size_t n) {
  if (n == 0) return -std::numeric_limits<double>::infinity();
  const double m = *std::max_element(x, x + n);
  if (!std::isfinite(m)) return m;
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

double SolveGain(const std::vector<double>& base,
                 const std::vector<double>& slope, double log_target) {
  std::vector<double> x(base.size());
  auto f = [&](double beta) {
    for (size_t i = 0; i < x.size(); ++i) x[i] = base[i] + beta * slope[i];
    return LogSumExp(x.data(), x.size()) - log_target;
  };
  // Bracket the root: f increases with beta (some slope > 0).
  double lo = 0.0, hi = 0.0;
  if (f(0.0) < 0.0) {
    hi = 1.0;
    while (f(hi) < 0.0 && hi < 1e12) {
      lo = hi;
      hi *= 2.0;
    }
  } else {
    lo = -1.0;
    while (f(lo) >= 0.0 && lo > -1e12) {
      hi = lo;
      lo *= 2.0;
    }
  }
  for (int it = 0; it < 200 && hi - lo > 1e-12 * std::max(1.0, std::fabs(hi));
       ++it) {
    const double mid = 0.5 * (lo + hi);
    (f(mid) < 0.0 ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

void ParallelFor(size_t n, int num_threads,
                 const std::function<void(size_t)>& fn) {
  const size_t workers =
      std::min<size_t>(n, static_cast<size_t>(std::max(1, num_threads)));
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  auto loop = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (size_t w = 1; w < workers; ++w) threads.emplace_back(loop);
  loop();
  for (auto& t : threads) t.join();
}

}  // namespace eval
}  // namespace wavekv
