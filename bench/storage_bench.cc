// RocksDB settings for wavekv's K/V records (kvstore/storage/): blob files
// vs K/V in the LSM tree, LZ4 vs no compression. Each run writes one
// session of fp16 K/V (normally distributed activations, as a model's
// keys and values are) in 4 MiB chunk records, flushes, reads it back with
// LoadSession, and reports write and read MB/s and bytes on disk per byte
// of K/V. Baseline in the same table: blob files off, no compression
// (RocksDB's plain LSM).
//
//   bazel run -c opt //bench:storage_bench -- --benchmark_min_time=1
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "index/dtype.h"
#include "kvstore/storage/storage.h"

namespace wavekv {
namespace {

constexpr uint32_t kLayers = 4;
constexpr uint32_t kKvHeads = 8;
constexpr uint32_t kHeadDim = 128;
constexpr uint64_t kTokens = 2048;  // per layer: 4 x 2048 x 4 KiB = 32 MiB K+V

SessionMeta Meta() {
  SessionMeta m;
  m.session_id = std::string(32, 'a');
  m.tenant = "bench";
  m.options.shape = {kLayers, 32, kKvHeads, kHeadDim, DType::kFp16};
  m.max_tokens = kTokens;
  return m;
}

// fp16 bits of N(0, 1) samples (activations: high-entropy mantissas).
std::string Fp16Bytes(uint64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::string out(n * 2, '\0');
  for (uint64_t i = 0; i < n; ++i) {
    const uint16_t h = FloatToHalf(dist(gen));
    out[2 * i] = static_cast<char>(h & 0xff);
    out[2 * i + 1] = static_cast<char>(h >> 8);
  }
  return out;
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() != ".log") {
      total += e.file_size();
    }
  }
  return total;
}

void BM_StorageRoundTrip(benchmark::State& state) {
  const bool blobs = state.range(0) != 0;
  const bool lz4 = state.range(1) != 0;
  const SessionMeta meta = Meta();
  const uint64_t token_bytes = meta.options.shape.TokenLayerBytes();
  SessionSnapshot snap;
  snap.meta = meta;
  for (uint32_t l = 0; l < kLayers; ++l) {
    LayerSnapshot layer;
    layer.num_tokens = kTokens;
    layer.keys = Fp16Bytes(kTokens * token_bytes / 2, 2 * l);
    layer.values = Fp16Bytes(kTokens * token_bytes / 2, 2 * l + 1);
    snap.layers.push_back(std::move(layer));
  }
  const uint64_t kv_bytes = 2 * kLayers * kTokens * token_bytes;
  double write_s = 0, read_s = 0;
  uint64_t disk = 0;
  int runs = 0;
  for (auto _ : state) {
    const std::string dir = absl::StrCat(
        std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp",
        "/storage_bench_", blobs, lz4);
    std::filesystem::remove_all(dir);
    StorageOptions o;
    o.path = dir;
    o.blob_files = blobs;
    o.compress = lz4;
    auto storage = Storage::Open(o);
    if (!storage.ok()) {
      state.SkipWithError(std::string(storage.status().message()).c_str());
      return;
    }
    auto t0 = std::chrono::steady_clock::now();
    if (!(*storage)->WriteSession(snap, /*sync=*/true).ok() ||
        !(*storage)->FlushMemtables().ok()) {
      state.SkipWithError("write failed");
      return;
    }
    auto t1 = std::chrono::steady_clock::now();
    auto back = (*storage)->LoadSession(meta);
    auto t2 = std::chrono::steady_clock::now();
    if (!back.ok() || back->layers[0].keys != snap.layers[0].keys) {
      state.SkipWithError("read back failed");
      return;
    }
    write_s += std::chrono::duration<double>(t1 - t0).count();
    read_s += std::chrono::duration<double>(t2 - t1).count();
    disk += DirBytes(dir);
    ++runs;
    storage->reset();
    std::filesystem::remove_all(dir);
  }
  state.counters["write_MBps"] = runs * kv_bytes / 1e6 / write_s;
  state.counters["read_MBps"] = runs * kv_bytes / 1e6 / read_s;
  state.counters["disk_per_kv"] =
      static_cast<double>(disk) / (static_cast<double>(runs) * kv_bytes);
  state.SetLabel(absl::StrCat(blobs ? "blob files" : "LSM (baseline)",
                              lz4 ? ", lz4" : ", no compression"));
}

BENCHMARK(BM_StorageRoundTrip)
    ->Args({0, 0})
    ->Args({0, 1})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

}  // namespace
}  // namespace wavekv

BENCHMARK_MAIN();
