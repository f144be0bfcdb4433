#include "client/synthetic_kv.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace wavekv {
namespace {

// SplitMix64: a small, fast, well-mixed generator; seeded per token so every
// token is independent of generation order.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Approximately N(0, 1): the sum of four 16-bit uniforms, centred and
  // scaled to unit variance (Irwin-Hall). Plenty for synthetic data.
  float Normal() {
    const uint64_t r = Next();
    const float sum = static_cast<float>((r & 0xffff) + ((r >> 16) & 0xffff) +
                                         ((r >> 32) & 0xffff) + (r >> 48)) *
                      (1.0f / 65536.0f);
    return (sum - 2.0f) * 1.7320508f;  // sqrt(12 / 4)
  }
  uint32_t Below(uint32_t n) {
    return static_cast<uint32_t>((Next() >> 32) * n >> 32);
  }

 private:
  uint64_t state_;
};

uint64_t Mix(uint64_t a, uint64_t b) {
  return SplitMix64(a * 0x2545f4914f6cdd1dull ^ b).Next();
}

uint64_t StreamSeed(uint64_t seed, uint64_t kind, uint64_t layer,
                    uint64_t index) {
  return Mix(Mix(Mix(seed, kind), layer), index);
}

constexpr uint64_t kCentreStream = 1, kOffsetStream = 2, kTokenStream = 3,
                   kQueryStream = 4;

}  // namespace

absl::Status SyntheticKvOptions::Validate() const {
  if (num_layers == 0)
    return absl::InvalidArgumentError("layers: must be >= 1");
  if (num_kv_heads == 0 || num_q_heads == 0 ||
      num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_q_heads: must be a positive multiple of num_kv_heads (",
        num_kv_heads, "), got ", num_q_heads));
  }
  if (head_dim < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim: must be >= 8, got ", head_dim));
  }
  if (clusters_per_head == 0) {
    return absl::InvalidArgumentError("clusters_per_head: must be >= 1");
  }
  if (outlier_channels > head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("outlier_channels: must be <= head_dim (", head_dim,
                     "), got ", outlier_channels));
  }
  return absl::OkStatus();
}

SyntheticKv::SyntheticKv(const SyntheticKvOptions& options)
    : options_(options) {
  const uint32_t d = options_.head_dim;
  const uint32_t heads = options_.num_kv_heads;
  centres_.resize(size_t{options_.num_layers} * heads *
                  options_.clusters_per_head * d);
  offsets_.resize(size_t{options_.num_layers} * heads * d);
  for (uint32_t l = 0; l < options_.num_layers; ++l) {
    for (uint32_t h = 0; h < heads; ++h) {
      SplitMix64 rng(StreamSeed(options_.seed, kCentreStream, l, h));
      float* c = centres_.data() + (Centre(l, h, 0) - centres_.data());
      for (size_t i = 0; i < size_t{options_.clusters_per_head} * d; ++i) {
        c[i] = rng.Normal();
      }
      SplitMix64 off(StreamSeed(options_.seed, kOffsetStream, l, h));
      float* o = offsets_.data() + (Offset(l, h) - offsets_.data());
      for (uint32_t j = 0; j < d; ++j) o[j] = 0.5f * off.Normal();
      for (uint32_t k = 0; k < options_.outlier_channels; ++k) {
        const uint32_t channel = off.Below(d);
        o[channel] =
            (off.Next() & 1 ? 1.0f : -1.0f) * options_.outlier_magnitude;
      }
    }
  }
}

uint64_t SyntheticKv::TokenBytes() const {
  return uint64_t{options_.num_kv_heads} * options_.head_dim *
         DTypeBytes(options_.dtype);
}

const float* SyntheticKv::Centre(uint32_t layer, uint32_t h, uint32_t c) const {
  const size_t index =
      (size_t{layer} * options_.num_kv_heads + h) * options_.clusters_per_head +
      c;
  return centres_.data() + index * options_.head_dim;
}

const float* SyntheticKv::Offset(uint32_t layer, uint32_t h) const {
  return offsets_.data() +
         (size_t{layer} * options_.num_kv_heads + h) * options_.head_dim;
}

void SyntheticKv::Generate(uint32_t layer, uint64_t first_token,
                           uint64_t num_tokens, uint8_t* keys,
                           uint8_t* values) const {
  const uint32_t d = options_.head_dim;
  const size_t row = size_t{options_.num_kv_heads} * d;
  const size_t row_bytes = TokenBytes();
  std::vector<float> k(row), v(row);
  for (uint64_t t = 0; t < num_tokens; ++t) {
    SplitMix64 rng(
        StreamSeed(options_.seed, kTokenStream, layer, first_token + t));
    for (uint32_t h = 0; h < options_.num_kv_heads; ++h) {
      const float* centre =
          Centre(layer, h, rng.Below(options_.clusters_per_head));
      const float* offset = Offset(layer, h);
      float* kh = k.data() + size_t{h} * d;
      float* vh = v.data() + size_t{h} * d;
      for (uint32_t j = 0; j < d; ++j) {
        kh[j] = offset[j] + centre[j] + options_.key_noise * rng.Normal();
        vh[j] = rng.Normal();
      }
    }
    EncodeFromFloat(options_.dtype, k.data(), row, keys + t * row_bytes);
    EncodeFromFloat(options_.dtype, v.data(), row, values + t * row_bytes);
  }
}

std::vector<float> SyntheticKv::Query(uint32_t layer, uint64_t step) const {
  const uint32_t d = options_.head_dim;
  const uint32_t g = options_.num_q_heads / options_.num_kv_heads;
  std::vector<float> q(size_t{options_.num_q_heads} * d);
  SplitMix64 rng(StreamSeed(options_.seed, kQueryStream, layer, step));
  const float* centre = nullptr;
  for (uint32_t i = 0; i < options_.num_q_heads; ++i) {
    // The q heads of a GQA group look for the same topic (as the heads of
    // one group of a real model correlate), each with its own noise.
    if (i % g == 0) {
      centre = Centre(layer, i / g, rng.Below(options_.clusters_per_head));
    }
    for (uint32_t j = 0; j < d; ++j) {
      q[size_t{i} * d + j] =
          options_.query_gain * centre[j] + options_.query_noise * rng.Normal();
    }
  }
  return q;
}

}  // namespace wavekv
