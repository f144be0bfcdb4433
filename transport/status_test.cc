#include "transport/status.h"

#include "gtest/gtest.h"

namespace wavekv {
namespace {

TEST(StatusTest, OkRoundTrips) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(StatusTest, EveryCanonicalCodeMapsToTheSameNumberWithItsMessage) {
  for (int code = 1; code <= 16; ++code) {
    const absl::Status in(static_cast<absl::StatusCode>(code),
                          "layers[2].keys: expected 4096 bytes, got 10");
    const grpc::Status wire = ToGrpcStatus(in);
    EXPECT_EQ(static_cast<int>(wire.error_code()), code);
    EXPECT_EQ(wire.error_message(), in.message());
    const absl::Status back = FromGrpcStatus(wire);
    EXPECT_EQ(back, in) << code;
  }
}

TEST(StatusTest, NonCanonicalCodeBecomesUnknownKeepingMessage) {
  const absl::Status in(static_cast<absl::StatusCode>(42), "odd");
  const grpc::Status wire = ToGrpcStatus(in);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(wire.error_message(), "odd");
  const absl::Status back =
      FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(99), "x"));
  EXPECT_EQ(back.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(back.message(), "x");
}

TEST(StatusTest, CodeNamesUseTheGrpcSpelling) {
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kOk), "OK");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kInvalidArgument),
            "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kUnauthenticated),
            "UNAUTHENTICATED");
  EXPECT_EQ(StatusCodeName(static_cast<absl::StatusCode>(17)), "UNKNOWN");
}

}  // namespace
}  // namespace wavekv
