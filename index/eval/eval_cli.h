// The `wavekv eval` command (also the `wavekv-eval` binary): flags →
// HarnessOptions, run, Markdown report on stdout (and to --out), progress
// on stderr. Both binaries call RunEvalCommand, so they behave the same.
//
//   wavekv-eval --contexts=4096,32768,131072,1048576 --head_dim=128
//               --seed=1 --depths=0,10,20,30,40,50,60,70,80,90,100
//               --out=FILE.md
//
// Thread-safe: no shared state.
#ifndef WAVEKV_INDEX_EVAL_EVAL_CLI_H_
#define WAVEKV_INDEX_EVAL_EVAL_CLI_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "index/eval/harness.h"

namespace wavekv {
namespace eval {

// The usage text (flags and defaults).
extern const char kEvalUsage[];

struct EvalCommand {
  HarnessOptions harness;
  std::string out_path;  // empty: stdout only
  bool help = false;
};

// Parses `args` (flags only, without the program name or the "eval"
// command): --name=value each. Context lengths accept K/M suffixes (4K =
// 4096, 1M = 1048576). InvalidArgument naming the flag on an unknown flag,
// a malformed value, or options that fail HarnessOptions::Validate.
absl::StatusOr<EvalCommand> ParseEvalFlags(
    const std::vector<std::string>& args);

// Parses, runs and reports. Returns the exit status: 0 on success, 1 when
// the run or writing --out failed, 2 on bad usage (message on `err`).
int RunEvalCommand(const std::vector<std::string>& args, std::ostream& out,
                   std::ostream& err);

}  // namespace eval
}  // namespace wavekv

#endif  // WAVEKV_INDEX_EVAL_EVAL_CLI_H_
