// Test helper: calls grpc.health.v1.Health/Check through gRPC's generic
// stub (Debian ships no health .proto for client stubs; the two messages
// are encoded by hand, each a single field).
//
// Thread-safe.
#ifndef WAVEKV_TRANSPORT_HEALTH_PROBE_H_
#define WAVEKV_TRANSPORT_HEALTH_PROBE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace wavekv {

// HealthCheckResponse.ServingStatus values.
enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2 };

// Checks `service` ("" = the whole server). The call's gRPC error (e.g.
// NOT_FOUND for an unknown service) as a status otherwise.
absl::StatusOr<HealthStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    absl::Duration timeout = absl::Seconds(5));

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_HEALTH_PROBE_H_
