#include "index/eval/workload.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "index/eval/eval_math.h"

namespace wavekv {
namespace eval {
namespace {

// Streams of randomness derived from the seed (DeriveSeed's `stream`).
enum Stream : uint64_t {
  kStructure = 1,  // topic centres, value means, offsets, directions
  kTopics = 2,     // the topic sequence
  kTokens = 3,     // per chunk of tokens: key noise and values
  kProbes = 4,     // per probe: query parts
};

constexpr size_t kChunkTokens = 4096;
// Norm of a sink key along its direction, in units of sqrt(128) (fixed
// across head_dim, like needle_key_gain).
constexpr float kSinkKeyGain = 2.5f;
constexpr double kSqrt128 = 11.313708498984761;
// Values of sink tokens are near zero (a sink is a no-op for the output).
constexpr float kSinkValueScale = 0.1f;
// Std of a topic's value mean per channel.
constexpr float kValueMeanStd = 0.7f;
// Std of the head offset (mean key) per channel.
constexpr float kOffsetStd = 0.3f;
// Background query: weights of the current topic and two other topics; the
// per-head perturbation; the query's outlier-channel magnitude.
constexpr float kQueryTopicWeights[3] = {1.0f, 0.7f, 0.7f};
constexpr float kHeadNoise = 0.5f;
constexpr float kQueryOutlier = 0.5f;
// Most rounds of refining the planted parts of one query head jointly.
constexpr int kCalibrationRounds = 12;

// Role of a token in the context.
constexpr int32_t kTopicToken = -1;
constexpr int32_t kSinkToken = -2;

absl::Status Invalid(absl::string_view field, const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrCat("workload.", field, ": ", why));
}

// Per channel: 0.5 for the highest-frequency RoPE pair up to 1.5 for the
// lowest (semantic content leans on slowly rotating channels).
std::vector<float> PairScales(size_t dim) {
  const size_t half = dim / 2;
  std::vector<float> s(dim);
  for (size_t c = 0; c < dim; ++c) {
    const size_t j = c % half;
    s[c] = 0.5f + (j + 0.5f) / half;
  }
  return s;
}

std::vector<float> Gaussian(size_t n, float sigma, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> out(n);
  for (auto& x : out) x = normal(rng);
  return out;
}

void NormaliseInPlace(std::vector<float>& v) {
  const double norm = std::sqrt(Dot(v.data(), v.data(), v.size()));
  if (norm > 0) {
    for (auto& x : v) x = static_cast<float>(x / norm);
  }
}

// RoPE rotation by a (possibly negative) position.
void RotateByPosition(float* x, size_t dim, double position, double theta) {
  const size_t half = dim / 2;
  for (size_t j = 0; j < half; ++j) {
    const double freq = std::pow(theta, -2.0 * double(j) / double(dim));
    const double angle = position * freq;
    const double c = std::cos(angle), s = std::sin(angle);
    const double a = x[j], b = x[j + half];
    x[j] = static_cast<float>(a * c - b * s);
    x[j + half] = static_cast<float>(a * s + b * c);
  }
}

// Makes the planted directions (pre-RoPE, one per part, each used by keys
// centred at `centres[i]`) orthogonal after RoPE at their centres, by
// Gram-Schmidt in that space: a query part aimed at one needle then barely
// moves the others' logits. Directions that cannot be made orthogonal (more
// parts than dimensions) are left as drawn.
void OrthogonaliseAfterRope(std::vector<std::vector<float>>& dirs,
                            const std::vector<double>& centres, double theta) {
  std::vector<std::vector<float>> done;
  for (size_t i = 0; i < dirs.size(); ++i) {
    std::vector<float> v = dirs[i];
    const size_t dim = v.size();
    RotateByPosition(v.data(), dim, centres[i], theta);
    std::vector<float> r = v;
    for (const auto& u : done) {
      const double p = Dot(r.data(), u.data(), dim);
      for (size_t c = 0; c < dim; ++c) r[c] -= static_cast<float>(p * u[c]);
    }
    if (std::sqrt(Dot(r.data(), r.data(), dim)) > 0.1) v = r;
    NormaliseInPlace(v);
    done.push_back(v);
    RotateByPosition(v.data(), dim, -centres[i], theta);
    dirs[i] = v;
  }
}

// A random unit direction shaped by the pair scales.
std::vector<float> Direction(const std::vector<float>& scales,
                             std::mt19937_64& rng) {
  std::vector<float> d = Gaussian(scales.size(), 1.0f, rng);
  for (size_t c = 0; c < d.size(); ++c) d[c] *= scales[c];
  NormaliseInPlace(d);
  return d;
}

// Unit direction of Σ_t RoPE(t)·dir over the tokens of [first, first + n):
// where a set of keys planted along `dir` points after RoPE.
std::vector<float> RotatedMean(const std::vector<float>& dir, uint64_t first,
                               uint64_t n, double theta) {
  std::vector<float> sum(dir.size(), 0.0f), row(dir.size());
  for (uint64_t t = first; t < first + n; ++t) {
    row = dir;
    ApplyRope(row.data(), row.size(), t, theta);
    for (size_t c = 0; c < row.size(); ++c) sum[c] += row[c];
  }
  NormaliseInPlace(sum);
  return sum;
}

// A planted part of a query: `direction` (unit, post-RoPE) aimed at tokens
// [first_token, first_token + num_tokens), either the sinks or a needle.
struct QueryPart {
  const std::vector<float>* direction;
  uint64_t first_token;
  uint64_t num_tokens;
  bool sink;
  double gain = 0.0;
};

// Sets the gains of `parts` and adds them to `q` so that, with B the tokens
// outside every part: the sinks hold sink_mass / (1 - sink_mass) times B's
// softmax mass, and every needle needle_mass / (1 - needle_mass) times the
// mass of B and the sinks together. The parts move each other's logits and
// B's, so the gains are refined jointly (Jacobi rounds) until they settle.
void CalibrateParts(const std::vector<float>& keys, size_t n, size_t d,
                    double scale, double sink_mass, double needle_mass,
                    std::vector<QueryPart>& parts, std::vector<float>& q) {
  if (parts.empty()) return;
  std::vector<uint8_t> in_part(n, 0);
  std::vector<std::vector<double>> slopes(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    const QueryPart& part = parts[i];
    for (uint64_t t = part.first_token; t < part.first_token + part.num_tokens;
         ++t) {
      in_part[t] = 1;
      slopes[i].push_back(scale * Dot(part.direction->data(), &keys[t * d], d));
    }
  }
  const double sink_odds = std::log(sink_mass / (1.0 - sink_mass));
  const double needle_odds = std::log(needle_mass / (1.0 - needle_mass));
  std::vector<double> logits(n), rest, sinks, base;
  rest.reserve(n);
  std::vector<float> cur(d);
  for (int round = 0; round < kCalibrationRounds; ++round) {
    cur = q;
    for (const QueryPart& part : parts) {
      for (size_t c = 0; c < d; ++c) {
        cur[c] += static_cast<float>(part.gain * (*part.direction)[c]);
      }
    }
    Logits(cur.data(), keys.data(), n, d, scale, logits.data());
    rest.clear();
    sinks.clear();
    for (size_t t = 0; t < n; ++t) {
      if (!in_part[t]) rest.push_back(logits[t]);
    }
    for (const QueryPart& part : parts) {
      if (!part.sink) continue;
      for (uint64_t t = part.first_token;
           t < part.first_token + part.num_tokens; ++t) {
        sinks.push_back(logits[t]);
      }
    }
    const double lse_rest = LogSumExp(rest.data(), rest.size());
    const double lse_sinks = LogSumExp(sinks.data(), sinks.size());
    const double lse_context =
        sinks.empty()
            ? lse_rest
            : std::max(lse_rest, lse_sinks) +
                  std::log1p(std::exp(-std::fabs(lse_rest - lse_sinks)));
    double change = 0.0;
    for (size_t i = 0; i < parts.size(); ++i) {
      QueryPart& part = parts[i];
      base.resize(part.num_tokens);
      for (uint64_t k = 0; k < part.num_tokens; ++k) {
        // This part's logits without its own contribution.
        base[k] = logits[part.first_token + k] - part.gain * slopes[i][k];
      }
      const double target =
          part.sink ? lse_rest + sink_odds : lse_context + needle_odds;
      const double gain = SolveGain(base, slopes[i], target);
      change = std::max(
          change, std::fabs(gain - part.gain) / std::max(1.0, std::fabs(gain)));
      part.gain = gain;
    }
    if (change < 1e-3) break;
  }
  for (const QueryPart& part : parts) {
    for (size_t c = 0; c < d; ++c) {
      q[c] += static_cast<float>(part.gain * (*part.direction)[c]);
    }
  }
}

}  // namespace

std::string_view ProbeKindName(ProbeKind kind) {
  switch (kind) {
    case ProbeKind::kSingleNeedle:
      return "single-needle";
    case ProbeKind::kMultiNeedle:
      return "multi-needle";
    case ProbeKind::kMultiQuery:
      return "multi-query";
    case ProbeKind::kBackground:
      return "background";
  }
  return "unknown";
}

absl::Status WorkloadOptions::Validate() const {
  if (num_tokens < 1024 || num_tokens > (uint64_t{1} << 26)) {
    return Invalid(
        "num_tokens",
        absl::StrCat("must be in [1024, 67108864], got ", num_tokens));
  }
  if (head_dim < 8 || head_dim > 1024 || head_dim % 2 != 0) {
    return Invalid("head_dim",
                   absl::StrCat("must be even in [8, 1024], got ", head_dim));
  }
  if (group_size < 1 || group_size > 64) {
    return Invalid("group_size",
                   absl::StrCat("must be in [1, 64], got ", group_size));
  }
  if (!(rope_theta > 1.0) || !std::isfinite(rope_theta)) {
    return Invalid("rope_theta", absl::StrCat("must be > 1, got ", rope_theta));
  }
  if (num_topics < 1) return Invalid("num_topics", "must be >= 1, got 0");
  if (topic_run_tokens < 1) {
    return Invalid("topic_run_tokens", "must be >= 1, got 0");
  }
  if (!(key_noise >= 0.0f) || !std::isfinite(key_noise)) {
    return Invalid("key_noise", absl::StrCat("must be >= 0, got ", key_noise));
  }
  if (outlier_channels > head_dim) {
    return Invalid("outlier_channels",
                   absl::StrCat("must be <= head_dim ", head_dim, ", got ",
                                outlier_channels));
  }
  if (!std::isfinite(outlier_magnitude)) {
    return Invalid("outlier_magnitude", "must be finite");
  }
  if (attention_sinks < 1 || attention_sinks > 16) {
    return Invalid("attention_sinks",
                   absl::StrCat("must be in [1, 16], got ", attention_sinks));
  }
  if (!(sink_mass >= 0.0f && sink_mass <= 0.9f)) {
    return Invalid("sink_mass",
                   absl::StrCat("must be in [0, 0.9], got ", sink_mass));
  }
  for (size_t i = 0; i < needle_depths.size(); ++i) {
    if (!(needle_depths[i] >= 0 && needle_depths[i] <= 100)) {
      return Invalid(
          absl::StrCat("needle_depths[", i, "]"),
          absl::StrCat("must be in [0, 100], got ", needle_depths[i]));
    }
  }
  for (size_t i = 0; i < multi_needle_depths.size(); ++i) {
    if (!(multi_needle_depths[i] >= 0 && multi_needle_depths[i] <= 100)) {
      return Invalid(
          absl::StrCat("multi_needle_depths[", i, "]"),
          absl::StrCat("must be in [0, 100], got ", multi_needle_depths[i]));
    }
  }
  if (needle_tokens < 1 || needle_tokens > 256) {
    return Invalid("needle_tokens",
                   absl::StrCat("must be in [1, 256], got ", needle_tokens));
  }
  if (!(needle_key_gain > 0.0f) || !std::isfinite(needle_key_gain)) {
    return Invalid("needle_key_gain",
                   absl::StrCat("must be > 0, got ", needle_key_gain));
  }
  if (!(needle_mass > 0.0f && needle_mass < 1.0f)) {
    return Invalid("needle_mass",
                   absl::StrCat("must be in (0, 1), got ", needle_mass));
  }
  if (!std::isfinite(needle_value_gain)) {
    return Invalid("needle_value_gain", "must be finite");
  }
  if (background_probes > 64) {
    return Invalid("background_probes",
                   absl::StrCat("must be in [0, 64], got ", background_probes));
  }
  if (!(query_gain >= 0.0f) || !std::isfinite(query_gain)) {
    return Invalid("query_gain",
                   absl::StrCat("must be >= 0, got ", query_gain));
  }
  return absl::OkStatus();
}

void ApplyRope(float* x, size_t dim, uint64_t position, double theta) {
  RotateByPosition(x, dim, static_cast<double>(position), theta);
}

uint64_t NeedleFirstToken(uint64_t doc_begin, uint64_t doc_end,
                          uint32_t num_tokens, double depth_percent) {
  const uint64_t room = doc_end - doc_begin - num_tokens;
  return doc_begin +
         static_cast<uint64_t>(std::llround(depth_percent / 100.0 * room));
}

absl::StatusOr<Workload> Workload::Generate(const WorkloadOptions& options,
                                            int num_threads) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  const size_t d = options.head_dim, half = d / 2, n = options.num_tokens;
  const size_t g = options.group_size;
  const double theta = options.rope_theta;
  const double sqrt_d = std::sqrt(double(d));
  const double scale = 1.0 / sqrt_d;

  Workload w;
  w.options_ = options;

  // Needles: single ones, then the multi-needle set.
  const uint64_t doc_begin = options.attention_sinks;
  for (double depth : options.needle_depths) {
    w.needles_.push_back(
        {NeedleFirstToken(doc_begin, n, options.needle_tokens, depth),
         options.needle_tokens, depth});
  }
  for (double depth : options.multi_needle_depths) {
    w.needles_.push_back(
        {NeedleFirstToken(doc_begin, n, options.needle_tokens, depth),
         options.needle_tokens, depth});
  }
  std::vector<int32_t> role(n, kTopicToken);
  for (uint32_t s = 0; s < options.attention_sinks; ++s) role[s] = kSinkToken;
  for (size_t i = 0; i < w.needles_.size(); ++i) {
    const Needle& nd = w.needles_[i];
    for (uint64_t t = nd.first_token; t < nd.first_token + nd.num_tokens; ++t) {
      if (role[t] != kTopicToken) {
        return Invalid("needle_depths",
                       absl::StrFormat("needle at %g%% (token %d) overlaps "
                                       "another needle at %d tokens",
                                       nd.depth_percent, t, n));
      }
      role[t] = static_cast<int32_t>(i);
    }
  }

  // Structure: topic centres and value means, head offset with outliers,
  // sink and needle directions and needle values.
  std::mt19937_64 rng(DeriveSeed(options.seed, kStructure, 0));
  const std::vector<float> scales = PairScales(d);
  std::vector<float> centres =
      Gaussian(size_t{options.num_topics} * d, 1.0f, rng);
  for (size_t i = 0; i < centres.size(); ++i) centres[i] *= scales[i % d];
  const std::vector<float> value_means =
      Gaussian(size_t{options.num_topics} * d, kValueMeanStd, rng);
  std::vector<float> offset = Gaussian(d, kOffsetStd, rng);
  std::vector<size_t> outliers;
  for (uint32_t i = 0; i < options.outlier_channels; ++i) {
    // Lowest-frequency pairs first, both channels of a pair.
    const size_t pair = half - 1 - (i / 2) % half;
    const size_t c = (i % 2 == 0) ? pair : pair + half;
    offset[c] = (rng() & 1 ? 1.0f : -1.0f) * options.outlier_magnitude;
    outliers.push_back(c);
  }
  // Planted directions: the sink's, then one per needle.
  std::vector<std::vector<float>> planted = {Direction(scales, rng)};
  std::vector<double> planted_centres = {0.5 * (options.attention_sinks - 1)};
  std::vector<std::vector<float>> needle_values;
  for (size_t i = 0; i < w.needles_.size(); ++i) {
    planted.push_back(Direction(scales, rng));
    planted_centres.push_back(w.needles_[i].first_token +
                              0.5 * (w.needles_[i].num_tokens - 1));
    needle_values.push_back(Gaussian(d, options.needle_value_gain, rng));
  }
  OrthogonaliseAfterRope(planted, planted_centres, theta);
  const std::vector<float> sink_dir = planted[0];
  const std::vector<std::vector<float>> needle_dirs(planted.begin() + 1,
                                                    planted.end());

  // The topic sequence: runs with mean length topic_run_tokens.
  std::vector<uint32_t> topic(n);
  {
    std::mt19937_64 trng(DeriveSeed(options.seed, kTopics, 0));
    std::uniform_int_distribution<uint32_t> pick(0, options.num_topics - 1);
    const double p_switch = 1.0 / options.topic_run_tokens;
    std::uniform_real_distribution<double> u01(0.0, 1.0);
    uint32_t z = pick(trng);
    for (size_t t = 0; t < n; ++t) {
      if (t > 0 && u01(trng) < p_switch) z = pick(trng);
      topic[t] = z;
    }
  }

  // Tokens, chunk by chunk (each chunk its own stream).
  w.keys_.resize(n * d);
  w.values_.resize(n * d);
  const size_t num_chunks = (n + kChunkTokens - 1) / kChunkTokens;
  const float sink_gain = static_cast<float>(kSinkKeyGain * kSqrt128);
  const float needle_gain =
      static_cast<float>(options.needle_key_gain * kSqrt128);
  ParallelFor(num_chunks, num_threads, [&](size_t chunk) {
    std::mt19937_64 crng(DeriveSeed(options.seed, kTokens, chunk));
    std::normal_distribution<float> normal;
    std::vector<uint8_t> bytes(d * DTypeBytes(options.dtype));
    const size_t end = std::min(n, (chunk + 1) * kChunkTokens);
    for (size_t t = chunk * kChunkTokens; t < end; ++t) {
      float* k = &w.keys_[t * d];
      float* v = &w.values_[t * d];
      const int32_t r = role[t];
      const float* key_dir = nullptr;
      float key_gain = 0.0f;
      if (r == kSinkToken) {
        key_dir = sink_dir.data();
        key_gain = sink_gain;
      } else if (r >= 0) {
        key_dir = needle_dirs[r].data();
        key_gain = needle_gain;
      }
      const float* centre = &centres[size_t{topic[t]} * d];
      const float* vmean = &value_means[size_t{topic[t]} * d];
      for (size_t c = 0; c < d; ++c) {
        const float base =
            key_dir != nullptr ? key_gain * key_dir[c] : centre[c];
        k[c] = offset[c] + base + options.key_noise * normal(crng);
        const float noise = normal(crng);
        if (r == kSinkToken) {
          v[c] = kSinkValueScale * noise;
        } else if (r >= 0) {
          v[c] = needle_values[r][c];
        } else {
          v[c] = vmean[c] + noise;
        }
      }
      ApplyRope(k, d, t, theta);
      EncodeFromFloat(options.dtype, k, d, bytes.data());
      DecodeToFloat(options.dtype, bytes.data(), d, k);
      EncodeFromFloat(options.dtype, v, d, bytes.data());
      DecodeToFloat(options.dtype, bytes.data(), d, v);
    }
  });

  // Probes.
  struct ProbeSpec {
    ProbeKind kind;
    std::string name;
    double depth;
    std::vector<std::vector<uint32_t>> targets;
  };
  std::vector<ProbeSpec> specs;
  const size_t num_single = options.needle_depths.size();
  const size_t num_multi = options.multi_needle_depths.size();
  for (size_t i = 0; i < num_single; ++i) {
    specs.push_back(
        {ProbeKind::kSingleNeedle,
         absl::StrFormat("needle@%g%%", options.needle_depths[i]),
         options.needle_depths[i],
         std::vector<std::vector<uint32_t>>(g, {static_cast<uint32_t>(i)})});
  }
  if (num_multi > 0) {
    std::vector<uint32_t> all(num_multi);
    std::iota(all.begin(), all.end(), static_cast<uint32_t>(num_single));
    specs.push_back({ProbeKind::kMultiNeedle, "multi-needle", -1,
                     std::vector<std::vector<uint32_t>>(g, all)});
    std::vector<std::vector<uint32_t>> per_head(g);
    for (size_t h = 0; h < g; ++h) {
      per_head[h] = {static_cast<uint32_t>(num_single + h % num_multi)};
    }
    specs.push_back({ProbeKind::kMultiQuery, "multi-query", -1, per_head});
  }
  for (uint32_t b = 0; b < options.background_probes; ++b) {
    specs.push_back({ProbeKind::kBackground, absl::StrCat("background#", b), -1,
                     std::vector<std::vector<uint32_t>>(g)});
  }

  const std::vector<float> sink_hat =
      RotatedMean(sink_dir, 0, options.attention_sinks, theta);
  std::vector<std::vector<float>> needle_hats;
  for (size_t i = 0; i < w.needles_.size(); ++i) {
    needle_hats.push_back(RotatedMean(needle_dirs[i], w.needles_[i].first_token,
                                      w.needles_[i].num_tokens, theta));
  }

  w.probes_.resize(specs.size());
  // One task per (probe, head): each writes its own query row.
  for (size_t p = 0; p < specs.size(); ++p) {
    w.probes_[p].kind = specs[p].kind;
    w.probes_[p].name = specs[p].name;
    w.probes_[p].depth_percent = specs[p].depth;
    w.probes_[p].head_targets = specs[p].targets;
    w.probes_[p].queries.assign(g * d, 0.0f);
  }
  ParallelFor(specs.size() * g, num_threads, [&](size_t task) {
    const size_t p = task / g, h = task % g;
    Probe& probe = w.probes_[p];
    // The group's shared part comes from the probe's stream; the head's
    // perturbation from the (probe, head) stream.
    std::mt19937_64 prng(DeriveSeed(options.seed, kProbes, p));
    std::uniform_int_distribution<size_t> pos(0, n - 1);
    const uint32_t topics[3] = {topic[n - 1], topic[pos(prng)],
                                topic[pos(prng)]};
    std::vector<float> q(d, 0.0f);
    for (int m = 0; m < 3; ++m) {
      const float* centre = &centres[size_t{topics[m]} * d];
      for (size_t c = 0; c < d; ++c) q[c] += kQueryTopicWeights[m] * centre[c];
    }
    std::mt19937_64 hrng(DeriveSeed(options.seed, kProbes, (p << 8) | (h + 1)));
    std::normal_distribution<float> normal;
    // The gain is set for head_dim 128 and scaled by sqrt(128 / head_dim),
    // so the spread of the logits does not depend on head_dim.
    const float gain =
        options.query_gain * std::sqrt(128.0f / d) *
        (g == 1 ? 1.0f : 0.6f + 0.8f * static_cast<float>(h) / (g - 1));
    for (size_t c = 0; c < d; ++c) {
      q[c] = gain * (q[c] + kHeadNoise * scales[c] * normal(hrng));
    }
    for (size_t c : outliers)
      q[c] += (hrng() & 1 ? 1.0f : -1.0f) * kQueryOutlier;
    ApplyRope(q.data(), d, n, theta);

    // Planted parts of the query: the sinks, then each targeted needle.
    std::vector<QueryPart> parts;
    if (options.sink_mass > 0.0f) {
      parts.push_back({&sink_hat, 0, options.attention_sinks, true});
    }
    for (uint32_t i : probe.head_targets[h]) {
      parts.push_back({&needle_hats[i], w.needles_[i].first_token,
                       w.needles_[i].num_tokens, false});
    }
    CalibrateParts(w.keys_, n, d, scale, options.sink_mass, options.needle_mass,
                   parts, q);
    std::copy(q.begin(), q.end(), probe.queries.begin() + h * d);
  });
  return w;
}

}  // namespace eval
}  // namespace wavekv
