#include "transport/status.h"

#include <array>
#include <string>

#include "absl/strings/string_view.h"

namespace wavekv {
namespace {

constexpr int kMaxCode = 16;  // UNAUTHENTICATED, the last canonical code.

// Compile-time proof that the two enums share numbers, code by code.
#define WAVEKV_SAME_CODE_(absl_code, grpc_code)                  \
  static_assert(static_cast<int>(absl::StatusCode::absl_code) == \
                static_cast<int>(grpc::StatusCode::grpc_code))
WAVEKV_SAME_CODE_(kOk, OK);
WAVEKV_SAME_CODE_(kCancelled, CANCELLED);
WAVEKV_SAME_CODE_(kUnknown, UNKNOWN);
WAVEKV_SAME_CODE_(kInvalidArgument, INVALID_ARGUMENT);
WAVEKV_SAME_CODE_(kDeadlineExceeded, DEADLINE_EXCEEDED);
WAVEKV_SAME_CODE_(kNotFound, NOT_FOUND);
WAVEKV_SAME_CODE_(kAlreadyExists, ALREADY_EXISTS);
WAVEKV_SAME_CODE_(kPermissionDenied, PERMISSION_DENIED);
WAVEKV_SAME_CODE_(kResourceExhausted, RESOURCE_EXHAUSTED);
WAVEKV_SAME_CODE_(kFailedPrecondition, FAILED_PRECONDITION);
WAVEKV_SAME_CODE_(kAborted, ABORTED);
WAVEKV_SAME_CODE_(kOutOfRange, OUT_OF_RANGE);
WAVEKV_SAME_CODE_(kUnimplemented, UNIMPLEMENTED);
WAVEKV_SAME_CODE_(kInternal, INTERNAL);
WAVEKV_SAME_CODE_(kUnavailable, UNAVAILABLE);
WAVEKV_SAME_CODE_(kDataLoss, DATA_LOSS);
WAVEKV_SAME_CODE_(kUnauthenticated, UNAUTHENTICATED);
#undef WAVEKV_SAME_CODE_

bool IsCanonical(int code) { return code >= 0 && code <= kMaxCode; }

// `message`, or its first bytes (whole UTF-8 characters) and a note of the
// full length, so that the result is at most kMaxWireMessageBytes.
std::string WireMessage(absl::string_view message) {
  if (message.size() <= kMaxWireMessageBytes) return std::string(message);
  const std::string note = "... (" + std::to_string(message.size()) + " bytes)";
  size_t cut = kMaxWireMessageBytes - note.size();
  // Back up over continuation bytes (10xxxxxx) to a character start.
  while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  return std::string(message.substr(0, cut)) + note;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  return grpc::Status(static_cast<grpc::StatusCode>(
                          IsCanonical(code) ? code : grpc::StatusCode::UNKNOWN),
                      WireMessage(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  return absl::Status(IsCanonical(code) ? static_cast<absl::StatusCode>(code)
                                        : absl::StatusCode::kUnknown,
                      status.error_message());
}

std::string_view StatusCodeName(absl::StatusCode code) {
  static constexpr std::array<std::string_view, kMaxCode + 1> kNames = {
      "OK",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED",
  };
  const int n = static_cast<int>(code);
  return IsCanonical(n) ? kNames[n] : "UNKNOWN";
}

}  // namespace wavekv
