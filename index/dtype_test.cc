#include "index/dtype.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace wavekv {
namespace internal_dtype {
void DecodeHalfPortableForTest(const uint8_t* src, size_t n, float* dst);
void EncodeHalfPortableForTest(const float* src, size_t n, uint8_t* dst);
}  // namespace internal_dtype

namespace {

bool IsHalfNan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff); }
bool IsBf16Nan(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f); }

// Independent reference for round-to-nearest-even into a 16-bit format whose
// positive finite encodings 0..max_finite are monotonic in value: binary
// search among all of them in double precision.
class ReferenceRounder {
 public:
  ReferenceRounder(float (*to_float)(uint16_t), uint16_t max_finite,
                   uint16_t inf_bits)
      : inf_bits_(inf_bits) {
    for (uint32_t b = 0; b <= max_finite; ++b) {
      values_.push_back(to_float(static_cast<uint16_t>(b)));
    }
    const double max = values_.back();
    const double ulp = max - values_[values_.size() - 2];
    overflow_ = max + ulp / 2;  // the tie rounds to the even encoding: inf
  }

  uint16_t Round(float f) const {
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    const double a = std::fabs(static_cast<double>(f));
    if (a >= overflow_) return sign | inf_bits_;
    auto it = std::lower_bound(values_.begin(), values_.end(), a);
    size_t hi = it - values_.begin();
    if (hi == values_.size()) hi = values_.size() - 1;
    if (values_[hi] == a) return sign | static_cast<uint16_t>(hi);
    const size_t lo = hi - 1;
    const double dlo = a - values_[lo], dhi = values_[hi] - a;
    size_t pick;
    if (dlo < dhi) {
      pick = lo;
    } else if (dhi < dlo) {
      pick = hi;
    } else {
      pick = (lo % 2 == 0) ? lo : hi;
    }
    return sign | static_cast<uint16_t>(pick);
  }

 private:
  std::vector<double> values_;
  double overflow_ = 0;
  uint16_t inf_bits_;
};

std::vector<float> InterestingFloats(uint64_t seed, size_t random_count) {
  std::vector<float> out;
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < random_count; ++i) {
    out.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  }
  // Dense sweeps around every binade boundary of the 16-bit formats and
  // around halfway points: take each half/bf16 value and perturb its float
  // bits in the dropped region.
  for (uint32_t h = 0; h < 0x10000; h += 7) {
    const float v = std::bit_cast<float>(h << 16);  // bf16 grid
    const float w = HalfToFloat(static_cast<uint16_t>(h));
    for (int32_t delta : {-1, 0, 1, 0x1000, 0x0fff, 0x1001, 0x8000, 0x7fff}) {
      out.push_back(std::bit_cast<float>(std::bit_cast<uint32_t>(v) + delta));
      out.push_back(std::bit_cast<float>(std::bit_cast<uint32_t>(w) + delta));
    }
  }
  return out;
}

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeBytes(DType::kFp16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kBf16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kFp32), 4u);
  EXPECT_EQ(DTypeName(DType::kFp16), "fp16");
  EXPECT_EQ(DTypeName(DType::kBf16), "bf16");
  EXPECT_EQ(DTypeName(DType::kFp32), "fp32");
}

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x03ff), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7c01)));  // signalling NaN
  EXPECT_EQ(std::bit_cast<uint32_t>(HalfToFloat(0x8000)), 0x80000000u);

  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.99f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // halfway to 65536: even = inf
  EXPECT_EQ(FloatToHalf(1e6f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e6f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(0.1f), 0x2e66);
  // Ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Subnormals: 2^-25 is halfway between 0 and 2^-24 (even: 0).
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(FloatToHalf(3 * std::ldexp(1.0f, -25)), 0x0002);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25) * 1.0001f), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)),
            0x0400);  // rounds up into the smallest normal
  EXPECT_EQ(FloatToHalf(1e-10f), 0x0000);
  EXPECT_EQ(FloatToHalf(-1e-10f), 0x8000);
  EXPECT_TRUE(IsHalfNan(FloatToHalf(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(
      IsHalfNan(FloatToHalf(std::numeric_limits<float>::signaling_NaN())));
  // A NaN whose payload lies only in dropped bits must not become inf.
  EXPECT_TRUE(IsHalfNan(FloatToHalf(std::bit_cast<float>(0x7f800001u))));
}

TEST(HalfTest, AllHalvesRoundTrip) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const float f = HalfToFloat(bits);
    if (IsHalfNan(bits)) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_TRUE(IsHalfNan(FloatToHalf(f))) << h;
    } else {
      ASSERT_EQ(FloatToHalf(f), bits) << std::hex << h;
    }
  }
}

TEST(HalfTest, RoundingMatchesReference) {
  const ReferenceRounder ref(&HalfToFloat, 0x7bff, 0x7c00);
  for (float f : InterestingFloats(1, 300000)) {
    if (std::isnan(f)) {
      ASSERT_TRUE(IsHalfNan(FloatToHalf(f)));
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), ref.Round(f))
        << std::hexfloat << f << " bits " << std::hex
        << std::bit_cast<uint32_t>(f);
  }
}

TEST(Bf16Test, KnownValues) {
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(Bf16ToFloat(0x7f7f), 3.3895313892515355e38f);
  EXPECT_EQ(Bf16ToFloat(0x0001), std::ldexp(1.0f, -133));  // subnormal
  EXPECT_EQ(Bf16ToFloat(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7fc0)));

  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(0.1f), 0x3dcd);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie: even
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(FloatToBf16(std::ldexp(1.0f, -133)), 0x0001);
  EXPECT_TRUE(IsBf16Nan(FloatToBf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(IsBf16Nan(FloatToBf16(std::bit_cast<float>(0x7f800001u))));
  EXPECT_TRUE(IsBf16Nan(FloatToBf16(std::bit_cast<float>(0xffffffffu))));
}

TEST(Bf16Test, AllBf16RoundTrip) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const uint16_t bits = static_cast<uint16_t>(b);
    const float f = Bf16ToFloat(bits);
    if (IsBf16Nan(bits)) {
      ASSERT_TRUE(std::isnan(f));
      ASSERT_TRUE(IsBf16Nan(FloatToBf16(f)));
    } else {
      ASSERT_EQ(FloatToBf16(f), bits) << std::hex << b;
    }
  }
}

TEST(Bf16Test, RoundingMatchesReference) {
  const ReferenceRounder ref(&Bf16ToFloat, 0x7f7f, 0x7f80);
  for (float f : InterestingFloats(2, 300000)) {
    if (std::isnan(f)) {
      ASSERT_TRUE(IsBf16Nan(FloatToBf16(f)));
      continue;
    }
    ASSERT_EQ(FloatToBf16(f), ref.Round(f)) << std::hexfloat << f;
  }
}

// Bulk paths (F16C where present, portable loops otherwise) must agree
// bit for bit with the scalar functions, at any length and alignment.
void ExpectBulkMatchesScalar(DType dtype,
                             void (*decode)(const uint8_t*, size_t, float*),
                             void (*encode)(const float*, size_t, uint8_t*)) {
  // Every 16-bit pattern, stored at an odd byte offset.
  std::vector<uint8_t> src(2 * 0x10000 + 1);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t v = static_cast<uint16_t>(h);
    std::memcpy(&src[1 + 2 * h], &v, 2);
  }
  auto to_float = dtype == DType::kFp16 ? &HalfToFloat : &Bf16ToFloat;
  auto from_float = dtype == DType::kFp16 ? &FloatToHalf : &FloatToBf16;
  for (size_t n :
       {size_t{0}, size_t{1}, size_t{7}, size_t{9}, size_t{0x10000}}) {
    std::vector<float> dst(n + 1, -7.0f);
    decode(&src[1], n, dst.data() + 1);  // unaligned floats too
    for (size_t i = 0; i < n; ++i) {
      uint16_t bits;
      std::memcpy(&bits, &src[1 + 2 * i], 2);
      const float want = to_float(bits);
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(dst[i + 1]));
      } else {
        ASSERT_EQ(std::bit_cast<uint32_t>(dst[i + 1]),
                  std::bit_cast<uint32_t>(want))
            << std::hex << bits;
      }
    }
    EXPECT_EQ(dst[0], -7.0f);
  }
  std::vector<float> floats = InterestingFloats(3, 20000);
  for (size_t n : {size_t{0}, size_t{3}, size_t{8}, floats.size()}) {
    std::vector<uint8_t> out(2 * n + 2, 0xab);
    encode(floats.data(), n, out.data() + 1);
    for (size_t i = 0; i < n; ++i) {
      uint16_t got;
      std::memcpy(&got, &out[1 + 2 * i], 2);
      ASSERT_EQ(got, from_float(floats[i]))
          << std::hexfloat << floats[i] << " i=" << i;
    }
    EXPECT_EQ(out[0], 0xab);
    EXPECT_EQ(out[2 * n + 1], 0xab);
  }
}

TEST(BulkTest, Fp16MatchesScalar) {
  ExpectBulkMatchesScalar(
      DType::kFp16,
      [](const uint8_t* s, size_t n, float* d) {
        DecodeToFloat(DType::kFp16, s, n, d);
      },
      [](const float* s, size_t n, uint8_t* d) {
        EncodeFromFloat(DType::kFp16, s, n, d);
      });
}

TEST(BulkTest, Fp16PortablePathMatchesScalar) {
  ExpectBulkMatchesScalar(DType::kFp16,
                          &internal_dtype::DecodeHalfPortableForTest,
                          &internal_dtype::EncodeHalfPortableForTest);
}

TEST(BulkTest, Bf16MatchesScalar) {
  ExpectBulkMatchesScalar(
      DType::kBf16,
      [](const uint8_t* s, size_t n, float* d) {
        DecodeToFloat(DType::kBf16, s, n, d);
      },
      [](const float* s, size_t n, uint8_t* d) {
        EncodeFromFloat(DType::kBf16, s, n, d);
      });
}

TEST(BulkTest, Fp32IsACopy) {
  const std::vector<float> in = {1.5f, -0.0f, 3e38f, 1e-45f};
  std::vector<uint8_t> bytes(in.size() * 4);
  EncodeFromFloat(DType::kFp32, in.data(), in.size(), bytes.data());
  std::vector<float> out(in.size());
  DecodeToFloat(DType::kFp32, bytes.data(), in.size(), out.data());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(in[i]));
  }
}

}  // namespace
}  // namespace wavekv
