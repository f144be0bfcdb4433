// EngineImpl and the persistent tier: opening the store, recovering every
// stored session at Open, the ASYNC flusher, and persisting everything at
// shutdown. The record format and keys are kvstore/storage/'s; the
// per-session work is in session_persist.cc.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "kvstore/engine_impl.h"
#include "kvstore/session.h"
#include "kvstore/storage/storage.h"

namespace wavekv {

void EngineImpl::Log(const std::string& line) const {
  if (options_.on_recovery_log) {
    options_.on_recovery_log(line);
  } else {
    std::fprintf(stderr, "wavekv engine: %s\n", line.c_str());
  }
}

absl::Status EngineImpl::OpenStorage() {
  if (options_.storage != nullptr) {
    storage_ = options_.storage;
  } else if (!options_.storage_dir.empty()) {
    StorageOptions so;
    so.path = options_.storage_dir;
    absl::StatusOr<std::unique_ptr<Storage>> opened = Storage::Open(so);
    if (!opened.ok()) {
      return absl::Status(
          opened.status().code(),
          absl::StrCat("storage_dir: ", opened.status().message()));
    }
    storage_ = std::shared_ptr<Storage>(*std::move(opened));
  } else {
    return absl::OkStatus();
  }

  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<Storage::MetaEntry>> metas =
      storage_->ListSessionMetas();
  if (!metas.ok()) return metas.status();
  Log(absl::StrCat("recovery: ", metas->size(), " stored sessions"));
  for (size_t i = 0; i < metas->size(); ++i) {
    RecoverSession((*metas)[i]);
    if ((i + 1) % 100 == 0 && i + 1 < metas->size()) {
      Log(absl::StrCat("recovery: ", i + 1, " of ", metas->size(),
                       " sessions done"));
    }
  }
  Log(absl::StrFormat(
      "recovery: done in %.3f s: %d sessions restored (%d of them left on "
      "disk until accessed), %d unusable, %d bytes of K/V in memory",
      absl::ToDoubleSeconds(absl::Now() - start), sessions_recovered_.load(),
      sessions_recovered_spilled_.load(), sessions_unusable_.load(),
      budget_.used_bytes()));

  flusher_ = std::thread([this] { FlushLoop(); });
  return absl::OkStatus();
}

void EngineImpl::RecoverSession(const Storage::MetaEntry& entry) {
  if (!entry.meta.ok()) {
    // Without its meta the session's tenant is unknown: it cannot be
    // listed to anyone. Its records stay on disk for inspection.
    sessions_unusable_.fetch_add(1);
    Log(absl::StrCat("recovery: session ", entry.session_id,
                     ": skipped, its meta record is unreadable: ",
                     entry.meta.status().message()));
    return;
  }
  const SessionMeta& meta = *entry.meta;
  const absl::Time start = absl::Now();
  auto session = std::make_shared<Session>(
      meta.session_id, meta.tenant, meta.options, meta.max_tokens,
      meta.created_unix_ms, ChunkGeometry{}, &arena_);
  session->AttachStorage(storage_.get());
  // Read in full even when it will not stay in memory: every record's
  // checksum is verified here, so a damaged session is reported at Open.
  // Only this one snapshot is held outside the budget at a time.
  absl::StatusOr<SessionSnapshot> snapshot = storage_->LoadSession(meta);
  std::vector<uint32_t> build_layers;
  bool spilled = false;
  if (snapshot.ok()) {
    absl::StatusOr<std::vector<uint32_t>> restored =
        session->Restore(*snapshot, budget_);
    if (restored.ok()) {
      build_layers = *std::move(restored);
    } else if (Spiller::IsBudgetFull(restored.status())) {
      // Does not fit the memory budget now: registered as spilled (its
      // records are on disk), restored on first access like any spilled
      // session, with its index from the stored index record.
      session->InitSpilled(*snapshot);
      spilled = true;
    } else {
      session->MarkUnusable(restored.status());
    }
  } else {
    session->MarkUnusable(snapshot.status());
  }
  if (absl::Status s = sessions_.Restore(session); !s.ok()) {
    Log(absl::StrCat("recovery: session ", meta.session_id, ": ", s.message()));
    budget_.Release(session->Close());
    return;
  }
  if (!session->unusable().ok()) {
    sessions_unusable_.fetch_add(1);
    Log(absl::StrCat("recovery: session ", meta.session_id, " (tenant ",
                     meta.tenant,
                     "): UNUSABLE: ", session->unusable().message()));
    return;
  }
  AppendCharge charge;
  uint64_t tokens = 0, indexed = 0;
  for (const LayerSnapshot& layer : snapshot->layers) {
    charge.kv_bytes += layer.keys.size() + layer.values.size();
    charge.session_tokens = std::max(charge.session_tokens, layer.num_tokens);
    tokens += layer.num_tokens;
    if (!layer.indexes.empty()) {
      indexed +=
          layer.indexes[0]->end_token() - layer.indexes[0]->begin_token();
    }
  }
  quotas_.ForceCharge(meta.tenant, meta.session_id, charge);
  sessions_recovered_.fetch_add(1);
  if (spilled) sessions_recovered_spilled_.fetch_add(1);
  Log(absl::StrFormat(
      "recovery: session %s (tenant %s): %d layers, %d tokens (%d indexed "
      "from stored indexes, %d layers to index in the background)%s in %.3f "
      "s",
      meta.session_id, meta.tenant, snapshot->layers.size(), tokens, indexed,
      build_layers.size(),
      spilled ? ", left on disk (memory budget full; restored on first access)"
              : "",
      absl::ToDoubleSeconds(absl::Now() - start)));
  for (uint32_t layer : build_layers) builder_.Schedule(session, layer);
}

absl::Status EngineImpl::FlushAsyncOnce() {
  // What is written now is durable once the fsync below returns.
  std::vector<std::pair<std::shared_ptr<Session>, std::vector<uint64_t>>>
      pending;
  for (std::shared_ptr<Session>& session : sessions_.All()) {
    if (!session->HasUnsyncedWrites()) continue;
    std::vector<uint64_t> written = session->WrittenTokens();
    pending.emplace_back(std::move(session), std::move(written));
  }
  if (pending.empty()) return absl::OkStatus();
  if (absl::Status s = storage_->SyncWal(); !s.ok()) return s;
  for (const auto& [session, written] : pending) session->MarkDurable(written);
  return absl::OkStatus();
}

void EngineImpl::FlushLoop() {
  const absl::Duration interval =
      absl::Milliseconds(options_.async_flush_interval_ms);
  bool failing = false;  // log only when the outcome changes
  absl::MutexLock lock(&flush_mu_);
  while (!stop_flusher_) {
    flush_mu_.AwaitWithTimeout(absl::Condition(&stop_flusher_), interval);
    if (stop_flusher_) break;
    flush_mu_.Unlock();
    const absl::Status s = FlushAsyncOnce();
    flush_mu_.Lock();
    if (!s.ok() && !failing) {
      Log(absl::StrCat("async flush failing (durable_tokens stop advancing): ",
                       s.message()));
    } else if (s.ok() && failing) {
      Log("async flush working again");
    }
    failing = !s.ok();
  }
}

EngineImpl::~EngineImpl() {
  if (storage_ == nullptr) return;
  {
    absl::MutexLock lock(&flush_mu_);
    stop_flusher_ = true;
  }
  if (flusher_.joinable()) flusher_.join();
  // Graceful shutdown: everything in memory goes to disk (NONE sessions
  // as snapshots), then one fsync makes it and every ASYNC append durable.
  size_t persisted = 0, failed = 0;
  for (const std::shared_ptr<Session>& session : sessions_.All()) {
    if (absl::Status s = session->PersistAll(/*sync=*/false); !s.ok()) {
      ++failed;
      Log(absl::StrCat("shutdown: ", s.message()));
    } else {
      ++persisted;
    }
  }
  if (absl::Status s = storage_->SyncWal(); !s.ok()) {
    Log(absl::StrCat("shutdown: WAL sync failed: ", s.message()));
  }
  // Memtables to SST/blob files: the next Open replays no WAL.
  if (absl::Status s = storage_->FlushMemtables(); !s.ok()) {
    Log(absl::StrCat("shutdown: flush failed: ", s.message()));
  }
  Log(absl::StrCat("shutdown: ", persisted, " sessions persisted, ", failed,
                   " failed"));
}

}  // namespace wavekv
