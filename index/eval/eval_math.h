// Small numeric helpers shared by the accuracy harness: seeded streams,
// dot products and logits, log-sum-exp, and a fork-join loop. Internal to
// index/eval.
//
// Thread-safe: all functions are pure (ParallelFor runs `fn` concurrently;
// each task must write only its own outputs).
#ifndef WAVEKV_INDEX_EVAL_EVAL_MATH_H_
#define WAVEKV_INDEX_EVAL_EVAL_MATH_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace wavekv {
namespace eval {

// SplitMix64 step: a well-mixed 64-bit value of `x` (for deriving seeds of
// independent streams from (seed, stream, index)).
uint64_t Mix64(uint64_t x);
uint64_t DeriveSeed(uint64_t seed, uint64_t stream, uint64_t index);

// Σ a[j]·b[j] (fp32 products, 16 lanes of partial sums, double result).
double Dot(const float* a, const float* b, size_t n);

// out[t] = scale · q·keys[t] for t < num_tokens (keys [num_tokens][dim]).
void Logits(const float* query, const float* keys, size_t num_tokens,
            size_t dim, double scale, double* out);

// log Σ e^{x_i}; -inf for an empty span.
double LogSumExp(const double* x, size_t n);

// The gain β (of either sign) with log Σ_i e^{base_i + β·slope_i} =
// log_target, found by bisection to double precision. REQUIRES: the sum
// increases with β (e.g. every slope_i > 0).
double SolveGain(const std::vector<double>& base,
                 const std::vector<double>& slope, double log_target);

// Runs fn(0) .. fn(n - 1) on up to `num_threads` threads (the caller's
// included); tasks are handed out dynamically.
void ParallelFor(size_t n, int num_threads,
                 const std::function<void(size_t)>& fn);

}  // namespace eval
}  // namespace wavekv

#endif  // WAVEKV_INDEX_EVAL_EVAL_MATH_H_
