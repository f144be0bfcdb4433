// Paged attention and the cluster page-table build against the CPU reference
// (index/attention.h): PartialAttention over the union of the steady zone and
// the selected clusters' tokens, MergeInto with an exact tail partial,
// Finalize. Cluster stores alternate between device memory and mapped pinned
// host memory (zero-copy) by row; about a third of the selected clusters sit
// in wave-buffer slots. Tolerance: relative L2 error of each q head's output
// <= 1e-5 (fp32 data) or 2e-3 (fp16/bf16: same decoded values on both sides;
// the GPU uses fast exp and another summation order); log-sum-exp within
// 1e-3 (absolute).
#include "index/cuda/paged_attention.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "index/attention.h"
#include "index/cuda/decode_attention.h"
#include "index/dtype.h"

namespace wavekv::cuda {
namespace {

struct Case {
  DType dtype;
  int head_dim;
  int rows;      // sessions x kv heads
  int group;     // q heads per row
  int clusters;  // per row
  int selected;  // per row
  int max_size;  // cluster sizes in [0, max_size]
  int max_steady;
  // Row 0 selects nothing valid (steady zone only); row 1 also has no
  // steady zone (an empty row).
  bool special_rows = false;
};

ElemType ToElem(DType t) {
  return t == DType::kFp16   ? ElemType::kFp16
         : t == DType::kBf16 ? ElemType::kBf16
                             : ElemType::kFp32;
}

// Device (or mapped pinned host) buffer, freed on scope exit.
class Buf {
 public:
  Buf(size_t bytes, bool host) : host_(host) {
    bytes = std::max<size_t>(bytes, 16);
    if (host) {
      EXPECT_EQ(cudaHostAlloc(&p_, bytes, cudaHostAllocMapped), cudaSuccess);
    } else {
      EXPECT_EQ(cudaMalloc(&p_, bytes), cudaSuccess);
    }
  }
  ~Buf() { host_ ? cudaFreeHost(p_) : cudaFree(p_); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  void* get() const { return p_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  void Put(const void* src, size_t bytes) {
    ASSERT_EQ(cudaMemcpy(p_, src, bytes, cudaMemcpyDefault), cudaSuccess);
  }

 private:
  bool host_;
  void* p_ = nullptr;
};

template <typename T>
std::unique_ptr<Buf> Upload(const std::vector<T>& v, bool host = false) {
  auto b = std::make_unique<Buf>(v.size() * sizeof(T), host);
  if (!v.empty()) b->Put(v.data(), v.size() * sizeof(T));
  return b;
}

template <typename T>
std::vector<T> Download(const void* src, size_t n) {
  std::vector<T> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), src, n * sizeof(T), cudaMemcpyDefault),
            cudaSuccess);
  return v;
}

class PagedAttentionTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    absl::Status s = CheckCudaDevice();
    if (!s.ok()) GTEST_SKIP() << s.message();
  }
};

TEST_P(PagedAttentionTest, ClustersSteadySlotsAndTailMatchCpu) {
  const Case c = GetParam();
  const int d = c.head_dim, R = c.rows, G = c.group, C = c.clusters,
            S = c.selected;
  const size_t elem = DTypeBytes(c.dtype);
  const size_t tok_bytes = d * elem;
  std::mt19937 rng(77 + d * 3 + R * 5 + G * 7 + C);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto encode = [&](const std::vector<float>& f) {
    std::vector<uint8_t> b(f.size() * elem);
    EncodeFromFloat(c.dtype, f.data(), f.size(), b.data());
    return b;
  };
  auto random_floats = [&](size_t n, float sd) {
    std::vector<float> f(n);
    for (float& x : f) x = sd * normal(rng);
    return f;
  };

  std::vector<float> q = random_floats(size_t(R) * G * d, 1.f);
  // Cluster stores: per row, cluster-major [K of s tokens][V of s tokens].
  std::vector<int32_t> sizes(size_t(R) * C);
  std::vector<int64_t> offsets(size_t(R) * C);
  std::vector<std::vector<uint8_t>> store(R);
  std::uniform_int_distribution<int> size_dist(0, c.max_size);
  for (int r = 0; r < R; ++r) {
    int64_t off = 0;
    for (int k = 0; k < C; ++k) {
      const int s = (k % 7 == 3) ? 0 : size_dist(rng);  // some empty
      sizes[r * C + k] = s;
      offsets[r * C + k] = off;
      off += 2 * int64_t{s} * d;
    }
    std::vector<float> f = random_floats(off, 1.f);
    store[r] = encode(f);
  }
  // Steady zone per row (device).
  std::vector<int32_t> steady_n(R);
  std::vector<std::vector<uint8_t>> steady_k(R), steady_v(R);
  std::uniform_int_distribution<int> steady_dist(0, c.max_steady);
  for (int r = 0; r < R; ++r) {
    steady_n[r] = steady_dist(rng);
    if (c.special_rows && r == 0) steady_n[r] = std::max(steady_n[r], 1);
    if (c.special_rows && r == 1) steady_n[r] = 0;
    steady_k[r] = encode(random_floats(size_t(steady_n[r]) * d, 1.f));
    steady_v[r] = encode(random_floats(size_t(steady_n[r]) * d, 1.f));
  }
  // Selection: S distinct ids per row in random order, one of them -1 and
  // one out of range when S allows.
  std::vector<int32_t> sel(size_t(R) * S);
  for (int r = 0; r < R; ++r) {
    std::vector<int32_t> ids(C);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int i = 0; i < S; ++i) sel[r * S + i] = ids[i];
    if (S > 4) {
      sel[r * S + 1] = -1;
      sel[r * S + S - 2] = C + 5;
    }
    if (c.special_rows && r < 2) {
      for (int i = 0; i < S; ++i) sel[r * S + i] = i % 2 == 0 ? -1 : C + i;
    }
  }
  // Wave-buffer slots: every third selected, non-empty cluster is resident.
  std::vector<int32_t> slot_list(size_t(R) * C, -1), slot_ids;
  std::vector<uint8_t> pool;
  uint64_t want_hits = 0, want_lookups = 0;
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < S; ++i) {
      const int k = sel[r * S + i];
      if (k < 0 || k >= C || sizes[r * C + k] == 0) continue;
      ++want_lookups;
      if (i % 3 != 0) continue;
      ++want_hits;
      const int s = sizes[r * C + k];
      slot_list[r * C + k] = static_cast<int32_t>(slot_ids.size());
      const int n_slots = (s + kSlotTokens - 1) / kSlotTokens;
      for (int j = 0; j < n_slots; ++j) {
        const int32_t slot =
            static_cast<int32_t>(pool.size() / (2 * kSlotTokens * tok_bytes));
        slot_ids.push_back(slot);
        pool.resize(pool.size() + 2 * kSlotTokens * tok_bytes, 0xEE);
        uint8_t* dst = pool.data() + size_t(slot) * 2 * kSlotTokens * tok_bytes;
        const uint8_t* src = store[r].data() + offsets[r * C + k] * elem;
        for (int t = j * kSlotTokens; t < std::min(s, (j + 1) * kSlotTokens);
             ++t) {
          const int pos = t % kSlotTokens;
          std::memcpy(dst + pos * tok_bytes, src + t * tok_bytes, tok_bytes);
          std::memcpy(dst + (kSlotTokens + pos) * tok_bytes,
                      src + (size_t(s) + t) * tok_bytes, tok_bytes);
        }
      }
    }
  }
  // Scatter the slots over the pool in random order: a cluster's slots need
  // not be contiguous or ascending.
  {
    const size_t slot_bytes = 2 * kSlotTokens * tok_bytes;
    const size_t n_slots = pool.size() / slot_bytes;
    std::vector<int32_t> perm(n_slots);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<uint8_t> scattered(pool.size());
    for (size_t i = 0; i < n_slots; ++i) {
      std::memcpy(scattered.data() + perm[i] * slot_bytes,
                  pool.data() + i * slot_bytes, slot_bytes);
    }
    pool.swap(scattered);
    for (int32_t& id : slot_ids) id = perm[id];
  }
  // Poison the stores where a cluster is resident: the kernel must read the
  // slots for those, never the store.
  std::vector<std::vector<uint8_t>> device_view = store;
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < C; ++k) {
      if (slot_list[r * C + k] < 0) continue;
      const size_t off = offsets[r * C + k] * elem;
      std::memset(device_view[r].data() + off, 0xFF,
                  2 * size_t(sizes[r * C + k]) * tok_bytes);
    }
  }
  // Tail: an exact partial over extra tokens per q head.
  std::vector<AttentionPartial> tails(size_t(R) * G);
  std::vector<float> tail_max(R * G), tail_den(R * G), tail_num(R * G * d);
  const float scale = DefaultScale(d);
  for (int h = 0; h < R * G; ++h) {
    const int n = (h % 5 == 0) ? 0 : 30;  // some heads without a tail
    std::vector<uint8_t> kb = encode(random_floats(size_t(n) * d, 1.f));
    std::vector<uint8_t> vb = encode(random_floats(size_t(n) * d, 1.f));
    KvView view{c.dtype, size_t(d), size_t(n), kb.data(), vb.data()};
    tails[h] =
        PartialAttention(absl::MakeConstSpan(q.data() + h * d, d), view, scale);
    tail_max[h] = tails[h].empty() ? -INFINITY : tails[h].max_logit;
    tail_den[h] = tails[h].denominator;
    for (int i = 0; i < d; ++i) {
      tail_num[h * d + i] = tails[h].empty() ? 0.f : tails[h].numerator[i];
    }
  }

  // Device side.
  std::vector<std::unique_ptr<Buf>> stores, steadies;
  std::vector<const void*> row_store(R), sk(R), sv(R);
  for (int r = 0; r < R; ++r) {
    stores.push_back(Upload(device_view[r], /*host=*/r % 2 == 1));
    row_store[r] = stores.back()->get();
    steadies.push_back(Upload(steady_k[r]));
    sk[r] = steadies.back()->get();
    steadies.push_back(Upload(steady_v[r]));
    sv[r] = steadies.back()->get();
  }
  auto d_q = Upload(q);
  auto d_sizes = Upload(sizes);
  auto d_offsets = Upload(offsets);
  auto d_sel = Upload(sel);
  auto d_slot_list = Upload(slot_list);
  auto d_slot_ids = Upload(slot_ids);
  auto d_pool = Upload(pool);
  auto d_row_store = Upload(row_store);
  auto d_sk = Upload(sk);
  auto d_sv = Upload(sv);
  auto d_steady_n = Upload(steady_n);
  auto d_tmax = Upload(tail_max);
  auto d_tden = Upload(tail_den);
  auto d_tnum = Upload(tail_num);
  Buf d_pages(sizeof(KvPage) * R * (1 + S), false);
  Buf d_counters(16, false);
  ASSERT_EQ(cudaMemset(d_counters.get(), 0, 16), cudaSuccess);
  // Row totals (steady + selected), and a staging area a little shorter
  // than the longest row (tokens past it are not staged).
  std::vector<int64_t> row_total(R);
  for (int r = 0; r < R; ++r) {
    row_total[r] = steady_n[r];
    for (int i = 0; i < S; ++i) {
      const int k = sel[r * S + i];
      if (k >= 0 && k < C) row_total[r] += sizes[r * C + k];
    }
  }
  const int64_t stage_row_tokens = std::max<int64_t>(
      1, *std::max_element(row_total.begin(), row_total.end()) - 3);
  Buf d_stage(2 * R * stage_row_tokens * tok_bytes, false);
  ASSERT_EQ(cudaMemset(d_stage.get(), 0, 2 * R * stage_row_tokens * tok_bytes),
            cudaSuccess);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // memsets above

  ClusterPagesArgs pa;
  pa.dtype = ToElem(c.dtype);
  pa.head_dim = d;
  pa.num_rows = R;
  pa.num_clusters = C;
  pa.num_selected = S;
  pa.selected = d_sel->as<int32_t>();
  pa.cluster_sizes = d_sizes->as<int32_t>();
  pa.cluster_offsets = d_offsets->as<int64_t>();
  pa.row_store = d_row_store->as<const void*>();
  pa.cluster_slot_list = d_slot_list->as<int32_t>();
  pa.steady_keys = d_sk->as<const void*>();
  pa.steady_values = d_sv->as<const void*>();
  pa.steady_tokens = d_steady_n->as<int32_t>();
  pa.pages = d_pages.as<KvPage>();
  pa.lookups = d_counters.as<unsigned long long>();
  pa.hits = d_counters.as<unsigned long long>() + 1;
  pa.stage_misses = true;
  ASSERT_TRUE(LaunchClusterPages(pa, stream).ok());

  const int max_splits = 40;
  const int QH = R * G;
  Buf scratch(SplitScratchFloats(QH, d, max_splits) * 4, false);
  Buf omax(QH * 4, false), oden(QH * 4, false), onum(QH * d * 4, false),
      out(QH * d * 4, false);
  PagedAttentionArgs a;
  a.dtype = ToElem(c.dtype);
  a.head_dim = d;
  a.num_rows = R;
  a.group = G;
  a.scale = scale;
  a.queries = d_q->as<float>();
  a.pages = d_pages.as<KvPage>();
  a.pages_per_row = 1 + S;
  a.slot_pool = d_pool->get();
  a.slot_ids = d_slot_ids->as<int32_t>();
  a.stage = d_stage.get();
  a.stage_row_tokens = stage_row_tokens;
  a.tokens_hint = c.max_steady + int64_t{S} * c.max_size / 2;
  a.max_splits = max_splits;
  a.split_scratch = scratch.as<float>();
  a.tail_max = d_tmax->as<float>();
  a.tail_den = d_tden->as<float>();
  a.tail_num = d_tnum->as<float>();
  a.out_max = omax.as<float>();
  a.out_den = oden.as<float>();
  a.out_num = onum.as<float>();
  a.out = out.as<float>();

  // CPU reference per q head.
  std::vector<std::vector<float>> want(QH);
  std::vector<float> want_lse(QH);
  for (int r = 0; r < R; ++r) {
    std::vector<uint8_t> kb = steady_k[r], vb = steady_v[r];
    for (int i = 0; i < S; ++i) {
      const int k = sel[r * S + i];
      if (k < 0 || k >= C) continue;
      const int s = sizes[r * C + k];
      const uint8_t* src = store[r].data() + offsets[r * C + k] * elem;
      kb.insert(kb.end(), src, src + s * tok_bytes);
      vb.insert(vb.end(), src + s * tok_bytes, src + 2 * s * tok_bytes);
    }
    KvView view{c.dtype, size_t(d), kb.size() / tok_bytes, kb.data(),
                vb.data()};
    for (int g = 0; g < G; ++g) {
      const int h = r * G + g;
      AttentionPartial p = PartialAttention(
          absl::MakeConstSpan(q.data() + h * d, d), view, scale);
      MergeInto(p, tails[h]);
      want[h] = p.empty() ? std::vector<float>(d, 0.f) : Finalize(p);
      want_lse[h] =
          p.empty() ? -INFINITY : p.max_logit + std::log(p.denominator);
    }
  }

  const double tol = c.dtype == DType::kFp32 ? 1e-5 : 2e-3;
  // Automatic split count, a few splits (several tiles each), the most
  // splits (many of them empty), then the page build and the automatic
  // split count again as one captured CUDA graph, then a tail that another
  // stream writes late (tail_ready: the merge must wait for it).
  cudaGraphExec_t exec = nullptr;
  for (int run = 0; run < 5; ++run) {
    const int splits = run == 1 ? 3 : run == 2 ? max_splits : 0;
    a.num_splits = splits;
    ASSERT_EQ(cudaMemset(out.get(), 0xFF, QH * d * 4), cudaSuccess);  // NaN
    ASSERT_EQ(cudaMemset(oden.get(), 0xFF, QH * 4), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    if (run < 3) {
      absl::Status st = LaunchPagedAttention(a, stream);
      ASSERT_TRUE(st.ok()) << st;
    } else if (run == 4) {
      // NaN tails until the late copy lands.
      ASSERT_EQ(cudaMemset(d_tmax->get(), 0xFF, tail_max.size() * 4),
                cudaSuccess);
      ASSERT_EQ(cudaMemset(d_tden->get(), 0xFF, tail_den.size() * 4),
                cudaSuccess);
      ASSERT_EQ(cudaMemset(d_tnum->get(), 0xFF, tail_num.size() * 4),
                cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      cudaStream_t late;
      cudaEvent_t ready;
      ASSERT_EQ(cudaStreamCreateWithFlags(&late, cudaStreamNonBlocking),
                cudaSuccess);
      ASSERT_EQ(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming),
                cudaSuccess);
      ASSERT_EQ(
          cudaLaunchHostFunc(
              late,
              [](void*) {
                std::this_thread::sleep_for(std::chrono::milliseconds(30));
              },
              nullptr),
          cudaSuccess);
      for (auto [dst, src] : {std::pair{d_tmax->get(), &tail_max},
                              std::pair{d_tden->get(), &tail_den},
                              std::pair{d_tnum->get(), &tail_num}}) {
        ASSERT_EQ(cudaMemcpyAsync(dst, src->data(), src->size() * 4,
                                  cudaMemcpyHostToDevice, late),
                  cudaSuccess);
      }
      ASSERT_EQ(cudaEventRecord(ready, late), cudaSuccess);
      PagedAttentionArgs waiting = a;
      waiting.tail_ready = ready;
      absl::Status st = LaunchPagedAttention(waiting, stream);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      cudaEventDestroy(ready);
      cudaStreamDestroy(late);
    } else {
      ASSERT_EQ(cudaMemset(d_pages.get(), 0xFF, sizeof(KvPage) * R * (1 + S)),
                cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      cudaGraph_t graph;
      ASSERT_EQ(
          cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
          cudaSuccess);
      ClusterPagesArgs no_counters = pa;
      no_counters.lookups = nullptr;
      no_counters.hits = nullptr;
      absl::Status st1 = LaunchClusterPages(no_counters, stream);
      absl::Status st2 = LaunchPagedAttention(a, stream);
      ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
      ASSERT_TRUE(st1.ok()) << st1;
      ASSERT_TRUE(st2.ok()) << st2;
      ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
      cudaGraphDestroy(graph);
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    }
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    std::vector<float> got = Download<float>(out.get(), QH * d);
    std::vector<float> gmax = Download<float>(omax.get(), QH);
    std::vector<float> gden = Download<float>(oden.get(), QH);
    for (int h = 0; h < QH; ++h) {
      double err = 0, norm = 0;
      for (int i = 0; i < d; ++i) {
        err += std::pow(double(got[h * d + i]) - want[h][i], 2);
        norm += std::pow(double(want[h][i]), 2);
      }
      if (norm == 0) {
        EXPECT_EQ(err, 0) << "head " << h;
        EXPECT_EQ(gden[h], 0.f) << "head " << h;
        continue;
      }
      EXPECT_LE(std::sqrt(err / norm), tol)
          << "q head " << h << " " << DTypeName(c.dtype) << " d " << d
          << " run " << run << " splits " << splits;
      EXPECT_NEAR(gmax[h] + std::log(gden[h]), want_lse[h], 1e-3)
          << "q head " << h;
    }
  }
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  std::vector<unsigned long long> counters =
      Download<unsigned long long>(d_counters.get(), 2);
  EXPECT_EQ(counters[0], want_lookups);
  EXPECT_EQ(counters[1], want_hits);

  // Staging: every token of a non-resident selected cluster below
  // stage_row_tokens was copied to its row position (keys, then values).
  std::vector<uint8_t> staged =
      Download<uint8_t>(d_stage.get(), 2 * R * stage_row_tokens * tok_bytes);
  int64_t checked = 0;
  for (int r = 0; r < R; ++r) {
    int64_t pos = steady_n[r];
    for (int i = 0; i < S; ++i) {
      const int k = sel[r * S + i];
      if (k < 0 || k >= C) continue;
      const int s = sizes[r * C + k];
      const bool resident = slot_list[r * C + k] >= 0;
      const uint8_t* src = store[r].data() + offsets[r * C + k] * elem;
      for (int t = 0; t < s && !resident; ++t) {
        if (pos + t >= stage_row_tokens) break;
        const uint8_t* gk =
            staged.data() + (2 * r * stage_row_tokens + pos + t) * tok_bytes;
        const uint8_t* gv = gk + stage_row_tokens * tok_bytes;
        ASSERT_EQ(std::memcmp(gk, src + t * tok_bytes, tok_bytes), 0)
            << "row " << r << " cluster " << k << " token " << t;
        ASSERT_EQ(std::memcmp(gv, src + (size_t(s) + t) * tok_bytes, tok_bytes),
                  0)
            << "row " << r << " cluster " << k << " token " << t;
        ++checked;
      }
      pos += s;
    }
  }
  if (S > 0 && !c.special_rows) {
    EXPECT_GT(checked, 0);
  }
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (DType t : {DType::kFp16, DType::kBf16, DType::kFp32}) {
    for (int d : {64, 128, 256}) {
      cases.push_back({t, d, 2, 4, 40, 12, 40, 100});   // GQA 4
      cases.push_back({t, d, 3, 1, 30, 30, 20, 10});    // no GQA, all chosen
      cases.push_back({t, d, 2, 8, 300, 150, 24, 70});  // GQA 8, many tiles
      cases.push_back({t, d, 4, 3, 50, 20, 9, 0});      // group 3, no steady
      // Steady-only and empty rows among full ones.
      cases.push_back({t, d, 3, 2, 60, 40, 30, 90, true});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllShapes, PagedAttentionTest,
                         ::testing::ValuesIn(AllCases()));

// One page of a long contiguous run per row (the full-attention layout),
// one-token pages (token-level gather) and one-token pages separated by
// empty pages (more pages per tile than the kernel's page window), fp16
// d=128 GQA 4, host and device, automatic and few splits.
TEST(PagedAttentionLayouts, ContiguousRunAndTokenPagesMatchCpu) {
  if (!CheckCudaDevice().ok()) GTEST_SKIP() << "no GPU";
  const int d = 128, R = 2, G = 4, n = 20000;
  const DType dt = DType::kFp16;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> q(R * G * d), kf(size_t(R) * n * d), vf(kf.size());
  for (float& x : q) x = normal(rng);
  for (float& x : kf) x = normal(rng);
  for (float& x : vf) x = normal(rng);
  for (int i = 0; i < d; ++i) kf[size_t(n / 3) * d + i] = 3.f * q[i];
  std::vector<uint8_t> kb(kf.size() * 2), vb(vf.size() * 2);
  EncodeFromFloat(dt, kf.data(), kf.size(), kb.data());
  EncodeFromFloat(dt, vf.data(), vf.size(), vb.data());
  const float scale = DefaultScale(d);
  for (bool host : {false, true}) {
    auto dk = Upload(kb, host), dv = Upload(vb, host);
    auto dq = Upload(q);
    // Token pages: every 7th token of each row, as 1-token pages.
    const int tp = n / 7;
    for (int layout = 0; layout < 3; ++layout) {
      const bool token_pages = layout > 0;
      const int stride = layout == 2 ? 2 : 1;  // page slots per token
      const int ppr = token_pages ? tp * stride : 1;
      std::vector<KvPage> pages(size_t(R) * ppr);
      for (int r = 0; r < R; ++r) {
        for (int j = 0; j < ppr; ++j) {
          KvPage& p = pages[r * ppr + j];
          const int i = j / stride;
          const size_t tok = size_t(r) * n + (token_pages ? size_t(i) * 7 : 0);
          if (j % stride != 0) {  // empty page between two tokens
            p.first_token = i + 1;
            continue;
          }
          p.keys = dk->as<uint8_t>() + tok * d * 2;
          p.values = dv->as<uint8_t>() + tok * d * 2;
          p.first_token = token_pages ? i : 0;
          p.num_tokens = token_pages ? 1 : n;
        }
      }
      auto dpages = Upload(pages);
      const int QH = R * G, max_splits = 64;
      Buf scratch(SplitScratchFloats(QH, d, max_splits) * 4, false);
      Buf omax(QH * 4, false), oden(QH * 4, false), onum(QH * d * 4, false),
          out(QH * d * 4, false);
      PagedAttentionArgs a;
      a.dtype = ElemType::kFp16;
      a.head_dim = d;
      a.num_rows = R;
      a.group = G;
      a.scale = scale;
      a.queries = dq->as<float>();
      a.pages = dpages->as<KvPage>();
      a.pages_per_row = ppr;
      a.tokens_hint = token_pages ? tp : n;
      a.max_splits = max_splits;
      a.split_scratch = scratch.as<float>();
      a.out_max = omax.as<float>();
      a.out_den = oden.as<float>();
      a.out_num = onum.as<float>();
      a.out = out.as<float>();
      for (int splits : {0, 5}) {
        a.num_splits = splits;
        ASSERT_TRUE(LaunchPagedAttention(a, nullptr).ok());
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<float> got = Download<float>(out.get(), QH * d);
        for (int r = 0; r < R; ++r) {
          std::vector<uint8_t> gk, gv;
          for (int i = 0; i < (token_pages ? tp : 1); ++i) {
            const size_t tok =
                size_t(r) * n + (token_pages ? size_t(i) * 7 : 0);
            const size_t cnt = token_pages ? 1 : n;
            gk.insert(gk.end(), kb.begin() + tok * d * 2,
                      kb.begin() + (tok + cnt) * d * 2);
            gv.insert(gv.end(), vb.begin() + tok * d * 2,
                      vb.begin() + (tok + cnt) * d * 2);
          }
          KvView view{dt, size_t(d), gk.size() / (d * 2), gk.data(), gv.data()};
          for (int g = 0; g < G; ++g) {
            const int h = r * G + g;
            std::vector<float> want = FullAttention(
                absl::MakeConstSpan(q.data() + h * d, d), view, scale);
            double err = 0, norm = 0;
            for (int i = 0; i < d; ++i) {
              err += std::pow(got[h * d + i] - want[i], 2);
              norm += std::pow(want[i], 2);
            }
            EXPECT_LE(std::sqrt(err / norm), 2e-3)
                << "host " << host << " layout " << layout << " splits "
                << splits;
          }
        }
      }
    }
  }
}

TEST(PagedAttentionValidation, RejectsBadArguments) {
  PagedAttentionArgs a;
  a.head_dim = 96;
  absl::Status s = LaunchPagedAttention(a, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim"), std::string_view::npos);
  a.head_dim = 128;
  a.num_rows = 1;
  a.group = 9;
  s = LaunchPagedAttention(a, nullptr);
  EXPECT_NE(s.message().find("group"), std::string_view::npos);
  a.group = 4;
  a.pages_per_row = 1;
  a.max_splits = 4;
  s = LaunchPagedAttention(a, nullptr);
  EXPECT_NE(s.message().find("buffers"), std::string_view::npos);
  float x = 0;
  a.tail_max = &x;
  s = LaunchPagedAttention(a, nullptr);
  EXPECT_NE(s.message().find("tail_max"), std::string_view::npos);

  ClusterPagesArgs c;
  c.num_rows = 1;
  c.num_selected = 3;
  s = LaunchClusterPages(c, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("buffers"), std::string_view::npos);
}

}  // namespace
}  // namespace wavekv::cuda
