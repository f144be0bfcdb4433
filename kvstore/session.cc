#include "kvstore/session.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "index/dtype.h"

namespace wavekv {

absl::Status SessionNotFoundError(absl::string_view field,
                                  absl::string_view session_id) {
  return absl::NotFoundError(
      absl::StrCat(field, ": session \"", session_id, "\" not found"));
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
                      ChunkGeometry geometry) {
  heads.reserve(num_kv_heads);
  for (size_t h = 0; h < num_kv_heads; ++h) {
    heads.emplace_back(row_bytes, geometry);
  }
}

Session::Session(std::string id, TenantId tenant, const SessionOptions& options,
                 uint64_t max_tokens, int64_t now_unix_ms,
                 ChunkGeometry geometry)
    : id_(std::move(id)),
      tenant_(std::move(tenant)),
      options_(options),
      max_tokens_(max_tokens),
      created_unix_ms_(now_unix_ms),
      last_access_unix_ms_(now_unix_ms) {
  const size_t row_bytes =
      size_t{options_.shape.head_dim} * DTypeBytes(options_.shape.dtype);
  layers_.reserve(options_.shape.num_layers);
  for (uint32_t l = 0; l < options_.shape.num_layers; ++l) {
    layers_.push_back(std::make_unique<Layer>(options_.shape.num_kv_heads,
                                              row_bytes, geometry));
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

absl::StatusOr<AppendResult> Session::Append(
    absl::Span<const LayerAppend> layers, MemoryBudget& budget) {
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
    for (const SlotStore& store : layer.heads) {
      growth_bytes += store.GrowthBytes(length + la.num_tokens);
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
    for (SlotStore& store : layer.heads) {
      if (absl::Status s = store.Reserve(target); !s.ok()) {
        for (size_t j = 0; j <= i; ++j) {
          Layer& undo = *layers_[layers[j].layer];
          undo.mu.AssertHeld();
          for (SlotStore& st : undo.heads) st.ReleaseUnused();
        }
        budget.Release(growth_bytes);
        return s;
      }
    }
  }

  const size_t row_bytes = size_t{shape.head_dim} * DTypeBytes(shape.dtype);
  const size_t stride = size_t{shape.num_kv_heads} * row_bytes;
  for (const LayerAppend& la : layers) {
    Layer& layer = *layers_[la.layer];
    layer.mu.AssertHeld();
    for (size_t h = 0; h < layer.heads.size(); ++h) {
      layer.heads[h].Append(la.keys.data() + h * row_bytes,
                            la.values.data() + h * row_bytes, stride,
                            la.num_tokens, la.start_token);
    }
    layer.num_tokens.store(la.start_token + la.num_tokens,
                           std::memory_order_release);
  }
  memory_bytes_.fetch_add(growth_bytes, std::memory_order_acq_rel);

  AppendResult result;
  result.layer_tokens = LayerTokens();
  result.num_tokens =
      *std::min_element(result.layer_tokens.begin(), result.layer_tokens.end());
  result.durable_tokens = 0;  // DURABILITY_NONE only (see engine.cc)
  return result;
}

absl::Status Session::ReadLayer(
    uint32_t layer_index, absl::string_view id_field,
    absl::FunctionRef<void(const LayerView&)> fn) const {
  ABSL_RAW_CHECK(layer_index < layers_.size(), "ReadLayer: layer out of range");
  const Layer& layer = *layers_[layer_index];
  absl::ReaderMutexLock lock(&layer.mu);
  if (closed_.load(std::memory_order_acquire)) {
    return SessionNotFoundError(id_field, id_);
  }
  LayerView view;
  view.num_tokens = layer.num_tokens.load(std::memory_order_relaxed);
  view.layout_epoch = layer.layout_epoch;
  view.heads = absl::MakeConstSpan(layer.heads);
  fn(view);
  return absl::OkStatus();
}

std::vector<uint64_t> Session::LayerTokens() const {
  std::vector<uint64_t> tokens;
  tokens.reserve(layers_.size());
  for (const auto& layer : layers_) {
    tokens.push_back(layer->num_tokens.load(std::memory_order_acquire));
  }
  return tokens;
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
  info.layer_tokens = LayerTokens();
  info.num_tokens =
      *std::min_element(info.layer_tokens.begin(), info.layer_tokens.end());
  info.durable_tokens = 0;  // DURABILITY_NONE only (see engine.cc)
  info.memory_bytes = memory_bytes();
  info.created_unix_ms = created_unix_ms_;
  info.last_access_unix_ms =
      last_access_unix_ms_.load(std::memory_order_acquire);
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
    for (SlotStore& store : layer->heads) freed += store.Clear();
    layer->num_tokens.store(0, std::memory_order_release);
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
