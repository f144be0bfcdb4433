// Measurement pieces of the load tool (wavekv-load): latency samples per
// operation with percentiles, error counts by gRPC code, and a process's
// memory from /proc/<pid>/status.
//
// Thread-safety: OpStats is not thread-safe (one per thread, merged after
// the run); the free functions are pure or read /proc only.
#ifndef WAVEKV_BENCH_LOAD_STATS_H_
#define WAVEKV_BENCH_LOAD_STATS_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace wavekv::bench {

// Outcomes of one kind of operation.
class OpStats {
 public:
  void RecordOk(absl::Duration latency, uint64_t bytes);
  // `code` is a gRPC code name ("UNAVAILABLE"); failed calls are counted,
  // not timed. The first `message` of each code is kept.
  void RecordError(const std::string& code, const std::string& message = "");
  // Adds `other`'s samples and counts to this one.
  void Merge(const OpStats& other);

  uint64_t ok() const { return latencies_us_.size(); }
  uint64_t errors() const;
  uint64_t bytes() const { return bytes_; }
  const std::map<std::string, uint64_t>& errors_by_code() const {
    return errors_by_code_;
  }
  // The first message seen per code.
  const std::map<std::string, std::string>& first_messages() const {
    return first_messages_;
  }
  // Latency percentile `p` in [0, 100] of the successful calls (nearest
  // rank); zero without samples. Sorts the samples (not const).
  absl::Duration Percentile(double p);
  absl::Duration Mean() const;

 private:
  std::vector<double> latencies_us_;
  bool sorted_ = true;
  uint64_t bytes_ = 0;
  std::map<std::string, uint64_t> errors_by_code_;
  std::map<std::string, std::string> first_messages_;
};

// Resident memory of a process.
struct ProcMemory {
  uint64_t rss_bytes = 0;   // VmRSS
  uint64_t peak_bytes = 0;  // VmHWM
};

// Parses the text of /proc/<pid>/status. InvalidArgument if VmRSS or VmHWM
// is missing or malformed.
absl::StatusOr<ProcMemory> ParseProcStatus(absl::string_view text);

// Reads /proc/<pid>/status. NotFound when the process is gone.
absl::StatusOr<ProcMemory> ReadProcMemory(pid_t pid);

}  // namespace wavekv::bench

#endif  // WAVEKV_BENCH_LOAD_STATS_H_
