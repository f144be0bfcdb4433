#include "index/eval/eval_cli.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "index/eval/report.h"

namespace wavekv {
namespace eval {

const char kEvalUsage[] =
    R"(eval: accuracy harness of the wave index against exact attention and
baselines (StreamingLLM, Quest, random clusters) on synthetic long contexts
with planted needles. Prints a Markdown report; progress goes to stderr.

flags (--name=value):
  --contexts=4096,32768,131072,1048576   context lengths (K/M suffixes ok)
  --head_dim=128          64, 128, 256, ... (even, 8..1024)
  --group_size=4          query heads per kv head
  --kv_heads=1            independent contexts per length
  --seed=1
  --depths=0,10,20,30,40,50,60,70,80,90,100   single-needle depths, percent
  --needle_tokens=16      tokens per needle
  --background_probes=4   probes without a needle per context
  --needle_mass=0.5       softmax share of a targeted needle
  --needle_key_gain=1.5   needle key norm along its direction / sqrt(d)
  --sink_mass=0.3         softmax share of the sink token(s)
  --query_gain=1          gain of the background (topic) query part
  --methods=wave,wave-no-tail,streaming,quest,random,oracle
  --max_block_segments=0  index the prefill in blocks of at most this many
                          segments (0: one block; kvstore's engine uses 8)
  --threads=N             default: the machine's cores
  --out=FILE              also write the report to FILE
)";

namespace {

absl::Status FlagError(absl::string_view flag, absl::string_view value,
                       absl::string_view expected) {
  return absl::InvalidArgumentError(absl::StrCat(
      "--", flag, ": expected ", expected, ", got \"", value, "\""));
}

absl::StatusOr<uint64_t> ParseTokens(absl::string_view flag,
                                     absl::string_view text) {
  std::string s = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  uint64_t mult = 1;
  if (!s.empty() && s.back() == 'K') {
    mult = 1024;
    s.pop_back();
  } else if (!s.empty() && s.back() == 'M') {
    mult = 1024 * 1024;
    s.pop_back();
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(s, &v) || v == 0) {
    return FlagError(flag, text, "a token count such as 4096, 32K or 1M");
  }
  return v * mult;
}

template <typename T>
absl::StatusOr<T> ParseUint(absl::string_view flag, absl::string_view text) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(text, &v) || v > std::numeric_limits<T>::max()) {
    return FlagError(flag, text, "a non-negative integer");
  }
  return static_cast<T>(v);
}

}  // namespace

absl::StatusOr<EvalCommand> ParseEvalFlags(
    const std::vector<std::string>& args) {
  EvalCommand cmd;
  HarnessOptions& h = cmd.harness;
  h.contexts = {4096, 32768, 131072, 1048576};
  h.num_threads =
      static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      cmd.help = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0 || arg.find('=') == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("expected --name=value, got \"", arg, "\""));
    }
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    if (name == "contexts") {
      h.contexts.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        ASSIGN_OR_RETURN(uint64_t n, ParseTokens(name, part));
        h.contexts.push_back(n);
      }
    } else if (name == "head_dim") {
      ASSIGN_OR_RETURN(h.workload.head_dim, ParseUint<uint32_t>(name, value));
    } else if (name == "group_size") {
      ASSIGN_OR_RETURN(h.workload.group_size, ParseUint<uint32_t>(name, value));
    } else if (name == "kv_heads") {
      ASSIGN_OR_RETURN(h.kv_heads, ParseUint<uint32_t>(name, value));
    } else if (name == "seed") {
      ASSIGN_OR_RETURN(h.seed, ParseUint<uint64_t>(name, value));
    } else if (name == "depths") {
      h.workload.needle_depths.clear();
      if (!value.empty()) {
        for (absl::string_view part : absl::StrSplit(value, ',')) {
          double d = 0;
          if (!absl::SimpleAtod(part, &d)) {
            return FlagError(name, value, "comma-separated percentages");
          }
          h.workload.needle_depths.push_back(d);
        }
      }
    } else if (name == "needle_tokens") {
      ASSIGN_OR_RETURN(h.workload.needle_tokens,
                       ParseUint<uint32_t>(name, value));
    } else if (name == "needle_mass" || name == "needle_key_gain" ||
               name == "sink_mass" || name == "query_gain") {
      double v = 0;
      if (!absl::SimpleAtod(value, &v))
        return FlagError(name, value, "a number");
      float& field = name == "needle_mass"       ? h.workload.needle_mass
                     : name == "needle_key_gain" ? h.workload.needle_key_gain
                     : name == "sink_mass"       ? h.workload.sink_mass
                                                 : h.workload.query_gain;
      field = static_cast<float>(v);
    } else if (name == "background_probes") {
      ASSIGN_OR_RETURN(h.workload.background_probes,
                       ParseUint<uint32_t>(name, value));
    } else if (name == "methods") {
      h.method_list.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        ASSIGN_OR_RETURN(Method m, ParseMethod(std::string(part)));
        h.method_list.push_back(m);
      }
    } else if (name == "max_block_segments") {
      ASSIGN_OR_RETURN(h.methods.max_block_segments,
                       ParseUint<uint32_t>(name, value));
    } else if (name == "threads") {
      ASSIGN_OR_RETURN(h.num_threads, ParseUint<int>(name, value));
    } else if (name == "out") {
      cmd.out_path = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  if (!cmd.help) RETURN_IF_ERROR(h.Validate());
  return cmd;
}

int RunEvalCommand(const std::vector<std::string>& args, std::ostream& out,
                   std::ostream& err) {
  absl::StatusOr<EvalCommand> cmd = ParseEvalFlags(args);
  if (!cmd.ok()) {
    err << "eval: " << cmd.status().message() << "\n(see --help)\n";
    return 2;
  }
  if (cmd->help) {
    out << kEvalUsage;
    return 0;
  }
  const ProgressFn progress = [&err](const EvalProgress& p) {
    if (p.stage == "done") {
      err << absl::StrFormat("[%7.1fs] done\n", p.elapsed_seconds);
    } else if (p.stage == "probes") {
      err << absl::StrFormat("[%7.1fs] context %d, kv head %d: probes %d/%d\n",
                             p.elapsed_seconds, p.context_tokens, p.kv_head,
                             p.done, p.total);
    } else {
      err << absl::StrFormat("[%7.1fs] context %d, kv head %d: %s\n",
                             p.elapsed_seconds, p.context_tokens, p.kv_head,
                             p.stage);
    }
    err.flush();
  };
  absl::StatusOr<EvalReport> report = RunEval(cmd->harness, progress);
  if (!report.ok()) {
    err << "eval: " << report.status() << "\n";
    return 1;
  }
  const std::string markdown = RenderMarkdown(*report);
  out << markdown;
  out.flush();
  if (!cmd->out_path.empty()) {
    std::ofstream file(cmd->out_path, std::ios::trunc);
    file << markdown;
    file.close();
    if (!file) {
      err << "eval: --out: cannot write " << cmd->out_path << "\n";
      return 1;
    }
  }
  return 0;
}

}  // namespace eval
}  // namespace wavekv
