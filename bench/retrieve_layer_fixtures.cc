#include "bench/retrieve_layer_fixtures.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "index/dtype.h"
#include "index/wave_index_params.h"

namespace wavekv::bench {
namespace {

constexpr size_t kTopics = 256;
// Share of clusters k-means leaves empty (they must never be selected).
constexpr double kEmptyClusterShare = 0.02;
// Spread of the cluster sizes (lognormal sigma).
constexpr double kSizeSigma = 0.75;

[[noreturn]] void Die(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "retrieve_layer_bench: %s: %s\n", what.c_str(),
               status.ToString().c_str());
  std::abort();
}

// xorshift64*: fast enough to fill GiBs of data, deterministic per seed.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull | 1) {}
  uint64_t Next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545F4914F6CDD1Dull;
  }

 private:
  uint64_t s_;
};

// N(0, 1) samples drawn from a fixed table of 64K: good enough for data
// whose distribution, not its exact values, sets the cost.
float Normal(Rng& rng) {
  static const std::vector<float>* table = [] {
    auto* t = new std::vector<float>(1 << 16);
    std::mt19937_64 gen(7);
    std::normal_distribution<float> normal;
    for (float& x : *t) x = normal(gen);
    return t;
  }();
  return (*table)[rng.Next() >> 48];
}

// Topic directions of kv head h: [kTopics][kHeadDim], N(0, 1) elements.
const float* Topics(uint32_t h) {
  static const std::vector<float>* dirs = [] {
    auto* d = new std::vector<float>(size_t{kKvHeads} * kTopics * kHeadDim);
    Rng rng(1234);
    for (float& x : *d) x = Normal(rng);
    return d;
  }();
  return dirs->data() + size_t{h} * kTopics * kHeadDim;
}

// Appends the sizes of `k` clusters over `n` tokens: lognormal around the
// mean with a few empty clusters, summing to n, at least one non-empty.
void AppendSizes(uint64_t n, uint32_t k, Rng& rng,
                 std::vector<uint32_t>& sizes) {
  std::vector<double> w(k);
  double total = 0.0;
  for (uint32_t c = 0; c < k; ++c) {
    const bool empty =
        (rng.Next() >> 11) * 0x1.0p-53 < kEmptyClusterShare && c > 0;
    w[c] = empty ? 0.0 : std::exp(kSizeSigma * Normal(rng));
    total += w[c];
  }
  const size_t first = sizes.size();
  uint64_t assigned = 0;
  for (uint32_t c = 0; c < k; ++c) {
    const auto s = static_cast<uint32_t>(static_cast<double>(n) * w[c] / total);
    sizes.push_back(s);
    assigned += s;
  }
  // The remainder (< k tokens) goes one by one to random non-empty clusters.
  while (assigned < n) {
    const size_t c = first + rng.Next() % k;
    if (w[c - first] == 0.0) continue;
    ++sizes[c];
    ++assigned;
  }
}

// The wave index of one kv head over a context of `context` tokens, of the
// shape the prefill build gives (NextIndexBlock, PlanSegments), from random
// statistics: centroid = topic direction + noise shrinking with the size
// (the mean of its member keys), value sum = sum of `size` N(0, 1) values.
// Slots hold the tokens in order (retrieval never reads slot_tokens).
WaveIndex SyntheticIndex(uint64_t context, uint32_t h, uint64_t seed) {
  const WaveIndexParams params;
  const TokenSpan block = NextIndexBlock(params, context, 0);
  WaveIndexParts parts;
  parts.head_dim = kHeadDim;
  parts.begin_token = block.begin;
  parts.end_token = block.end;
  Rng rng(seed);
  for (const SegmentPlan& seg : PlanSegments(params, block.num_tokens())) {
    AppendSizes(seg.end - seg.begin, seg.num_clusters, rng, parts.sizes);
  }
  const size_t k = parts.sizes.size();
  parts.centroids.resize(k * kHeadDim);
  parts.value_sums.resize(k * kHeadDim);
  const float* topics = Topics(h);
  for (size_t c = 0; c < k; ++c) {
    const uint32_t s = parts.sizes[c];
    const float* dir = topics + (rng.Next() % kTopics) * kHeadDim;
    const float noise = 0.5f / std::sqrt(static_cast<float>(std::max(s, 1u)));
    const float vs = std::sqrt(static_cast<float>(s));
    for (size_t j = 0; j < kHeadDim; ++j) {
      parts.centroids[c * kHeadDim + j] = dir[j] + noise * Normal(rng);
      parts.value_sums[c * kHeadDim + j] = vs * Normal(rng);
    }
  }
  parts.slot_tokens.resize(block.num_tokens());
  std::iota(parts.slot_tokens.begin(), parts.slot_tokens.end(), block.begin);
  absl::StatusOr<WaveIndex> index = WaveIndex::FromParts(std::move(parts));
  if (!index.ok()) Die("FromParts", index.status());
  return *std::move(index);
}

// Random fp16 in ±[0.5, 1): random sign and mantissa, fixed exponent. Four
// elements per draw, so GiBs fill in about a second.
void FillHalf(uint16_t* out, uint64_t n, uint64_t seed) {
  Rng rng(seed);
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint64_t r = rng.Next();
    for (int u = 0; u < 4; ++u) {
      out[i + u] = static_cast<uint16_t>(((r >> (16 * u)) & 0x83FF) | 0x3800);
    }
  }
  for (; i < n; ++i)
    out[i] = static_cast<uint16_t>((rng.Next() & 0x83FF) | 0x3800);
}

double Seconds(absl::Time since) {
  return absl::ToDoubleSeconds(absl::Now() - since);
}

}  // namespace

ModelShape LayerShape() { return {1, kQHeads, kKvHeads, kHeadDim, kDType}; }

// ---------------------------------------------------------------------------
// Queries

std::vector<std::vector<float>> MakeQueries(size_t num_sessions) {
  std::vector<std::vector<float>> queries(num_sessions);
  Rng rng(99);
  for (auto& q : queries) {
    q.resize(size_t{kQHeads} * kHeadDim);
    for (uint32_t qh = 0; qh < kQHeads; ++qh) {
      const float* dir =
          Topics(qh / kGroup) + (rng.Next() % kTopics) * kHeadDim;
      for (size_t j = 0; j < kHeadDim; ++j) {
        q[qh * kHeadDim + j] = 0.8f * (dir[j] + 0.5f * Normal(rng));
      }
    }
  }
  return queries;
}

// ---------------------------------------------------------------------------
// IndexPool

IndexPool::IndexPool(uint64_t context_tokens, size_t max_sessions,
                     uint64_t cap_bytes)
    : context_tokens_(context_tokens) {
  const absl::Time start = absl::Now();
  uint64_t held = 0;
  while (sessions_.size() < max_sessions) {
    std::vector<WaveIndex> heads;
    heads.reserve(kKvHeads);
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      heads.push_back(SyntheticIndex(
          context_tokens, h, context_tokens * 131 + sessions_.size() * 8 + h));
    }
    sessions_.push_back(std::move(heads));
    held += memory_bytes_per_session();
    if (held + memory_bytes_per_session() > cap_bytes) break;
  }
  std::fprintf(stderr,
               "[fixture] %llu tokens: %zu synthetic index sessions x %u kv "
               "heads, %zu clusters/head, %.2f GiB, %.1f s\n",
               static_cast<unsigned long long>(context_tokens),
               sessions_.size(), kKvHeads, sessions_[0][0].num_clusters(),
               static_cast<double>(held) / (1ull << 30), Seconds(start));
}

uint64_t IndexPool::centroid_bytes() const {
  uint64_t bytes = 0;
  for (const WaveIndex& i : sessions_[0]) {
    bytes += i.centroid_panels().num_panels() * PanelMatrix::kPanelRows *
             kHeadDim * sizeof(float);
  }
  return bytes;
}

uint64_t IndexPool::value_sum_bytes() const {
  uint64_t bytes = 0;
  for (const WaveIndex& i : sessions_[0]) {
    bytes += i.value_sums().size() * sizeof(float);
  }
  return bytes;
}

uint64_t IndexPool::memory_bytes_per_session() const {
  uint64_t bytes = 0;
  for (const WaveIndex& i : sessions_[0]) bytes += i.memory_bytes();
  return bytes;
}

// ---------------------------------------------------------------------------
// KvPool

KvPool::KvPool(uint64_t context_tokens, size_t max_sessions, uint64_t cap_bytes)
    : context_tokens_(context_tokens) {
  const absl::Time start = absl::Now();
  const uint64_t elements = uint64_t{kKvHeads} * context_tokens * kHeadDim;
  while (keys_.size() < max_sessions &&
         (keys_.empty() ||
          (keys_.size() + 1) * bytes_per_session() <= cap_bytes)) {
    const uint64_t seed = context_tokens * 7 + keys_.size();
    keys_.push_back(std::make_unique_for_overwrite<uint16_t[]>(elements));
    values_.push_back(std::make_unique_for_overwrite<uint16_t[]>(elements));
    FillHalf(keys_.back().get(), elements, 2 * seed);
    FillHalf(values_.back().get(), elements, 2 * seed + 1);
  }
  std::fprintf(
      stderr, "[fixture] %llu tokens: %zu K/V sessions, %.2f GiB, %.1f s\n",
      static_cast<unsigned long long>(context_tokens), keys_.size(),
      static_cast<double>(keys_.size() * bytes_per_session()) / (1ull << 30),
      Seconds(start));
}

uint64_t KvPool::bytes_per_session() const {
  return 2 * uint64_t{kKvHeads} * context_tokens_ * kHeadDim * sizeof(uint16_t);
}

const uint8_t* KvPool::keys(size_t s, uint32_t h) const {
  return reinterpret_cast<const uint8_t*>(keys_[s].get() +
                                          h * context_tokens_ * kHeadDim);
}

const uint8_t* KvPool::values(size_t s, uint32_t h) const {
  return reinterpret_cast<const uint8_t*>(values_[s].get() +
                                          h * context_tokens_ * kHeadDim);
}

// ---------------------------------------------------------------------------
// EngineSessions

EngineSessions::EngineSessions(uint64_t context_tokens, size_t num_sessions,
                               uint32_t index_threads)
    : context_tokens_(context_tokens) {
  const absl::Time start = absl::Now();
  const ModelShape shape = LayerShape();
  const uint64_t layer_bytes = context_tokens * shape.TokenLayerBytes();
  EngineOptions options;
  options.index_threads = index_threads;
  // K/V twice over (token order while the build runs, then cluster-major)
  // plus the indexes.
  options.memory_budget_bytes = std::max<uint64_t>(
      options.memory_budget_bytes, num_sessions * 3 * layer_bytes);
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(options);
  if (!engine.ok()) Die("Engine::Open", engine.status());
  engine_ = *std::move(engine);

  // Keys with topic structure (runs of 64 tokens near one topic direction
  // per kv head), so that k-means finds clusters; values N(0, 1).
  const size_t row = size_t{kKvHeads} * kHeadDim;
  std::vector<uint8_t> keys(layer_bytes), values(layer_bytes);
  constexpr uint64_t kChunk = 4096;
  std::vector<float> k(kChunk * row), v(kChunk * row);
  for (size_t s = 0; s < num_sessions; ++s) {
    Rng rng(context_tokens * 1000 + s);
    std::vector<uint32_t> topic(kKvHeads);
    for (uint64_t t0 = 0; t0 < context_tokens; t0 += kChunk) {
      const uint64_t n = std::min(kChunk, context_tokens - t0);
      for (uint64_t t = 0; t < n; ++t) {
        for (uint32_t h = 0; h < kKvHeads; ++h) {
          if ((t0 + t) % 64 == 0) topic[h] = rng.Next() % kTopics;
          const float* dir = Topics(h) + topic[h] * kHeadDim;
          float* kr = &k[t * row + h * kHeadDim];
          float* vr = &v[t * row + h * kHeadDim];
          for (size_t j = 0; j < kHeadDim; ++j) {
            kr[j] = dir[j] + 0.5f * Normal(rng);
            vr[j] = Normal(rng);
          }
        }
      }
      EncodeFromFloat(kDType, k.data(), n * row, &keys[t0 * row * 2]);
      EncodeFromFloat(kDType, v.data(), n * row, &values[t0 * row * 2]);
    }
    SessionOptions so;
    so.shape = shape;
    so.label = "retrieve_layer_bench";
    absl::StatusOr<SessionInfo> info = engine_->CreateSession(kTenant, so);
    if (!info.ok()) Die("CreateSession", info.status());
    ids_.push_back(info->session_id);
    const LayerAppend append{0, 0, static_cast<uint32_t>(context_tokens), keys,
                             values};
    absl::StatusOr<AppendResult> appended =
        engine_->Append(kTenant, ids_.back(), {&append, 1});
    if (!appended.ok()) Die("Append", appended.status());
  }

  // Wait for the background builds.
  const uint64_t want =
      NextIndexBlock(WaveIndexParams{}, context_tokens, 0).num_tokens();
  absl::Time last_report = absl::Now();
  for (const std::string& id : ids_) {
    while (true) {
      absl::StatusOr<SessionInfo> info = engine_->GetSession(kTenant, id);
      if (!info.ok()) Die("GetSession", info.status());
      if (info->index_state == IndexState::kFailed) {
        Die("index build", absl::InternalError(info->index_error));
      }
      if (info->index_state == IndexState::kReady) {
        if (info->layer_indexed_tokens[0] != want) {
          Die("index build", absl::InternalError("unexpected indexed tokens"));
        }
        break;
      }
      if (absl::Now() - last_report > absl::Seconds(15)) {
        last_report = absl::Now();
        std::fprintf(stderr, "[fixture] engine %llu tokens: building, %.0f s\n",
                     static_cast<unsigned long long>(context_tokens),
                     Seconds(start));
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  build_seconds_ = Seconds(start);
  std::fprintf(stderr,
               "[fixture] engine %llu tokens: %zu sessions appended and "
               "indexed (k-means, %u build threads), %.1f s\n",
               static_cast<unsigned long long>(context_tokens), num_sessions,
               index_threads, build_seconds_);
}

}  // namespace wavekv::bench
