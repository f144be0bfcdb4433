// SyntheticKv: deterministic K/V and queries with the structure of a real
// long-context model's attention, for the demo and end-to-end tests.
//
// Keys of each (layer, kv head) are drawn around `clusters_per_head` random
// centres (topics), plus a per-head mean offset and a few outlier channels
// with a large constant magnitude (as post-RoPE keys of real models have:
// why the wave index mean-centres keys). Values are standard normal. The q
// heads of one GQA group aim at one centre of their kv head (each with its
// own noise, as the heads of a group correlate in real models), so their
// softmax mass sits on that topic's tokens, like a retrieval head.
//
// Every token is a pure function of (seed, layer, position): any range can
// be generated in any order, on any thread, and a decode token equals what
// a longer prefill would have produced.
//
// Thread-safe: const methods only after construction.
#ifndef WAVEKV_CLIENT_SYNTHETIC_KV_H_
#define WAVEKV_CLIENT_SYNTHETIC_KV_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "index/dtype.h"

namespace wavekv {

struct SyntheticKvOptions {
  uint32_t num_layers = 1;    // >= 1
  uint32_t num_q_heads = 32;  // multiple of num_kv_heads
  uint32_t num_kv_heads = 8;  // >= 1
  uint32_t head_dim = 128;    // >= 8
  DType dtype = DType::kFp16;
  uint64_t seed = 1;
  // Centres keys of one (layer, kv head) are drawn around. >= 1.
  uint32_t clusters_per_head = 64;
  // Standard deviation of a key around its centre (centres are N(0, 1)).
  float key_noise = 0.5f;
  // Channels per kv head with a constant offset of +-outlier_magnitude.
  // 0..head_dim.
  uint32_t outlier_channels = 4;
  float outlier_magnitude = 8.0f;
  // Query = query_gain * centre + N(0, query_noise^2) per channel.
  float query_gain = 1.5f;
  float query_noise = 0.3f;

  absl::Status Validate() const;
};

class SyntheticKv {
 public:
  // REQUIRES: options.Validate().ok().
  explicit SyntheticKv(const SyntheticKvOptions& options);

  const SyntheticKvOptions& options() const { return options_; }
  // K (or V) bytes of one token of one layer, all kv heads.
  uint64_t TokenBytes() const;

  // Writes tokens [first_token, first_token + num_tokens) of `layer` in the
  // wire layout [token][kv_head][head_dim], dtype bytes, to keys and values
  // (num_tokens * TokenBytes() bytes each).
  void Generate(uint32_t layer, uint64_t first_token, uint64_t num_tokens,
                uint8_t* keys, uint8_t* values) const;

  // The query of decode step `step` at `layer`: fp32 [num_q_heads][head_dim].
  std::vector<float> Query(uint32_t layer, uint64_t step) const;

 private:
  // Centre c of (layer, kv head h): [head_dim] floats.
  const float* Centre(uint32_t layer, uint32_t h, uint32_t c) const;
  // Mean offset + outlier channels of (layer, kv head h): [head_dim].
  const float* Offset(uint32_t layer, uint32_t h) const;

  const SyntheticKvOptions options_;
  std::vector<float> centres_;  // [layer][kv_head][cluster][head_dim]
  std::vector<float> offsets_;  // [layer][kv_head][head_dim]
};

}  // namespace wavekv

#endif  // WAVEKV_CLIENT_SYNTHETIC_KV_H_
