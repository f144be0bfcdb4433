#include "index/eval/report.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace wavekv {
namespace eval {
namespace {

std::string Tokens(uint64_t n) {
  if (n % (1 << 20) == 0) return absl::StrCat(n >> 20, "M");
  if (n % (1 << 10) == 0) return absl::StrCat(n >> 10, "K");
  return absl::StrCat(n);
}

std::string Row(const std::vector<std::string>& cells) {
  return absl::StrCat("| ", absl::StrJoin(cells, " | "), " |\n");
}

std::string Rule(size_t columns) {
  std::vector<std::string> dashes(columns, "---");
  return Row(dashes);
}

std::string Hits(uint32_t hits, uint32_t targets) {
  if (targets == 0) return "–";
  return absl::StrFormat("%d/%d", hits, targets);
}

}  // namespace

std::string RenderMarkdown(const EvalReport& report) {
  const HarnessOptions& o = report.options;
  const WorkloadOptions& w = o.workload;
  std::string out;
  std::vector<std::string> contexts;
  for (uint64_t c : o.contexts) contexts.push_back(Tokens(c));
  absl::StrAppendFormat(
      &out,
      "Workload: contexts %s; head_dim %d, GQA group %d, %d kv head(s) per "
      "context, seed %d, %s K/V, RoPE theta %g; %d topics (runs of ~%d "
      "tokens), %d outlier channels (|%g|), %d sink token(s) holding %g of "
      "the softmax; needles of %d tokens, each holding ~%g of its probe's "
      "softmax; %d background probes per context.\n",
      absl::StrJoin(contexts, ", "), w.head_dim, w.group_size, o.kv_heads,
      o.seed, std::string(DTypeName(w.dtype)), w.rope_theta, w.num_topics,
      w.topic_run_tokens, w.outlier_channels, w.outlier_magnitude,
      w.attention_sinks, w.sink_mass, w.needle_tokens, w.needle_mass,
      w.background_probes);
  const WaveIndexParams& p = o.methods.index;
  absl::StrAppendFormat(
      &out,
      "WAVE: sinks %d + recent %d exact, clusters of ~%d tokens in segments "
      "of %d (prefill indexed %s), retrieval %g / estimation %g of the "
      "clusters. Budget: every "
      "method attends exactly (at least) as many tokens as WAVE's steady + "
      "retrieval zone on the same probe; quest uses %d-token pages plus the "
      "same steady zone; random takes the same clusters in random order plus "
      "the steady zone; oracle (a reference, not a baseline: it needs the full "
      "attention) takes the tokens of most exact softmax mass. Selection is "
      "per GQA group; select ms is the CPU time to pick the set (wave: "
      "ranking + zones + tail statistics).\n\n",
      p.sink_tokens, p.recent_tokens, p.cluster_size, p.segment_tokens,
      o.methods.max_block_segments == 0
          ? std::string("in one block")
          : absl::StrCat("in blocks of <= ", o.methods.max_block_segments,
                         " segments"),
      p.retrieval_fraction, p.estimation_fraction, o.methods.quest_page_tokens);

  out += Row({"context", "method", "exact tokens", "rel. L2 error (all)",
              "needle probes", "background probes", "softmax mass exact",
              "needle hits", "select ms"});
  out += Rule(9);
  for (const ContextSummary& c : report.contexts) {
    for (const MethodSummary& m : c.methods) {
      out +=
          Row({Tokens(c.context_tokens), std::string(MethodName(m.method)),
               absl::StrFormat("%.0f (%.1f%%)", m.mean_exact_tokens,
                               100.0 * m.mean_exact_tokens / c.context_tokens),
               absl::StrFormat("%.4f", m.rel_l2_error),
               absl::StrFormat("%.4f", m.rel_l2_error_needle),
               absl::StrFormat("%.4f", m.rel_l2_error_background),
               absl::StrFormat("%.3f", m.mass_covered),
               Hits(m.needle_hits, m.needle_targets),
               absl::StrFormat("%.2f", m.mean_select_ms)});
    }
  }

  // Needle hits by depth: columns are the single-needle depths, then the
  // multi-needle and multi-query probes.
  std::vector<std::string> columns;
  std::map<std::string, size_t> column_of;
  for (const ProbeResult& r : report.probes) {
    if (r.kind == ProbeKind::kBackground) continue;
    const std::string key = r.kind == ProbeKind::kSingleNeedle
                                ? absl::StrFormat("%g%%", r.depth_percent)
                                : std::string(ProbeKindName(r.kind));
    if (column_of.emplace(key, columns.size()).second) columns.push_back(key);
  }
  if (!columns.empty()) {
    out +=
        "\nNeedle hits (heads × targeted needles attended exactly) by "
        "depth:\n\n";
    std::vector<std::string> header = {"context", "method"};
    header.insert(header.end(), columns.begin(), columns.end());
    out += Row(header);
    out += Rule(header.size());
    for (const ContextSummary& c : report.contexts) {
      for (size_t m = 0; m < report.methods.size(); ++m) {
        std::vector<uint32_t> hits(columns.size(), 0),
            targets(columns.size(), 0);
        for (const ProbeResult& r : report.probes) {
          if (r.context_tokens != c.context_tokens ||
              r.kind == ProbeKind::kBackground) {
            continue;
          }
          const std::string key = r.kind == ProbeKind::kSingleNeedle
                                      ? absl::StrFormat("%g%%", r.depth_percent)
                                      : std::string(ProbeKindName(r.kind));
          hits[column_of[key]] += r.scores[m].needle_hits;
          targets[column_of[key]] += r.scores[m].needle_targets;
        }
        std::vector<std::string> row = {
            Tokens(c.context_tokens),
            std::string(MethodName(report.methods[m]))};
        for (size_t i = 0; i < columns.size(); ++i) {
          row.push_back(Hits(hits[i], targets[i]));
        }
        out += Row(row);
      }
    }
  }

  out +=
      "\nSetup per context (means over kv heads; times on this machine):\n\n";
  out += Row({"context", "clusters", "generate s", "wave index build s",
              "quest pages build s", "exact attention ms/probe",
              "steady-zone mass (exact)"});
  out += Rule(7);
  for (const ContextSummary& c : report.contexts) {
    out += Row({Tokens(c.context_tokens), absl::StrFormat("%.0f", c.clusters),
                absl::StrFormat("%.2f", c.generate_seconds),
                absl::StrFormat("%.2f", c.index_build_seconds),
                absl::StrFormat("%.3f", c.quest_build_seconds),
                absl::StrFormat("%.1f", c.exact_ms),
                absl::StrFormat("%.3f", c.steady_mass)});
  }
  absl::StrAppendFormat(&out, "\nTotal run time: %.1f s.\n",
                        report.total_seconds);
  return out;
}

}  // namespace eval
}  // namespace wavekv
