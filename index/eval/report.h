// Markdown rendering of an accuracy-harness report (harness.h).
//
// Thread-safe: pure function.
#ifndef WAVEKV_INDEX_EVAL_REPORT_H_
#define WAVEKV_INDEX_EVAL_REPORT_H_

#include <string>

#include "index/eval/harness.h"

namespace wavekv {
namespace eval {

// The report as Markdown: the parameters, a summary table (context ×
// method: budget, relative L2 error on all / needle / background probes,
// softmax mass covered, needle hits, selection time), needle hits by depth,
// and the setup costs per context.
std::string RenderMarkdown(const EvalReport& report);

}  // namespace eval
}  // namespace wavekv

#endif  // WAVEKV_INDEX_EVAL_REPORT_H_
