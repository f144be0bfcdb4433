// Conversion between absl::Status and grpc::Status.
//
// The canonical codes of Abseil and gRPC share their numbers (OK = 0 ...
// UNAUTHENTICATED = 16), so the mapping is one-to-one and the message is
// carried unchanged. A code outside that range (which neither library
// produces) maps to UNKNOWN with the message kept.
//
// Used by the server (engine results -> wire) and by the client (wire ->
// absl::Status for callers).
//
// Thread-safe: pure functions.
#ifndef WAVEKV_TRANSPORT_STATUS_H_
#define WAVEKV_TRANSPORT_STATUS_H_

#include <string_view>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace wavekv {

// absl::Status -> grpc::Status with the same code number and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// grpc::Status -> absl::Status with the same code number and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// "INVALID_ARGUMENT" etc.; the gRPC spelling of a canonical code, used as a
// metric label. Codes outside 0..16 give "UNKNOWN".
std::string_view StatusCodeName(absl::StatusCode code);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_STATUS_H_
