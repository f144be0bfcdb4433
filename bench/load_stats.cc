#include "bench/load_stats.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace wavekv::bench {

void OpStats::RecordOk(absl::Duration latency, uint64_t bytes) {
  latencies_us_.push_back(absl::ToDoubleMicroseconds(latency));
  sorted_ = false;
  bytes_ += bytes;
}

void OpStats::RecordError(const std::string& code, const std::string& message) {
  ++errors_by_code_[code];
  first_messages_.emplace(code, message);
}

void OpStats::Merge(const OpStats& other) {
  latencies_us_.insert(latencies_us_.end(), other.latencies_us_.begin(),
                       other.latencies_us_.end());
  sorted_ = false;
  bytes_ += other.bytes_;
  for (const auto& [code, n] : other.errors_by_code_) {
    errors_by_code_[code] += n;
  }
  for (const auto& [code, message] : other.first_messages_) {
    first_messages_.emplace(code, message);
  }
}

uint64_t OpStats::errors() const {
  uint64_t n = 0;
  for (const auto& entry : errors_by_code_) n += entry.second;
  return n;
}

absl::Duration OpStats::Percentile(double p) {
  if (latencies_us_.empty()) return absl::ZeroDuration();
  if (!sorted_) {
    std::sort(latencies_us_.begin(), latencies_us_.end());
    sorted_ = true;
  }
  // Nearest rank: the smallest sample with at least p% of samples <= it.
  const double rank = std::ceil(p / 100.0 * latencies_us_.size());
  const size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return absl::Microseconds(
      latencies_us_[std::min(index, latencies_us_.size() - 1)]);
}

absl::Duration OpStats::Mean() const {
  if (latencies_us_.empty()) return absl::ZeroDuration();
  double sum = 0;
  for (double v : latencies_us_) sum += v;
  return absl::Microseconds(sum / latencies_us_.size());
}

absl::StatusOr<ProcMemory> ParseProcStatus(absl::string_view text) {
  ProcMemory memory;
  bool rss = false, peak = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    uint64_t* field = nullptr;
    if (absl::ConsumePrefix(&line, "VmRSS:")) {
      field = &memory.rss_bytes;
      rss = true;
    } else if (absl::ConsumePrefix(&line, "VmHWM:")) {
      field = &memory.peak_bytes;
      peak = true;
    } else {
      continue;
    }
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumeSuffix(&line, "kB")) {
      return absl::InvalidArgumentError(
          absl::StrCat("/proc status: expected kB in '", line, "'"));
    }
    uint64_t kib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &kib)) {
      return absl::InvalidArgumentError(
          absl::StrCat("/proc status: bad number '", line, "'"));
    }
    *field = kib * 1024;
  }
  if (!rss || !peak) {
    return absl::InvalidArgumentError("/proc status: no VmRSS/VmHWM lines");
  }
  return memory;
}

absl::StatusOr<ProcMemory> ReadProcMemory(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/status");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return ParseProcStatus(text.str());
}

}  // namespace wavekv::bench
