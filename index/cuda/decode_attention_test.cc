// GPU decode attention against the CPU reference (index/attention.h).
// Tolerance: relative L2 error of each q head's output <= 1e-5 (fp32 data)
// or 2e-3 (fp16/bf16 data, same decoded values on both sides; the GPU uses
// fast exp and a different summation order).
#include "index/cuda/decode_attention.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "index/attention.h"
#include "index/dtype.h"

namespace wavekv::cuda {
namespace {

struct Case {
  DType dtype;
  int head_dim;
  int64_t num_tokens;
  int q_heads = 8;
  int kv_heads = 2;
};

class DecodeAttentionTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    absl::Status s = CheckCudaDevice();
    if (!s.ok()) GTEST_SKIP() << s.message();
  }
};

template <typename T>
T* DeviceCopy(const void* host, size_t bytes) {
  void* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, bytes == 0 ? 16 : bytes), cudaSuccess);
  if (bytes) cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
  return static_cast<T*>(d);
}

TEST_P(DecodeAttentionTest, MatchesCpuReference) {
  const Case c = GetParam();
  const int q_heads = c.q_heads, kv_heads = c.kv_heads, d = c.head_dim;
  const int64_t n = c.num_tokens;
  const size_t elem = DTypeBytes(c.dtype);
  std::mt19937 rng(1234 + d + n);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> q(q_heads * d);
  for (float& x : q) x = normal(rng);
  // kv-head-major: [kv][n][d]; planted large logits in the middle.
  std::vector<float> kf(kv_heads * n * d), vf(kv_heads * n * d);
  for (float& x : kf) x = normal(rng);
  for (float& x : vf) x = normal(rng);
  if (n > 10) {
    for (int i = 0; i < d; ++i) kf[(n / 2) * d + i] = 3.f * q[i];
  }
  std::vector<uint8_t> kb(kf.size() * elem), vb(vf.size() * elem);
  EncodeFromFloat(c.dtype, kf.data(), kf.size(), kb.data());
  EncodeFromFloat(c.dtype, vf.data(), vf.size(), vb.data());

  const int max_splits = 64;
  float* dq = DeviceCopy<float>(q.data(), q.size() * 4);
  void* dk = DeviceCopy<uint8_t>(kb.data(), kb.size());
  void* dv = DeviceCopy<uint8_t>(vb.data(), vb.size());
  float *scratch, *omax, *oden, *onum, *out;
  ASSERT_EQ(
      cudaMalloc(&scratch, SplitScratchFloats(q_heads, d, max_splits) * 4),
      cudaSuccess);
  ASSERT_EQ(cudaMalloc(&omax, q_heads * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&oden, q_heads * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&onum, q_heads * d * 4), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, q_heads * d * 4), cudaSuccess);

  DecodeAttentionArgs a;
  a.dtype = c.dtype == DType::kFp16   ? ElemType::kFp16
            : c.dtype == DType::kBf16 ? ElemType::kBf16
                                      : ElemType::kFp32;
  a.head_dim = d;
  a.num_q_heads = q_heads;
  a.num_kv_heads = kv_heads;
  a.num_tokens = n;
  a.head_stride = n * d;
  a.token_stride = d;
  a.scale = DefaultScale(d);
  a.queries = dq;
  a.keys = dk;
  a.values = dv;
  a.split_scratch = scratch;
  a.max_splits = max_splits;
  a.out_max = omax;
  a.out_den = oden;
  a.out_num = onum;
  a.out = out;
  ASSERT_TRUE(LaunchDecodeAttention(a, nullptr).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got(q_heads * d), got_den(q_heads);
  cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(got_den.data(), oden, q_heads * 4, cudaMemcpyDeviceToHost);

  const double tol = c.dtype == DType::kFp32 ? 1e-5 : 2e-3;
  const int group = q_heads / kv_heads;
  for (int h = 0; h < q_heads; ++h) {
    const int kv = h / group;
    KvView view{c.dtype, static_cast<size_t>(d), static_cast<size_t>(n),
                kb.data() + kv * n * d * elem, vb.data() + kv * n * d * elem};
    if (n == 0) {
      EXPECT_EQ(got_den[h], 0.f);
      continue;
    }
    std::vector<float> want = FullAttention(
        absl::MakeConstSpan(q.data() + h * d, d), view, DefaultScale(d));
    double err = 0, norm = 0;
    for (int i = 0; i < d; ++i) {
      err += std::pow(got[h * d + i] - want[i], 2);
      norm += std::pow(want[i], 2);
    }
    EXPECT_LE(std::sqrt(err / std::max(norm, 1e-30)), tol)
        << "q head " << h << " dtype " << DTypeName(c.dtype) << " d " << d
        << " n " << n;
  }
  for (void* p : {(void*)dq, dk, dv, (void*)scratch, (void*)omax, (void*)oden,
                  (void*)onum, (void*)out}) {
    cudaFree(p);
  }
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (DType t : {DType::kFp16, DType::kBf16, DType::kFp32}) {
    for (int d : {64, 128, 256}) {
      for (int64_t n : {0, 1, 7, 255, 1000, 20000}) cases.push_back({t, d, n});
      // GQA groups of 1, 3 (runs in the 4-wide instantiation) and 8.
      cases.push_back({t, d, 3000, 8, 8});
      cases.push_back({t, d, 3000, 6, 2});
      cases.push_back({t, d, 3000, 16, 2});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllShapes, DecodeAttentionTest,
                         ::testing::ValuesIn(AllCases()));

TEST(DecodeAttentionValidation, RejectsUnsupportedHeadDim) {
  DecodeAttentionArgs a;
  a.head_dim = 96;
  absl::Status s = LaunchDecodeAttention(a, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim"), std::string_view::npos);
}

}  // namespace
}  // namespace wavekv::cuda
