// Index build time on the GPU for one layer (kv heads x head_dim, fp16) at
// several contexts, with a CUDA-event breakdown per phase, plus one decode
// update (update_tokens -> update_tokens / cluster_size clusters) batched
// over all layers. Two block plans per context:
//   engine: blocks of at most 8 segments (64K tokens), as kvstore's
//           background build forms them; all blocks of all heads in one
//           launch set (the final assignment is against the block's
//           centroids);
//   single: the whole context as one block per head (final assignment
//           against every centroid of the head: quadratic in the context).
// Prints one Markdown row per (context, plan); the prefill attention
// baseline comes from bench/prefill_attention.py in the same device call.
//
// Usage: index_build_bench [--contexts=32768,...] [--kv_heads=8]
//        [--head_dim=128] [--reps=3] [--layers=32]
//        [--scorer=auto|mma|wgmma|stationary] [--update=fused|sort]
//        [--no_single]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "index/cuda/kmeans.h"
#include "index/wave_index_params.h"

namespace wavekv::cuda {
int FillBenchRowsFp16(void* dst, int64_t n, int row, uint64_t seed,
                      float offset_scale, cudaStream_t stream);
}

namespace {

using wavekv::SegmentPlan;
using wavekv::WaveIndexParams;
using namespace wavekv::cuda;

const char* kPhaseNames[kNumKMeansPhases] = {
    "centre",       "assign",     "sort", "update",
    "final_assign", "final_sort", "stats"};

bool Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
    return false;
  }
  return true;
}

struct Timing {
  float median_ms = 0.f;
  KMeansPhaseTimes phases;
  size_t workspace = 0;
};

// Times km.Run (one warm-up, `reps` timed runs, one run with phase events).
bool TimeRun(GpuSegmentedKMeans& km, const GpuKMeansPlan& plan,
             const std::vector<KMeansProblem>& problems, int reps,
             Timing& out) {
  cudaStream_t stream;
  if (!Check(cudaStreamCreate(&stream), "stream")) return false;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  bool ok = true;
  std::vector<float> ms;
  for (int r = 0; r <= reps && ok; ++r) {
    cudaEventRecord(start, stream);
    absl::Status s = km.Run(plan, problems, stream);
    cudaEventRecord(stop, stream);
    if (!s.ok()) {
      std::fprintf(stderr, "Run: %s\n", std::string(s.message()).c_str());
      ok = false;
      break;
    }
    ok = Check(cudaEventSynchronize(stop), "run");
    float t = 0.f;
    cudaEventElapsedTime(&t, start, stop);
    if (r > 0) ms.push_back(t);  // r == 0 is the warm-up
  }
  if (ok) {
    absl::Status s = km.Run(plan, problems, stream, &out.phases);
    if (!s.ok()) {
      std::fprintf(stderr, "Run: %s\n", std::string(s.message()).c_str());
      ok = false;
    }
  }
  if (ok) {
    absl::StatusOr<std::vector<GpuKMeansResult>> r = km.CopyResults(stream);
    if (!r.ok()) {
      std::fprintf(stderr, "results: %s\n",
                   std::string(r.status().message()).c_str());
      ok = false;
    } else {
      // Sanity: every problem's sizes sum to its tokens.
      for (const GpuKMeansResult& g : *r) {
        uint64_t total = 0;
        for (uint32_t s : g.sizes) total += s;
        if (total != plan.num_tokens) {
          std::fprintf(stderr, "sizes sum to %llu, expected %u\n",
                       static_cast<unsigned long long>(total), plan.num_tokens);
          ok = false;
          break;
        }
      }
    }
  }
  std::sort(ms.begin(), ms.end());
  out.median_ms = ms.empty() ? 0.f : ms[ms.size() / 2];
  out.workspace = km.workspace_bytes();
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
  return ok;
}

void PrintRow(const char* label, uint64_t n, const char* plan_name,
              size_t problems, uint32_t clusters, const Timing& t) {
  std::printf("| %s | %llu | %s | %zu x %u | %.3f |", label,
              static_cast<unsigned long long>(n), plan_name, problems, clusters,
              t.median_ms);
  for (int p = 0; p < kNumKMeansPhases; ++p) {
    std::printf(" %.3f |", t.phases.ms[p]);
  }
  std::printf(" %.2f |\n", t.workspace / 1073741824.0);
  std::fflush(stdout);
}

uint32_t Clusters(const std::vector<SegmentPlan>& plan) {
  uint32_t k = 0;
  for (const SegmentPlan& s : plan) k += s.num_clusters;
  return k;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<uint64_t> contexts = {32768, 131072, 524288, 1048576};
  int kv_heads = 8, head_dim = 128, reps = 3, layers = 32;
  KMeansScorer scorer = KMeansScorer::kAuto;
  bool fused_update = true, single = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* flag) -> const char* {
      const std::string f = std::string(flag) + "=";
      return a.rfind(f, 0) == 0 ? argv[i] + f.size() : nullptr;
    };
    if (const char* v = value("--contexts")) {
      contexts.clear();
      for (absl::string_view s : absl::StrSplit(v, ',')) {
        uint64_t x = 0;
        if (absl::SimpleAtoi(s, &x)) contexts.push_back(x);
      }
    } else if (const char* v = value("--kv_heads")) {
      kv_heads = std::atoi(v);
    } else if (const char* v = value("--head_dim")) {
      head_dim = std::atoi(v);
    } else if (const char* v = value("--reps")) {
      reps = std::atoi(v);
    } else if (const char* v = value("--layers")) {
      layers = std::atoi(v);
    } else if (const char* v = value("--scorer")) {
      const std::string x = v;
      scorer = x == "mma"          ? KMeansScorer::kMmaSync
               : x == "wgmma"      ? KMeansScorer::kWgmma
               : x == "stationary" ? KMeansScorer::kWgmmaStationary
                                   : KMeansScorer::kAuto;
    } else if (const char* v = value("--update")) {
      fused_update = std::string(v) != "sort";
    } else if (a == "--no_single") {
      single = false;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  if (!Check(cudaGetDeviceProperties(&prop, 0), "device")) return 1;
  std::printf("device: %s, %d SMs; fp16 keys/values, %d kv heads, d=%d\n",
              prop.name, prop.multiProcessorCount, kv_heads, head_dim);
  std::printf("scorer: %s (wgmma available: %s), update: %s\n\n",
              scorer == KMeansScorer::kMmaSync           ? "mma.sync"
              : scorer == KMeansScorer::kWgmma           ? "wgmma"
              : scorer == KMeansScorer::kWgmmaStationary ? "stationary"
                                                         : "auto",
              KMeansWgmmaAvailable() ? "yes" : "no",
              fused_update ? "fused" : "global sort");
  std::printf("| what | context | plan | problems x clusters | build ms |");
  for (const char* p : kPhaseNames) std::printf(" %s |", p);
  std::printf(" workspace GiB |\n|---|---|---|---|---|");
  for (int p = 0; p < kNumKMeansPhases; ++p) std::printf("---|");
  std::printf("---|\n");

  const WaveIndexParams params;  // defaults: 8192-token segments, 16/cluster
  const uint64_t block_tokens = 8ull * params.segment_tokens;  // engine rule
  const int row = kv_heads * head_dim;
  bool ok = true;
  for (uint64_t n : contexts) {
    void *keys = nullptr, *values = nullptr;
    const int64_t elems = static_cast<int64_t>(n) * row;
    if (!Check(cudaMalloc(&keys, elems * 2), "alloc keys") ||
        !Check(cudaMalloc(&values, elems * 2), "alloc values")) {
      return 1;
    }
    FillBenchRowsFp16(keys, elems, row, 1 + n, 3.0f, nullptr);
    FillBenchRowsFp16(values, elems, row, 2 + n, 0.5f, nullptr);
    if (!Check(cudaDeviceSynchronize(), "fill")) return 1;
    {
      // engine: blocks of <= 8 segments, every (block, head) one problem.
      const uint64_t block = std::min<uint64_t>(n, block_tokens);
      std::vector<KMeansProblem> problems;
      for (uint64_t b = 0; b + block <= n; b += block) {
        for (int h = 0; h < kv_heads; ++h) {
          const int64_t off =
              (static_cast<int64_t>(b) * row + h * head_dim) * 2;
          problems.push_back({static_cast<char*>(keys) + off,
                              static_cast<char*>(values) + off, row});
        }
      }
      GpuKMeansPlan plan;
      plan.head_dim = head_dim;
      plan.num_tokens = static_cast<uint32_t>(block);
      plan.segments = wavekv::PlanSegments(params, block);
      plan.iterations = params.kmeans_iterations;
      plan.scorer = scorer;
      plan.fused_update = fused_update;
      GpuSegmentedKMeans km;
      Timing t;
      ok = TimeRun(km, plan, problems, reps, t) && ok;
      PrintRow("prefill", n, "engine", problems.size(), Clusters(plan.segments),
               t);
    }
    if (single) {
      std::vector<KMeansProblem> problems;
      for (int h = 0; h < kv_heads; ++h) {
        const int64_t off = static_cast<int64_t>(h) * head_dim * 2;
        problems.push_back({static_cast<char*>(keys) + off,
                            static_cast<char*>(values) + off, row});
      }
      GpuKMeansPlan plan;
      plan.head_dim = head_dim;
      plan.num_tokens = static_cast<uint32_t>(n);
      plan.segments = wavekv::PlanSegments(params, n);
      plan.iterations = params.kmeans_iterations;
      plan.scorer = scorer;
      plan.fused_update = fused_update;
      GpuSegmentedKMeans km;
      Timing t;
      ok = TimeRun(km, plan, problems, n >= 524288 ? 1 : reps, t) && ok;
      PrintRow("prefill", n, "single", problems.size(), Clusters(plan.segments),
               t);
    }
    cudaFree(keys);
    cudaFree(values);
  }
  {
    // Decode update of every layer at once: layers x kv_heads problems of
    // update_tokens tokens ([tokens][layers * kv_heads][d]).
    const uint64_t m = params.update_tokens;
    const int heads = layers * kv_heads;
    const int urow = heads * head_dim;
    void *keys = nullptr, *values = nullptr;
    const int64_t elems = static_cast<int64_t>(m) * urow;
    if (!Check(cudaMalloc(&keys, elems * 2), "alloc") ||
        !Check(cudaMalloc(&values, elems * 2), "alloc")) {
      return 1;
    }
    FillBenchRowsFp16(keys, elems, urow, 77, 3.0f, nullptr);
    FillBenchRowsFp16(values, elems, urow, 78, 0.5f, nullptr);
    cudaDeviceSynchronize();
    std::vector<KMeansProblem> problems;
    for (int h = 0; h < heads; ++h) {
      const int64_t off = static_cast<int64_t>(h) * head_dim * 2;
      problems.push_back({static_cast<char*>(keys) + off,
                          static_cast<char*>(values) + off, urow});
    }
    GpuKMeansPlan plan;
    plan.head_dim = head_dim;
    plan.num_tokens = static_cast<uint32_t>(m);
    plan.segments = wavekv::PlanSegments(params, m);
    plan.iterations = params.kmeans_iterations;
    plan.scorer = scorer;
    plan.fused_update = fused_update;
    GpuSegmentedKMeans km;
    Timing t;
    ok = TimeRun(km, plan, problems, 10, t) && ok;
    PrintRow("decode update, all layers", m, "engine", problems.size(),
             Clusters(plan.segments), t);
    cudaFree(keys);
    cudaFree(values);
  }
  return ok ? 0 : 1;
}
