#include "kvstore/spiller.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <numeric>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "kvstore/spill_policy.h"

namespace wavekv {
namespace {

// Restores a batch of sessions needs at most one round per session, plus
// slack for sessions spilled again by concurrent callers; beyond that the
// budget is too small for the batch.
constexpr int kHoldRoundsPerSession = 4;

}  // namespace

Spiller::Spiller(const std::shared_ptr<Storage>& storage, MemoryBudget& budget,
                 SessionManager& sessions, IndexBuilder& builder)
    : storage_(storage),
      budget_(budget),
      sessions_(sessions),
      builder_(builder) {}

uint64_t Spiller::ShortfallBytes(const absl::Status& status) {
  // MemoryBudget::TryReserve: "memory_budget_bytes: this request needs N
  // more bytes of host memory, but U of the engine's budget of B bytes are
  // in use" (possibly after a prefix).
  const std::string message(status.message());
  const size_t at = message.find("memory_budget_bytes: this request needs ");
  uint64_t need = 0, used = 0, budget = 0;
  if (at == std::string::npos ||
      std::sscanf(message.c_str() + at,
                  "memory_budget_bytes: this request needs %" SCNu64
                  " more bytes of host memory, but %" SCNu64
                  " of the engine's budget of %" SCNu64,
                  &need, &used, &budget) != 3 ||
      used > budget || need <= budget - used) {
    return 1;
  }
  return need - (budget - used);
}

uint64_t Spiller::MakeRoom(uint64_t need_bytes, const Session* exclude) {
  if (!enabled() || need_bytes == 0) return 0;
  std::vector<std::shared_ptr<Session>> all = sessions_.All();
  std::vector<SpillCandidate> candidates;
  std::vector<std::shared_ptr<Session>> of_candidate;
  candidates.reserve(all.size());
  for (std::shared_ptr<Session>& s : all) {
    if (s.get() == exclude || s->spilled() || s->memory_bytes() == 0) continue;
    SpillCandidate c;
    c.session_id = s->id();
    c.tenant = s->tenant();
    c.memory_bytes = s->memory_bytes();
    c.last_access_unix_ms = s->last_access_unix_ms();
    c.busy = s->BuildPending();
    candidates.push_back(std::move(c));
    of_candidate.push_back(std::move(s));
  }
  // If spilling every idle session could not make room, refuse without
  // spilling anything: a refused call leaves the other sessions as they
  // were (resident), instead of moving them to disk for nothing.
  uint64_t spillable = 0;
  for (const SpillCandidate& c : candidates) {
    if (!c.busy) spillable += c.memory_bytes;
  }
  if (spillable < need_bytes) return 0;
  uint64_t freed = 0;
  for (size_t i : SpillOrder(candidates)) {
    if (freed >= need_bytes) break;
    Session& victim = *of_candidate[i];
    absl::StatusOr<uint64_t> spilled = victim.TrySpill(
        [&victim] { return victim.PersistAll(/*sync=*/false); });
    if (spilled.ok()) {
      budget_.Release(*spilled);
      freed += *spilled;
      spills_.fetch_add(1, std::memory_order_relaxed);
      spilled_bytes_total_.fetch_add(*spilled, std::memory_order_relaxed);
      continue;
    }
    if (absl::IsAborted(spilled.status())) {
      // Closed while it was written: its records are orphans.
      storage_->DeleteSession(victim.id(), /*sync=*/false).IgnoreError();
    } else if (!absl::IsFailedPrecondition(spilled.status())) {
      // Not "busy": the disk refused it (full, failing). Counted; the
      // next victim may still fit the need.
      spill_failures_.fetch_add(1, std::memory_order_relaxed);
      ABSL_RAW_LOG(WARNING, "spill of session %s failed: %s",
                   victim.id().c_str(),
                   std::string(spilled.status().message()).c_str());
    }
  }
  return freed;
}

absl::Status Spiller::Restore(const std::shared_ptr<Session>& session) {
  absl::Status status = session->RestoreIfSpilled([&]() -> absl::Status {
    absl::StatusOr<SessionSnapshot> snapshot =
        storage_->LoadSession(session->Meta());
    if (!snapshot.ok()) return snapshot.status();
    absl::StatusOr<std::vector<uint32_t>> build_layers = WithRoom(
        session.get(), [&] { return session->Restore(*snapshot, budget_); });
    if (!build_layers.ok()) return build_layers.status();
    for (uint32_t layer : *build_layers) builder_.Schedule(session, layer);
    restores_.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  });
  if (!status.ok()) restore_failures_.fetch_add(1, std::memory_order_relaxed);
  return status;
}

absl::StatusOr<Session::ResidentHold> Spiller::Hold(
    const std::shared_ptr<Session>& session) {
  for (int round = 0; round < kHoldRoundsPerSession; ++round) {
    std::optional<Session::ResidentHold> hold = session->HoldIfResident();
    if (hold.has_value()) return *std::move(hold);
    if (absl::Status s = Restore(session); !s.ok()) return s;
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "memory_budget_bytes: session \"", session->id(),
      "\" was spilled again each time it was restored; the budget is too "
      "small for the sessions in use"));
}

absl::StatusOr<std::vector<Session::ResidentHold>> Spiller::HoldAll(
    absl::Span<const std::shared_ptr<Session>> sessions) {
  std::vector<size_t> order(sessions.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return sessions[a]->id() < sessions[b]->id();
  });
  const int rounds = kHoldRoundsPerSession *
                     static_cast<int>(std::max<size_t>(1, sessions.size()));
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::optional<Session::ResidentHold>> holds(sessions.size());
    bool all_held = true;
    size_t spilled_index = 0;
    for (size_t i : order) {
      std::optional<Session::ResidentHold> hold = sessions[i]->HoldIfResident();
      if (!hold.has_value()) {
        all_held = false;
        spilled_index = i;
        break;
      }
      holds[i].emplace(*std::move(hold));
    }
    if (all_held) {
      std::vector<Session::ResidentHold> out;
      out.reserve(holds.size());
      for (auto& h : holds) out.push_back(*std::move(h));
      return out;
    }
    holds.clear();  // restore holding nothing (session.h)
    if (absl::Status s = Restore(sessions[spilled_index]); !s.ok()) return s;
  }
  return absl::ResourceExhaustedError(
      "memory_budget_bytes: the sessions of this batch do not fit in host "
      "memory together");
}

void Spiller::AddStats(EngineStats& stats) const {
  stats.spills = spills_.load(std::memory_order_relaxed);
  stats.spill_failures = spill_failures_.load(std::memory_order_relaxed);
  stats.spilled_bytes_total =
      spilled_bytes_total_.load(std::memory_order_relaxed);
  stats.restores = restores_.load(std::memory_order_relaxed);
  stats.restore_failures = restore_failures_.load(std::memory_order_relaxed);
  for (const std::shared_ptr<Session>& s : sessions_.All()) {
    if (!s->spilled()) continue;
    ++stats.spilled_sessions;
    stats.spilled_bytes += s->spilled_bytes();
  }
}

}  // namespace wavekv
