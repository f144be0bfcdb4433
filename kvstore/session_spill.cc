// Session residency: holds for operations in flight, spilling an idle
// session's memory once it is on disk, and marking it resident again after
// a restore (session.h, "Residency").
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstore/session.h"

namespace wavekv {

Session::ResidentHold::~ResidentHold() {
  if (session_ == nullptr) return;
  absl::MutexLock lock(&session_->residency_mu_);
  --session_->resident_holds_;
}

Session::ResidentHold& Session::ResidentHold::operator=(
    ResidentHold&& other) noexcept {
  if (this != &other) {
    ResidentHold released(std::move(*this));
    session_ = other.session_;
    other.session_ = nullptr;
  }
  return *this;
}

std::optional<Session::ResidentHold> Session::HoldIfResident() const {
  absl::MutexLock lock(&residency_mu_);
  if (spilled_.load(std::memory_order_acquire)) return std::nullopt;
  ++resident_holds_;
  return ResidentHold(this);
}

bool Session::BuildPending() const {
  for (const auto& layer : layers_) {
    absl::ReaderMutexLock lock(&layer->mu);
    if (layer->build_pending) return true;
  }
  return false;
}

absl::StatusOr<uint64_t> Session::TrySpill(
    absl::FunctionRef<absl::Status()> persist) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (!residency_mu_.TryLock()) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", id_, ": busy (an operation is in flight)"));
  }
  struct Unlock {
    absl::Mutex* mu;
    ~Unlock() ABSL_NO_THREAD_SAFETY_ANALYSIS { mu->Unlock(); }
  } unlock{&residency_mu_};
  if (resident_holds_ > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", id_, ": busy (an operation is in flight)"));
  }
  if (spilled_.load(std::memory_order_acquire) ||
      closed_.load(std::memory_order_acquire) || BuildPending()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", id_, ": busy (spilled, closed or being indexed)"));
  }
  // No operation can start while residency_mu_ is held, and builds are
  // only scheduled by Append: nothing changes the session from here on.
  if (absl::Status s = persist(); !s.ok()) return s;

  // Every layer's writer lock, in ascending order (session.h).
  std::vector<std::unique_ptr<absl::MutexLock>> locks;
  locks.reserve(layers_.size());
  for (auto& layer : layers_) {
    locks.push_back(std::make_unique<absl::MutexLock>(&layer->mu));
  }
  if (closed_.load(std::memory_order_acquire)) {
    return absl::AbortedError(
        absl::StrCat("session ", id_, ": closed while it was spilled"));
  }
  uint64_t freed = 0;
  for (auto& layer : layers_) {
    layer->mu.AssertHeld();
    for (HeadStore& head : layer->heads) {
      freed += head.tokens.Clear() + head.clusters.Clear();
      if (head.index != nullptr) freed += head.index->memory_bytes();
      head.index.reset();
    }
    // Token counts and the indexed span stay: they describe the session
    // on disk (Info) and are reset by RestoreIfSpilled.
  }
  memory_bytes_.fetch_sub(freed, std::memory_order_acq_rel);
  spilled_bytes_.store(freed, std::memory_order_release);
  spilled_.store(true, std::memory_order_release);
  return freed;
}

absl::Status Session::RestoreIfSpilled(
    absl::FunctionRef<absl::Status()> restore) {
  absl::MutexLock held(&residency_mu_);
  if (!spilled_.load(std::memory_order_acquire)) return absl::OkStatus();
  if (closed_.load(std::memory_order_acquire)) {
    return SessionNotFoundError("session_id", id_);
  }
  struct Saved {
    uint64_t num_tokens;
    TokenSpan indexed;
  };
  std::vector<Saved> saved;
  saved.reserve(layers_.size());
  // Restore() loads into empty layers.
  for (auto& layer : layers_) {
    absl::MutexLock lock(&layer->mu);
    saved.push_back(
        {layer->num_tokens.load(std::memory_order_relaxed), layer->indexed});
    layer->num_tokens.store(0, std::memory_order_release);
    layer->indexed = TokenSpan{};
    layer->indexed_tokens.store(0, std::memory_order_release);
    layer->build_error = absl::OkStatus();
  }
  absl::Status status = restore();
  if (!status.ok()) {
    // Back to spilled, as it was. A restore fails before it allocates
    // (its reservation or its load), so the stores are still empty.
    for (size_t l = 0; l < layers_.size(); ++l) {
      Layer& layer = *layers_[l];
      absl::MutexLock lock(&layer.mu);
      layer.num_tokens.store(saved[l].num_tokens, std::memory_order_release);
      layer.indexed = saved[l].indexed;
      layer.indexed_tokens.store(saved[l].indexed.num_tokens(),
                                 std::memory_order_release);
    }
    return status;
  }
  spilled_bytes_.store(0, std::memory_order_release);
  spilled_.store(false, std::memory_order_release);
  return absl::OkStatus();
}

void Session::InitSpilled(const SessionSnapshot& snapshot) {
  uint64_t bytes = 0;
  for (size_t l = 0; l < layers_.size() && l < snapshot.layers.size(); ++l) {
    const LayerSnapshot& ls = snapshot.layers[l];
    Layer& layer = *layers_[l];
    absl::MutexLock lock(&layer.mu);
    layer.num_tokens.store(ls.num_tokens, std::memory_order_release);
    layer.written_tokens.store(ls.num_tokens, std::memory_order_release);
    layer.durable_tokens.store(ls.num_tokens, std::memory_order_release);
    if (!ls.indexes.empty()) {
      layer.indexed = ls.indexes[0]->indexed_span();
      layer.indexed_tokens.store(layer.indexed.num_tokens(),
                                 std::memory_order_release);
    }
    // What it will hold once restored, roughly: its K/V and indexes.
    bytes += ls.keys.size() + ls.values.size();
    for (const auto& index : ls.indexes) bytes += index->memory_bytes();
  }
  meta_persisted_.store(true, std::memory_order_release);
  spilled_bytes_.store(bytes, std::memory_order_release);
  spilled_.store(true, std::memory_order_release);
}

}  // namespace wavekv
