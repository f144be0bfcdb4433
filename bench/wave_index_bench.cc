// Wave index on CPU: index build throughput, retrieval planning latency per
// (layer, kv head group), and one full wave decode step (plan + exact
// attention over steady and retrieval zones + tail merge), each beside the
// baseline: exact attention of the group over the whole context.
//
//   bazel run -c opt //bench:wave_index_bench --
//   --benchmark_counters_tabular=true
//
// Shapes: head_dim 128, GQA group 4 (Llama-3-8B), fp16 K/V, default
// WaveIndexParams; contexts of 8K / 32K / 128K tokens with topic structure.
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "benchmark/benchmark.h"
#include "index/attention.h"
#include "index/retrieval.h"
#include "index/wave_index.h"

namespace wavekv {
namespace {

constexpr size_t kHeadDim = 128;
constexpr size_t kGroup = 4;
constexpr DType kDType = DType::kFp16;

int BuildThreads() {
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// One kv head's context and, once built, its index with K/V laid out
// cluster-major.
struct Context {
  size_t tokens = 0;
  std::vector<uint8_t> keys, values;  // token order, fp16
  std::unique_ptr<WaveIndex> index;
  std::vector<uint8_t> slot_keys, slot_values;
  std::vector<float> queries;  // [kGroup][kHeadDim]

  size_t row_bytes() const { return kHeadDim * DTypeBytes(kDType); }
  KvRows Rows(TokenSpan s) const {
    return KvRows{kDType, kHeadDim, s.num_tokens(),
                  keys.data() + s.begin * row_bytes(),
                  values.data() + s.begin * row_bytes()};
  }
  KvView Tokens(uint64_t b, uint64_t e) const {
    return KvView{kDType, kHeadDim, e - b, keys.data() + b * row_bytes(),
                  values.data() + b * row_bytes()};
  }
};

std::unique_ptr<Context> MakeContext(size_t tokens) {
  auto ctx = std::make_unique<Context>();
  ctx->tokens = tokens;
  std::mt19937_64 rng(tokens);
  std::normal_distribution<float> normal;
  const size_t topics = 256;
  std::vector<float> dirs(topics * kHeadDim);
  for (auto& x : dirs) x = normal(rng);
  std::vector<float> k(tokens * kHeadDim), v(tokens * kHeadDim);
  size_t topic = 0;
  for (size_t t = 0; t < tokens; ++t) {
    if (t % 64 == 0) topic = rng() % topics;
    for (size_t j = 0; j < kHeadDim; ++j) {
      k[t * kHeadDim + j] = dirs[topic * kHeadDim + j] + 0.5f * normal(rng);
      v[t * kHeadDim + j] = normal(rng);
    }
  }
  ctx->keys.resize(k.size() * 2);
  ctx->values.resize(v.size() * 2);
  EncodeFromFloat(kDType, k.data(), k.size(), ctx->keys.data());
  EncodeFromFloat(kDType, v.data(), v.size(), ctx->values.data());
  ctx->queries.resize(kGroup * kHeadDim);
  for (size_t h = 0; h < kGroup; ++h) {
    const size_t t = rng() % tokens;
    for (size_t j = 0; j < kHeadDim; ++j) {
      ctx->queries[h * kHeadDim + j] = 0.8f * k[t * kHeadDim + j];
    }
  }
  return ctx;
}

// Built once per size and shared by the decode benchmarks.
Context& BuiltContext(size_t tokens) {
  static auto* cache = new std::map<size_t, std::unique_ptr<Context>>();
  auto& slot = (*cache)[tokens];
  if (slot == nullptr) {
    slot = MakeContext(tokens);
    Context& ctx = *slot;
    const WaveIndexParams params;
    ctx.index = std::make_unique<WaveIndex>(kHeadDim);
    const TokenSpan block = NextIndexBlock(params, tokens, 0);
    auto layout = ctx.index->AddBlock(params, block.begin, ctx.Rows(block),
                                      BuildThreads());
    if (!layout.ok()) std::abort();
    const size_t rb = ctx.row_bytes();
    ctx.slot_keys.resize(layout->slot_tokens.size() * rb);
    ctx.slot_values.resize(layout->slot_tokens.size() * rb);
    for (size_t s = 0; s < layout->slot_tokens.size(); ++s) {
      const uint64_t t = layout->slot_tokens[s];
      std::memcpy(&ctx.slot_keys[s * rb], &ctx.keys[t * rb], rb);
      std::memcpy(&ctx.slot_values[s * rb], &ctx.values[t * rb], rb);
    }
  }
  return *slot;
}

void BM_IndexBuild(benchmark::State& state) {
  const size_t tokens = state.range(0);
  auto ctx = MakeContext(tokens);
  const WaveIndexParams params;
  const TokenSpan block = NextIndexBlock(params, tokens, 0);
  size_t clusters = 0;
  for (auto _ : state) {
    WaveIndex index(kHeadDim);
    auto layout =
        index.AddBlock(params, block.begin, ctx->Rows(block), BuildThreads());
    if (!layout.ok()) state.SkipWithError("build failed");
    clusters = index.num_clusters();
    benchmark::DoNotOptimize(index);
  }
  state.SetItemsProcessed(state.iterations() * block.num_tokens());
  state.counters["clusters"] = clusters;
  state.counters["threads"] = BuildThreads();
}

// One decode update: 1024 new tokens into 64 clusters (single thread).
void BM_IndexUpdate(benchmark::State& state) {
  auto ctx = MakeContext(1024);
  const WaveIndexParams params;
  for (auto _ : state) {
    WaveIndex index(kHeadDim);
    auto layout = index.AddBlock(params, 0, ctx->Rows({0, 1024}), 1);
    if (!layout.ok()) state.SkipWithError("update failed");
    benchmark::DoNotOptimize(index);
  }
  state.SetItemsProcessed(state.iterations() * 1024);
}

void BM_RetrievalPlan(benchmark::State& state) {
  Context& ctx = BuiltContext(state.range(0));
  const WaveIndexParams params;
  size_t r = 0, e = 0;
  for (auto _ : state) {
    auto plan = PlanRetrieval(*ctx.index, ctx.queries, kGroup, params,
                              DefaultScale(kHeadDim));
    if (!plan.ok()) state.SkipWithError("plan failed");
    r = plan->retrieval_clusters.size();
    e = plan->estimation_clusters.size();
    benchmark::DoNotOptimize(plan);
  }
  state.counters["clusters"] = ctx.index->num_clusters();
  state.counters["retrieval"] = r;
  state.counters["estimation"] = e;
}

// Wave decode step of one group: plan, then exact attention of the group
// over the steady zone and the retrieval clusters, merged with the tail.
void BM_WaveDecodeStep(benchmark::State& state) {
  Context& ctx = BuiltContext(state.range(0));
  const WaveIndexParams params;
  const float scale = DefaultScale(kHeadDim);
  const auto steady = SteadySpans(ctx.tokens, ctx.index->indexed_span());
  const size_t rb = ctx.row_bytes();
  size_t exact_tokens = 0;
  for (auto _ : state) {
    auto plan = PlanRetrieval(*ctx.index, ctx.queries, kGroup, params, scale);
    std::vector<AttentionPartial> acc(kGroup,
                                      AttentionPartial::Empty(kHeadDim));
    auto merge = [&](const KvView& view) {
      auto parts = PartialAttentionGroup(ctx.queries, kGroup, view, scale);
      for (size_t h = 0; h < kGroup; ++h) MergeInto(acc[h], parts[h]);
      exact_tokens += view.num_tokens;
    };
    exact_tokens = 0;
    for (const TokenSpan& s : steady) merge(ctx.Tokens(s.begin, s.end));
    for (ClusterId c : plan->retrieval_clusters) {
      const uint64_t b = ctx.index->cluster_offset(c);
      merge(KvView{kDType, kHeadDim, ctx.index->cluster_size(c),
                   ctx.slot_keys.data() + b * rb,
                   ctx.slot_values.data() + b * rb});
    }
    for (size_t h = 0; h < kGroup; ++h) {
      MergeInto(acc[h], plan->tail[h]);
      benchmark::DoNotOptimize(Finalize(acc[h]));
    }
  }
  state.counters["exact_tokens"] = exact_tokens;
}

// Baseline: exact attention of the group's q heads over every token, one
// pass over K/V for the whole group.
void BM_ExactAttention(benchmark::State& state) {
  const size_t tokens = state.range(0);
  Context& ctx = BuiltContext(tokens);
  const float scale = DefaultScale(kHeadDim);
  for (auto _ : state) {
    auto parts = PartialAttentionGroup(ctx.queries, kGroup,
                                       ctx.Tokens(0, tokens), scale);
    for (const auto& p : parts) benchmark::DoNotOptimize(Finalize(p));
  }
  // K and V bytes read per group step.
  state.SetBytesProcessed(state.iterations() * tokens * 2 * ctx.row_bytes());
}

// Exact partial attention throughput per dtype (one q head, 32K tokens).
void BM_PartialAttentionDType(benchmark::State& state) {
  const DType dtype = static_cast<DType>(state.range(0));
  const size_t tokens = 32768;
  std::vector<float> f(tokens * kHeadDim);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (auto& x : f) x = normal(rng);
  std::vector<uint8_t> kv(f.size() * DTypeBytes(dtype));
  EncodeFromFloat(dtype, f.data(), f.size(), kv.data());
  std::vector<float> q(f.begin(), f.begin() + kHeadDim);
  const KvView view{dtype, kHeadDim, tokens, kv.data(), kv.data()};
  for (auto _ : state) {
    benchmark::DoNotOptimize(PartialAttention(q, view, DefaultScale(kHeadDim)));
  }
  state.SetLabel(std::string(DTypeName(dtype)));
  state.SetItemsProcessed(state.iterations() * tokens);
}

BENCHMARK(BM_IndexBuild)
    ->Arg(8192)
    ->Arg(32768)
    ->Arg(131072)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_IndexUpdate)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RetrievalPlan)
    ->Arg(8192)
    ->Arg(32768)
    ->Arg(131072)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_WaveDecodeStep)
    ->Arg(8192)
    ->Arg(32768)
    ->Arg(131072)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ExactAttention)
    ->Arg(8192)
    ->Arg(32768)
    ->Arg(131072)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PartialAttentionDType)
    ->Arg(static_cast<int>(DType::kFp16))
    ->Arg(static_cast<int>(DType::kBf16))
    ->Arg(static_cast<int>(DType::kFp32))
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace wavekv
