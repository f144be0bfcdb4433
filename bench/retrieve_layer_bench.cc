// Retrieve latency of ONE LAYER of the Llama-3-8B attention shape (32 q
// heads, 8 kv heads, head_dim 128, fp16) for a batch of sessions, at
// contexts of 8K to 1M tokens, with its baselines measured in the same run:
//
//  plan    (a) the index math of a WAVE Retrieve: PlanRetrieval (rank the
//          clusters, tail statistics) for the 8 kv heads of every session
//          of the batch, split across (session, kv head) over the calling
//          thread + EngineOptions::retrieve_threads workers, as
//          kvstore/retrieve.cc does. Synthetic indexes (WaveIndex::FromParts
//          from random data of k-means' shape, retrieve_layer_fixtures.h):
//          this measures retrieval, not clustering.
//  stream  the bandwidth bound: one read of the same sessions' centroid
//          bytes (fp32, as scored), and of centroids + value sums, split
//          the same way. PlanRetrieval must read every centroid and the
//          value sums of the estimation zone (23.2% of the clusters).
//  exact   exact CPU attention of the layer over the whole context
//          (PartialAttentionGroup per (session, kv head), K/V read once per
//          GQA group), split the same way. Only where batch x context <=
//          --exact_max_tokens (time), K/V pool capped at 2 GiB (memory).
//  engine  (b) the whole Engine::Retrieve call in WAVE mode (validation,
//          locks, plans, answer) on sessions appended for real and indexed
//          by the engine's own k-means; only where context <=
//          --engine_max_context and batch x context <= --engine_max_tokens,
//          as the builds take minutes beyond.
//
// Between two reads of one session's layer a decode step reads the other
// layers, so the benchmark rotates over pools of distinct sessions (at
// least 128 MiB of index data, 4x the last-level cache, where memory allows)
// and does not re-read a layer warm from the cache. Pools are capped at
// 2 GiB (index: 3 sessions at 1M; K/V: 1 session at 512K and 1M); a batch
// larger than its pool reads the same sessions again, still cold.
//
//   bazel run -c opt //bench:retrieve_layer_bench -- --benchmark_min_time=0.1
//
// A summary table (markdown) follows Google Benchmark's output.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/types/span.h"
#include "bench/retrieve_layer_fixtures.h"
#include "benchmark/benchmark.h"
#include "index/attention.h"
#include "index/retrieval.h"
#include "index/wave_index.h"
#include "kvstore/engine.h"
#include "kvstore/thread_pool.h"

namespace wavekv::bench {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kMiB = uint64_t{1} << 20;

struct Config {
  std::vector<uint64_t> contexts = {8192, 32768, 131072, 524288, 1048576};
  std::vector<uint64_t> batches = {1, 4, 16};
  // exact runs where batch x context <= this (about 1 s of one core per
  // 1M tokens of one layer on the build box).
  uint64_t exact_max_tokens = uint64_t{2} << 20;
  // engine runs where context <= engine_max_context and batch x context <=
  // engine_max_tokens (one 128K session's k-means build takes about 1 min
  // here, on one build thread).
  uint64_t engine_max_context = 131072;
  uint64_t engine_max_tokens = 262144;
  // Workers beside the calling thread for plan, stream and exact (the
  // engine's own pool has EngineOptions' default).
  uint64_t retrieve_threads = EngineOptions{}.retrieve_threads;
  // Index data of distinct sessions read before one is read again (4x the
  // 32 MiB last-level cache of the build box).
  uint64_t cold_bytes = 128 * kMiB;
  uint64_t index_cap_bytes = 2 * kGiB;
  uint64_t kv_cap_bytes = 2 * kGiB;

  bool RunsExact(uint64_t ctx, uint64_t b) const {
    return b * ctx <= exact_max_tokens;
  }
  bool RunsEngine(uint64_t ctx, uint64_t b) const {
    return ctx <= engine_max_context && b * ctx <= engine_max_tokens;
  }
  uint64_t MaxBatch() const {
    return *std::max_element(batches.begin(), batches.end());
  }
};

// The data of one context at a time (a new context frees the previous one,
// and each kind frees the others, to bound memory at ~4 GiB).
class Env {
 public:
  explicit Env(const Config& config)
      : config_(config),
        pool_(static_cast<int>(config.retrieve_threads)),
        queries_(MakeQueries(config.MaxBatch())) {}

  const Config& config() const { return config_; }
  ThreadPool& pool() { return pool_; }
  absl::Span<const float> group_queries(size_t slot, uint32_t h) const {
    return absl::MakeConstSpan(queries_[slot])
        .subspan(size_t{h} * kGroup * kHeadDim, kGroup * kHeadDim);
  }
  absl::Span<const float> queries(size_t slot) const { return queries_[slot]; }

  std::pair<IndexPool*, Rotation*> Indexes(uint64_t ctx) {
    if (indexes_ == nullptr || indexes_->context_tokens() != ctx) {
      ReleaseAll();
      const uint64_t sessions =
          std::max(config_.MaxBatch(), SessionsForColdReads(ctx));
      indexes_ =
          std::make_unique<IndexPool>(ctx, sessions, config_.index_cap_bytes);
      index_rotation_ = std::make_unique<Rotation>(indexes_->num_sessions());
    }
    return {indexes_.get(), index_rotation_.get()};
  }

  std::pair<KvPool*, Rotation*> Kv(uint64_t ctx) {
    if (kv_ == nullptr || kv_->context_tokens() != ctx) {
      ReleaseAll();
      uint64_t max_batch = 1;
      for (uint64_t b : config_.batches) {
        if (config_.RunsExact(ctx, b)) max_batch = std::max(max_batch, b);
      }
      kv_ = std::make_unique<KvPool>(ctx, max_batch, config_.kv_cap_bytes);
      kv_rotation_ = std::make_unique<Rotation>(kv_->num_sessions());
    }
    return {kv_.get(), kv_rotation_.get()};
  }

  std::pair<EngineSessions*, Rotation*> Engine(uint64_t ctx) {
    if (engine_ == nullptr || engine_->context_tokens() != ctx) {
      ReleaseAll();
      uint64_t sessions = SessionsForColdReads(ctx);
      for (uint64_t b : config_.batches) {
        if (config_.RunsEngine(ctx, b)) sessions = std::max(sessions, b);
      }
      engine_ = std::make_unique<EngineSessions>(
          ctx, sessions, std::max(1u, std::thread::hardware_concurrency()));
      engine_rotation_ =
          std::make_unique<Rotation>(engine_->session_ids().size());
    }
    return {engine_.get(), engine_rotation_.get()};
  }

 private:
  // Sessions whose centroids + value sums (fp32, ~ctx * 512 bytes a
  // session's layer) add up to cold_bytes.
  uint64_t SessionsForColdReads(uint64_t ctx) const {
    const uint64_t per_session = ctx * 512;
    return (config_.cold_bytes + per_session - 1) / per_session;
  }

  void ReleaseAll() {
    indexes_.reset();
    kv_.reset();
    engine_.reset();
  }

  const Config config_;
  ThreadPool pool_;                                // the engine's retrieve pool
  const std::vector<std::vector<float>> queries_;  // [batch slot]
  std::unique_ptr<IndexPool> indexes_;
  std::unique_ptr<Rotation> index_rotation_;
  std::unique_ptr<KvPool> kv_;
  std::unique_ptr<Rotation> kv_rotation_;
  std::unique_ptr<EngineSessions> engine_;
  std::unique_ptr<Rotation> engine_rotation_;
};

void BM_Plan(benchmark::State& state, Env& env) {
  const uint64_t ctx = state.range(0);
  const size_t batch = state.range(1);
  auto [indexes, rotation] = env.Indexes(ctx);
  const WaveIndexParams params;
  const float scale = DefaultScale(kHeadDim);
  const size_t tasks = batch * kKvHeads;
  std::vector<absl::StatusOr<RetrievalPlan>> plans(tasks);
  for (auto _ : state) {
    env.pool().ParallelFor(tasks, [&](size_t t) {
      const size_t s = t / kKvHeads;
      const auto h = static_cast<uint32_t>(t % kKvHeads);
      plans[t] = PlanRetrieval(indexes->index(rotation->Member(s), h),
                               env.group_queries(s, h), kGroup, params, scale);
    });
    rotation->Advance(batch);
  }
  for (const auto& plan : plans) {
    if (!plan.ok()) {
      state.SkipWithError(std::string(plan.status().message()).c_str());
      return;
    }
  }
  state.counters["clusters"] = indexes->index(0, 0).num_clusters();
  state.counters["retrieval"] = plans[0]->retrieval_clusters.size();
  state.counters["estimation"] = plans[0]->estimation_clusters.size();
  state.counters["pool"] = indexes->num_sessions();
}

// Sum of n 64-bit words: a consumer that reads every byte once at full
// speed (several independent lanes, vectorised).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
uint64_t
SumWords(const uint64_t* __restrict p, size_t n) {
  uint64_t acc[16] = {};
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (size_t u = 0; u < 16; ++u) acc[u] += p[i + u];
  }
  uint64_t total = 0;
  for (; i < n; ++i) total += p[i];
  for (uint64_t a : acc) total += a;
  return total;
}

uint64_t SumFloats(const float* p, size_t n) {
  return SumWords(reinterpret_cast<const uint64_t*>(p), n / 2);
}

void BM_Stream(benchmark::State& state, Env& env, bool with_value_sums) {
  const uint64_t ctx = state.range(0);
  const size_t batch = state.range(1);
  auto [indexes, rotation] = env.Indexes(ctx);
  const size_t tasks = batch * kKvHeads;
  std::vector<uint64_t> sums(tasks);
  for (auto _ : state) {
    env.pool().ParallelFor(tasks, [&](size_t t) {
      const WaveIndex& index =
          indexes->index(rotation->Member(t / kKvHeads), t % kKvHeads);
      const PanelMatrix& c = index.centroid_panels();
      uint64_t sum = SumFloats(
          c.panel(0), c.num_panels() * PanelMatrix::kPanelRows * kHeadDim);
      if (with_value_sums) {
        sum += SumFloats(index.value_sums().data(), index.value_sums().size());
      }
      sums[t] = sum;
    });
    rotation->Advance(batch);
    benchmark::DoNotOptimize(sums.data());
  }
  const uint64_t bytes =
      indexes->centroid_bytes() +
      (with_value_sums ? indexes->value_sum_bytes() : uint64_t{0});
  state.SetBytesProcessed(state.iterations() * batch * bytes);
  state.counters["MiB_per_session"] = static_cast<double>(bytes) / kMiB;
}

void BM_Exact(benchmark::State& state, Env& env) {
  const uint64_t ctx = state.range(0);
  const size_t batch = state.range(1);
  auto [kv, rotation] = env.Kv(ctx);
  const float scale = DefaultScale(kHeadDim);
  const size_t tasks = batch * kKvHeads;
  std::vector<float> out(tasks);
  for (auto _ : state) {
    env.pool().ParallelFor(tasks, [&](size_t t) {
      const size_t s = rotation->Member(t / kKvHeads);
      const auto h = static_cast<uint32_t>(t % kKvHeads);
      const KvView view{kDType, kHeadDim, ctx, kv->keys(s, h),
                        kv->values(s, h)};
      const std::vector<AttentionPartial> parts = PartialAttentionGroup(
          env.group_queries(t / kKvHeads, h), kGroup, view, scale);
      float o = 0.0f;
      for (const AttentionPartial& p : parts) o += Finalize(p)[0];
      out[t] = o;
    });
    rotation->Advance(batch);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * batch * kv->bytes_per_session());
  state.counters["pool"] = kv->num_sessions();
}

void BM_Engine(benchmark::State& state, Env& env) {
  const uint64_t ctx = state.range(0);
  const size_t batch = state.range(1);
  auto [sessions, rotation] = env.Engine(ctx);
  const std::vector<std::string>& ids = sessions->session_ids();
  // The batch of every rotation step, built before timing.
  std::vector<std::vector<RetrieveQuery>> steps(ids.size());
  for (auto& step : steps) {
    for (size_t j = 0; j < batch; ++j) {
      step.push_back({ids[rotation->Member(j)], env.queries(j)});
    }
    rotation->Advance(batch);
  }
  RetrieveOptions options;
  options.layer = 0;
  options.mode = RetrieveMode::kWave;
  size_t step = 0, retrieval_slots = 0;
  for (auto _ : state) {
    absl::StatusOr<std::vector<SessionResult>> r =
        sessions->engine().Retrieve(kTenant, options, steps[step]);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    if ((*r)[0].mode != RetrieveMode::kWave) {
      state.SkipWithError("served in EXACT mode");
      return;
    }
    retrieval_slots = 0;
    for (const SlotRange& range : (*r)[0].heads[0].retrieval) {
      retrieval_slots += range.num_slots;
    }
    benchmark::DoNotOptimize(r);
    step = (step + 1) % steps.size();
  }
  state.counters["retrieval_tokens"] = retrieval_slots;
  state.counters["sessions"] = ids.size();
}

// Console output as usual, and the median time of every (kind, context,
// batch) for the summary table.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      const bool single =
          run.run_type == Run::RT_Iteration && run.repetitions <= 1;
      const bool median =
          run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.error_occurred || !(single || median)) continue;
      const std::vector<std::string> args =
          absl::StrSplit(run.run_name.args, '/');
      uint64_t ctx = 0, batch = 0;
      if (args.size() < 2 || !absl::SimpleAtoi(args[0], &ctx) ||
          !absl::SimpleAtoi(args[1], &batch)) {
        continue;
      }
      Entry& e = entries_[{ctx, batch}];
      e.us[run.run_name.function_name] = {run.GetAdjustedRealTime(),
                                          run.GetAdjustedCPUTime()};
      for (const auto& [name, counter] : run.counters) {
        e.counters[name] = counter.value;
      }
    }
  }

  void PrintSummary(int pool_threads) const {
    std::printf(
        "\nOne layer: 32 q / 8 kv heads, d=128, fp16. plan/stream/exact on %d "
        "threads (the caller + retrieve_threads workers); medians.\n"
        "\nWall time per layer (us):\n\n",
        pool_threads);
    std::printf(
        "| context | batch | clusters/head | plan us/layer | plan us/session "
        "| stream C us | stream C+VS us | plan / stream C+VS | engine WAVE "
        "us/layer | engine us/session | exact us/layer | exact / plan |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& [key, e] : entries_) {
      const auto [ctx, batch] = key;
      const double plan = e.Wall("plan"), engine = e.Wall("engine");
      const double stream = e.Wall("stream_c_vs"), exact = e.Wall("exact");
      std::printf(
          "| %llu | %llu | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s "
          "|\n",
          static_cast<unsigned long long>(ctx),
          static_cast<unsigned long long>(batch),
          Fmt(e.Counter("clusters"), 0).c_str(), Fmt(plan, 0).c_str(),
          Fmt(Ratio(plan, batch), 0).c_str(),
          Fmt(e.Wall("stream_c"), 0).c_str(), Fmt(stream, 0).c_str(),
          Fmt(Ratio(plan, stream), 2).c_str(), Fmt(engine, 0).c_str(),
          Fmt(Ratio(engine, batch), 0).c_str(), Fmt(exact, 0).c_str(),
          Fmt(Ratio(exact, plan), 1).c_str());
    }
    std::printf(
        "\nCPU time per layer, all threads of the process (us):\n\n"
        "| context | batch | plan | stream C+VS | plan / stream C+VS | "
        "engine WAVE | exact | exact / plan |\n"
        "|---|---|---|---|---|---|---|---|\n");
    for (const auto& [key, e] : entries_) {
      const auto [ctx, batch] = key;
      const double plan = e.Cpu("plan"), stream = e.Cpu("stream_c_vs");
      const double exact = e.Cpu("exact");
      std::printf("| %llu | %llu | %s | %s | %s | %s | %s | %s |\n",
                  static_cast<unsigned long long>(ctx),
                  static_cast<unsigned long long>(batch), Fmt(plan, 0).c_str(),
                  Fmt(stream, 0).c_str(), Fmt(Ratio(plan, stream), 2).c_str(),
                  Fmt(e.Cpu("engine"), 0).c_str(), Fmt(exact, 0).c_str(),
                  Fmt(Ratio(exact, plan), 1).c_str());
    }
  }

 private:
  struct Entry {
    std::map<std::string, std::pair<double, double>> us;  // wall, CPU
    std::map<std::string, double> counters;
    double Wall(const std::string& k) const {
      auto it = us.find(k);
      return it == us.end() ? -1.0 : it->second.first;
    }
    double Cpu(const std::string& k) const {
      auto it = us.find(k);
      return it == us.end() ? -1.0 : it->second.second;
    }
    double Counter(const std::string& k) const {
      auto it = counters.find(k);
      return it == counters.end() ? -1.0 : it->second;
    }
  };

  // -1 (missing) unless both are present.
  static double Ratio(double a, double b) {
    return a >= 0.0 && b > 0.0 ? a / b : -1.0;
  }
  // "-" for a missing value.
  static std::string Fmt(double v, int decimals) {
    if (!(v >= 0.0)) return "-";
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
    return buf;
  }

  std::map<std::pair<uint64_t, uint64_t>, Entry> entries_;
};

bool ParseList(const std::string& text, std::vector<uint64_t>* out) {
  out->clear();
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    uint64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v == 0) return false;
    out->push_back(v);
  }
  return !out->empty();
}

// Flags after Google Benchmark's own: --contexts=, --batches= (comma
// lists), --exact_max_tokens=, --engine_max_context=, --engine_max_tokens=,
// --retrieve_threads= (workers beside the caller; default the engine's).
bool ParseFlags(int argc, char** argv, Config* config) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    bool ok = false;
    if (name == "--contexts") {
      ok = ParseList(value, &config->contexts);
    } else if (name == "--batches") {
      ok = ParseList(value, &config->batches);
    } else if (name == "--exact_max_tokens") {
      ok = absl::SimpleAtoi(value, &config->exact_max_tokens);
    } else if (name == "--engine_max_context") {
      ok = absl::SimpleAtoi(value, &config->engine_max_context);
    } else if (name == "--engine_max_tokens") {
      ok = absl::SimpleAtoi(value, &config->engine_max_tokens);
    } else if (name == "--retrieve_threads") {
      ok = absl::SimpleAtoi(value, &config->retrieve_threads) &&
           config->retrieve_threads <= 256;
    }
    if (!ok) {
      std::fprintf(stderr, "retrieve_layer_bench: bad flag %s\n", arg.c_str());
      return false;
    }
  }
  return true;
}

// Registered context by context, so that each context's data is built
// once and freed before the next.
void Register(const Config& config, Env& env) {
  auto add = [&](const char* name, auto fn, uint64_t ctx, uint64_t b,
                 int repetitions) {
    benchmark::RegisterBenchmark(name, fn)
        ->Args({static_cast<int64_t>(ctx), static_cast<int64_t>(b)})
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime()
        ->MeasureProcessCPUTime()
        ->Repetitions(repetitions)
        ->ReportAggregatesOnly(repetitions > 1);
  };
  Env* e = &env;
  for (uint64_t ctx : config.contexts) {
    for (uint64_t b : config.batches) {
      add(
          "plan", [e](benchmark::State& s) { BM_Plan(s, *e); }, ctx, b, 3);
      add(
          "stream_c", [e](benchmark::State& s) { BM_Stream(s, *e, false); },
          ctx, b, 3);
      add(
          "stream_c_vs", [e](benchmark::State& s) { BM_Stream(s, *e, true); },
          ctx, b, 3);
    }
    for (uint64_t b : config.batches) {
      if (!config.RunsExact(ctx, b)) continue;
      add(
          "exact", [e](benchmark::State& s) { BM_Exact(s, *e); }, ctx, b, 1);
    }
    for (uint64_t b : config.batches) {
      if (!config.RunsEngine(ctx, b)) continue;
      add(
          "engine", [e](benchmark::State& s) { BM_Engine(s, *e); }, ctx, b, 3);
    }
  }
}

}  // namespace
}  // namespace wavekv::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  wavekv::bench::Config config;
  if (!wavekv::bench::ParseFlags(argc, argv, &config)) return 2;
  wavekv::bench::Env env(config);
  wavekv::bench::Register(config, env);
  wavekv::bench::SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintSummary(env.pool().num_threads() + 1);
  benchmark::Shutdown();
  return 0;
}
