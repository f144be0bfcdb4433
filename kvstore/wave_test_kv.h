// Test support for the engine's wave-index tests: synthetic K/V with the
// structure of real attention, and what a client does with an answer.
//
// TestKv: topic-structured keys (runs of ~50 tokens near one of 64 key
// directions per kv head, so keys cluster), per-topic values, optionally a
// planted needle (one token whose key points along a direction a query
// head looks for), in the session dtype, with the decoded floats.
//
// ClientOutput: what the client's CPU reference (client/attention_
// reference.h) computes from an answer, on engine types: exact attention
// over the answer's slot ranges (K/V fetched with FetchSlots) and the
// steady tokens (from the test's own copy), merged with the tails. It also
// checks the answer: fetched rows equal the appended rows of their
// positions, and no token is both retrieved and steady or retrieved twice.
//
// Thread-safe: const methods and free functions may run concurrently.
#ifndef WAVEKV_KVSTORE_WAVE_TEST_KV_H_
#define WAVEKV_KVSTORE_WAVE_TEST_KV_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvstore/engine.h"
#include "kvstore/types.h"

namespace wavekv {

class TestKv {
 public:
  // `needle`: token whose key (every layer, every kv head) is planted; -1
  // for none.
  TestKv(const ModelShape& shape, uint64_t num_tokens, uint64_t seed,
         int64_t needle = -1);

  const ModelShape& shape() const { return shape_; }
  uint64_t num_tokens() const { return num_tokens_; }
  int64_t needle() const { return needle_; }

  // Appends tokens [begin, end) of the given layers (all if empty) in one
  // Append call.
  absl::StatusOr<AppendResult> Append(Engine& engine, const TenantId& tenant,
                                      const std::string& session_id,
                                      uint64_t begin, uint64_t end,
                                      std::vector<uint32_t> layers = {}) const;

  // A query for `layer`, fp32 [num_q_heads][head_dim]: each q head
  // `strength` times the mean of three random keys of its kv head (so it
  // attends mostly to up to three topics); with a needle, the first q head
  // of each group looks for it.
  std::vector<float> Query(uint32_t layer, uint64_t seed,
                           float strength = 0.7f) const;

  // Row bytes (session dtype) and decoded floats of (layer, token, kv head).
  absl::Span<const uint8_t> KeyBytes(uint32_t layer, uint64_t t,
                                     uint32_t h) const;
  absl::Span<const uint8_t> ValueBytes(uint32_t layer, uint64_t t,
                                       uint32_t h) const;
  const float* Key(uint32_t layer, uint64_t t, uint32_t h) const;
  const float* Value(uint32_t layer, uint64_t t, uint32_t h) const;

 private:
  size_t Offset(uint64_t t, uint32_t h) const;

  ModelShape shape_;
  uint64_t num_tokens_;
  int64_t needle_;
  std::vector<std::vector<float>> needle_dirs_;  // [layer][kv_head * d]
  // Per layer, [tokens][kv_heads][head_dim].
  std::vector<std::vector<uint8_t>> keys_, values_;
  std::vector<std::vector<float>> keys_f_, values_f_;
};

// Full attention of every q head of `layer` over tokens [0, num_tokens):
// [num_q_heads][head_dim].
std::vector<float> FullAttentionOutput(const TestKv& kv, uint32_t layer,
                                       uint64_t num_tokens,
                                       absl::Span<const float> query);

// The client-side merge of `result` (see above); `use_tail` = false drops
// the tails (the "no estimation" baseline). [num_q_heads][head_dim].
// FailedPrecondition naming the problem if the answer is inconsistent.
absl::StatusOr<std::vector<float>> ClientOutput(
    Engine& engine, const TenantId& tenant, uint32_t layer, const TestKv& kv,
    const SessionResult& result, absl::Span<const float> query,
    bool use_tail = true);

// The backend the engine tests run on: the GPU (device 0) in the *_gpu
// test binaries, built with WAVEKV_TEST_GPU; the CPU otherwise.
inline void UseTestBackend(EngineOptions& options) {
#ifdef WAVEKV_TEST_GPU
  options.gpu_device = 0;
#else
  options.gpu_device = kGpuOff;
#endif
}

// ||a - b|| / ||b||.
double RelativeL2(absl::Span<const float> a, absl::Span<const float> b);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_WAVE_TEST_KV_H_
