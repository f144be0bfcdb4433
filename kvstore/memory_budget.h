// MemoryBudget: the engine-wide account of host bytes held by sessions' K/V.
//
// Bytes are reserved *before* they are allocated and copied, so the budget is
// never exceeded, not even transiently, and a refused reservation leaves no
// trace. Every reserved byte is later either released (the allocation failed
// or was rolled back) or held by a SlotStore until its session closes.
//
// Thread-safe: lock-free (a compare-and-swap loop on one counter).
//
// Example:
//   RETURN_IF_ERROR(budget.TryReserve(bytes));
//   ... allocate; on failure budget.Release(bytes) ...
#ifndef WAVEKV_KVSTORE_MEMORY_BUDGET_H_
#define WAVEKV_KVSTORE_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"

namespace wavekv {

class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t budget_bytes) : budget_bytes_(budget_bytes) {}

  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Reserves `bytes` if used + bytes <= budget. Otherwise returns
  // ResourceExhausted naming memory_budget_bytes, the need and the use, and
  // reserves nothing. Reserving 0 bytes always succeeds.
  absl::Status TryReserve(uint64_t bytes);

  // Returns `bytes` previously reserved. REQUIRES: bytes <= used_bytes().
  void Release(uint64_t bytes);

  // Accounts `bytes` that are already allocated even if that takes the use
  // above the budget. Only for reconciling a reservation with what an
  // allocation really took (it never happens with libstdc++; see
  // WaveIndex::CommitGrowthBytes).
  void ForceReserve(uint64_t bytes);

  uint64_t used_bytes() const {
    return used_bytes_.load(std::memory_order_acquire);
  }
  uint64_t budget_bytes() const { return budget_bytes_; }

 private:
  const uint64_t budget_bytes_;
  std::atomic<uint64_t> used_bytes_{0};
};

// Bytes reserved in a MemoryBudget for an allocation in progress: released
// on destruction unless Keep() handed them to what they were reserved for.
// Not thread-safe.
class BudgetReservation {
 public:
  BudgetReservation(MemoryBudget& budget, uint64_t bytes)
      : budget_(budget), bytes_(bytes) {}
  ~BudgetReservation() {
    if (bytes_ != 0) budget_.Release(bytes_);
  }
  BudgetReservation(const BudgetReservation&) = delete;
  BudgetReservation& operator=(const BudgetReservation&) = delete;

  uint64_t bytes() const { return bytes_; }
  void Keep() { bytes_ = 0; }

 private:
  MemoryBudget& budget_;
  uint64_t bytes_;
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_MEMORY_BUDGET_H_
