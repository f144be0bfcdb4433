// Shared pieces of bench/decode_attention.cc: RAII buffers, the synthetic
// cluster-major index layout, and one layer of the wavekv decode pipeline
// (retrieval + page table + paged attention, optionally behind a wave
// buffer) with its CUDA graph and stage timing. Bench-only code: errors end
// the process with a message.
#ifndef WAVEKV_BENCH_DECODE_ATTENTION_WAVE_H_
#define WAVEKV_BENCH_DECODE_ATTENTION_WAVE_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "index/cuda/paged_attention.h"
#include "index/cuda/retrieval.h"
#include "index/cuda/wave_buffer.h"

namespace wavekv::bench {

using cuda::ClusterPagesArgs;
using cuda::ElemType;
using cuda::KvPage;
using cuda::PagedAttentionArgs;

// Llama-3-8B attention shape; steady zone = 4 sinks + 64 recent + 512 not
// yet indexed tokens (the mean over a 1024-token update cycle).
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

double Median(std::vector<double> v);

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

Layout MakeLayout(int64_t context, int rows, uint64_t seed);

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
  // The tail estimation's stream and fork/join events (EnqueueWave without
  // stage events runs the tail beside the page build and attention).
  cuda::RetrievalTailFork fork;
  bool fork_tail = true;  // false: the whole step in order on one stream
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;

  WaveLayer() {
    CK(cudaStreamCreateWithFlags(&fork.tail_stream, cudaStreamNonBlocking));
    CK(cudaEventCreateWithFlags(&fork.selected, cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&fork.tail_done, cudaEventDisableTiming));
  }
  ~WaveLayer() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    cudaEventDestroy(fork.tail_done);
    cudaEventDestroy(fork.selected);
    cudaStreamDestroy(fork.tail_stream);
  }
  WaveLayer(const WaveLayer&) = delete;
  WaveLayer& operator=(const WaveLayer&) = delete;
};

// store: [rows][row_elems] fp16 (device or mapped host). buffer_fraction > 0
// puts the layer behind a wave buffer (stage: its stage_misses option;
// update_threads > 0: its update_threads option).
std::unique_ptr<WaveLayer> MakeWaveLayer(const Layout& l, const void* store,
                                         double buffer_fraction, bool stage,
                                         uint64_t seed, int update_threads = 0);

// Enqueues one layer's step. Without `ev` the tail estimation runs on the
// layer's tail stream beside the page build and the split attention and is
// joined before the split merge; with `ev` (4 events) everything runs in order
// on `s` and the events record the stage bounds.
void EnqueueWave(WaveLayer& w, cudaStream_t s, cudaEvent_t* ev = nullptr);

// Captures EnqueueWave into w.graph / w.exec; false if capture failed.
bool Capture(WaveLayer& w, cudaStream_t s);

struct Stages {
  double retrieval = 0, pages = 0, attention = 0;
};

// Median stage times of `iters` un-graphed steps (L2 flushed before each),
// queries moving by `walk` each step.
Stages TimeStages(WaveLayer& w, cudaStream_t s, int iters, uint64_t seed,
                  float walk);

}  // namespace wavekv::bench

#endif  // WAVEKV_BENCH_DECODE_ATTENTION_WAVE_H_
