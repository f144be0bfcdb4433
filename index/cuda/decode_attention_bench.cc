// Decode attention on the GPU (full attention over all K/V in device memory,
// our split-K kernel): per-layer latency and effective HBM bandwidth for the
// Llama-3-8B attention shape (32 q / 8 kv heads, d=128, fp16). Batch b is run
// as b kv-head groups in one launch (num_kv_heads = 8*b), which is how
// sessions of one decode step share a launch. Prints a Markdown table.
//
// Usage: decode_attention_bench [--contexts=32768,131072] [--batches=1,4,16]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "index/cuda/decode_attention.h"

namespace {

std::vector<int64_t> ParseList(int argc, char** argv, const char* name,
                               std::vector<int64_t> dflt) {
  const std::string prefix = std::string("--") + name + "=";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind(prefix, 0) != 0) continue;
    std::vector<int64_t> out;
    for (absl::string_view piece :
         absl::StrSplit(arg.substr(prefix.size()), ',')) {
      int64_t v;
      if (!absl::SimpleAtoi(piece, &v)) {
        std::fprintf(stderr, "%s: bad number '%s'\n", name,
                     std::string(piece).c_str());
        std::exit(2);
      }
      out.push_back(v);
    }
    return out;
  }
  return dflt;
}

// Fills `bytes` of device memory with random fp16 values in [-1, 1) (never
// time on zeros): one random host tile, copied over the buffer.
void FillRandomHalf(void* dst, size_t bytes, std::mt19937& rng);

#define CHECK_CUDA(x)                                              \
  do {                                                             \
    cudaError_t e = (x);                                           \
    if (e != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e)); \
      std::exit(1);                                                \
    }                                                              \
  } while (0)

void FillRandomHalf(void* dst, size_t bytes, std::mt19937& rng) {
  static std::vector<uint16_t> tile;
  if (tile.empty()) {
    tile.resize(32 << 20);  // 64 MiB, larger than the H100's L2
    std::uniform_int_distribution<int> mant(0, 1023), sign(0, 1), ex(10, 14);
    for (uint16_t& h : tile) {
      h = static_cast<uint16_t>((sign(rng) << 15) | (ex(rng) << 10) |
                                mant(rng));
    }
  }
  const size_t tile_bytes = tile.size() * 2;
  for (size_t off = 0; off < bytes; off += tile_bytes) {
    CHECK_CUDA(cudaMemcpy(static_cast<char*>(dst) + off, tile.data(),
                          std::min(tile_bytes, bytes - off),
                          cudaMemcpyHostToDevice));
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace wavekv::cuda;
  if (absl::Status s = CheckCudaDevice(); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  const auto contexts =
      ParseList(argc, argv, "contexts", {32768, 131072, 524288, 1048576});
  const auto batches = ParseList(argc, argv, "batches", {1, 4, 16});
  const int d = 128, q_per_kv = 4, kv_per_session = 8, iters = 50;
  std::mt19937 rng(42);
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n\n", prop.name, prop.multiProcessorCount);
  std::printf("| context | batch | us/layer | tokens/s (1 layer) | GB/s |\n");
  std::printf("|---|---|---|---|---|\n");
  for (int64_t n : contexts) {
    for (int64_t b : batches) {
      const int kv = kv_per_session * b, qh = kv * q_per_kv;
      const size_t kv_bytes = size_t(kv) * n * d * 2;
      size_t free_b = 0, total_b = 0;
      CHECK_CUDA(cudaMemGetInfo(&free_b, &total_b));
      if (2 * kv_bytes + (1ull << 30) > free_b) {
        std::printf("| %lld | %lld | (does not fit: %.1f GiB K+V) | | |\n",
                    (long long)n, (long long)b, 2.0 * kv_bytes / (1 << 30));
        continue;
      }
      void *k, *v;
      float *q, *scratch, *omax, *oden, *onum, *out;
      const int max_splits = 1024;
      CHECK_CUDA(cudaMalloc(&k, kv_bytes));
      CHECK_CUDA(cudaMalloc(&v, kv_bytes));
      FillRandomHalf(k, kv_bytes, rng);
      FillRandomHalf(v, kv_bytes, rng);
      CHECK_CUDA(cudaMalloc(&q, size_t(qh) * d * 4));
      std::vector<float> hq(size_t(qh) * d);
      std::normal_distribution<float> normal(0.f, 1.f);
      for (float& x : hq) x = normal(rng);
      CHECK_CUDA(
          cudaMemcpy(q, hq.data(), hq.size() * 4, cudaMemcpyHostToDevice));
      CHECK_CUDA(
          cudaMalloc(&scratch, SplitScratchFloats(qh, d, max_splits) * 4));
      CHECK_CUDA(cudaMalloc(&omax, qh * 4));
      CHECK_CUDA(cudaMalloc(&oden, qh * 4));
      CHECK_CUDA(cudaMalloc(&onum, size_t(qh) * d * 4));
      CHECK_CUDA(cudaMalloc(&out, size_t(qh) * d * 4));
      DecodeAttentionArgs a;
      a.dtype = ElemType::kFp16;
      a.head_dim = d;
      a.num_q_heads = qh;
      a.num_kv_heads = kv;
      a.num_tokens = n;
      a.head_stride = n * d;
      a.token_stride = d;
      a.scale = 0.0883883f;
      a.queries = q;
      a.keys = k;
      a.values = v;
      a.split_scratch = scratch;
      a.max_splits = max_splits;
      a.out_max = omax;
      a.out_den = oden;
      a.out_num = onum;
      a.out = out;
      cudaEvent_t t0, t1;
      CHECK_CUDA(cudaEventCreate(&t0));
      CHECK_CUDA(cudaEventCreate(&t1));
      for (int i = 0; i < 5; ++i) (void)LaunchDecodeAttention(a, nullptr);
      CHECK_CUDA(cudaEventRecord(t0));
      for (int i = 0; i < iters; ++i) {
        absl::Status s = LaunchDecodeAttention(a, nullptr);
        if (!s.ok()) {
          std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
          return 1;
        }
      }
      CHECK_CUDA(cudaEventRecord(t1));
      CHECK_CUDA(cudaEventSynchronize(t1));
      float ms = 0;
      CHECK_CUDA(cudaEventElapsedTime(&ms, t0, t1));
      const double us = 1000.0 * ms / iters;
      std::printf("| %lld | %lld | %.1f | %.0f | %.0f |\n", (long long)n,
                  (long long)b, us, b * 1e6 / us, 2.0 * kv_bytes / us / 1e3);
      for (void* p : {k, v, (void*)q, (void*)scratch, (void*)omax, (void*)oden,
                      (void*)onum, (void*)out}) {
        cudaFree(p);
      }
    }
  }
  return 0;
}
