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
//   [--max_host_gib=34] [--serial_tail=1] [--update_threads=N]
//   [--async_update=1]
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
#include "bench/decode_attention_wave.h"

namespace wavekv::bench {
namespace {

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
  // Run the tail estimation in order with the attention instead of on its
  // own stream (to measure what the overlap gains).
  bool serial_tail = false;
  // (c): WaveBufferOptions::update_threads, 0 = its default.
  int update_threads = 0;
  // (c): each layer's bookkeeping on its buffer's own thread (UpdateAsync),
  // joined when the layer comes round again; false (default, measured
  // better at batch 1): the main thread runs the previous layer's Update
  // after enqueueing the next layer.
  bool async_update = false;
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
    } else if (name == "async_update") {
      f.async_update = ints()[0] != 0;
    } else if (name == "update_threads") {
      f.update_threads = static_cast<int>(ints()[0]);
    } else if (name == "serial_tail") {
      f.serial_tail = ints()[0] != 0;
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
  w->fork_tail = !f.serial_tail;
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
        layers.push_back(MakeWaveLayer(l, store.get(), 0.05, stage,
                                       200 + 10 * i, f.update_threads));
        layers.back()->fork_tail = !f.serial_tail;
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
            CKS(x->buffer->FinishUpdate());
            hits0 += x->buffer->stats().hits;
            look0 += x->buffer->stats().lookups;
            over0 += x->buffer->stats().overflow_clusters;
            book0 += x->buffer->bookkeeping_seconds();
          }
          CK(cudaEventRecord(e0, s));
        }
        CKI(QueryWalk(const_cast<float*>(w.attn.queries), rows * kGroup, kD,
                      static_cast<float>(walk), 300 + i % f.layers, i, s));
        {
          // Async: joins this layer's bookkeeping of its previous step.
          auto t0 = std::chrono::steady_clock::now();
          CKS(w.buffer->WaitForAdmissions(s));
          if (f.async_update && i > warm) {
            cpu_s += std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - t0)
                         .count();
          }
        }
        if (graph) {
          CK(cudaGraphLaunch(w.exec, s));
        } else {
          EnqueueWave(w, s);
        }
        CKS(w.buffer->RecordSelection(w.selected.get<int32_t>(), s));
        if (f.async_update) {
          CKS(w.buffer->UpdateAsync());
        } else if (i > 0) {
          // Bookkeeping of the previous layer overlaps this layer's GPU work.
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
      if (f.async_update) {
        for (auto& x : layers) CKS(x->buffer->FinishUpdate());
      } else {
        CKS(layers[(warm + meas - 1) % f.layers]->buffer->Update());
      }
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
