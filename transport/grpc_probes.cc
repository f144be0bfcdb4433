#include "transport/grpc_probes.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "transport/status.h"

namespace wavekv {
namespace {

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}

// Waits for `tag` on `cq`; false if the operation failed.
bool Await(grpc::CompletionQueue& cq, intptr_t tag) {
  void* got = nullptr;
  bool ok = false;
  return cq.Next(&got, &ok) && ok && reinterpret_cast<intptr_t>(got) == tag;
}

}  // namespace

absl::StatusOr<HealthStatus> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    absl::Duration timeout) {
  if (service.size() > 127) {
    return absl::InvalidArgumentError("service: name too long for the probe");
  }
  // HealthCheckRequest{string service = 1}.
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes.push_back(0x0a);
    request_bytes.push_back(static_cast<char>(service.size()));
    request_bytes += service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   absl::ToChronoMilliseconds(timeout));
  grpc::CompletionQueue cq;
  auto call =
      stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok) || !ok) {
    return absl::InternalError("health probe: completion queue failed");
  }
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) {
    return absl::InternalError("health probe: cannot read the response");
  }
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse{ServingStatus status = 1}; absent = UNKNOWN.
  if (bytes.empty()) return HealthStatus::kUnknown;
  if (bytes.size() == 2 && bytes[0] == 0x08 && bytes[1] >= 0 && bytes[1] <= 2) {
    return static_cast<HealthStatus>(bytes[1]);
  }
  return absl::InternalError(absl::StrCat(
      "health probe: unexpected response of ", bytes.size(), " bytes"));
}

absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout) {
  // ServerReflectionRequest{string list_services = 7} with "".
  const std::string request_bytes("\x3a\x00", 2);
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   absl::ToChronoMilliseconds(timeout));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(
      &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  grpc::ByteBuffer response;
  const bool exchanged =
      Await(cq, 1) &&
      (call->Write(ToByteBuffer(request_bytes), reinterpret_cast<void*>(2)),
       Await(cq, 2)) &&
      (call->WritesDone(reinterpret_cast<void*>(3)), Await(cq, 3)) &&
      (call->Read(&response, reinterpret_cast<void*>(4)), Await(cq, 4));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok) && reinterpret_cast<intptr_t>(tag) != 5) {
  }
  if (!status.ok()) return FromGrpcStatus(status);
  if (!exchanged) return absl::InternalError("reflection probe: no response");
  // ServerReflectionResponse{ListServiceResponse list_services_response = 6}
  // ListServiceResponse{repeated ServiceResponse service = 1}
  // ServiceResponse{string name = 1}
  google::protobuf::UnknownFieldSet top;
  if (!top.ParseFromString(FromByteBuffer(response))) {
    return absl::InternalError("reflection probe: unparsable response");
  }
  std::vector<std::string> names;
  for (int i = 0; i < top.field_count(); ++i) {
    if (top.field(i).number() != 6) continue;
    google::protobuf::UnknownFieldSet list;
    list.ParseFromString(top.field(i).length_delimited());
    for (int j = 0; j < list.field_count(); ++j) {
      google::protobuf::UnknownFieldSet service;
      service.ParseFromString(list.field(j).length_delimited());
      for (int k = 0; k < service.field_count(); ++k) {
        if (service.field(k).number() == 1) {
          names.push_back(service.field(k).length_delimited());
        }
      }
    }
  }
  return names;
}

}  // namespace wavekv
