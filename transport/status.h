// Conversion between absl::Status and grpc::Status.
//
// The canonical codes of Abseil and gRPC share their numbers (OK = 0 ...
// UNAUTHENTICATED = 16), so the mapping is one-to-one and the message is
// carried unchanged up to kMaxWireMessageBytes. A code outside that range
// (which neither library produces) maps to UNKNOWN with the message kept.
//
// Used by the server (engine results -> wire) and by the client (wire ->
// absl::Status for callers).
//
// Thread-safe: pure functions.
#ifndef WAVEKV_TRANSPORT_STATUS_H_
#define WAVEKV_TRANSPORT_STATUS_H_

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace wavekv {

// Longest error message sent on the wire, in bytes. Messages may quote
// client input (e.g. an unknown session_id); gRPC carries the message in a
// header whose size the client limits (8 KiB by default), and a longer one
// would reach the client as RESOURCE_EXHAUSTED "received initial metadata
// size exceeds limit" instead of the real error.
inline constexpr size_t kMaxWireMessageBytes = 2048;

// absl::Status -> grpc::Status with the same code number and message. A
// message longer than kMaxWireMessageBytes is cut (at a UTF-8 character
// boundary) and ends with "... (N bytes)".
grpc::Status ToGrpcStatus(const absl::Status& status);

// grpc::Status -> absl::Status with the same code number and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// "INVALID_ARGUMENT" etc.; the gRPC spelling of a canonical code, used as a
// metric label. Codes outside 0..16 give "UNKNOWN".
std::string_view StatusCodeName(absl::StatusCode code);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_STATUS_H_
