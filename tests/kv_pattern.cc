#include "tests/kv_pattern.h"

#include <cmath>
#include <cstring>

namespace wavekv::testing {
namespace {

// SplitMix64: a tiny, well-mixed, seedable sequence.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class Stream {
 public:
  explicit Stream(uint64_t state) : state_(state) {}
  uint64_t Next() {
    state_ += 0x9e3779b97f4a7c15ull;
    return Mix(state_);
  }
  // Uniform in [-1, 1), exactly representable in fp32 (24 bits).
  float NextUnit() {
    return static_cast<float>(Next() >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }

 private:
  uint64_t state_;
};

uint64_t RowState(uint64_t seed, uint64_t kind, uint64_t layer,
                  uint64_t position, uint64_t head) {
  uint64_t h = Mix(seed);
  h = Mix(h ^ (kind << 56) ^ (layer << 32) ^ head);
  return Mix(h ^ position);
}

void PutLe16(uint16_t v, char* out) {
  out[0] = static_cast<char>(v & 0xff);
  out[1] = static_cast<char>(v >> 8);
}

}  // namespace

uint32_t ElementBytes(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FP16:
    case v1::DTYPE_BF16:
      return 2;
    case v1::DTYPE_FP32:
      return 4;
    default:
      return 0;
  }
}

uint64_t RowBytes(const v1::ModelShape& shape) {
  return uint64_t{shape.head_dim()} * ElementBytes(shape.dtype());
}

uint64_t TokenLayerBytes(const v1::ModelShape& shape) {
  return uint64_t{shape.num_kv_heads()} * RowBytes(shape);
}

v1::ModelShape MakeShape(uint32_t num_layers, uint32_t num_q_heads,
                         uint32_t num_kv_heads, uint32_t head_dim,
                         v1::DType dtype) {
  v1::ModelShape shape;
  shape.set_num_layers(num_layers);
  shape.set_num_q_heads(num_q_heads);
  shape.set_num_kv_heads(num_kv_heads);
  shape.set_head_dim(head_dim);
  shape.set_dtype(dtype);
  return shape;
}

void KvPattern::FillRow(KvKind kind, uint32_t layer, uint64_t position,
                        uint32_t kv_head, char* out) const {
  Stream rng(
      RowState(seed_, static_cast<uint64_t>(kind), layer, position, kv_head));
  const uint32_t d = shape_.head_dim();
  for (uint32_t i = 0; i < d; ++i) {
    const uint64_t r = rng.Next();
    const uint16_t sign = static_cast<uint16_t>(r & 1);
    switch (shape_.dtype()) {
      case v1::DTYPE_FP16: {
        // Normal halves with |x| in [2^-3, 2): exponent field 12..15.
        const uint16_t exp = static_cast<uint16_t>(12 + ((r >> 1) & 3));
        const uint16_t mant = static_cast<uint16_t>((r >> 3) & 0x3ff);
        PutLe16(static_cast<uint16_t>(sign << 15 | exp << 10 | mant),
                out + 2 * i);
        break;
      }
      case v1::DTYPE_BF16: {
        // Normal bfloat16 with |x| in [2^-3, 2): exponent field 124..127.
        const uint16_t exp = static_cast<uint16_t>(124 + ((r >> 1) & 3));
        const uint16_t mant = static_cast<uint16_t>((r >> 3) & 0x7f);
        PutLe16(static_cast<uint16_t>(sign << 15 | exp << 7 | mant),
                out + 2 * i);
        break;
      }
      case v1::DTYPE_FP32:
      default: {
        const float f =
            static_cast<float>(r >> 40) * (2.0f / 16777216.0f) - 1.0f;
        std::memcpy(out + 4 * i, &f, 4);  // x86-64: little-endian
        break;
      }
    }
  }
}

std::string KvPattern::Row(KvKind kind, uint32_t layer, uint64_t position,
                           uint32_t kv_head) const {
  std::string row(RowBytes(shape_), '\0');
  FillRow(kind, layer, position, kv_head, row.data());
  return row;
}

std::string KvPattern::Tokens(KvKind kind, uint32_t layer, uint64_t start,
                              uint32_t num_tokens) const {
  const uint64_t row = RowBytes(shape_);
  std::string out(uint64_t{num_tokens} * shape_.num_kv_heads() * row, '\0');
  char* p = out.data();
  for (uint64_t t = 0; t < num_tokens; ++t) {
    for (uint32_t h = 0; h < shape_.num_kv_heads(); ++h) {
      FillRow(kind, layer, start + t, h, p);
      p += row;
    }
  }
  return out;
}

std::vector<float> KvPattern::RowFloats(KvKind kind, uint32_t layer,
                                        uint64_t position,
                                        uint32_t kv_head) const {
  const std::string row = Row(kind, layer, position, kv_head);
  const uint32_t d = shape_.head_dim();
  std::vector<float> out(d);
  for (uint32_t i = 0; i < d; ++i) {
    if (shape_.dtype() == v1::DTYPE_FP32) {
      std::memcpy(&out[i], row.data() + 4 * i, 4);
      continue;
    }
    const uint16_t bits =
        static_cast<uint16_t>(static_cast<uint8_t>(row[2 * i]) |
                              static_cast<uint8_t>(row[2 * i + 1]) << 8);
    const bool negative = bits >> 15;
    float magnitude;
    if (shape_.dtype() == v1::DTYPE_FP16) {  // normal halves only
      const int exp = (bits >> 10) & 0x1f;
      magnitude = std::ldexp(1.0f + (bits & 0x3ff) / 1024.0f, exp - 15);
    } else {  // bfloat16: the top half of an fp32
      const uint32_t wide = uint32_t{bits} << 16;
      std::memcpy(&magnitude, &wide, 4);
      magnitude = std::fabs(magnitude);
    }
    out[i] = negative ? -magnitude : magnitude;
  }
  return out;
}

v1::LayerKV KvPattern::Layer(uint32_t layer, uint64_t start,
                             uint32_t num_tokens) const {
  v1::LayerKV kv;
  kv.set_layer(layer);
  kv.set_start_token(start);
  kv.set_num_tokens(num_tokens);
  kv.set_keys(Tokens(KvKind::kKeys, layer, start, num_tokens));
  kv.set_values(Tokens(KvKind::kValues, layer, start, num_tokens));
  return kv;
}

std::string KvPattern::Query(uint32_t layer, uint64_t step) const {
  Stream rng(RowState(seed_, 3, layer, step, 0xffff));
  const uint64_t n = uint64_t{shape_.num_q_heads()} * shape_.head_dim();
  std::string out(n * 4, '\0');
  for (uint64_t i = 0; i < n; ++i) {
    const float f = rng.NextUnit();
    std::memcpy(out.data() + 4 * i, &f, 4);
  }
  return out;
}

}  // namespace wavekv::testing
