// Measures the engine's wave-index path end to end: prefill appends, the
// background index build until READY, and WAVE Retrieve latency per layer.
//
//   bazel run -c opt //kvstore:wave_engine_probe --
//       --tokens=32768 --layers=4 --kv_heads=8 --q_heads=32 --head_dim=128
//       --index_threads=2
//
// Prints one table row per setting; the numbers are wall-clock on this
// machine. (A measuring tool, not a test: it asserts nothing.)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kvstore/engine.h"
#include "kvstore/wave_test_kv.h"

ABSL_FLAG(uint64_t, tokens, 32768, "context length");
ABSL_FLAG(uint32_t, layers, 4, "layers");
ABSL_FLAG(uint32_t, kv_heads, 8, "kv heads");
ABSL_FLAG(uint32_t, q_heads, 32, "q heads");
ABSL_FLAG(uint32_t, head_dim, 128, "head dim");
ABSL_FLAG(uint32_t, index_threads, 2, "EngineOptions::index_threads");
ABSL_FLAG(uint32_t, retrieve_threads, 4, "EngineOptions::retrieve_threads");
ABSL_FLAG(uint32_t, chunk, 4096, "prefill tokens per Append");
ABSL_FLAG(int, retrieves, 50, "WAVE retrieves timed per layer");

namespace wavekv {
namespace {

int Main() {
  const uint64_t n = absl::GetFlag(FLAGS_tokens);
  const ModelShape shape{absl::GetFlag(FLAGS_layers),
                         absl::GetFlag(FLAGS_q_heads),
                         absl::GetFlag(FLAGS_kv_heads),
                         absl::GetFlag(FLAGS_head_dim), DType::kFp16};
  EngineOptions o;
  o.memory_budget_bytes = 64ull << 30;
  o.index_threads = absl::GetFlag(FLAGS_index_threads);
  o.retrieve_threads = absl::GetFlag(FLAGS_retrieve_threads);
  auto engine = Engine::Open(o);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "generating %llu tokens x %u layers...\n",
               static_cast<unsigned long long>(n), shape.num_layers);
  const TestKv kv(shape, n, 1);
  SessionOptions so;
  so.shape = shape;
  auto info = (*engine)->CreateSession("probe", so);
  if (!info.ok()) return 1;
  const std::string id = info->session_id;

  const absl::Time start = absl::Now();
  const uint64_t chunk = absl::GetFlag(FLAGS_chunk);
  for (uint64_t at = 0; at < n; at += chunk) {
    auto r = kv.Append(**engine, "probe", id, at, std::min(n, at + chunk));
    if (!r.ok()) {
      std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
      return 1;
    }
  }
  const absl::Duration append_time = absl::Now() - start;
  while ((*engine)->Stats().index_pending_layers > 0) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  const absl::Duration ready_time = absl::Now() - start;
  const EngineStats stats = (*engine)->Stats();

  std::vector<double> wave_us, exact_us;
  for (uint32_t layer = 0; layer < shape.num_layers; ++layer) {
    for (int i = 0; i < absl::GetFlag(FLAGS_retrieves); ++i) {
      const std::vector<float> q = kv.Query(layer, i, 1.5f);
      for (RetrieveMode mode : {RetrieveMode::kWave, RetrieveMode::kExact}) {
        RetrieveOptions ro;
        ro.layer = layer;
        ro.mode = mode;
        const absl::Time t0 = absl::Now();
        auto r = (*engine)->Retrieve("probe", ro, {RetrieveQuery{id, q}});
        const double us = absl::ToDoubleMicroseconds(absl::Now() - t0);
        if (!r.ok()) {
          std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
          return 1;
        }
        (mode == RetrieveMode::kWave ? wave_us : exact_us).push_back(us);
      }
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double build_s = stats.index_build_seconds_total;
  const double token_heads =
      static_cast<double>(stats.indexed_tokens) * shape.num_kv_heads;
  std::printf(
      "| tokens | layers x kv heads x d | index threads | append s | "
      "ready s | build s (sum) | indexed token-heads/s per build thread | "
      "layer-tokens/s to READY | blocks | WAVE Retrieve us (median) | "
      "EXACT Retrieve us (median) |\n");
  std::printf(
      "| %llu | %u x %u x %u | %u | %.2f | %.2f | %.2f | %.0f | %.0f | %llu "
      "| %.0f | %.0f |\n",
      static_cast<unsigned long long>(n), shape.num_layers, shape.num_kv_heads,
      shape.head_dim, o.index_threads, absl::ToDoubleSeconds(append_time),
      absl::ToDoubleSeconds(ready_time), build_s, token_heads / build_s,
      static_cast<double>(n) * shape.num_layers /
          absl::ToDoubleSeconds(ready_time),
      static_cast<unsigned long long>(stats.index_builds), median(wave_us),
      median(exact_us));
  return 0;
}

}  // namespace
}  // namespace wavekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return wavekv::Main();
}
