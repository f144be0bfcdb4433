#include "transport/convert.h"

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace wavekv {
namespace {

// Tensor bytes on the wire are little-endian; this code reinterprets them.
static_assert(std::endian::native == std::endian::little,
              "wavekv's wire format assumes a little-endian host");

absl::Status EnumError(absl::string_view field, absl::string_view allowed,
                       const std::string& name, int value) {
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": unknown value ", value, " (expected ", allowed, ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": must be ", allowed, ", got ", name, " (", value, ")"));
}

absl::Span<const uint8_t> BytesSpan(const std::string& bytes) {
  return absl::Span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

v1::IndexState IndexStateToProto(IndexState state) {
  switch (state) {
    case IndexState::kEmpty:
      return v1::INDEX_STATE_EMPTY;
    case IndexState::kBuilding:
      return v1::INDEX_STATE_BUILDING;
    case IndexState::kReady:
      return v1::INDEX_STATE_READY;
    case IndexState::kFailed:
      return v1::INDEX_STATE_FAILED;
  }
  return v1::INDEX_STATE_UNSPECIFIED;
}

v1::RetrieveMode RetrieveModeToProto(RetrieveMode mode) {
  switch (mode) {
    case RetrieveMode::kExact:
      return v1::RETRIEVE_MODE_EXACT;
    case RetrieveMode::kWave:
      return v1::RETRIEVE_MODE_WAVE;
  }
  return v1::RETRIEVE_MODE_UNSPECIFIED;
}

std::string FloatBytes(const std::vector<float>& values) {
  std::string out(values.size() * sizeof(float), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

}  // namespace

absl::StatusOr<DType> DTypeFromProto(v1::DType dtype, absl::string_view field) {
  switch (dtype) {
    case v1::DTYPE_FP16:
      return DType::kFp16;
    case v1::DTYPE_BF16:
      return DType::kBf16;
    case v1::DTYPE_FP32:
      return DType::kFp32;
    default:
      return EnumError(field, "DTYPE_FP16, DTYPE_BF16 or DTYPE_FP32",
                       v1::DType_Name(dtype), static_cast<int>(dtype));
  }
}

v1::DType DTypeToProto(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
      return v1::DTYPE_FP16;
    case DType::kBf16:
      return v1::DTYPE_BF16;
    case DType::kFp32:
      return v1::DTYPE_FP32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<std::optional<Durability>> DurabilityFromProto(
    v1::Durability durability, absl::string_view field) {
  switch (durability) {
    case v1::DURABILITY_UNSPECIFIED:
      return std::optional<Durability>();
    case v1::DURABILITY_NONE:
      return std::optional<Durability>(Durability::kNone);
    case v1::DURABILITY_ASYNC:
      return std::optional<Durability>(Durability::kAsync);
    case v1::DURABILITY_SYNC:
      return std::optional<Durability>(Durability::kSync);
    default:
      return EnumError(
          field,
          "DURABILITY_UNSPECIFIED, DURABILITY_NONE, DURABILITY_ASYNC or "
          "DURABILITY_SYNC",
          v1::Durability_Name(durability), static_cast<int>(durability));
  }
}

v1::Durability DurabilityToProto(Durability durability) {
  switch (durability) {
    case Durability::kNone:
      return v1::DURABILITY_NONE;
    case Durability::kAsync:
      return v1::DURABILITY_ASYNC;
    case Durability::kSync:
      return v1::DURABILITY_SYNC;
  }
  return v1::DURABILITY_UNSPECIFIED;
}

absl::StatusOr<RetrieveMode> RetrieveModeFromProto(v1::RetrieveMode mode) {
  switch (mode) {
    case v1::RETRIEVE_MODE_EXACT:
      return RetrieveMode::kExact;
    case v1::RETRIEVE_MODE_WAVE:
      return RetrieveMode::kWave;
    default:
      return EnumError("mode", "RETRIEVE_MODE_EXACT or RETRIEVE_MODE_WAVE",
                       v1::RetrieveMode_Name(mode), static_cast<int>(mode));
  }
}

absl::StatusOr<ModelShape> ModelShapeFromProto(const v1::ModelShape& shape) {
  ModelShape out;
  out.num_layers = shape.num_layers();
  out.num_q_heads = shape.num_q_heads();
  out.num_kv_heads = shape.num_kv_heads();
  out.head_dim = shape.head_dim();
  absl::StatusOr<DType> dtype = DTypeFromProto(shape.dtype(), "shape.dtype");
  if (!dtype.ok()) return dtype.status();
  out.dtype = *dtype;
  return out;
}

void ModelShapeToProto(const ModelShape& shape, v1::ModelShape* out) {
  out->set_num_layers(shape.num_layers);
  out->set_num_q_heads(shape.num_q_heads);
  out->set_num_kv_heads(shape.num_kv_heads);
  out->set_head_dim(shape.head_dim);
  out->set_dtype(DTypeToProto(shape.dtype));
}

IndexOptions IndexOptionsFromProto(const v1::IndexOptions& options) {
  IndexOptions out;  // defaults for every unset field
  if (options.has_sink_tokens()) out.sink_tokens = options.sink_tokens();
  if (options.has_recent_tokens()) out.recent_tokens = options.recent_tokens();
  if (options.has_segment_tokens()) {
    out.segment_tokens = options.segment_tokens();
  }
  if (options.has_cluster_size()) out.cluster_size = options.cluster_size();
  if (options.has_kmeans_iterations()) {
    out.kmeans_iterations = options.kmeans_iterations();
  }
  if (options.has_update_tokens()) out.update_tokens = options.update_tokens();
  if (options.has_retrieval_fraction()) {
    out.retrieval_fraction = options.retrieval_fraction();
  }
  if (options.has_estimation_fraction()) {
    out.estimation_fraction = options.estimation_fraction();
  }
  return out;
}

void IndexOptionsToProto(const IndexOptions& options, v1::IndexOptions* out) {
  out->set_sink_tokens(options.sink_tokens);
  out->set_recent_tokens(options.recent_tokens);
  out->set_segment_tokens(options.segment_tokens);
  out->set_cluster_size(options.cluster_size);
  out->set_kmeans_iterations(options.kmeans_iterations);
  out->set_update_tokens(options.update_tokens);
  out->set_retrieval_fraction(options.retrieval_fraction);
  out->set_estimation_fraction(options.estimation_fraction);
}

absl::StatusOr<SessionOptions> SessionOptionsFromProto(
    const v1::CreateSessionRequest& request) {
  if (!request.has_shape()) {
    return absl::InvalidArgumentError("shape: required");
  }
  SessionOptions out;
  absl::StatusOr<ModelShape> shape = ModelShapeFromProto(request.shape());
  if (!shape.ok()) return shape.status();
  out.shape = *shape;
  out.index = IndexOptionsFromProto(request.index_options());
  absl::StatusOr<std::optional<Durability>> durability =
      DurabilityFromProto(request.durability(), "durability");
  if (!durability.ok()) return durability.status();
  out.durability = durability->value_or(Durability::kNone);
  out.max_tokens = request.max_tokens();
  out.label = request.label();
  return out;
}

void SessionInfoToProto(const SessionInfo& info, v1::SessionInfo* out) {
  out->set_session_id(info.session_id);
  ModelShapeToProto(info.shape, out->mutable_shape());
  IndexOptionsToProto(info.index, out->mutable_index_options());
  out->set_durability(DurabilityToProto(info.durability));
  out->set_max_tokens(info.max_tokens);
  out->set_label(info.label);
  out->mutable_layer_tokens()->Assign(info.layer_tokens.begin(),
                                      info.layer_tokens.end());
  out->set_num_tokens(info.num_tokens);
  out->set_durable_tokens(info.durable_tokens);
  out->set_memory_bytes(info.memory_bytes);
  out->set_created_unix_ms(info.created_unix_ms);
  out->set_last_access_unix_ms(info.last_access_unix_ms);
  out->mutable_layer_indexed_tokens()->Assign(info.layer_indexed_tokens.begin(),
                                              info.layer_indexed_tokens.end());
  out->set_index_state(IndexStateToProto(info.index_state));
  out->set_index_error(info.index_error);
}

void SessionPageToProto(const SessionPage& page,
                        v1::ListSessionsResponse* out) {
  out->mutable_sessions()->Reserve(static_cast<int>(page.sessions.size()));
  for (const SessionInfo& info : page.sessions) {
    SessionInfoToProto(info, out->add_sessions());
  }
  out->set_next_page_token(page.next_page_token);
}

std::vector<LayerAppend> LayerAppendsFromProto(
    const v1::AppendRequest& request) {
  std::vector<LayerAppend> out;
  out.reserve(request.layers_size());
  for (const v1::LayerKV& layer : request.layers()) {
    LayerAppend append;
    append.layer = layer.layer();
    append.start_token = layer.start_token();
    append.num_tokens = layer.num_tokens();
    append.keys = BytesSpan(layer.keys());
    append.values = BytesSpan(layer.values());
    out.push_back(append);
  }
  return out;
}

void AppendResultToProto(const AppendResult& result, v1::AppendResponse* out) {
  out->mutable_layer_tokens()->Assign(result.layer_tokens.begin(),
                                      result.layer_tokens.end());
  out->set_num_tokens(result.num_tokens);
  out->set_durable_tokens(result.durable_tokens);
}

absl::Span<const float> Fp32SpanFromBytes(
    absl::string_view bytes, std::vector<std::unique_ptr<float[]>>* copies) {
  const size_t n = bytes.size() / sizeof(float);
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(float) == 0) {
    return absl::Span<const float>(reinterpret_cast<const float*>(bytes.data()),
                                   n);
  }
  auto copy = std::make_unique<float[]>(n);
  std::memcpy(copy.get(), bytes.data(), n * sizeof(float));
  const float* data = copy.get();
  copies->push_back(std::move(copy));
  return absl::Span<const float>(data, n);
}

absl::StatusOr<RetrieveBatch> RetrieveBatchFromProto(
    const v1::RetrieveRequest& request) {
  RetrieveBatch batch;
  absl::StatusOr<RetrieveMode> mode = RetrieveModeFromProto(request.mode());
  if (!mode.ok()) return mode.status();
  batch.options.layer = request.layer();
  batch.options.mode = *mode;
  batch.options.include_kv = request.include_kv();
  batch.options.exact_if_not_ready = request.exact_if_not_ready();
  batch.queries.reserve(request.queries_size());
  for (int i = 0; i < request.queries_size(); ++i) {
    const v1::SessionQuery& q = request.queries(i);
    const std::string& bytes = q.query();
    if (bytes.size() % sizeof(float) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "queries[", i, "].query: expected a multiple of 4 bytes (fp32), got ",
          bytes.size()));
    }
    batch.queries.push_back(RetrieveQuery{
        q.session_id(), Fp32SpanFromBytes(bytes, &batch.aligned_copies)});
  }
  return batch;
}

void SessionResultToProto(SessionResult&& result, v1::SessionResult* out) {
  out->set_session_id(std::move(result.session_id));
  out->set_num_tokens(result.num_tokens);
  out->set_indexed_tokens(result.indexed_tokens);
  for (const TokenRange& range : result.steady) {
    v1::TokenRange* r = out->add_steady();
    r->set_begin(range.begin);
    r->set_end(range.end);
  }
  out->set_layout_epoch(result.layout_epoch);
  out->mutable_heads()->Reserve(static_cast<int>(result.heads.size()));
  for (KvHeadResult& head : result.heads) {
    v1::KvHeadResult* h = out->add_heads();
    h->set_kv_head(head.kv_head);
    h->mutable_retrieval()->Reserve(static_cast<int>(head.retrieval.size()));
    for (const SlotRange& range : head.retrieval) {
      v1::SlotRange* r = h->add_retrieval();
      r->set_cluster_id(range.cluster_id);
      r->set_first_slot(range.first_slot);
      r->set_num_slots(range.num_slots);
    }
    for (const TailStats& tail : head.tail) {
      v1::TailStats* t = h->add_tail();
      t->set_max_logit(tail.max_logit);
      t->set_denominator(tail.denominator);
      t->set_numerator(FloatBytes(tail.numerator));
    }
    h->set_keys(std::move(head.keys));
    h->set_values(std::move(head.values));
  }
  out->set_mode(RetrieveModeToProto(result.mode));
}

FetchRequest FetchRequestFromProto(const v1::FetchClustersRequest& request) {
  FetchRequest out;
  out.session_id = request.session_id();
  out.layer = request.layer();
  out.layout_epoch = request.layout_epoch();
  out.max_chunk_bytes = request.max_chunk_bytes();
  out.heads.reserve(request.heads_size());
  for (const v1::HeadSlots& head : request.heads()) {
    HeadSlots h;
    h.kv_head = head.kv_head();
    h.ranges.reserve(head.ranges_size());
    for (const v1::SlotRange& range : head.ranges()) {
      h.ranges.push_back(
          SlotRange{range.cluster_id(), range.first_slot(), range.num_slots()});
    }
    out.heads.push_back(std::move(h));
  }
  return out;
}

void SlotChunkToProto(SlotChunk&& chunk, v1::ClusterChunk* out) {
  out->set_kv_head(chunk.kv_head);
  out->set_cluster_id(chunk.cluster_id);
  out->set_first_slot(chunk.first_slot);
  out->set_num_slots(chunk.num_slots);
  out->set_keys(std::move(chunk.keys));
  out->set_values(std::move(chunk.values));
  out->mutable_positions()->Assign(chunk.positions.begin(),
                                   chunk.positions.end());
}

}  // namespace wavekv
