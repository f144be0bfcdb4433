// EngineOptions::Validate: every check rejects (InvalidArgument naming the
// field and the value); nothing is ever clamped.
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kvstore/engine.h"

namespace wavekv {
namespace {

absl::Status CheckRange(absl::string_view field, uint64_t value, uint64_t lo,
                        uint64_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " is out of range ", lo, "..", hi));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status EngineOptions::Validate() const {
  constexpr uint64_t kMiB = 1ull << 20;
  if (memory_budget_bytes < kMiB) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory_budget_bytes: ", memory_budget_bytes,
                     " is less than the minimum of ", kMiB, " (1 MiB)"));
  }
  if (max_sessions < 1) {
    return absl::InvalidArgumentError("max_sessions: 0 is less than 1");
  }
  if (max_sessions_per_tenant < 1) {
    return absl::InvalidArgumentError(
        "max_sessions_per_tenant: 0 is less than 1");
  }
  // A layer's tokens are answered as one SlotRange per kv head in EXACT
  // mode, whose num_slots is 32-bit.
  if (absl::Status s =
          CheckRange("max_tokens_per_session", max_tokens_per_session, 1,
                     std::numeric_limits<uint32_t>::max());
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          CheckRange("max_batch_sessions", max_batch_sessions, 1, 4096);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange("index_threads", index_threads, 0, 64);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckRange("retrieve_threads", retrieve_threads, 0, 256);
      !s.ok()) {
    return s;
  }
  if (gpu_device < kGpuAuto) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpu_device: ", gpu_device,
                     " is not a device number, -1 (off) or -2 (auto)"));
  }
  if (absl::Status s = CheckRange("async_flush_interval_ms",
                                  async_flush_interval_ms, 1, 60000);
      !s.ok()) {
    return s;
  }
  return absl::OkStatus();
}

}  // namespace wavekv
