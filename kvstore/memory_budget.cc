#include "kvstore/memory_budget.h"

#include <cstdint>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"

namespace wavekv {

absl::Status MemoryBudget::TryReserve(uint64_t bytes) {
  uint64_t used = used_bytes_.load(std::memory_order_relaxed);
  while (true) {
    // Written as a subtraction so that huge requests cannot overflow.
    if (bytes > budget_bytes_ - used) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "memory_budget_bytes: this request needs ", bytes,
          " more bytes of host memory, but ", used,
          " of the engine's budget of ", budget_bytes_, " bytes are in use"));
    }
    if (used_bytes_.compare_exchange_weak(used, used + bytes,
                                          std::memory_order_acq_rel,
                                          std::memory_order_relaxed)) {
      return absl::OkStatus();
    }
  }
}

void MemoryBudget::Release(uint64_t bytes) {
  const uint64_t before =
      used_bytes_.fetch_sub(bytes, std::memory_order_acq_rel);
  ABSL_RAW_CHECK(before >= bytes, "MemoryBudget::Release of unreserved bytes");
}

void MemoryBudget::ForceReserve(uint64_t bytes) {
  used_bytes_.fetch_add(bytes, std::memory_order_acq_rel);
}

}  // namespace wavekv
