// Decode attention per layer on the GPU, Llama-3-8B attention shape (32 q /
// 8 kv heads, d=128, fp16), contexts x batches, five ways:
//  (a) full attention, KV in GPU memory: our contiguous split-K kernel
//      (index/cuda/decode_attention.h) and the paged kernel over one page per
//      row (PyTorch SDPA: bench/torch_sdpa_decode.py in the same device call);
//  (b) wavekv, KV in GPU memory: retrieval (scoring + top-k + tail,
//      index/cuda/retrieval.h) + page table + paged attention with the tail
//      merge, one CUDA graph per layer;
//  (c) wavekv, KV in mapped pinned host memory with the wave buffer
//      (index/cuda/wave_buffer.h, 5% of each row's cluster slots): misses
//      read zero-copy by the attention kernel, admissions on a side stream,
//      LRU on the CPU overlapped with the next layer; --layers simulated
//      layers (own centroids, queries and buffer, one shared host KV store)
//      in a continuous pipeline; queries follow a random walk (--walks);
//  (d) dense offload: the paged kernel reads all KV from pinned host memory;
//  (e) token-level sparse offload: the same token budget as (c) (steady +
//      retrieved), gathered token by token from pinned host memory with no
//      cache (its selection cost is not counted).
// Index: synthetic clustered layout (cluster sizes uniform in 4..28, mean
// 16, 1% empty), random K/V/centroids (never zeros); steady zone 4 sinks +
// 64 recent + 512 not yet indexed tokens (the mean over an update cycle).
// Timing: CUDA events; (a), (b), (d), (e): median over iterations, L2
// flushed (192 MiB memset) before each; (c): mean per layer over a pipelined
// run. Prints Markdown tables.
//
// Usage: decode_attention [--contexts=32768,...] [--batches=1,4,16]
//   [--modes=abcde] [--layers=4] [--walks=0.05,0.2] [--iters=30]
//   [--max_host_gib=34]
#include "index/cuda/decode_attention.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/decode_attention_kernels.h"
#include "index/cuda/paged_attention.h"
#include "index/cuda/retrieval.h"
#include "index/cuda/wave_buffer.h"

namespace wavekv::bench {
namespace {

using cuda::ClusterPagesArgs;
using cuda::ElemType;
using cuda::KvPage;
using cuda::PagedAttentionArgs;

constexpr int kKvHeads = 8, kGroup = 4, kD = 128;
constexpr int kSteady = 4 + 64 + 512;
constexpr float kScale = 0.08838834764f;  // 1/sqrt(128)
constexpr int kMaxSplits = 256;

#define CK(x)                                                        \
  do {                                                               \
    cudaError_t e_ = (x);                                            \
    if (e_ != cudaSuccess) {                                         \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, \
                   cudaGetErrorString(e_));                          \
      std::exit(1);                                                  \
    }                                                                \
  } while (0)
#define CKS(x)                                                       \
  do {                                                               \
    absl::Status s_ = (x);                                           \
    if (!s_.ok()) {                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, \
                   std::string(s_.message()).c_str());               \
      std::exit(1);                                                  \
    }                                                                \
  } while (0)
#define CKI(x) CK(static_cast<cudaError_t>(x))

struct Flags {
  std::vector<int64_t> contexts{32768, 131072, 524288, 1048576};
  std::vector<int64_t> batches{1, 4, 16};
  std::string modes = "abcde";
  int layers = 4;
  std::vector<double> walks{0.05, 0.2};
  // Walks also run with the wave buffer admitting from host (no staging).
  std::vector<double> no_stage_walks;
  int iters = 30;
  double max_host_gib = 34;
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::fprintf(stderr, "bad flag %s\n", arg.c_str());
      std::exit(2);
    }
    const std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    auto ints = [&] {
      std::vector<int64_t> v;
      for (auto p : absl::StrSplit(value, ',')) {
        int64_t x;
        if (!absl::SimpleAtoi(p, &x)) std::exit(2);
        v.push_back(x);
      }
      return v;
    };
    if (name == "contexts") {
      f.contexts = ints();
    } else if (name == "batches") {
      f.batches = ints();
    } else if (name == "modes") {
      f.modes = value;
    } else if (name == "layers") {
      f.layers = static_cast<int>(ints()[0]);
    } else if (name == "iters") {
      f.iters = static_cast<int>(ints()[0]);
    } else if (name == "max_host_gib") {
      f.max_host_gib = static_cast<double>(ints()[0]);
    } else if (name == "no_stage_walks") {
      for (auto p : absl::StrSplit(value, ',')) {
        double x;
        if (!absl::SimpleAtod(p, &x)) std::exit(2);
        f.no_stage_walks.push_back(x);
      }
    } else if (name == "walks") {
      f.walks.clear();
      for (auto p : absl::StrSplit(value, ',')) {
        double x;
        if (!absl::SimpleAtod(p, &x)) std::exit(2);
        f.walks.push_back(x);
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", name.c_str());
      std::exit(2);
    }
  }
  return f;
}

// Device allocation freed on scope exit.
class Dev {
 public:
  Dev() = default;
  explicit Dev(size_t bytes) {
    CK(cudaMalloc(&p_, std::max<size_t>(bytes, 16)));
  }
  ~Dev() {
    if (p_) cudaFree(p_);
  }
  Dev(Dev&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  Dev& operator=(Dev&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

template <typename T>
Dev Upload(const std::vector<T>& v) {
  Dev d(v.size() * sizeof(T));
  CK(cudaMemcpy(d.get(), v.data(), v.size() * sizeof(T),
                cudaMemcpyHostToDevice));
  return d;
}

// Mapped pinned host allocation freed on scope exit.
class Pinned {
 public:
  explicit Pinned(size_t bytes) {
    CK(cudaHostAlloc(&p_, bytes, cudaHostAllocMapped));
  }
  ~Pinned() { cudaFreeHost(p_); }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Per-iteration event timing with an L2 flush before each iteration.
class Timer {
 public:
  Timer() : flush_(192ull << 20) {
    for (auto* e : {&a_, &b_}) CK(cudaEventCreate(e));
  }
  ~Timer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
  }
  template <typename F>
  double MedianUs(int iters, cudaStream_t s, F&& fn) {
    std::vector<double> t;
    for (int i = 0; i < iters + 2; ++i) {
      CK(cudaMemsetAsync(flush_.get(), i & 0xFF, 192ull << 20, s));
      CK(cudaEventRecord(a_, s));
      fn(i);
      CK(cudaEventRecord(b_, s));
      CK(cudaEventSynchronize(b_));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, a_, b_));
      if (i >= 2) t.push_back(1000.0 * ms);
    }
    return Median(t);
  }

 private:
  Dev flush_;
  cudaEvent_t a_, b_;
};

// Synthetic cluster-major layout of one row per (session, kv head).
struct Layout {
  int rows = 0;
  int clusters = 0;       // per row
  int64_t indexed = 0;    // tokens per row in clusters
  int64_t row_elems = 0;  // 2 * indexed * d
  int retrieval = 0;      // clusters per step (budget)
  int estimation = 0;
  std::vector<int32_t> sizes;    // [rows][clusters]
  std::vector<int64_t> offsets;  // [rows][clusters], elements
};

Layout MakeLayout(int64_t context, int rows, uint64_t seed) {
  Layout l;
  l.rows = rows;
  l.indexed = context - kSteady;
  l.clusters = static_cast<int>(std::llround(l.indexed / 16.0));
  l.row_elems = 2 * l.indexed * kD;
  l.sizes.resize(int64_t{rows} * l.clusters);
  l.offsets.resize(l.sizes.size());
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> size_dist(4, 28);
  int64_t nonempty = 0;
  for (int r = 0; r < rows; ++r) {
    int32_t* s = l.sizes.data() + int64_t{r} * l.clusters;
    int64_t sum = 0;
    for (int c = 0; c < l.clusters; ++c) {
      s[c] = (rng() % 100 == 0) ? 0 : size_dist(rng);
      sum += s[c];
    }
    // Spread the difference to the exact token count over non-empty ones.
    int64_t diff = l.indexed - sum;
    for (int c = 0; diff != 0; c = (c + 1) % l.clusters) {
      if (s[c] == 0 || (diff < 0 && s[c] <= 1)) continue;
      const int step = diff > 0 ? 1 : -1;
      s[c] += step;
      diff -= step;
    }
    int64_t off = 0;
    for (int c = 0; c < l.clusters; ++c) {
      l.offsets[int64_t{r} * l.clusters + c] = off;
      off += 2 * int64_t{s[c]} * kD;
      nonempty += s[c] > 0;
    }
  }
  const double n = static_cast<double>(nonempty) / rows;
  l.retrieval = std::max(1, static_cast<int>(std::ceil(0.018 * n - 1e-3)));
  l.estimation = static_cast<int>(std::ceil(0.232 * n - 1e-3));
  return l;
}

// Per-layer device state of the wavekv pipeline (retrieval, page table,
// paged attention) over a store in device or mapped host memory.
struct WaveLayer {
  const Layout* layout = nullptr;
  Dev centroids, value_sums, sizes_u32, queries, workspace, problems_dev;
  Dev selected, counts, tail_max, tail_den, tail_num;
  Dev pages, scratch, out_max, out_den, out_num, out;
  Dev sizes_i32, offsets, row_store, steady_kv, steady_ptrs, steady_tokens;
  std::vector<cuda::RetrievalProblem> problems;
  cuda::RetrievalArgs retrieval;
  ClusterPagesArgs pages_args;
  PagedAttentionArgs attn;
  std::unique_ptr<cuda::WaveBuffer> buffer;  // (c) only
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;

  ~WaveLayer() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  }
};

// store: [rows][row_elems] fp16 (device or mapped host). buffer_fraction > 0
// puts the layer behind a wave buffer.
std::unique_ptr<WaveLayer> MakeWaveLayer(const Layout& l, const void* store,
                                         double buffer_fraction, bool stage,
                                         uint64_t seed) {
  auto w = std::make_unique<WaveLayer>();
  w->layout = &l;
  const int rows = l.rows, C = l.clusters, S = l.retrieval;
  const int64_t nc = int64_t{rows} * C;
  w->centroids = Dev(nc * kD * 2);
  CKI(FillNormalHalf(w->centroids.get(), nc * kD, 0.5f, seed + 1, nullptr));
  w->value_sums = Dev(nc * kD * 4);
  CKI(FillNormalFloat(w->value_sums.get<float>(), nc * kD, 0.f, 4.f, seed + 2,
                      nullptr));
  std::vector<uint32_t> su(l.sizes.begin(), l.sizes.end());
  w->sizes_u32 = Upload(su);
  const int qh = rows * kGroup;
  w->queries = Dev(size_t(qh) * kD * 4);
  CKI(FillNormalFloat(w->queries.get<float>(), size_t(qh) * kD, 0.f, 1.f,
                      seed + 3, nullptr));
  const size_t ws =
      (cuda::RetrievalWorkspaceBytes(C, kGroup, kD) + 255) / 256 * 256;
  w->workspace = Dev(ws * rows);
  w->selected = Dev(size_t(rows) * S * 4);
  w->counts = Dev(size_t(rows) * 2 * 4);
  w->tail_max = Dev(size_t(qh) * 4);
  w->tail_den = Dev(size_t(qh) * 4);
  w->tail_num = Dev(size_t(qh) * kD * 4);
  w->problems.resize(rows);
  for (int r = 0; r < rows; ++r) {
    cuda::RetrievalProblem& p = w->problems[r];
    p.centroids = w->centroids.get<char>() + int64_t{r} * C * kD * 2;
    p.value_sums = w->value_sums.get<float>() + int64_t{r} * C * kD;
    p.sizes = w->sizes_u32.get<uint32_t>() + int64_t{r} * C;
    p.num_clusters = C;
    p.retrieval_clusters = S;
    p.estimation_clusters = l.estimation;
    p.queries = w->queries.get<float>() + int64_t{r} * kGroup * kD;
    p.workspace = w->workspace.get<char>() + r * ws;
    p.out_retrieval = w->selected.get<uint32_t>() + int64_t{r} * S;
    p.out_counts = w->counts.get<uint32_t>() + 2 * r;
    p.out_estimation = nullptr;
    p.out_max = w->tail_max.get<float>() + r * kGroup;
    p.out_den = w->tail_den.get<float>() + r * kGroup;
    p.out_num = w->tail_num.get<float>() + int64_t{r} * kGroup * kD;
  }
  w->problems_dev = Upload(w->problems);
  w->retrieval.centroid_type = ElemType::kFp16;
  w->retrieval.head_dim = kD;
  w->retrieval.group_size = kGroup;
  w->retrieval.scale = kScale;
  w->retrieval.num_problems = rows;
  w->retrieval.problems = w->problems.data();
  w->retrieval.device_problems = w->problems_dev.get<cuda::RetrievalProblem>();

  // Steady zone: random device K/V.
  w->steady_kv = Dev(size_t(rows) * 2 * kSteady * kD * 2);
  CKI(FillNormalHalf(w->steady_kv.get(), size_t(rows) * 2 * kSteady * kD, 1.f,
                     seed + 4, nullptr));
  ClusterPagesArgs& pa = w->pages_args;
  if (buffer_fraction > 0) {
    cuda::ClusterStoreLayout cl;
    cl.dtype = ElemType::kFp16;
    cl.head_dim = kD;
    cl.num_rows = rows;
    cl.num_clusters = C;
    cl.cluster_sizes = l.sizes;
    cl.cluster_offsets = l.offsets;
    for (int r = 0; r < rows; ++r) {
      cl.row_store.push_back(static_cast<const char*>(store) +
                             int64_t{r} * l.row_elems * 2);
    }
    cuda::WaveBufferOptions opt;
    opt.buffer_fraction = buffer_fraction;
    opt.max_selected = S;
    opt.stage_misses = stage;
    auto b = cuda::WaveBuffer::Create(opt, std::move(cl));
    CKS(b.status());
    w->buffer = std::move(*b);
    for (int r = 0; r < rows; ++r) {
      const char* k =
          w->steady_kv.get<char>() + size_t(r) * 2 * kSteady * kD * 2;
      CKS(w->buffer->LoadSteady(r, k, k + kSteady * kD * 2, kSteady, nullptr));
    }
    w->buffer->FillPagesArgs(&pa);
    w->buffer->FillAttentionArgs(&w->attn);
  } else {
    w->sizes_i32 = Upload(l.sizes);
    w->offsets = Upload(l.offsets);
    std::vector<const void*> rs(rows), sk(rows), sv(rows);
    for (int r = 0; r < rows; ++r) {
      rs[r] = static_cast<const char*>(store) + int64_t{r} * l.row_elems * 2;
      sk[r] = w->steady_kv.get<char>() + size_t(r) * 2 * kSteady * kD * 2;
      sv[r] = static_cast<const char*>(sk[r]) + kSteady * kD * 2;
    }
    w->row_store = Upload(rs);
    std::vector<const void*> both(sk);
    both.insert(both.end(), sv.begin(), sv.end());
    w->steady_ptrs = Upload(both);
    w->steady_tokens = Upload(std::vector<int32_t>(rows, kSteady));
    pa.dtype = ElemType::kFp16;
    pa.head_dim = kD;
    pa.num_rows = rows;
    pa.num_clusters = C;
    pa.cluster_sizes = w->sizes_i32.get<int32_t>();
    pa.cluster_offsets = w->offsets.get<int64_t>();
    pa.row_store = w->row_store.get<const void*>();
    pa.steady_keys = w->steady_ptrs.get<const void*>();
    pa.steady_values = w->steady_ptrs.get<const void*>() + rows;
    pa.steady_tokens = w->steady_tokens.get<int32_t>();
  }
  pa.num_selected = S;
  pa.selected = w->selected.get<int32_t>();
  w->pages = Dev(size_t(rows) * (1 + S) * sizeof(KvPage));
  pa.pages = w->pages.get<KvPage>();

  PagedAttentionArgs& a = w->attn;
  a.dtype = ElemType::kFp16;
  a.head_dim = kD;
  a.num_rows = rows;
  a.group = kGroup;
  a.scale = kScale;
  a.queries = w->queries.get<float>();
  a.pages = w->pages.get<KvPage>();
  a.pages_per_row = 1 + S;
  a.tokens_hint = kSteady + int64_t{S} * 16;
  a.max_splits = kMaxSplits;
  w->scratch = Dev(cuda::SplitScratchFloats(qh, kD, kMaxSplits) * 4);
  a.split_scratch = w->scratch.get<float>();
  a.tail_max = w->tail_max.get<float>();
  a.tail_den = w->tail_den.get<float>();
  a.tail_num = w->tail_num.get<float>();
  w->out_max = Dev(qh * 4);
  w->out_den = Dev(qh * 4);
  w->out_num = Dev(size_t(qh) * kD * 4);
  w->out = Dev(size_t(qh) * kD * 4);
  a.out_max = w->out_max.get<float>();
  a.out_den = w->out_den.get<float>();
  a.out_num = w->out_num.get<float>();
  a.out = w->out.get<float>();
  CK(cudaDeviceSynchronize());
  return w;
}

// Enqueues one layer's step; with `ev` (4 events) records stage bounds.
void EnqueueWave(WaveLayer& w, cudaStream_t s, cudaEvent_t* ev = nullptr) {
  if (ev) CK(cudaEventRecord(ev[0], s));
  CKS(cuda::LaunchRetrieval(w.retrieval, s));
  if (ev) CK(cudaEventRecord(ev[1], s));
  CKS(cuda::LaunchClusterPages(w.pages_args, s));
  if (ev) CK(cudaEventRecord(ev[2], s));
  CKS(cuda::LaunchPagedAttention(w.attn, s));
  if (ev) CK(cudaEventRecord(ev[3], s));
}

bool Capture(WaveLayer& w, cudaStream_t s) {
  if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) !=
      cudaSuccess) {
    return false;
  }
  EnqueueWave(w, s);
  if (cudaStreamEndCapture(s, &w.graph) != cudaSuccess) return false;
  return cudaGraphInstantiate(&w.exec, w.graph, 0) == cudaSuccess;
}

struct Stages {
  double retrieval = 0, pages = 0, attention = 0;
};

// Median stage times of `iters` un-graphed steps (L2 flushed before each).
Stages TimeStages(WaveLayer& w, cudaStream_t s, int iters, uint64_t seed,
                  float walk) {
  cudaEvent_t ev[4];
  for (auto& e : ev) CK(cudaEventCreate(&e));
  Dev flush(192ull << 20);
  std::vector<double> t[3];
  for (int i = 0; i < iters; ++i) {
    CKI(QueryWalk(w.attn.queries == nullptr
                      ? nullptr
                      : const_cast<float*>(w.attn.queries),
                  w.layout->rows * kGroup, kD, walk, seed, 1000 + i, s));
    if (w.buffer) CKS(w.buffer->WaitForAdmissions(s));
    CK(cudaMemsetAsync(flush.get(), i, 192ull << 20, s));
    EnqueueWave(w, s, ev);
    if (w.buffer) {
      CKS(w.buffer->RecordSelection(w.selected.get<int32_t>(), s));
      CKS(w.buffer->Update());
    }
    CK(cudaEventSynchronize(ev[3]));
    for (int k = 0; k < 3; ++k) {
      float ms;
      CK(cudaEventElapsedTime(&ms, ev[k], ev[k + 1]));
      t[k].push_back(1000.0 * ms);
    }
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return {Median(t[0]), Median(t[1]), Median(t[2])};
}

struct Row {
  int64_t context = 0;
  int batch = 0;
  double a_ours = -1, a_paged = -1, b = -1, d = -1, e = -1;
  Stages b_stages;
  int64_t exact_tokens = 0;  // per row: steady + retrieved (expected)
  int clusters = 0, retrieval = 0;
  struct C {
    double walk, us, hit, cpu_us, book_us, overflow;
    bool stage;
    Stages stages;
  };
  std::vector<C> c;
  std::string note;
};

std::string Us(double us) {
  if (us < 0) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", us);
  return b;
}

void RunGpuFull(const Flags& f, Row& row, cudaStream_t s, Timer& timer) {
  const int rows = kKvHeads * row.batch;
  const int64_t n = row.context;
  const size_t bytes = size_t(rows) * n * kD * 2;
  size_t free_b, total_b;
  CK(cudaMemGetInfo(&free_b, &total_b));
  if (2 * bytes + (2ull << 30) > free_b) {
    row.note += "(a) does not fit; ";
    return;
  }
  Dev k(bytes), v(bytes), q(size_t(rows) * kGroup * kD * 4);
  CKI(FillNormalHalf(k.get(), bytes / 2, 1.f, 11, s));
  CKI(FillNormalHalf(v.get(), bytes / 2, 1.f, 12, s));
  CKI(FillNormalFloat(q.get<float>(), size_t(rows) * kGroup * kD, 0, 1, 13, s));
  const int qh = rows * kGroup;
  Dev scratch(cuda::SplitScratchFloats(qh, kD, 1024) * 4), omax(qh * 4),
      oden(qh * 4), onum(size_t(qh) * kD * 4), out(size_t(qh) * kD * 4);
  cuda::DecodeAttentionArgs a;
  a.dtype = ElemType::kFp16;
  a.head_dim = kD;
  a.num_q_heads = qh;
  a.num_kv_heads = rows;
  a.num_tokens = n;
  a.head_stride = n * kD;
  a.token_stride = kD;
  a.scale = kScale;
  a.queries = q.get<float>();
  a.keys = k.get();
  a.values = v.get();
  a.split_scratch = scratch.get<float>();
  a.max_splits = 1024;
  a.out_max = omax.get<float>();
  a.out_den = oden.get<float>();
  a.out_num = onum.get<float>();
  a.out = out.get<float>();
  row.a_ours = timer.MedianUs(
      f.iters, s, [&](int) { CKS(cuda::LaunchDecodeAttention(a, s)); });
  std::vector<KvPage> pages(rows);
  for (int r = 0; r < rows; ++r) {
    pages[r].keys = k.get<char>() + size_t(r) * n * kD * 2;
    pages[r].values = v.get<char>() + size_t(r) * n * kD * 2;
    pages[r].num_tokens = static_cast<int32_t>(n);
  }
  Dev dpages = Upload(pages);
  PagedAttentionArgs p;
  p.dtype = ElemType::kFp16;
  p.head_dim = kD;
  p.num_rows = rows;
  p.group = kGroup;
  p.scale = kScale;
  p.queries = q.get<float>();
  p.pages = dpages.get<KvPage>();
  p.pages_per_row = 1;
  p.tokens_hint = n;
  p.max_splits = 1024;
  p.split_scratch = scratch.get<float>();
  p.out_max = omax.get<float>();
  p.out_den = oden.get<float>();
  p.out_num = onum.get<float>();
  p.out = out.get<float>();
  row.a_paged = timer.MedianUs(
      f.iters, s, [&](int) { CKS(cuda::LaunchPagedAttention(p, s)); });
}

void RunGpuWave(const Flags& f, const Layout& l, Row& row, cudaStream_t s,
                Timer& timer) {
  const size_t bytes = size_t(l.rows) * l.row_elems * 2;
  size_t free_b, total_b;
  CK(cudaMemGetInfo(&free_b, &total_b));
  const size_t meta = size_t(l.rows) * l.clusters * kD * 6;
  if (bytes + meta + (2ull << 30) > free_b) {
    row.note += "(b) does not fit; ";
    return;
  }
  Dev store(bytes);
  CKI(FillNormalHalf(store.get(), bytes / 2, 1.f, 21, s));
  auto w = MakeWaveLayer(l, store.get(), 0, false, 100);
  EnqueueWave(*w, s);  // warm up (function attributes, first launches)
  CK(cudaStreamSynchronize(s));
  const bool graph = Capture(*w, s);
  if (!graph) {
    (void)cudaGetLastError();
    row.note += "(b) graph capture failed, direct launches; ";
  }
  // Same query every iteration (the selection's cost does not depend on it);
  // the L2 flush before each iteration keeps the centroids cold.
  row.b = timer.MedianUs(f.iters, s, [&](int) {
    if (graph) {
      CK(cudaGraphLaunch(w->exec, s));
    } else {
      EnqueueWave(*w, s);
    }
  });
  row.b_stages = TimeStages(*w, s, f.iters, 7, 0.05f);
}

void RunHost(const Flags& f, const Layout& l, Row& row, cudaStream_t s,
             Timer& timer) {
  const size_t bytes = size_t(l.rows) * l.row_elems * 2;
  if (bytes > f.max_host_gib * (1ull << 30)) {
    row.note += "(c-e) host store over --max_host_gib; ";
    return;
  }
  Pinned store(bytes);
  CKI(FillNormalHalf(store.get(), bytes / 2, 1.f, 31, s));
  CK(cudaStreamSynchronize(s));
  const int rows = l.rows, S = l.retrieval;

  if (f.modes.find('c') != std::string::npos) {
    std::vector<std::pair<double, bool>> runs;
    for (double walk : f.walks) runs.push_back({walk, true});
    for (double walk : f.no_stage_walks) runs.push_back({walk, false});
    for (const auto& [walk, stage] : runs) {
      std::vector<std::unique_ptr<WaveLayer>> layers;
      for (int i = 0; i < f.layers; ++i) {
        layers.push_back(
            MakeWaveLayer(l, store.get(), 0.05, stage, 200 + 10 * i));
      }
      for (auto& w : layers) {
        CKS(w->buffer->WaitForAdmissions(s));
        EnqueueWave(*w, s);
        CKS(w->buffer->RecordSelection(w->selected.get<int32_t>(), s));
        CKS(w->buffer->Update());
      }
      bool graph = true;
      for (auto& w : layers) graph = graph && Capture(*w, s);
      if (!graph) (void)cudaGetLastError();
      cudaEvent_t e0, e1;
      CK(cudaEventCreate(&e0));
      CK(cudaEventCreate(&e1));
      const int warm = 30 * f.layers, meas = 60 * f.layers;
      uint64_t hits0 = 0, look0 = 0, over0 = 0;
      double book0 = 0;
      double cpu_s = 0;
      for (int i = 0; i < warm + meas; ++i) {
        WaveLayer& w = *layers[i % f.layers];
        if (i == warm) {
          for (auto& x : layers) {
            hits0 += x->buffer->stats().hits;
            look0 += x->buffer->stats().lookups;
            over0 += x->buffer->stats().overflow_clusters;
            book0 += x->buffer->bookkeeping_seconds();
          }
          CK(cudaEventRecord(e0, s));
        }
        CKI(QueryWalk(const_cast<float*>(w.attn.queries), rows * kGroup, kD,
                      static_cast<float>(walk), 300 + i % f.layers, i, s));
        CKS(w.buffer->WaitForAdmissions(s));
        if (graph) {
          CK(cudaGraphLaunch(w.exec, s));
        } else {
          EnqueueWave(w, s);
        }
        CKS(w.buffer->RecordSelection(w.selected.get<int32_t>(), s));
        // Bookkeeping of the previous layer overlaps this layer's GPU work.
        if (i > 0) {
          auto t0 = std::chrono::steady_clock::now();
          CKS(layers[(i - 1) % f.layers]->buffer->Update());
          if (i > warm) {
            cpu_s += std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - t0)
                         .count();
          }
        }
      }
      CK(cudaEventRecord(e1, s));
      CK(cudaEventSynchronize(e1));
      CKS(layers[(warm + meas - 1) % f.layers]->buffer->Update());
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      uint64_t hits = 0, look = 0, over = 0;
      double book = 0;
      for (auto& x : layers) {
        book += x->buffer->bookkeeping_seconds();
        hits += x->buffer->stats().hits;
        look += x->buffer->stats().lookups;
        over += x->buffer->stats().overflow_clusters;
      }
      Row::C c;
      c.walk = walk;
      c.stage = stage;
      c.us = 1000.0 * ms / meas;
      c.hit = look > look0 ? double(hits - hits0) / double(look - look0) : 0;
      c.cpu_us = 1e6 * cpu_s / meas;
      // The last Update ran after the timed region: its share is small.
      c.book_us = 1e6 * (book - book0) / meas;
      c.overflow = double(over - over0) / meas;
      c.stages =
          TimeStages(*layers[0], s, f.iters, 400, static_cast<float>(walk));
      if (!graph) row.note += "(c) graph capture failed; ";
      row.c.push_back(c);
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
    }
  }

  const int qh = rows * kGroup;
  Dev q(size_t(qh) * kD * 4),
      scratch(cuda::SplitScratchFloats(qh, kD, 1024) * 4), omax(qh * 4),
      oden(qh * 4), onum(size_t(qh) * kD * 4), out(size_t(qh) * kD * 4),
      steady(size_t(rows) * 2 * kSteady * kD * 2);
  CKI(FillNormalFloat(q.get<float>(), size_t(qh) * kD, 0, 1, 41, s));
  CKI(FillNormalHalf(steady.get(), size_t(rows) * 2 * kSteady * kD, 1, 42, s));
  PagedAttentionArgs p;
  p.dtype = ElemType::kFp16;
  p.head_dim = kD;
  p.num_rows = rows;
  p.group = kGroup;
  p.scale = kScale;
  p.queries = q.get<float>();
  p.max_splits = 1024;
  p.split_scratch = scratch.get<float>();
  p.out_max = omax.get<float>();
  p.out_den = oden.get<float>();
  p.out_num = onum.get<float>();
  p.out = out.get<float>();
  auto steady_page = [&](int r) {
    KvPage pg;
    pg.keys = steady.get<char>() + size_t(r) * 2 * kSteady * kD * 2;
    pg.values = static_cast<const char*>(pg.keys) + kSteady * kD * 2;
    pg.num_tokens = kSteady;
    return pg;
  };

  if (f.modes.find('d') != std::string::npos) {
    // Every cluster of the row, read from host.
    const int ppr = 1 + l.clusters;
    std::vector<KvPage> pages(size_t(rows) * ppr);
    for (int r = 0; r < rows; ++r) {
      int32_t first = 0;
      for (int c = 0; c < ppr; ++c) {
        KvPage& pg = pages[size_t(r) * ppr + c];
        if (c == 0) {
          pg = steady_page(r);
        } else {
          const int64_t k = int64_t{r} * l.clusters + c - 1;
          const char* base =
              store.get<char>() + (int64_t{r} * l.row_elems + l.offsets[k]) * 2;
          pg.keys = base;
          pg.values = base + int64_t{l.sizes[k]} * kD * 2;
          pg.num_tokens = l.sizes[k];
          pg.first_token = first;
        }
        first += pg.num_tokens;
      }
    }
    Dev dp = Upload(pages);
    p.pages = dp.get<KvPage>();
    p.pages_per_row = ppr;
    p.tokens_hint = row.context;
    const int iters = std::max(3, std::min(f.iters, int(4e9 / bytes)));
    row.d = timer.MedianUs(iters, s,
                           [&](int) { CKS(cuda::LaunchPagedAttention(p, s)); });
  }
  if (f.modes.find('e') != std::string::npos) {
    // The same exact-token budget as (b)/(c), one page per token at random
    // positions, two tables used in turn.
    const int64_t budget = int64_t{S} * 16;
    row.exact_tokens = kSteady + budget;
    const int ppr = static_cast<int>(1 + budget);
    std::vector<Dev> tables;
    std::mt19937_64 rng(51);
    for (int t = 0; t < 2; ++t) {
      std::vector<KvPage> pages(size_t(rows) * ppr);
      for (int r = 0; r < rows; ++r) {
        pages[size_t(r) * ppr] = steady_page(r);
        for (int i = 1; i < ppr; ++i) {
          int64_t k;
          do {
            k = int64_t{r} * l.clusters + rng() % l.clusters;
          } while (l.sizes[k] == 0);
          const int j = static_cast<int>(rng() % l.sizes[k]);
          const char* base =
              store.get<char>() + (int64_t{r} * l.row_elems + l.offsets[k]) * 2;
          KvPage& pg = pages[size_t(r) * ppr + i];
          pg.keys = base + int64_t{j} * kD * 2;
          pg.values = base + (int64_t{l.sizes[k]} + j) * kD * 2;
          pg.num_tokens = 1;
          pg.first_token = kSteady + i - 1;
        }
      }
      tables.push_back(Upload(pages));
    }
    p.pages_per_row = ppr;
    p.tokens_hint = row.exact_tokens;
    row.e = timer.MedianUs(f.iters, s, [&](int i) {
      p.pages = tables[i % 2].get<KvPage>();
      CKS(cuda::LaunchPagedAttention(p, s));
    });
  }
}

}  // namespace
}  // namespace wavekv::bench

int main(int argc, char** argv) {
  using namespace wavekv::bench;
  const Flags f = ParseFlags(argc, argv);
  if (absl::Status st = wavekv::cuda::CheckCudaDevice(); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.0f MiB L2\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize / 1048576.0);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  Timer timer;
  std::vector<Row> rows;
  for (int64_t n : f.contexts) {
    for (int64_t b : f.batches) {
      Row row;
      row.context = n;
      row.batch = static_cast<int>(b);
      const Layout l = MakeLayout(n, kKvHeads * row.batch, 1000 + n + b);
      row.exact_tokens = kSteady + int64_t{l.retrieval} * 16;
      row.clusters = l.clusters;
      row.retrieval = l.retrieval;
      auto t0 = std::chrono::steady_clock::now();
      if (f.modes.find('a') != std::string::npos) RunGpuFull(f, row, s, timer);
      if (f.modes.find('b') != std::string::npos) {
        RunGpuWave(f, l, row, s, timer);
      }
      if (f.modes.find_first_of("cde") != std::string::npos) {
        RunHost(f, l, row, s, timer);
      }
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
              .count();
      std::fprintf(stderr, "done %lld x %d in %.1f s %s\n", (long long)n,
                   row.batch, secs, row.note.c_str());
      std::fflush(stderr);
      rows.push_back(row);
    }
  }
  std::printf(
      "\n| context | batch | clusters/row (retrieved) | (a) ours us | (a) "
      "ours paged us | (b) wavekv GPU us | (b) vs (a) ours | (d) dense "
      "offload us | (e) token offload us | notes |\n|---|---|---|---|---|---"
      "|---|---|---|---|\n");
  for (const Row& r : rows) {
    const double best_a =
        r.a_paged > 0 && (r.a_ours < 0 || r.a_paged < r.a_ours) ? r.a_paged
                                                                : r.a_ours;
    char ratio[32] = "-";
    if (best_a > 0 && r.b > 0)
      std::snprintf(ratio, sizeof ratio, "%.2fx", best_a / r.b);
    std::printf("| %lld | %d | %d (%d) | %s | %s | %s | %s | %s | %s | %s |\n",
                (long long)r.context, r.batch, r.clusters, r.retrieval,
                Us(r.a_ours).c_str(), Us(r.a_paged).c_str(), Us(r.b).c_str(),
                ratio, Us(r.d).c_str(), Us(r.e).c_str(), r.note.c_str());
  }
  std::printf(
      "\n| context | batch | walk | (c) wavekv host+5%% buffer us/layer | "
      "hit ratio | overflow clusters/layer | CPU update us/layer (incl. wait) "
      "| (e) / (c) "
      "| (c) stages: retrieval / pages / attention us |\n|---|---|---|---|---"
      "|---|---|---|---|\n");
  for (const Row& r : rows) {
    for (const Row::C& c : r.c) {
      char ratio[32] = "-";
      if (r.e > 0) std::snprintf(ratio, sizeof ratio, "%.2fx", r.e / c.us);
      std::printf(
          "| %lld | %d | %.2f%s | %.1f | %.3f | %.1f | %.0f, %.0f | %s | %.1f "
          "/ "
          "%.1f / %.1f |\n",
          (long long)r.context, r.batch, c.walk, c.stage ? "" : " (no staging)",
          c.us, c.hit, c.overflow, c.cpu_us, c.book_us, ratio,
          c.stages.retrieval, c.stages.pages, c.stages.attention);
    }
  }
  std::printf(
      "\n| context | batch | (b) stages: retrieval / pages / attention us "
      "(un-graphed, L2 flushed) | exact tokens/row |\n|---|---|---|---|\n");
  for (const Row& r : rows) {
    if (r.b < 0) continue;
    std::printf("| %lld | %d | %.1f / %.1f / %.1f | %lld |\n",
                (long long)r.context, r.batch, r.b_stages.retrieval,
                r.b_stages.pages, r.b_stages.attention,
                (long long)r.exact_tokens);
  }
  cudaStreamDestroy(s);
  return 0;
}
