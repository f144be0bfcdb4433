// Latency of one decode step's retrieval planning on the GPU (scoring +
// GQA ranking + zone selection + tail statistics, LaunchRetrieval) for the
// Llama-3-8B attention shape (32 q / 8 kv heads, d = 128, fp16 centroids,
// 16 tokens per cluster), contexts 32K..1M, batch 1, 4 and 16, against the
// HBM bound: centroids + sizes + the estimation zone's value sums, read
// once, at the measured device-to-device copy bandwidth.
//
// Times each configuration two ways: events around the LaunchRetrieval
// call (host launch gaps included) and replays of a CUDA graph holding it
// (GPU time only).
//
// Usage: retrieval_bench [--iters=N] [--tokens=N] [--batch=B]
//   (--tokens/--batch: run only that configuration, e.g. under ncu)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "index/cuda/decode_attention.h"
#include "index/cuda/retrieval.h"

namespace wavekv::cuda {
namespace {

#define CHECK_CUDA(x)                                               \
  do {                                                              \
    cudaError_t e_ = (x);                                           \
    if (e_ != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                 \
    }                                                               \
  } while (0)

uint16_t FloatToHalfBits(float f) {
  // Inputs are small normals; simple rounding via the CUDA host conversion
  // is not available in a .cc, so do it by hand (round to nearest).
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  int exp = static_cast<int>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  uint32_t h = sign | (exp << 10) | (mant >> 13);
  if (mant & 0x1000u) ++h;
  return static_cast<uint16_t>(h);
}

double MeasureCopyGbps() {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  CHECK_CUDA(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  std::vector<float> ms;
  for (int i = 0; i < 5; ++i) {
    cudaEventRecord(e0);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float t;
    cudaEventElapsedTime(&t, e0, e1);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (ms[2] * 1e-3) / 1e9;  // read + write
}

// Median milliseconds of `iters` runs of `fn` between events on `stream`.
template <typename Fn>
float MedianMs(cudaStream_t stream, int iters, Fn fn) {
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventRecord(e0, stream));
    fn();
    CHECK_CUDA(cudaEventRecord(e1, stream));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float t;
    CHECK_CUDA(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int Run(int iters, int64_t only_tokens, int only_batch) {
  if (absl::Status s = CheckCudaDevice(); !s.ok()) {
    std::printf("skipped: %s\n", std::string(s.message()).c_str());
    return 0;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double gbps = MeasureCopyGbps();
  std::printf("device: %s, %d SMs, d2d copy %.0f GB/s (read+write)\n",
              prop.name, prop.multiProcessorCount, gbps);
  const int d = 128, g = 4, kv_heads = 8;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::printf("%-8s %-5s %-9s %-6s %-6s %-10s %-10s %-10s %-8s\n", "context",
              "batch", "clusters", "r", "e", "launch_us", "graph_us",
              "bound_us", "graph/bound");
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int64_t tokens : {32768, 131072, 1048576}) {
    if (only_tokens > 0 && tokens != only_tokens) continue;
    const uint32_t k = static_cast<uint32_t>(tokens / 16);
    const uint32_t r = static_cast<uint32_t>(std::ceil(0.018 * k));
    const uint32_t e = static_cast<uint32_t>(std::ceil(0.232 * k));
    // One problem's data on the host, copied to every problem's buffers.
    std::vector<uint16_t> cen(size_t{k} * d);
    std::vector<float> vs(size_t{k} * d);
    std::vector<uint32_t> sizes(k);
    uint64_t seed = 88172645463325252ull;
    auto next = [&seed]() {
      seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
      return static_cast<float>((seed >> 11) * (1.0 / 9007199254740992.0)) -
             0.5f;
    };
    for (auto& x : cen) x = FloatToHalfBits(4 * next());
    for (auto& x : vs) x = 16 * next();
    for (auto& s : sizes) s = 8 + static_cast<uint32_t>(16 * (next() + 0.5f));
    std::vector<float> q(g * d);
    for (float& x : q) x = 4 * next();
    for (int batch : {1, 4, 16}) {
      if (only_batch > 0 && batch != only_batch) continue;
      const int n = batch * kv_heads;
      std::vector<void*> owned;
      auto alloc = [&owned](size_t bytes) {
        void* p;
        CHECK_CUDA(cudaMalloc(&p, bytes));
        owned.push_back(p);
        return p;
      };
      std::vector<RetrievalProblem> ps(n);
      const size_t ws = RetrievalWorkspaceBytes(k, g, d);
      for (int i = 0; i < n; ++i) {
        RetrievalProblem& p = ps[i];
        void* c = alloc(cen.size() * 2);
        void* v = alloc(vs.size() * 4);
        void* s = alloc(sizes.size() * 4);
        void* qq = alloc(q.size() * 4);
        CHECK_CUDA(
            cudaMemcpy(c, cen.data(), cen.size() * 2, cudaMemcpyHostToDevice));
        CHECK_CUDA(
            cudaMemcpy(v, vs.data(), vs.size() * 4, cudaMemcpyHostToDevice));
        CHECK_CUDA(cudaMemcpy(s, sizes.data(), sizes.size() * 4,
                              cudaMemcpyHostToDevice));
        CHECK_CUDA(
            cudaMemcpy(qq, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
        p.centroids = c;
        p.value_sums = static_cast<const float*>(v);
        p.sizes = static_cast<const uint32_t*>(s);
        p.queries = static_cast<const float*>(qq);
        p.num_clusters = k;
        p.retrieval_clusters = r;
        p.estimation_clusters = e;
        p.workspace = alloc(ws);
        p.out_retrieval = static_cast<uint32_t*>(alloc(r * 4));
        p.out_counts = static_cast<uint32_t*>(alloc(8));
        p.out_estimation = nullptr;
        p.out_max = static_cast<float*>(alloc(g * 4));
        p.out_den = static_cast<float*>(alloc(g * 4));
        p.out_num = static_cast<float*>(alloc(g * d * 4));
      }
      auto* dev_ps =
          static_cast<RetrievalProblem*>(alloc(n * sizeof(RetrievalProblem)));
      CHECK_CUDA(cudaMemcpy(dev_ps, ps.data(), n * sizeof(RetrievalProblem),
                            cudaMemcpyHostToDevice));
      RetrievalArgs a;
      a.centroid_type = ElemType::kFp16;
      a.head_dim = d;
      a.group_size = g;
      a.scale = scale;
      a.num_problems = n;
      a.problems = ps.data();
      a.device_problems = dev_ps;
      for (int i = 0; i < 3; ++i) {
        if (absl::Status s = LaunchRetrieval(a, stream); !s.ok()) {
          std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
          return 1;
        }
      }
      CHECK_CUDA(cudaStreamSynchronize(stream));
      const float launch_ms =
          MedianMs(stream, iters, [&] { (void)LaunchRetrieval(a, stream); });
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
      if (absl::Status s = LaunchRetrieval(a, stream); !s.ok()) {
        std::fprintf(stderr, "capture: %s\n", std::string(s.message()).c_str());
        return 1;
      }
      CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
      CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
      CHECK_CUDA(cudaGraphLaunch(exec, stream));
      const float graph_ms = MedianMs(
          stream, iters, [&] { CHECK_CUDA(cudaGraphLaunch(exec, stream)); });
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
      uint32_t counts[2];
      CHECK_CUDA(
          cudaMemcpy(counts, ps[0].out_counts, 8, cudaMemcpyDeviceToHost));
      if (counts[0] != r || counts[1] != e) {
        std::fprintf(stderr, "unexpected zone sizes %u/%u\n", counts[0],
                     counts[1]);
        return 1;
      }
      const double bytes = static_cast<double>(n) *
                           (size_t{k} * d * 2 + k * 4 + size_t{e} * d * 4);
      const double bound_us = bytes / (gbps * 1e9) * 1e6;
      std::printf("%-8lld %-5d %-9u %-6u %-6u %-10.1f %-10.1f %-10.1f %-8.2f\n",
                  static_cast<long long>(tokens), batch, k, r, e,
                  launch_ms * 1e3, graph_ms * 1e3, bound_us,
                  graph_ms * 1e3 / bound_us);
      for (void* p : owned) cudaFree(p);
    }
  }
  return 0;
}

}  // namespace
}  // namespace wavekv::cuda

int main(int argc, char** argv) {
  int iters = 50, batch = 0;
  long long tokens = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--iters=", 8) == 0) {
      iters = std::atoi(argv[i] + 8);
    } else if (std::strncmp(argv[i], "--tokens=", 9) == 0) {
      tokens = std::atoll(argv[i] + 9);
    } else if (std::strncmp(argv[i], "--batch=", 8) == 0) {
      batch = std::atoi(argv[i] + 8);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  return wavekv::cuda::Run(std::max(iters, 1), tokens, batch);
}
