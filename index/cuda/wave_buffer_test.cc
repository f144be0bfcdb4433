// The wave buffer on the device: a cluster store in mapped pinned host
// memory, selections that move like a random walk, the whole step protocol
// (wait, page table, attention, record, update) for many steps; every step's
// output must equal the CPU reference over steady zone + selected clusters
// (so slots admitted in earlier steps hold the right bytes), the device's
// hit counters must equal the CPU bookkeeping, and a buffer too small for the
// selection must still give exact results and count the overflow.
#include "index/cuda/wave_buffer.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "index/attention.h"
#include "index/cuda/decode_attention.h"
#include "index/cuda/paged_attention.h"
#include "index/dtype.h"

namespace wavekv::cuda {
namespace {

struct Case {
  DType dtype;
  int head_dim;
  double fraction;
  bool expect_overflow;
  // Update threads (WaveBufferOptions); 1 id per thread: one per row.
  int threads = 8;
  int ids_per_thread = 2048;
  bool async_update = false;  // UpdateAsync instead of Update
};

class WaveBufferTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    absl::Status s = CheckCudaDevice();
    if (!s.ok()) GTEST_SKIP() << s.message();
  }
};

#define ASSERT_CUDA(x) ASSERT_EQ((x), cudaSuccess) << #x

TEST_P(WaveBufferTest, StepsMatchCpuAndCountHits) {
  const Case tc = GetParam();
  const int d = tc.head_dim, rows = 4, group = 4, C = 200, S = 20, steady = 70,
            steps = 40;
  const size_t elem = DTypeBytes(tc.dtype), tok = d * elem;
  std::mt19937 rng(99 + d);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> size_dist(0, 30);

  ClusterStoreLayout layout;
  layout.dtype = tc.dtype == DType::kFp16   ? ElemType::kFp16
                 : tc.dtype == DType::kBf16 ? ElemType::kBf16
                                            : ElemType::kFp32;
  layout.head_dim = d;
  layout.num_rows = rows;
  layout.num_clusters = C;
  layout.cluster_sizes.resize(rows * C);
  layout.cluster_offsets.resize(rows * C);
  std::vector<void*> host(rows);
  std::vector<std::vector<uint8_t>> steady_k(rows), steady_v(rows);
  for (int r = 0; r < rows; ++r) {
    int64_t off = 0;
    for (int c = 0; c < C; ++c) {
      layout.cluster_sizes[r * C + c] = size_dist(rng);
      layout.cluster_offsets[r * C + c] = off;
      off += 2 * int64_t{layout.cluster_sizes[r * C + c]} * d;
    }
    std::vector<float> f(off);
    for (float& x : f) x = normal(rng);
    ASSERT_CUDA(
        cudaHostAlloc(&host[r], f.size() * elem + 16, cudaHostAllocMapped));
    EncodeFromFloat(tc.dtype, f.data(), f.size(),
                    static_cast<uint8_t*>(host[r]));
    layout.row_store.push_back(host[r]);
    std::vector<float> s(steady * d);
    for (float& x : s) x = normal(rng);
    steady_k[r].resize(s.size() * elem);
    EncodeFromFloat(tc.dtype, s.data(), s.size(), steady_k[r].data());
    for (float& x : s) x = normal(rng);
    steady_v[r].resize(s.size() * elem);
    EncodeFromFloat(tc.dtype, s.data(), s.size(), steady_v[r].data());
  }
  WaveBufferOptions opt;
  opt.buffer_fraction = tc.fraction;
  opt.max_selected = S;
  opt.update_threads = tc.threads;
  opt.update_ids_per_thread = tc.ids_per_thread;
  auto buffer = WaveBuffer::Create(opt, layout);
  ASSERT_TRUE(buffer.ok()) << buffer.status();
  WaveBuffer& wb = **buffer;
  cudaStream_t stream;
  ASSERT_CUDA(cudaStreamCreate(&stream));
  for (int r = 0; r < rows; ++r) {
    ASSERT_TRUE(
        wb.LoadSteady(r, steady_k[r].data(), steady_v[r].data(), steady, stream)
            .ok());
  }

  const int QH = rows * group, max_splits = 16;
  std::vector<float> q(QH * d);
  for (float& x : q) x = normal(rng);
  float *dq, *scratch, *omax, *oden, *onum, *out;
  int32_t* dsel;
  KvPage* pages;
  unsigned long long* counters;
  ASSERT_CUDA(cudaMalloc(&dq, q.size() * 4));
  ASSERT_CUDA(cudaMemcpy(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMalloc(&scratch, SplitScratchFloats(QH, d, max_splits) * 4));
  ASSERT_CUDA(cudaMalloc(&omax, QH * 4));
  ASSERT_CUDA(cudaMalloc(&oden, QH * 4));
  ASSERT_CUDA(cudaMalloc(&onum, QH * d * 4));
  ASSERT_CUDA(cudaMalloc(&out, QH * d * 4));
  ASSERT_CUDA(cudaMalloc(&dsel, rows * S * 4));
  ASSERT_CUDA(cudaMalloc(&pages, rows * (1 + S) * sizeof(KvPage)));
  ASSERT_CUDA(cudaMalloc(&counters, 16));
  ASSERT_CUDA(cudaMemset(counters, 0, 16));

  ClusterPagesArgs pa;
  wb.FillPagesArgs(&pa);
  pa.num_selected = S;
  pa.selected = dsel;
  pa.pages = pages;
  pa.lookups = counters;
  pa.hits = counters + 1;
  PagedAttentionArgs a;
  wb.FillAttentionArgs(&a);
  a.dtype = layout.dtype;
  a.head_dim = d;
  a.num_rows = rows;
  a.group = group;
  a.scale = DefaultScale(d);
  a.queries = dq;
  a.pages = pages;
  a.pages_per_row = 1 + S;
  a.tokens_hint = steady + S * 15;
  a.max_splits = max_splits;
  a.split_scratch = scratch;
  a.out_max = omax;
  a.out_den = oden;
  a.out_num = onum;
  a.out = out;

  std::vector<int> center(rows);
  for (int& c : center) c = rng() % C;
  std::vector<int32_t> sel(rows * S);
  const double tol = tc.dtype == DType::kFp32 ? 1e-5 : 2e-3;
  for (int step = 0; step < steps; ++step) {
    // Random walk: the window of S consecutive ids moves by -2..+2.
    for (int r = 0; r < rows; ++r) {
      center[r] = (center[r] + static_cast<int>(rng() % 5) - 2 + C) % C;
      for (int i = 0; i < S; ++i) sel[r * S + i] = (center[r] + i) % C;
      std::shuffle(sel.begin() + r * S, sel.begin() + (r + 1) * S, rng);
    }
    ASSERT_TRUE(wb.WaitForAdmissions(stream).ok());
    ASSERT_CUDA(cudaMemcpyAsync(dsel, sel.data(), sel.size() * 4,
                                cudaMemcpyHostToDevice, stream));
    ASSERT_TRUE(LaunchClusterPages(pa, stream).ok());
    ASSERT_TRUE(LaunchPagedAttention(a, stream).ok());
    ASSERT_TRUE(wb.RecordSelection(dsel, stream).ok());
    if (tc.async_update) {
      ASSERT_TRUE(wb.UpdateAsync().ok());
      // A second one before the join is refused: no new selection yet.
      EXPECT_EQ(wb.UpdateAsync().code(), absl::StatusCode::kFailedPrecondition);
    } else {
      ASSERT_TRUE(wb.Update().ok());
    }
    ASSERT_CUDA(cudaStreamSynchronize(stream));
    std::vector<float> got(QH * d);
    ASSERT_CUDA(
        cudaMemcpy(got.data(), out, got.size() * 4, cudaMemcpyDeviceToHost));
    for (int r = 0; r < rows; ++r) {
      std::vector<uint8_t> kb = steady_k[r], vb = steady_v[r];
      for (int i = 0; i < S; ++i) {
        const int c = sel[r * S + i];
        const int s = layout.cluster_sizes[r * C + c];
        const uint8_t* src = static_cast<const uint8_t*>(host[r]) +
                             layout.cluster_offsets[r * C + c] * elem;
        kb.insert(kb.end(), src, src + s * tok);
        vb.insert(vb.end(), src + s * tok, src + 2 * s * tok);
      }
      KvView view{tc.dtype, size_t(d), kb.size() / tok, kb.data(), vb.data()};
      for (int g = 0; g < group; ++g) {
        const int h = r * group + g;
        std::vector<float> want = FullAttention(
            absl::MakeConstSpan(q.data() + h * d, d), view, DefaultScale(d));
        double err = 0, norm = 0;
        for (int i = 0; i < d; ++i) {
          err += std::pow(got[h * d + i] - want[i], 2);
          norm += std::pow(want[i], 2);
        }
        ASSERT_LE(std::sqrt(err / norm), tol)
            << "step " << step << " row " << r << " head " << g;
      }
    }
  }
  ASSERT_TRUE(wb.FinishUpdate().ok());
  std::vector<unsigned long long> dev(2);
  ASSERT_CUDA(cudaMemcpy(dev.data(), counters, 16, cudaMemcpyDeviceToHost));
  const WaveBufferStats& st = wb.stats();
  EXPECT_EQ(dev[0], st.lookups);
  EXPECT_EQ(dev[1], st.hits);
  EXPECT_EQ(st.steps, static_cast<uint64_t>(steps));
  EXPECT_GT(st.hits, 0u);
  if (tc.expect_overflow) {
    EXPECT_GT(st.overflow_clusters, 0u);
  } else {
    EXPECT_EQ(st.overflow_clusters, 0u);
    // The walk moves at most 2 of 20 ids a step: most lookups hit.
    EXPECT_GT(st.hits * 10, st.lookups * 7);
  }
  for (void* p :
       {(void*)dq, (void*)scratch, (void*)omax, (void*)oden, (void*)onum,
        (void*)out, (void*)dsel, (void*)pages, (void*)counters}) {
    cudaFree(p);
  }
  buffer->reset();
  for (void* h : host) cudaFreeHost(h);
  cudaStreamDestroy(stream);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, WaveBufferTest,
    ::testing::Values(Case{DType::kFp16, 128, 0.2, false},
                      Case{DType::kBf16, 64, 0.2, false},
                      Case{DType::kBf16, 256, 0.2, false},
                      Case{DType::kFp32, 128, 0.2, false},
                      Case{DType::kFp16, 128, 0.02, true},
                      // Rows split 1/1/2 over 3 and
                      // 1/1/1/1 over 4 Update threads.
                      Case{DType::kFp16, 128, 0.2, false, 3, 1},
                      Case{DType::kBf16, 128, 0.02, true, 4, 1},
                      // Update on the buffer's own thread.
                      Case{DType::kFp16, 128, 0.2, false, 8, 2048, true},
                      Case{DType::kBf16, 128, 0.02, true, 4, 1, true}));

TEST(WaveBufferValidation, RejectsBadOptions) {
  WaveBufferOptions opt;
  opt.max_selected = 4;
  opt.buffer_fraction = 0.0;
  absl::Status s = opt.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("buffer_fraction"), std::string_view::npos);
  opt.buffer_fraction = 0.05;
  opt.max_selected = 0;
  EXPECT_NE(opt.Validate().message().find("max_selected"),
            std::string_view::npos);
  opt.max_selected = 4;
  opt.update_threads = kMaxAdmitSegments + 1;
  EXPECT_NE(opt.Validate().message().find("update_threads"),
            std::string_view::npos);
  opt.update_threads = 2;
  opt.update_ids_per_thread = 0;
  EXPECT_NE(opt.Validate().message().find("update_ids_per_thread"),
            std::string_view::npos);
}

}  // namespace
}  // namespace wavekv::cuda
