// Test helpers: grpc.health.v1.Health/Check and server reflection's
// list_services through gRPC's generic stub (Debian ships no .proto files
// for either; the few fields used are encoded and decoded by hand).
//
// Thread-safe.
#ifndef WAVEKV_TRANSPORT_GRPC_PROBES_H_
#define WAVEKV_TRANSPORT_GRPC_PROBES_H_

#include <memory>
#include <string>
#include <vector>

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

// The services the server lists through grpc.reflection.v1alpha (one
// ServerReflectionInfo exchange with list_services), in its order.
absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel,
    absl::Duration timeout = absl::Seconds(5));

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_GRPC_PROBES_H_
