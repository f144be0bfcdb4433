// Session persistence: the ASYNC/SYNC append write, durable watermarks,
// index records, whole-session snapshots (shutdown, spill) and restore
// (recovery). The records and keys are kvstore/storage/'s; session.h
// describes the locking.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "index/dtype.h"
#include "index/wave_index.h"
#include "kvstore/cluster_store.h"
#include "kvstore/session.h"
#include "kvstore/storage/session_records.h"
#include "kvstore/storage/storage.h"

namespace wavekv {
namespace {

// Slots copied out of a cluster store per step when exporting tokens.
constexpr uint64_t kExportSlots = 4096;

void RaiseTo(std::atomic<uint64_t>& value, uint64_t target) {
  uint64_t seen = value.load(std::memory_order_relaxed);
  while (seen < target &&
         !value.compare_exchange_weak(seen, target, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
  }
}

}  // namespace

SessionMeta Session::Meta() const {
  SessionMeta meta;
  meta.session_id = id_;
  meta.tenant = tenant_;
  meta.options = options_;
  meta.max_tokens = max_tokens_;
  meta.created_unix_ms = created_unix_ms_;
  return meta;
}

uint64_t Session::durable_tokens() const {
  uint64_t min_tokens = UINT64_MAX;
  for (const auto& layer : layers_) {
    min_tokens = std::min(
        min_tokens, layer->durable_tokens.load(std::memory_order_acquire));
  }
  return min_tokens;
}

bool Session::HasUnsyncedWrites() const {
  for (const auto& layer : layers_) {
    if (layer->written_tokens.load(std::memory_order_acquire) >
        layer->durable_tokens.load(std::memory_order_acquire)) {
      return true;
    }
  }
  return false;
}

std::vector<uint64_t> Session::WrittenTokens() const {
  std::vector<uint64_t> out;
  out.reserve(layers_.size());
  for (const auto& layer : layers_) {
    out.push_back(layer->written_tokens.load(std::memory_order_acquire));
  }
  return out;
}

void Session::MarkDurable(absl::Span<const uint64_t> written) {
  for (size_t l = 0; l < layers_.size() && l < written.size(); ++l) {
    RaiseTo(layers_[l]->durable_tokens, written[l]);
  }
}

void Session::ExportTokensLocked(const Layer& layer, uint64_t begin,
                                 uint64_t end, std::string& keys,
                                 std::string& values) const {
  const ModelShape& shape = options_.shape;
  const size_t row_bytes = size_t{shape.head_dim} * DTypeBytes(shape.dtype);
  const size_t heads = shape.num_kv_heads;
  const uint64_t n = end > begin ? end - begin : 0;
  keys.assign(n * heads * row_bytes, '\0');
  values.assign(n * heads * row_bytes, '\0');
  if (n == 0) return;
  auto dest = [&](std::string& out, uint64_t token, size_t h) {
    return out.data() + ((token - begin) * heads + h) * row_bytes;
  };
  std::vector<uint8_t> k, v;
  std::vector<uint64_t> pos;
  for (size_t h = 0; h < heads; ++h) {
    const HeadStore& hs = layer.heads[h];
    // Tokens still in the token-order store.
    auto copy_tokens = [&](uint64_t b, uint64_t e) {
      if (b >= e) return;
      k.resize((e - b) * row_bytes);
      v.resize((e - b) * row_bytes);
      hs.tokens.CopyOut(b, e - b, k.data(), v.data(), nullptr);
      for (uint64_t t = b; t < e; ++t) {
        std::memcpy(dest(keys, t, h), k.data() + (t - b) * row_bytes,
                    row_bytes);
        std::memcpy(dest(values, t, h), v.data() + (t - b) * row_bytes,
                    row_bytes);
      }
    };
    const uint64_t db = hs.tokens.dropped_begin();
    const uint64_t de = hs.tokens.dropped_end();
    if (db >= de) {
      copy_tokens(begin, end);
      continue;
    }
    copy_tokens(begin, std::min(end, db));
    copy_tokens(std::max(begin, de), end);
    // Indexed tokens: from the cluster store, by each slot's position.
    if (std::max(begin, db) >= std::min(end, de)) continue;
    const uint64_t slots = hs.clusters.num_slots();
    for (uint64_t first = 0; first < slots; first += kExportSlots) {
      const uint64_t m = std::min(kExportSlots, slots - first);
      k.resize(m * row_bytes);
      v.resize(m * row_bytes);
      pos.resize(m);
      hs.clusters.CopyOut(first, m, k.data(), v.data(), pos.data());
      for (uint64_t i = 0; i < m; ++i) {
        const uint64_t t = pos[i];
        if (t < begin || t >= end) continue;
        std::memcpy(dest(keys, t, h), k.data() + i * row_bytes, row_bytes);
        std::memcpy(dest(values, t, h), v.data() + i * row_bytes, row_bytes);
      }
    }
  }
}

absl::Status Session::PersistAppendLocked(absl::Span<const LayerAppend> layers,
                                          bool sync) {
  if (storage_ == nullptr) {
    return absl::FailedPreconditionError(
        "durability: this session has no persistent tier");
  }
  const uint64_t token_bytes = options_.shape.TokenLayerBytes();
  StorageBatch batch = storage_->NewBatch();
  if (!persistent()) batch.PutSessionMeta(Meta());
  for (const LayerAppend& la : layers) {
    const Layer& layer = *layers_[la.layer];
    const uint64_t written =
        layer.written_tokens.load(std::memory_order_acquire);
    if (written < la.start_token) {
      // Earlier tokens appended without durability: written first, so the
      // layer's records stay one contiguous run.
      std::string keys, values;
      ExportTokensLocked(layer, written, la.start_token, keys, values);
      batch.PutTokens(id_, la.layer, written, la.start_token - written,
                      token_bytes, keys, values);
    }
    batch.PutTokens(
        id_, la.layer, la.start_token, la.num_tokens, token_bytes,
        absl::string_view(reinterpret_cast<const char*>(la.keys.data()),
                          la.keys.size()),
        absl::string_view(reinterpret_cast<const char*>(la.values.data()),
                          la.values.size()));
  }
  absl::Status s = storage_->Write(batch, sync);
  if (!s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("session ", id_, ": append: ", s.message()));
  }
  meta_persisted_.store(true, std::memory_order_release);
  return absl::OkStatus();
}

absl::Status Session::PersistIndex(uint32_t layer_index) {
  if (storage_ == nullptr || !persistent()) return absl::OkStatus();
  const Layer& layer = *layers_[layer_index];
  StorageBatch batch = storage_->NewBatch();
  {
    absl::ReaderMutexLock lock(&layer.mu);
    if (closed_.load(std::memory_order_acquire)) return absl::OkStatus();
    std::vector<const WaveIndex*> heads;
    for (const HeadStore& hs : layer.heads) {
      if (hs.index == nullptr) return absl::OkStatus();
      heads.push_back(hs.index.get());
    }
    batch.PutLayerIndex(id_, layer_index, heads);
  }
  absl::Status s = storage_->Write(batch, /*sync=*/false);
  if (!s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("session ", id_, ": layer ", layer_index,
                                     " index: ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<SessionSnapshot> Session::Snapshot() const {
  SessionSnapshot snap;
  snap.meta = Meta();
  snap.layers.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = *layers_[l];
    absl::ReaderMutexLock lock(&layer.mu);
    if (closed_.load(std::memory_order_acquire)) {
      return SessionNotFoundError("session_id", id_);
    }
    LayerSnapshot& out = snap.layers[l];
    out.num_tokens = layer.num_tokens.load(std::memory_order_relaxed);
    ExportTokensLocked(layer, 0, out.num_tokens, out.keys, out.values);
    if (!layer.indexed.empty()) {
      for (const HeadStore& hs : layer.heads) {
        // A copy: a build may extend the live index after the lock.
        absl::StatusOr<WaveIndex> copy =
            WaveIndex::FromParts(hs.index->ToParts());
        if (!copy.ok()) return copy.status();
        out.indexes.push_back(std::make_shared<WaveIndex>(*std::move(copy)));
      }
    }
  }
  return snap;
}

absl::Status Session::PersistAll(bool sync) {
  if (storage_ == nullptr) {
    return absl::FailedPreconditionError("session has no persistent tier");
  }
  if (!unusable_.ok()) return absl::OkStatus();  // its records stay as found
  if (spilled()) return absl::OkStatus();        // on disk already (spiller.h)
  if (!persistent()) {
    absl::StatusOr<SessionSnapshot> snap = Snapshot();
    if (!snap.ok()) return snap.status();
    if (absl::Status s = storage_->WriteSession(*snap, sync); !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat("session ", id_, ": ", s.message()));
    }
    meta_persisted_.store(true, std::memory_order_release);
    for (size_t l = 0; l < layers_.size(); ++l) {
      absl::MutexLock lock(&layers_[l]->mu);
      RaiseTo(layers_[l]->written_tokens, snap->layers[l].num_tokens);
      if (sync) RaiseTo(layers_[l]->durable_tokens, snap->layers[l].num_tokens);
    }
    return absl::OkStatus();
  }
  const uint64_t token_bytes = options_.shape.TokenLayerBytes();
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& layer = *layers_[l];
    absl::MutexLock lock(&layer.mu);
    if (closed_.load(std::memory_order_acquire)) return absl::OkStatus();
    StorageBatch batch = storage_->NewBatch();
    const uint64_t written =
        layer.written_tokens.load(std::memory_order_relaxed);
    const uint64_t n = layer.num_tokens.load(std::memory_order_relaxed);
    if (written < n) {
      std::string keys, values;
      ExportTokensLocked(layer, written, n, keys, values);
      batch.PutTokens(id_, static_cast<uint32_t>(l), written, n - written,
                      token_bytes, keys, values);
    }
    if (!layer.indexed.empty()) {
      std::vector<const WaveIndex*> heads;
      for (const HeadStore& hs : layer.heads) heads.push_back(hs.index.get());
      batch.PutLayerIndex(id_, static_cast<uint32_t>(l), heads);
    }
    if (absl::Status s = storage_->Write(batch, sync); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("session ", id_, ": layer ", l,
                                                 ": ", s.message()));
    }
    RaiseTo(layer.written_tokens, n);
    if (sync) RaiseTo(layer.durable_tokens, n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> Session::Restore(
    const SessionSnapshot& snapshot, MemoryBudget& budget) {
  const ModelShape& shape = options_.shape;
  const size_t row_bytes = size_t{shape.head_dim} * DTypeBytes(shape.dtype);
  const size_t heads = shape.num_kv_heads;
  const size_t stride = heads * row_bytes;
  if (snapshot.layers.size() != layers_.size()) {
    return absl::DataLossError(
        absl::StrCat("session ", id_, ": snapshot has ", snapshot.layers.size(),
                     " layers, the shape ", layers_.size()));
  }
  // Everything the session will hold at its peak (token stores full, then
  // the indexed tokens move to the cluster stores).
  uint64_t peak = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerSnapshot& ls = snapshot.layers[l];
    Layer& layer = *layers_[l];
    absl::ReaderMutexLock lock(&layer.mu);
    for (const HeadStore& hs : layer.heads) {
      peak += hs.tokens.GrowthBytes(ls.num_tokens);
    }
    for (const auto& index : ls.indexes) {
      peak += ClusterStore::Segment::BytesFor(index->num_slots(), row_bytes) +
              index->memory_bytes();
    }
  }
  if (absl::Status s = budget.TryReserve(peak); !s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("session ", id_, ": restore: ", s.message()));
  }
  BudgetReservation reserved(budget, peak);

  std::vector<uint32_t> build_layers;
  uint64_t held = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerSnapshot& ls = snapshot.layers[l];
    Layer& layer = *layers_[l];
    absl::MutexLock lock(&layer.mu);
    const uint64_t n = ls.num_tokens;
    if (n > 0) {
      for (size_t h = 0; h < heads; ++h) {
        HeadStore& hs = layer.heads[h];
        if (absl::Status s = hs.tokens.Reserve(n); !s.ok()) return s;
        hs.tokens.Append(
            reinterpret_cast<const uint8_t*>(ls.keys.data()) + h * row_bytes,
            reinterpret_cast<const uint8_t*>(ls.values.data()) + h * row_bytes,
            stride, n, 0);
      }
    }
    layer.num_tokens.store(n, std::memory_order_release);
    if (!ls.indexes.empty()) {
      const TokenSpan span = ls.indexes[0]->indexed_span();
      for (size_t h = 0; h < heads; ++h) {
        HeadStore& hs = layer.heads[h];
        const std::shared_ptr<WaveIndex>& index = ls.indexes[h];
        const absl::Span<const uint64_t> slot_tokens = index->slot_tokens();
        absl::StatusOr<ClusterStore::Segment> segment =
            ClusterStore::Segment::Allocate(0, slot_tokens.size(), row_bytes,
                                            arena_);
        if (!segment.ok()) return segment.status();
        for (uint64_t s = 0; s < slot_tokens.size(); ++s) {
          const uint64_t t = slot_tokens[s];
          std::memcpy(segment->keys() + s * row_bytes,
                      ls.keys.data() + (t * heads + h) * row_bytes, row_bytes);
          std::memcpy(segment->values() + s * row_bytes,
                      ls.values.data() + (t * heads + h) * row_bytes,
                      row_bytes);
          segment->positions()[s] = t;
        }
        hs.clusters.Install(*std::move(segment));
        hs.tokens.DropRange(span.begin, span.end);
        hs.index = index;
      }
      layer.indexed = span;
      layer.indexed_tokens.store(span.num_tokens(), std::memory_order_release);
    }
    for (const HeadStore& hs : layer.heads) {
      held += hs.tokens.memory_bytes() + hs.clusters.memory_bytes() +
              (hs.index != nullptr ? hs.index->memory_bytes() : 0);
    }
    layer.written_tokens.store(n, std::memory_order_release);
    layer.durable_tokens.store(n, std::memory_order_release);
    if (NeedsBuild(layer)) {
      layer.build_pending = true;
      build_layers.push_back(static_cast<uint32_t>(l));
    }
  }
  reserved.Keep();
  if (held < peak) budget.Release(peak - held);
  if (held > peak) budget.ForceReserve(held - peak);
  memory_bytes_.store(held, std::memory_order_release);
  meta_persisted_.store(true, std::memory_order_release);
  return build_layers;
}

}  // namespace wavekv
