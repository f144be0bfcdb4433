// Spiller: the engine's memory tier policy in action. When a reservation
// does not fit the memory budget, it moves idle sessions to disk (the
// persistent tier's Storage) in SpillOrder (spill_policy.h) and frees
// their memory; a spilled session is restored transparently when an
// operation needs it (Hold / HoldAll). Without a Storage it does nothing:
// reservations that do not fit fail as before.
//
// What "idle" means and how holds work: session.h, "Residency". A spill
// writes what the disk lacks (Session::PersistAll, not synced: a spilled
// copy of a DURABILITY_NONE session need not survive a crash) before
// anything is freed; a failed write frees nothing and is counted.
//
// Thread-safe. It takes no lock of its own: sessions are spilled with
// TryLock only, so a thread may make room while it holds its own
// session's hold.
#ifndef WAVEKV_KVSTORE_SPILLER_H_
#define WAVEKV_KVSTORE_SPILLER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/types/span.h"
#include "kvstore/engine.h"
#include "kvstore/index_builder.h"
#include "kvstore/memory_budget.h"
#include "kvstore/session.h"
#include "kvstore/session_manager.h"
#include "kvstore/storage/storage.h"

namespace wavekv {

class Spiller {
 public:
  // `storage` is the engine's member: read at each call (it is set once,
  // before the engine is shared); null or empty = no spilling. All
  // references must outlive the Spiller.
  Spiller(const std::shared_ptr<Storage>& storage, MemoryBudget& budget,
          SessionManager& sessions, IndexBuilder& builder);

  bool enabled() const { return storage_ != nullptr; }

  // The session held resident for one operation, restoring it first if it
  // is spilled. Errors: the restore's (ResourceExhausted naming
  // memory_budget_bytes when it cannot be made room for, DataLoss from
  // storage, NotFound if closed meanwhile).
  absl::StatusOr<Session::ResidentHold> Hold(
      const std::shared_ptr<Session>& session);
  // Holds for every session, taken in ascending id order (the order of
  // session.h); holds[i] is for sessions[i]. Restores spilled ones first
  // (holding nothing meanwhile).
  absl::StatusOr<std::vector<Session::ResidentHold>> HoldAll(
      absl::Span<const std::shared_ptr<Session>> sessions);

  // Runs `f` (returning a Status or StatusOr); while it fails because the
  // memory budget is full, spills victims other than `requester` and
  // runs it again. The last failure is returned when nothing more can be
  // spilled.
  template <typename F>
  auto WithRoom(const Session* requester, F f) -> decltype(f()) {
    while (true) {
      auto result = f();
      const absl::Status& status = StatusOf(result);
      if (!enabled() || !IsBudgetFull(status)) return result;
      if (MakeRoom(ShortfallBytes(status), requester) == 0) return result;
    }
  }

  // Spills victims (not `exclude`) until `need_bytes` are freed or none
  // is left; returns the bytes freed (already released to the budget).
  // Spills nothing (returns 0) when all idle sessions together hold less
  // than `need_bytes`: the call is refused with the others left resident.
  uint64_t MakeRoom(uint64_t need_bytes, const Session* exclude);

  // Counters and the spilled-session gauges.
  void AddStats(EngineStats& stats) const;

  // Whether `status` is MemoryBudget's refusal.
  static bool IsBudgetFull(const absl::Status& status) {
    return absl::IsResourceExhausted(status) &&
           absl::StrContains(status.message(), "memory_budget_bytes");
  }

 private:
  static const absl::Status& StatusOf(const absl::Status& s) { return s; }
  template <typename T>
  static const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
    return s.status();
  }
  // The missing bytes MemoryBudget reported (1 if it cannot be told).
  static uint64_t ShortfallBytes(const absl::Status& status);

  absl::Status Restore(const std::shared_ptr<Session>& session);

  const std::shared_ptr<Storage>& storage_;
  MemoryBudget& budget_;
  SessionManager& sessions_;
  IndexBuilder& builder_;

  std::atomic<uint64_t> spills_{0};
  std::atomic<uint64_t> spill_failures_{0};
  std::atomic<uint64_t> spilled_bytes_total_{0};
  std::atomic<uint64_t> restores_{0};
  std::atomic<uint64_t> restore_failures_{0};
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_SPILLER_H_
