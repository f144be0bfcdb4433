// Conversions between wavekv.v1 messages and the engine's plain C++ types
// (kvstore/types.h). Only representation is checked here (enum values,
// required messages, byte lengths that must be whole fp32 values); ranges
// and shapes are validated by the engine, which knows the session.
//
// Errors are InvalidArgument naming the proto field, e.g.
// "shape.dtype: must be DTYPE_FP16, DTYPE_BF16 or DTYPE_FP32, got
// DTYPE_UNSPECIFIED (0)" or "queries[1].query: expected a multiple of 4
// bytes (fp32), got 10".
//
// Zero-copy: LayerAppend spans and (when aligned) RetrieveQuery spans point
// into the request message, which must outlive them. Result conversions
// take the engine's results by rvalue and move their byte strings into the
// messages.
//
// Thread-safe: pure functions.
#ifndef WAVEKV_TRANSPORT_CONVERT_H_
#define WAVEKV_TRANSPORT_CONVERT_H_

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvstore/types.h"
#include "proto/wavekv/v1/wavekv.pb.h"

namespace wavekv {

// --- Enums -----------------------------------------------------------------

// DTYPE_UNSPECIFIED and unknown values are InvalidArgument naming `field`.
absl::StatusOr<DType> DTypeFromProto(v1::DType dtype, absl::string_view field);
v1::DType DTypeToProto(DType dtype);

// DURABILITY_UNSPECIFIED -> nullopt (caller picks the default); unknown
// values are InvalidArgument naming `field`.
absl::StatusOr<std::optional<Durability>> DurabilityFromProto(
    v1::Durability durability, absl::string_view field);
v1::Durability DurabilityToProto(Durability durability);

// RETRIEVE_MODE_UNSPECIFIED and unknown values are InvalidArgument "mode: ...".
absl::StatusOr<RetrieveMode> RetrieveModeFromProto(v1::RetrieveMode mode);

// --- Sessions --------------------------------------------------------------

absl::StatusOr<ModelShape> ModelShapeFromProto(const v1::ModelShape& shape);
void ModelShapeToProto(const ModelShape& shape, v1::ModelShape* out);

// Unset optional fields take IndexOptions' defaults; set ones are copied
// as given (the engine validates, never clamps).
IndexOptions IndexOptionsFromProto(const v1::IndexOptions& options);
// Sets every field (defaults resolved).
void IndexOptionsToProto(const IndexOptions& options, v1::IndexOptions* out);

// "shape: required" if absent; durability UNSPECIFIED -> NONE.
absl::StatusOr<SessionOptions> SessionOptionsFromProto(
    const v1::CreateSessionRequest& request);
// The tenant is not part of the wire message.
void SessionInfoToProto(const SessionInfo& info, v1::SessionInfo* out);
void SessionPageToProto(const SessionPage& page, v1::ListSessionsResponse* out);

// --- Append ----------------------------------------------------------------

// One LayerAppend per `layers` entry, spans pointing into `request`.
std::vector<LayerAppend> LayerAppendsFromProto(
    const v1::AppendRequest& request);
void AppendResultToProto(const AppendResult& result, v1::AppendResponse* out);

// --- Retrieve --------------------------------------------------------------

// A Retrieve request in engine form. Query spans point into the request's
// bytes when those are 4-byte aligned, otherwise into `aligned_copies`.
// Move-only: the spans stay valid when the batch is moved.
struct RetrieveBatch {
  RetrieveOptions options;
  std::vector<RetrieveQuery> queries;
  std::vector<std::unique_ptr<float[]>> aligned_copies;
};

// Views little-endian fp32 `bytes` as floats: in place when 4-byte
// aligned, otherwise through a copy appended to `copies`.
// REQUIRES: bytes.size() % 4 == 0.
absl::Span<const float> Fp32SpanFromBytes(
    absl::string_view bytes, std::vector<std::unique_ptr<float[]>>* copies);

// Fails with "mode: ..." or "queries[i].query: ..." (length not a multiple
// of 4 bytes).
absl::StatusOr<RetrieveBatch> RetrieveBatchFromProto(
    const v1::RetrieveRequest& request);
void SessionResultToProto(SessionResult&& result, v1::SessionResult* out);

// --- FetchClusters ---------------------------------------------------------

FetchRequest FetchRequestFromProto(const v1::FetchClustersRequest& request);
void SlotChunkToProto(SlotChunk&& chunk, v1::ClusterChunk* out);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_CONVERT_H_
