#include "index/eval/harness.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "index/eval/eval_math.h"

namespace wavekv {
namespace eval {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Exact attention of one probe: logits, log-sum-exp and output per head.
struct ExactAttention {
  size_t num_heads = 0, num_tokens = 0, dim = 0;
  std::vector<double> logits;  // [head][token]
  std::vector<double> lse;     // [head]
  std::vector<double> output;  // [head][dim]
};

ExactAttention ComputeExact(const Workload& w, const Probe& probe,
                            int num_threads) {
  ExactAttention ex;
  ex.num_heads = w.group_size();
  ex.num_tokens = w.num_tokens();
  ex.dim = w.head_dim();
  const size_t n = ex.num_tokens, d = ex.dim;
  ex.logits.resize(ex.num_heads * n);
  ex.lse.resize(ex.num_heads);
  ex.output.assign(ex.num_heads * d, 0.0);
  const double scale = DefaultScale(d);
  ParallelFor(ex.num_heads, num_threads, [&](size_t h) {
    double* l = &ex.logits[h * n];
    Logits(&probe.queries[h * d], w.keys().data(), n, d, scale, l);
    ex.lse[h] = LogSumExp(l, n);
    double* o = &ex.output[h * d];
    const float* v = w.values().data();
    for (size_t t = 0; t < n; ++t) {
      const double p = std::exp(l[t] - ex.lse[h]);
      for (size_t j = 0; j < d; ++j) o[j] += p * v[t * d + j];
    }
  });
  return ex;
}

// Scores `sel` against the exact attention of `probe`.
MethodScore Score(const Workload& w, const Probe& probe,
                  const ExactAttention& ex, const Selection& sel) {
  const size_t n = ex.num_tokens, d = ex.dim, g = ex.num_heads;
  MethodScore score;
  score.exact_tokens = sel.tokens.size();
  std::vector<uint8_t> mask(n, 0);
  for (uint64_t t : sel.tokens) mask[t] = 1;
  const float* v = w.values().data();
  std::vector<double> num(d);
  for (size_t h = 0; h < g; ++h) {
    const double* l = &ex.logits[h * n];
    // Exact part over the selection: (m, den, num) in double.
    double m = -INFINITY;
    for (uint64_t t : sel.tokens) m = std::max(m, l[t]);
    double den = 0.0, mass = 0.0;
    std::fill(num.begin(), num.end(), 0.0);
    for (uint64_t t : sel.tokens) {
      const double e = std::exp(l[t] - m);
      den += e;
      mass += std::exp(l[t] - ex.lse[h]);
      for (size_t j = 0; j < d; ++j) num[j] += e * v[t * d + j];
    }
    // Log-sum-exp merge with the tail (DESIGN.md, tripartite attention, 5).
    double scale_x = 1.0, scale_e = 0.0, tail_den = 0.0;
    const AttentionPartial* tail = sel.tail.empty() ? nullptr : &sel.tail[h];
    if (tail != nullptr && !tail->empty()) {
      const double mm = std::max<double>(m, tail->max_logit);
      scale_x = std::exp(m - mm);
      scale_e = std::exp(double(tail->max_logit) - mm);
      tail_den = tail->denominator;
    }
    const double total_den = scale_x * den + scale_e * tail_den;
    double err2 = 0.0, ref2 = 0.0;
    for (size_t j = 0; j < d; ++j) {
      double o = scale_x * num[j];
      if (scale_e > 0.0) o += scale_e * tail->numerator[j];
      o /= total_den;
      const double ref = ex.output[h * d + j];
      err2 += (o - ref) * (o - ref);
      ref2 += ref * ref;
    }
    score.rel_l2_error += std::sqrt(err2 / ref2) / g;
    score.mass_covered += mass / g;
    for (uint32_t target : probe.head_targets[h]) {
      const Needle& nd = w.needles()[target];
      bool all = true;
      for (uint64_t t = nd.first_token; t < nd.first_token + nd.num_tokens;
           ++t) {
        all = all && mask[t];
      }
      score.needle_hits += all;
      ++score.needle_targets;
    }
  }
  return score;
}

// Σ_h softmax_h over tokens: the oracle's ranking, same group rule as wave.
std::vector<double> GroupTokenScores(const ExactAttention& ex) {
  std::vector<double> s(ex.num_tokens, 0.0);
  for (size_t h = 0; h < ex.num_heads; ++h) {
    const double* l = &ex.logits[h * ex.num_tokens];
    for (size_t t = 0; t < ex.num_tokens; ++t) {
      s[t] += std::exp(l[t] - ex.lse[h]);
    }
  }
  return s;
}

absl::StatusOr<Selection> Select(const MethodSuite& suite, Method method,
                                 const Probe& probe, uint64_t budget,
                                 uint64_t draw,
                                 const std::vector<double>& token_scores) {
  switch (method) {
    case Method::kWave:
      return suite.Wave(probe.queries, true);
    case Method::kWaveNoTail:
      return suite.Wave(probe.queries, false);
    case Method::kStreamingLlm:
      return suite.StreamingLlm(budget);
    case Method::kQuest:
      return suite.Quest(probe.queries, budget);
    case Method::kRandomClusters:
      return suite.RandomClusters(budget, draw);
    case Method::kOracleTopK:
      return MethodSuite::TopTokens(token_scores, budget);
  }
  return absl::InternalError("unknown method");
}

bool IsNeedleProbe(ProbeKind kind) { return kind != ProbeKind::kBackground; }

ContextSummary Summarise(uint64_t context_tokens,
                         const std::vector<Method>& methods,
                         const std::vector<ProbeResult>& probes) {
  ContextSummary sum;
  sum.context_tokens = context_tokens;
  sum.methods.resize(methods.size());
  size_t all = 0, needle = 0, background = 0;
  for (const ProbeResult& p : probes) {
    if (p.context_tokens != context_tokens) continue;
    ++all;
    (IsNeedleProbe(p.kind) ? needle : background) += 1;
    sum.steady_mass += p.steady_mass;
    for (size_t m = 0; m < methods.size(); ++m) {
      const MethodScore& s = p.scores[m];
      MethodSummary& ms = sum.methods[m];
      ms.mean_exact_tokens += s.exact_tokens;
      ms.rel_l2_error += s.rel_l2_error;
      (IsNeedleProbe(p.kind) ? ms.rel_l2_error_needle
                             : ms.rel_l2_error_background) += s.rel_l2_error;
      ms.mass_covered += s.mass_covered;
      ms.needle_hits += s.needle_hits;
      ms.needle_targets += s.needle_targets;
      ms.mean_select_ms += 1e3 * s.select_seconds;
    }
  }
  auto div = [](double x, size_t k) { return k == 0 ? 0.0 : x / k; };
  sum.steady_mass = div(sum.steady_mass, all);
  for (size_t m = 0; m < methods.size(); ++m) {
    MethodSummary& ms = sum.methods[m];
    ms.method = methods[m];
    ms.mean_exact_tokens = div(ms.mean_exact_tokens, all);
    ms.rel_l2_error = div(ms.rel_l2_error, all);
    ms.rel_l2_error_needle = div(ms.rel_l2_error_needle, needle);
    ms.rel_l2_error_background = div(ms.rel_l2_error_background, background);
    ms.mass_covered = div(ms.mass_covered, all);
    ms.mean_select_ms = div(ms.mean_select_ms, all);
  }
  return sum;
}

}  // namespace

absl::Status HarnessOptions::Validate() const {
  if (contexts.empty()) {
    return absl::InvalidArgumentError("eval.contexts: must not be empty");
  }
  for (size_t i = 0; i < contexts.size(); ++i) {
    WorkloadOptions w = workload;
    w.num_tokens = contexts[i];
    if (absl::Status s = w.Validate(); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("eval.contexts[", i, "]: ", s.message()));
    }
  }
  RETURN_IF_ERROR(methods.Validate());
  if (kv_heads < 1 || kv_heads > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval.kv_heads: must be in [1, 64], got ", kv_heads));
  }
  if (std::find(method_list.begin(), method_list.end(), Method::kWave) ==
      method_list.end()) {
    return absl::InvalidArgumentError(
        "eval.methods: must include wave (it sets the budget)");
  }
  for (size_t i = 0; i < method_list.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (method_list[i] == method_list[j]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "eval.methods: ", std::string(MethodName(method_list[i])),
            " listed twice"));
      }
    }
  }
  if (num_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval.num_threads: must be >= 1, got ", num_threads));
  }
  return absl::OkStatus();
}

absl::StatusOr<EvalReport> RunEval(const HarnessOptions& options,
                                   const ProgressFn& progress) {
  RETURN_IF_ERROR(options.Validate());
  const Clock::time_point start = Clock::now();
  EvalReport report;
  report.options = options;
  report.methods = options.method_list;
  const std::vector<Method>& methods = report.methods;
  auto tell = [&](uint64_t ctx, uint32_t head, std::string_view stage,
                  size_t done, size_t total) {
    if (progress) {
      progress(
          EvalProgress{ctx, head, stage, done, total, SecondsSince(start)});
    }
  };

  for (uint64_t ctx : options.contexts) {
    ContextSummary setup;
    for (uint32_t head = 0; head < options.kv_heads; ++head) {
      tell(ctx, head, "generate", 0, 1);
      WorkloadOptions wo = options.workload;
      wo.num_tokens = ctx;
      wo.seed = DeriveSeed(options.seed, ctx, head);
      Clock::time_point t0 = Clock::now();
      ASSIGN_OR_RETURN(Workload w, Workload::Generate(wo, options.num_threads));
      setup.generate_seconds += SecondsSince(t0) / options.kv_heads;

      tell(ctx, head, "index", 0, 1);
      MethodsOptions mo = options.methods;
      mo.num_threads = options.num_threads;
      mo.seed = DeriveSeed(options.seed ^ 0x51, ctx, head);
      ASSIGN_OR_RETURN(MethodSuite suite, MethodSuite::Build(w, mo));
      setup.index_build_seconds +=
          suite.index_build_seconds() / options.kv_heads;
      setup.quest_build_seconds +=
          suite.quest_build_seconds() / options.kv_heads;
      setup.clusters += double(suite.index().num_clusters()) / options.kv_heads;

      const auto& probes = w.probes();
      for (size_t pi = 0; pi < probes.size(); ++pi) {
        tell(ctx, head, "probes", pi, probes.size());
        const Probe& probe = probes[pi];
        t0 = Clock::now();
        const ExactAttention ex = ComputeExact(w, probe, options.num_threads);
        setup.exact_ms +=
            1e3 * SecondsSince(t0) / (options.kv_heads * probes.size());
        const std::vector<double> token_scores = GroupTokenScores(ex);

        ProbeResult result;
        result.context_tokens = ctx;
        result.kv_head = head;
        result.probe = probe.name;
        result.kind = probe.kind;
        result.depth_percent = probe.depth_percent;
        for (size_t h = 0; h < ex.num_heads; ++h) {
          const double* l = &ex.logits[h * ex.num_tokens];
          for (uint64_t t : suite.steady_tokens()) {
            result.steady_mass += std::exp(l[t] - ex.lse[h]) / ex.num_heads;
          }
          for (uint32_t target : probe.head_targets[h]) {
            const Needle& nd = w.needles()[target];
            for (uint64_t t = nd.first_token;
                 t < nd.first_token + nd.num_tokens; ++t) {
              result.needle_mass += std::exp(l[t] - ex.lse[h]) / ex.num_heads;
            }
          }
        }
        // Wave first: its exact set is the budget of the others.
        result.scores.resize(methods.size());
        uint64_t budget = 0;
        std::vector<size_t> order(methods.size());
        for (size_t m = 0; m < methods.size(); ++m) order[m] = m;
        std::stable_partition(order.begin(), order.end(), [&](size_t m) {
          return methods[m] == Method::kWave;
        });
        for (size_t m : order) {
          t0 = Clock::now();
          ASSIGN_OR_RETURN(Selection sel,
                           Select(suite, methods[m], probe, budget,
                                  DeriveSeed(pi, ctx, head), token_scores));
          const double select_seconds = SecondsSince(t0);
          if (methods[m] == Method::kWave) budget = sel.tokens.size();
          result.scores[m] = Score(w, probe, ex, sel);
          result.scores[m].select_seconds = select_seconds;
        }
        report.probes.push_back(std::move(result));
      }
      tell(ctx, head, "probes", probes.size(), probes.size());
    }
    ContextSummary sum = Summarise(ctx, methods, report.probes);
    sum.clusters = setup.clusters;
    sum.generate_seconds = setup.generate_seconds;
    sum.index_build_seconds = setup.index_build_seconds;
    sum.quest_build_seconds = setup.quest_build_seconds;
    sum.exact_ms = setup.exact_ms;
    report.contexts.push_back(std::move(sum));
  }
  report.total_seconds = SecondsSince(start);
  tell(0, 0, "done", 1, 1);
  return report;
}

}  // namespace eval
}  // namespace wavekv
