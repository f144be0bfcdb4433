#include "index/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>

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
  size_t t = 0;
  for (; t + 4 <= num_tokens; t += 4) {
    simd::DotRows<4>(q, k + t * head_dim, head_dim, head_dim, scale,
                     logits + t);
  }
  for (; t < num_tokens; ++t) {
    simd::DotRows<1>(q, k + t * head_dim, head_dim, head_dim, scale,
                     logits + t);
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
  return simd::ExpShiftSum(p, n, m);
}

WAVEKV_MULTIVERSION
float BlockMax(const float* p, size_t n) { return simd::ReduceMax(p, n); }

WAVEKV_MULTIVERSION
void ScaleVector(float a, float* y, size_t n) { simd::Scale(a, y, n); }

}  // namespace

AttentionPartial AttentionPartial::Empty(size_t head_dim) {
  AttentionPartial p;
  p.numerator.assign(head_dim, 0.0f);
  return p;
}

std::vector<AttentionPartial> PartialAttentionGroup(
    absl::Span<const float> queries, size_t num_heads, const KvView& kv,
    float scale) {
  const size_t d = kv.head_dim;
  if (queries.size() != num_heads * d) {
    ContractViolation("queries.size() != num_heads * kv.head_dim");
  }
  std::vector<AttentionPartial> out(num_heads, AttentionPartial::Empty(d));
  if (kv.num_tokens == 0 || d == 0 || num_heads == 0) return out;
  if (kv.keys == nullptr || kv.values == nullptr) {
    ContractViolation("kv.keys/kv.values null with num_tokens > 0");
  }

  const size_t row_bytes = d * DTypeBytes(kv.dtype);
  // Aligned fp32 K/V are read in place; anything else is decoded block by
  // block into fp32 scratch, once for all heads.
  const bool fp32_in_place =
      kv.dtype == DType::kFp32 &&
      reinterpret_cast<uintptr_t>(kv.keys) % alignof(float) == 0 &&
      reinterpret_cast<uintptr_t>(kv.values) % alignof(float) == 0;
  const size_t block = std::min(kBlockTokens, kv.num_tokens);
  // Uninitialised scratch: K block, V block, per-head logits.
  auto scratch =
      std::make_unique_for_overwrite<float[]>((2 * d + num_heads) * block);
  float* kbuf = scratch.get();
  float* vbuf = kbuf + block * d;
  float* logits = vbuf + block * d;

  for (size_t t0 = 0; t0 < kv.num_tokens; t0 += block) {
    const size_t nb = std::min(block, kv.num_tokens - t0);
    const float* keys = kbuf;
    if (fp32_in_place) {
      keys = reinterpret_cast<const float*>(kv.keys + t0 * row_bytes);
    } else {
      DecodeToFloat(kv.dtype, kv.keys + t0 * row_bytes, nb * d, kbuf);
    }
    for (size_t h = 0; h < num_heads; ++h) {
      BlockLogits(queries.data() + h * d, keys, nb, d, scale,
                  logits + h * block);
    }
    const float* values = vbuf;
    if (fp32_in_place) {
      values = reinterpret_cast<const float*>(kv.values + t0 * row_bytes);
    } else {
      DecodeToFloat(kv.dtype, kv.values + t0 * row_bytes, nb * d, vbuf);
    }
    for (size_t h = 0; h < num_heads; ++h) {
      AttentionPartial& p = out[h];
      float* l = logits + h * block;
      const float block_max = BlockMax(l, nb);
      // Tokens with logit -inf carry no weight; a block of only those is
      // skipped (and would otherwise produce inf - inf).
      if (!(block_max > -std::numeric_limits<float>::infinity())) continue;
      if (block_max > p.max_logit) {
        // Running-max rescale (online softmax): exp(-inf) = 0 on the first
        // block, so the (zero) accumulators simply restart.
        const float c = std::exp(p.max_logit - block_max);
        p.denominator *= c;
        ScaleVector(c, p.numerator.data(), d);
        p.max_logit = block_max;
      }
      p.denominator += ExpShiftSum(l, nb, p.max_logit);
      BlockAccumulate(l, values, nb, d, p.numerator.data());
    }
  }
  return out;
}

AttentionPartial PartialAttention(absl::Span<const float> query,
                                  const KvView& kv, float scale) {
  if (query.size() != kv.head_dim) {
    ContractViolation("query.size() != kv.head_dim");
  }
  return std::move(PartialAttentionGroup(query, 1, kv, scale)[0]);
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
