#include "transport/status.h"

#include <string>

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
      FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(20), "x"));
  EXPECT_EQ(back.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(back.message(), "x");
}

TEST(StatusTest, LongMessagesAreCutAtACharacterBoundary) {
  // A message quoting a 1 MiB session id, and one of 3-byte characters.
  for (const std::string& quoted : {std::string(1 << 20, 'z'), [] {
                                      std::string s;
                                      for (int i = 0; i < 2000; ++i)
                                        s += "\xe2\x82\xac";  // U+20AC
                                      return s;
                                    }()}) {
    const std::string message = "session_id: session \"" + quoted + "\"";
    const grpc::Status wire = ToGrpcStatus(absl::NotFoundError(message));
    EXPECT_EQ(wire.error_code(), grpc::StatusCode::NOT_FOUND);
    const std::string& got = wire.error_message();
    EXPECT_LE(got.size(), kMaxWireMessageBytes);
    EXPECT_EQ(got.rfind("session_id: session \"", 0), 0u) << got.substr(0, 40);
    const std::string note =
        "... (" + std::to_string(message.size()) + " bytes)";
    ASSERT_GT(got.size(), note.size());
    EXPECT_EQ(got.substr(got.size() - note.size()), note);
    // The cut keeps whole characters: the kept prefix of the message is
    // followed in the original by a character start.
    const size_t kept = got.size() - note.size();
    EXPECT_EQ(got.substr(0, kept), message.substr(0, kept));
    EXPECT_NE(static_cast<unsigned char>(message[kept]) & 0xC0, 0x80);
  }
  // At the limit nothing is cut.
  const std::string exact(kMaxWireMessageBytes, 'x');
  EXPECT_EQ(ToGrpcStatus(absl::InternalError(exact)).error_message(), exact);
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
