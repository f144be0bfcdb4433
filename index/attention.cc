#include "index/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "index/simd.h"

namespace wavekv {
namespace {

// Tokens decoded per block: 32 tokens of K (or V) at head_dim 256 are 32 KiB
// of fp32 scratch, so a block stays in L1/L2 between decode and use.
constexpr size_t kBlockTokens = 32;

[[noreturn]] void ContractViolation(const char* what) {
  std::fprintf(stderr, "wavekv attention: contract violated: %s\n", what);
  std::abort();
}

// Logits of one block: logits[t] = scale * q·k_t.
WAVEKV_MULTIVERSION
void BlockLogits(const float* __restrict q, const float* __restrict k,
                 size_t num_tokens, size_t head_dim, float scale,
                 float* __restrict logits) {
  for (size_t t = 0; t < num_tokens; ++t) {
    logits[t] = scale * simd::Dot(q, k + t * head_dim, head_dim);
  }
}

// numerator += Σ_t p[t] * v_t.
WAVEKV_MULTIVERSION
void BlockAccumulate(const float* __restrict p, const float* __restrict v,
                     size_t num_tokens, size_t head_dim,
                     float* __restrict numerator) {
  for (size_t t = 0; t < num_tokens; ++t) {
    simd::Axpy(p[t], v + t * head_dim, numerator, head_dim);
  }
}

// p[t] = e^{p[t] - m} in place; returns Σ p[t].
WAVEKV_MULTIVERSION
float ExpShiftSum(float* __restrict p, size_t n, float m) {
  float sum = 0.0f;
  for (size_t t = 0; t < n; ++t) {
    p[t] = simd::Exp(p[t] - m);
    sum += p[t];
  }
  return sum;
}

WAVEKV_MULTIVERSION
void ScaleVector(float a, float* y, size_t n) { simd::Scale(a, y, n); }

}  // namespace

AttentionPartial AttentionPartial::Empty(size_t head_dim) {
  AttentionPartial p;
  p.numerator.assign(head_dim, 0.0f);
  return p;
}

AttentionPartial PartialAttention(absl::Span<const float> query,
                                  const KvView& kv, float scale) {
  const size_t d = kv.head_dim;
  if (query.size() != d) ContractViolation("query.size() != kv.head_dim");
  AttentionPartial out = AttentionPartial::Empty(d);
  if (kv.num_tokens == 0 || d == 0) return out;
  if (kv.keys == nullptr || kv.values == nullptr) {
    ContractViolation("kv.keys/kv.values null with num_tokens > 0");
  }

  const size_t row_bytes = d * DTypeBytes(kv.dtype);
  // Aligned fp32 K/V are read in place; anything else is decoded (copied)
  // block by block into fp32 scratch.
  const bool fp32_in_place =
      kv.dtype == DType::kFp32 &&
      reinterpret_cast<uintptr_t>(kv.keys) % alignof(float) == 0 &&
      reinterpret_cast<uintptr_t>(kv.values) % alignof(float) == 0;
  // One allocation per call: K block, V block, logits.
  std::vector<float> scratch(2 * kBlockTokens * d + kBlockTokens);
  float* kbuf = scratch.data();
  float* vbuf = kbuf + kBlockTokens * d;
  float* logits = vbuf + kBlockTokens * d;

  float m = -std::numeric_limits<float>::infinity();
  float den = 0.0f;
  float* num = out.numerator.data();
  for (size_t t0 = 0; t0 < kv.num_tokens; t0 += kBlockTokens) {
    const size_t nb = std::min(kBlockTokens, kv.num_tokens - t0);
    const float* keys;
    if (fp32_in_place) {
      keys = reinterpret_cast<const float*>(kv.keys + t0 * row_bytes);
    } else {
      DecodeToFloat(kv.dtype, kv.keys + t0 * row_bytes, nb * d, kbuf);
      keys = kbuf;
    }
    BlockLogits(query.data(), keys, nb, d, scale, logits);
    float block_max = -std::numeric_limits<float>::infinity();
    for (size_t t = 0; t < nb; ++t) block_max = std::max(block_max, logits[t]);
    // Tokens with logit -inf carry no weight; a block of only those is
    // skipped (and would otherwise produce inf - inf).
    if (!(block_max > -std::numeric_limits<float>::infinity())) continue;
    if (block_max > m) {
      // Running-max rescale (online softmax): exp(-inf) = 0 on the first
      // block, so the (zero) accumulators simply restart.
      const float c = std::exp(m - block_max);
      den *= c;
      ScaleVector(c, num, d);
      m = block_max;
    }
    den += ExpShiftSum(logits, nb, m);
    const float* values;
    if (fp32_in_place) {
      values = reinterpret_cast<const float*>(kv.values + t0 * row_bytes);
    } else {
      DecodeToFloat(kv.dtype, kv.values + t0 * row_bytes, nb * d, vbuf);
      values = vbuf;
    }
    BlockAccumulate(logits, values, nb, d, num);
  }
  out.max_logit = m;
  out.denominator = den;
  return out;
}

void MergeInto(AttentionPartial& a, const AttentionPartial& b) {
  if (b.empty()) return;
  if (a.empty()) {
    a = b;
    return;
  }
  if (a.numerator.size() != b.numerator.size()) {
    ContractViolation("MergeInto: numerator sizes differ");
  }
  // Log-sum-exp rescale to the common max M (DESIGN.md, tripartite step 5).
  const float M = std::max(a.max_logit, b.max_logit);
  const float ca = std::exp(a.max_logit - M);
  const float cb = std::exp(b.max_logit - M);
  a.denominator = a.denominator * ca + b.denominator * cb;
  for (size_t j = 0; j < a.numerator.size(); ++j) {
    a.numerator[j] = a.numerator[j] * ca + b.numerator[j] * cb;
  }
  a.max_logit = M;
}

std::vector<float> Finalize(const AttentionPartial& p) {
  std::vector<float> out(p.numerator.size(), 0.0f);
  // Outside the contract, but a server must not crash on it: zeros.
  if (p.empty()) return out;
  const float inv = 1.0f / p.denominator;
  for (size_t j = 0; j < out.size(); ++j) out[j] = p.numerator[j] * inv;
  return out;
}

float DefaultScale(size_t head_dim) {
  return 1.0f / std::sqrt(static_cast<float>(head_dim));
}

std::vector<float> FullAttention(absl::Span<const float> query,
                                 const KvView& kv, float scale) {
  return Finalize(PartialAttention(query, kv, scale));
}

}  // namespace wavekv
