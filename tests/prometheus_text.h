// A small parser of the Prometheus text exposition format (version 0.0.4),
// enough for tests to read counters and gauges from a server's /metrics.
//
// Thread-safe: pure functions.
#ifndef WAVEKV_TESTS_PROMETHEUS_TEXT_H_
#define WAVEKV_TESTS_PROMETHEUS_TEXT_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace wavekv::testing {

// One sample line: `name{label="value",...} value [timestamp]`.
struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0.0;
};

// Parses every sample line (comments and blank lines skipped). Fails with
// InvalidArgument quoting the first malformed line.
absl::StatusOr<std::vector<MetricSample>> ParsePrometheusText(
    absl::string_view text);

// Sum of the values of samples named `name` whose labels include every
// entry of `labels` (other labels may differ). 0 when none match.
double SumSamples(const std::vector<MetricSample>& samples,
                  const std::string& name,
                  const std::map<std::string, std::string>& labels = {});

// Number of samples named `name` (any labels).
int CountSamples(const std::vector<MetricSample>& samples,
                 const std::string& name);

}  // namespace wavekv::testing

#endif  // WAVEKV_TESTS_PROMETHEUS_TEXT_H_
