#include "kvstore/session.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "index/dtype.h"
#include "index/wave_index_params.h"

namespace wavekv {

absl::Status SessionNotFoundError(absl::string_view field,
                                  absl::string_view session_id) {
  return absl::NotFoundError(
      absl::StrCat(field, ": session \"", session_id, "\" not found"));
}

WaveIndexParams ToWaveIndexParams(const IndexOptions& options) {
  WaveIndexParams p;
  p.sink_tokens = options.sink_tokens;
  p.recent_tokens = options.recent_tokens;
  p.segment_tokens = options.segment_tokens;
  p.cluster_size = options.cluster_size;
  p.kmeans_iterations = options.kmeans_iterations;
  p.update_tokens = options.update_tokens;
  p.retrieval_fraction = options.retrieval_fraction;
  p.estimation_fraction = options.estimation_fraction;
  return p;
}

// Locks are taken in ascending layer index (the session's lock order) and
// released in the destructor. The thread-safety analysis cannot follow a
// dynamic set of locks; users call layer.mu.AssertHeld() for each layer.
class Session::LayerWriteLocks {
 public:
  // `layers` must be sorted ascending and free of duplicates.
  LayerWriteLocks(const Session& session,
                  std::vector<uint32_t> layers) ABSL_NO_THREAD_SAFETY_ANALYSIS
      : session_(session),
        layers_(std::move(layers)) {
    for (uint32_t l : layers_) session_.layers_[l]->mu.Lock();
  }
  ~LayerWriteLocks() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
      session_.layers_[*it]->mu.Unlock();
    }
  }
  LayerWriteLocks(const LayerWriteLocks&) = delete;
  LayerWriteLocks& operator=(const LayerWriteLocks&) = delete;

 private:
  const Session& session_;
  const std::vector<uint32_t> layers_;
};

Session::Layer::Layer(size_t num_kv_heads, size_t row_bytes,
                      ChunkGeometry geometry, HostArena* arena) {
  absl::MutexLock lock(&mu);
  heads.reserve(num_kv_heads);
  for (size_t h = 0; h < num_kv_heads; ++h) {
    heads.emplace_back(row_bytes, geometry, arena);
  }
}

Session::Session(std::string id, TenantId tenant, const SessionOptions& options,
                 uint64_t max_tokens, int64_t now_unix_ms,
                 ChunkGeometry geometry, HostArena* arena)
    : id_(std::move(id)),
      tenant_(std::move(tenant)),
      options_(options),
      params_(ToWaveIndexParams(options.index)),
      max_tokens_(max_tokens),
      created_unix_ms_(now_unix_ms),
      arena_(arena != nullptr ? arena : &HostArena::Default()),
      last_access_unix_ms_(now_unix_ms) {
  const size_t row_bytes =
      size_t{options_.shape.head_dim} * DTypeBytes(options_.shape.dtype);
  layers_.reserve(options_.shape.num_layers);
  for (uint32_t l = 0; l < options_.shape.num_layers; ++l) {
    layers_.push_back(std::make_unique<Layer>(options_.shape.num_kv_heads,
                                              row_bytes, geometry, arena_));
  }
}

absl::Status Session::ValidateAppend(
    absl::Span<const LayerAppend> layers) const {
  const ModelShape& shape = options_.shape;
  if (layers.empty()) {
    return absl::InvalidArgumentError("layers: at least one layer is required");
  }
  const uint64_t token_bytes = shape.TokenLayerBytes();
  std::vector<int> request_of_layer(shape.num_layers, -1);
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerAppend& la = layers[i];
    if (la.layer >= shape.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layers[", i, "].layer: ", la.layer,
                       " is out of range 0..", shape.num_layers - 1));
    }
    if (request_of_layer[la.layer] >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layers[", i, "].layer: ", la.layer, " appears twice (also layers[",
          request_of_layer[la.layer], "])"));
    }
    request_of_layer[la.layer] = static_cast<int>(i);
    if (la.num_tokens < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("layers[", i, "].num_tokens: 0 is less than 1"));
    }
    const uint64_t expected = uint64_t{la.num_tokens} * token_bytes;
    if (la.keys.size() != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("layers[", i, "].keys: expected ", expected,
                       " bytes, got ", la.keys.size()));
    }
    if (la.values.size() != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("layers[", i, "].values: expected ", expected,
                       " bytes, got ", la.values.size()));
    }
  }
  return absl::OkStatus();
}

bool Session::NeedsBuild(const Layer& layer) const {
  // A build that failed on the data itself would fail again.
  if (layer.build_pending || absl::IsInvalidArgument(layer.build_error)) {
    return false;
  }
  return !NextIndexBlock(params_,
                         layer.num_tokens.load(std::memory_order_relaxed),
                         layer.indexed.end)
              .empty();
}

absl::StatusOr<Session::AppendOutcome> Session::Append(
    absl::Span<const LayerAppend> layers, MemoryBudget& budget,
    const AppendAdmit& admit, AppendPersist persist) {
  const ModelShape& shape = options_.shape;
  // 1. Everything that does not depend on state, before taking any lock.
  if (absl::Status s = ValidateAppend(layers); !s.ok()) return s;

  // 2. Under the writer locks of the named layers: state checks, budget,
  //    allocation, copy.
  std::vector<uint32_t> order;
  order.reserve(layers.size());
  for (const LayerAppend& la : layers) order.push_back(la.layer);
  std::sort(order.begin(), order.end());
  LayerWriteLocks locks(*this, std::move(order));

  if (closed_.load(std::memory_order_acquire)) {
    return SessionNotFoundError("session_id", id_);
  }
  if (!unusable_.ok()) return unusable_;
  uint64_t growth_bytes = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerAppend& la = layers[i];
    Layer& layer = *layers_[la.layer];
    layer.mu.AssertHeld();
    const uint64_t length = layer.num_tokens.load(std::memory_order_relaxed);
    if (la.start_token != length) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layers[", i, "].start_token: ", la.start_token,
          " is not the length of layer ", la.layer, " (", length, " tokens)"));
    }
    if (la.num_tokens > max_tokens_ - length) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "layers[", i, "].num_tokens: ", la.num_tokens, " more tokens after ",
          length, " would exceed the session's max_tokens (", max_tokens_,
          ")"));
    }
    for (const HeadStore& head : layer.heads) {
      growth_bytes += head.tokens.GrowthBytes(length + la.num_tokens);
    }
  }
  if (absl::Status s = budget.TryReserve(growth_bytes); !s.ok()) return s;

  // Allocate every chunk before copying anything, so a failed allocation
  // can be rolled back completely.
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerAppend& la = layers[i];
    Layer& layer = *layers_[la.layer];
    layer.mu.AssertHeld();
    const uint64_t target =
        layer.num_tokens.load(std::memory_order_relaxed) + la.num_tokens;
    for (HeadStore& head : layer.heads) {
      if (absl::Status s = head.tokens.Reserve(target); !s.ok()) {
        for (size_t j = 0; j <= i; ++j) {
          Layer& undo = *layers_[layers[j].layer];
          undo.mu.AssertHeld();
          for (HeadStore& hs : undo.heads) hs.tokens.ReleaseUnused();
        }
        budget.Release(growth_bytes);
        return s;
      }
    }
  }

  const auto release_chunks = [&] {
    for (const LayerAppend& la : layers) {
      Layer& undo = *layers_[la.layer];
      undo.mu.AssertHeld();
      for (HeadStore& hs : undo.heads) hs.tokens.ReleaseUnused();
    }
    budget.Release(growth_bytes);
  };
  // The tenant's quota, before the storage write, so that nothing refused
  // ever reaches the disk (a crash cannot bring it back).
  std::function<void()> refund;
  if (admit) {
    AppendCharge charge;
    for (const LayerAppend& la : layers) {
      charge.kv_bytes += la.keys.size() + la.values.size();
      charge.session_tokens = std::max<uint64_t>(
          charge.session_tokens, la.start_token + la.num_tokens);
    }
    absl::StatusOr<std::function<void()>> admitted = admit(charge);
    if (!admitted.ok()) {
      release_chunks();
      return admitted.status();
    }
    refund = *std::move(admitted);
  }
  // The storage write (ASYNC/SYNC): the last step that can fail.
  if (persist.enabled) {
    if (absl::Status s = PersistAppendLocked(layers, persist.sync); !s.ok()) {
      if (refund) refund();
      release_chunks();
      return s;
    }
  }

  const size_t row_bytes = size_t{shape.head_dim} * DTypeBytes(shape.dtype);
  const size_t stride = size_t{shape.num_kv_heads} * row_bytes;
  AppendOutcome outcome;
  for (const LayerAppend& la : layers) {
    Layer& layer = *layers_[la.layer];
    layer.mu.AssertHeld();
    for (size_t h = 0; h < layer.heads.size(); ++h) {
      layer.heads[h].tokens.Append(la.keys.data() + h * row_bytes,
                                   la.values.data() + h * row_bytes, stride,
                                   la.num_tokens, la.start_token);
    }
    layer.num_tokens.store(la.start_token + la.num_tokens,
                           std::memory_order_release);
    if (persist.enabled) {
      layer.written_tokens.store(la.start_token + la.num_tokens,
                                 std::memory_order_release);
      if (persist.sync) {
        // The fsync covered every earlier write of the WAL as well.
        layer.durable_tokens.store(la.start_token + la.num_tokens,
                                   std::memory_order_release);
      }
    }
    if (NeedsBuild(layer)) {
      layer.build_pending = true;
      outcome.index_layers.push_back(la.layer);
    }
  }
  memory_bytes_.fetch_add(growth_bytes, std::memory_order_acq_rel);

  AppendResult& result = outcome.result;
  result.layer_tokens = LayerTokens();
  result.num_tokens =
      *std::min_element(result.layer_tokens.begin(), result.layer_tokens.end());
  result.durable_tokens = durable_tokens();
  std::sort(outcome.index_layers.begin(), outcome.index_layers.end());
  return outcome;
}

Session::LayerReader::LayerReader(absl::Mutex* mu, LayerView view)
    : mu_(mu), view_(std::move(view)) {}

Session::LayerReader::LayerReader(LayerReader&& other) noexcept
    : mu_(other.mu_), view_(std::move(other.view_)) {
  other.mu_ = nullptr;
}

Session::LayerReader::~LayerReader() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (mu_ != nullptr) mu_->ReaderUnlock();
}

absl::StatusOr<Session::LayerReader> Session::ReadLock(
    uint32_t layer_index,
    absl::string_view id_field) const ABSL_NO_THREAD_SAFETY_ANALYSIS {
  ABSL_RAW_CHECK(layer_index < layers_.size(), "ReadLock: layer out of range");
  const Layer& layer = *layers_[layer_index];
  layer.mu.ReaderLock();
  if (closed_.load(std::memory_order_acquire)) {
    layer.mu.ReaderUnlock();
    return SessionNotFoundError(id_field, id_);
  }
  if (!unusable_.ok()) {
    layer.mu.ReaderUnlock();
    return unusable_;
  }
  LayerView view;
  view.num_tokens = layer.num_tokens.load(std::memory_order_relaxed);
  view.layout_epoch = layer.layout_epoch;
  view.indexed = layer.indexed;
  view.build_pending = layer.build_pending;
  view.build_error = layer.build_error;
  view.heads = absl::MakeConstSpan(layer.heads);
  return LayerReader(&layer.mu, std::move(view));
}

absl::Status Session::ReadLayer(
    uint32_t layer_index, absl::string_view id_field,
    absl::FunctionRef<void(const LayerView&)> fn) const {
  absl::StatusOr<LayerReader> reader = ReadLock(layer_index, id_field);
  if (!reader.ok()) return reader.status();
  fn(reader->view());
  return absl::OkStatus();
}

absl::Status Session::WaveReadiness(uint32_t layer,
                                    const LayerView& view) const {
  const std::string where = absl::StrCat("mode: WAVE retrieval on layer ",
                                         layer, " of session \"", id_, "\"");
  if (!view.build_error.ok() && !view.build_pending) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, ": the index build failed (FAILED: ", view.build_error.message(),
        "); EXACT mode and exact_if_not_ready keep working"));
  }
  if (!view.indexed.empty() ||
      NextIndexBlock(params_, view.num_tokens, view.indexed.end).empty()) {
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat(
      where, ": index not ready (BUILDING: 0 of ", view.num_tokens,
      " tokens indexed, the first block is being clustered); retry, or set "
      "exact_if_not_ready for an EXACT answer"));
}

std::vector<uint64_t> Session::LayerTokens() const {
  std::vector<uint64_t> tokens;
  tokens.reserve(layers_.size());
  for (const auto& layer : layers_) {
    tokens.push_back(layer->num_tokens.load(std::memory_order_acquire));
  }
  return tokens;
}

uint64_t Session::indexed_tokens() const {
  uint64_t sum = 0;
  for (const auto& layer : layers_) {
    sum += layer->indexed_tokens.load(std::memory_order_acquire);
  }
  return sum;
}

uint64_t Session::num_tokens() const {
  uint64_t min_tokens = UINT64_MAX;
  for (const auto& layer : layers_) {
    min_tokens =
        std::min(min_tokens, layer->num_tokens.load(std::memory_order_acquire));
  }
  return min_tokens;
}

absl::StatusOr<SessionInfo> Session::Info() const {
  if (closed_.load(std::memory_order_acquire)) {
    return SessionNotFoundError("session_id", id_);
  }
  SessionInfo info;
  info.session_id = id_;
  info.tenant = tenant_;
  info.shape = options_.shape;
  info.index = options_.index;
  info.durability = options_.durability;
  info.max_tokens = max_tokens_;
  info.label = options_.label;
  info.durable_tokens = durable_tokens();
  info.memory_bytes = memory_bytes();
  info.created_unix_ms = created_unix_ms_;
  info.last_access_unix_ms =
      last_access_unix_ms_.load(std::memory_order_acquire);
  // Tokens and index progress, one layer lock at a time (each layer's
  // counts are consistent with each other).
  bool failed = false, building = false, indexed = false;
  info.layer_tokens.reserve(layers_.size());
  info.layer_indexed_tokens.reserve(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = *layers_[l];
    absl::ReaderMutexLock lock(&layer.mu);
    info.layer_tokens.push_back(
        layer.num_tokens.load(std::memory_order_relaxed));
    info.layer_indexed_tokens.push_back(layer.indexed.num_tokens());
    indexed = indexed || !layer.indexed.empty();
    building = building || layer.build_pending;
    if (!layer.build_error.ok() && !layer.build_pending && !failed) {
      failed = true;
      info.index_error =
          absl::StrCat("layer ", l, ": ", layer.build_error.message());
    }
  }
  // Closed while it was read: as if looked up a moment later.
  if (closed_.load(std::memory_order_acquire)) {
    return SessionNotFoundError("session_id", id_);
  }
  info.num_tokens =
      *std::min_element(info.layer_tokens.begin(), info.layer_tokens.end());
  if (!unusable_.ok()) {
    failed = true;
    info.index_error = std::string(unusable_.message());
  }
  info.index_state = failed     ? IndexState::kFailed
                     : building ? IndexState::kBuilding
                     : indexed  ? IndexState::kReady
                                : IndexState::kEmpty;
  return info;
}

uint64_t Session::Close() {
  std::vector<uint32_t> all(layers_.size());
  std::iota(all.begin(), all.end(), 0u);
  LayerWriteLocks locks(*this, std::move(all));
  if (closed_.load(std::memory_order_acquire)) return 0;
  closed_.store(true, std::memory_order_release);
  uint64_t freed = 0;
  for (auto& layer : layers_) {
    layer->mu.AssertHeld();
    for (HeadStore& head : layer->heads) {
      freed += head.tokens.Clear() + head.clusters.Clear();
      // A running build may still hold the index; its bytes leave the
      // account now and the memory when the build lets go.
      if (head.index != nullptr) freed += head.index->memory_bytes();
      head.index.reset();
    }
    layer->indexed = TokenSpan{};
    layer->num_tokens.store(0, std::memory_order_release);
    layer->indexed_tokens.store(0, std::memory_order_release);
  }
  memory_bytes_.fetch_sub(freed, std::memory_order_acq_rel);
  return freed;
}

void Session::Touch(int64_t now_unix_ms) {
  int64_t seen = last_access_unix_ms_.load(std::memory_order_relaxed);
  while (seen < now_unix_ms && !last_access_unix_ms_.compare_exchange_weak(
                                   seen, now_unix_ms, std::memory_order_acq_rel,
                                   std::memory_order_relaxed)) {
  }
}

}  // namespace wavekv
