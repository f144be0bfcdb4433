// Deterministic K/V contents for process-level tests: every (seed, kind,
// layer, position, kv head) names one row of head_dim elements, so a reader
// can recompute what a session was sent without sharing state with the
// writer. Values are finite and well inside every dtype's range (no NaN,
// no infinities, no denormals), and rows are distinct with overwhelming
// probability, so a row identifies its token.
//
// Layout follows wavekv.proto: K/V of a token range are
// [num_tokens][num_kv_heads][head_dim] little-endian in the session dtype.
//
// Thread-safe: all methods are const and pure.
#ifndef WAVEKV_TESTS_KV_PATTERN_H_
#define WAVEKV_TESTS_KV_PATTERN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "proto/wavekv/v1/wavekv.pb.h"

namespace wavekv::testing {

// Bytes per element of `dtype` (0 for DTYPE_UNSPECIFIED / unknown).
uint32_t ElementBytes(v1::DType dtype);

// Bytes of one [head_dim] row.
uint64_t RowBytes(const v1::ModelShape& shape);

// Bytes of K (or V) of one token of one layer: num_kv_heads * RowBytes.
uint64_t TokenLayerBytes(const v1::ModelShape& shape);

// A ModelShape from its five fields.
v1::ModelShape MakeShape(uint32_t num_layers, uint32_t num_q_heads,
                         uint32_t num_kv_heads, uint32_t head_dim,
                         v1::DType dtype);

enum class KvKind : uint8_t { kKeys = 1, kValues = 2 };

class KvPattern {
 public:
  KvPattern(uint64_t seed, const v1::ModelShape& shape)
      : seed_(seed), shape_(shape) {}

  uint64_t seed() const { return seed_; }
  const v1::ModelShape& shape() const { return shape_; }

  // The [head_dim] row of `kind` for token `position` of `layer`, kv head
  // `kv_head`, as dtype bytes.
  std::string Row(KvKind kind, uint32_t layer, uint64_t position,
                  uint32_t kv_head) const;

  // [num_tokens][num_kv_heads][head_dim] bytes of tokens
  // [start, start + num_tokens) of `layer`.
  std::string Tokens(KvKind kind, uint32_t layer, uint64_t start,
                     uint32_t num_tokens) const;

  // Row() decoded to floats (exact: every generated value is representable).
  std::vector<float> RowFloats(KvKind kind, uint32_t layer, uint64_t position,
                               uint32_t kv_head) const;

  // A LayerKV entry carrying tokens [start, start + num_tokens) of `layer`.
  v1::LayerKV Layer(uint32_t layer, uint64_t start, uint32_t num_tokens) const;

  // An FP32 query [num_q_heads][head_dim] (little-endian bytes) for
  // `layer`, varied by `step`.
  std::string Query(uint32_t layer, uint64_t step) const;

 private:
  void FillRow(KvKind kind, uint32_t layer, uint64_t position, uint32_t kv_head,
               char* out) const;

  uint64_t seed_;
  v1::ModelShape shape_;
};

}  // namespace wavekv::testing

#endif  // WAVEKV_TESTS_KV_PATTERN_H_
