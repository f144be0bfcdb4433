#include "kvstore/storage/record.h"

#include <string>

#include "gtest/gtest.h"
#include "kvstore/storage/crc32c.h"

namespace wavekv {
namespace {

TEST(Crc32cTest, KnownValuesAndContinuation) {
  // RFC 3720 B.4 test vectors.
  EXPECT_EQ(Crc32c(0, std::string(32, '\0')), 0x8a9136aau);
  EXPECT_EQ(Crc32c(0, std::string(32, '\xff')), 0x62a8ab43u);
  EXPECT_EQ(Crc32c(0, "123456789"), 0xe3069283u);
  EXPECT_EQ(Crc32c(Crc32c(0, "1234"), "56789"), 0xe3069283u);
}

TEST(RecordTest, RoundTripsEveryKind) {
  for (RecordKind kind : {RecordKind::kSessionMeta, RecordKind::kKvChunk,
                          RecordKind::kLayerIndex, RecordKind::kNamedValue}) {
    const std::string payload =
        "payload of kind " + RecordKindName(static_cast<uint8_t>(kind));
    const std::string bytes = EncodeRecord(kind, payload);
    ASSERT_EQ(bytes.size(), kRecordHeaderBytes + payload.size());
    absl::StatusOr<Record> r = DecodeRecord(bytes);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->kind, kind);
    EXPECT_EQ(r->payload, payload);
  }
  absl::StatusOr<Record> empty =
      DecodeRecord(EncodeRecord(RecordKind::kNamedValue, ""));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->payload.empty());
}

TEST(RecordTest, EveryFlippedBitIsDataLoss) {
  const std::string good = EncodeRecord(RecordKind::kKvChunk, "0123456789ab");
  for (size_t byte = 0; byte < good.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = good;
      bad[byte] ^= static_cast<char>(1 << bit);
      absl::StatusOr<Record> r = DecodeRecord(bad);
      ASSERT_FALSE(r.ok()) << "byte " << byte << " bit " << bit;
      EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    }
  }
}

TEST(RecordTest, TruncationAndTrailingBytesAreDataLoss) {
  const std::string good = EncodeRecord(RecordKind::kLayerIndex, "abcdef");
  for (size_t n = 0; n < good.size(); ++n) {
    absl::StatusOr<Record> r = DecodeRecord(good.substr(0, n));
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  }
  absl::StatusOr<Record> longer = DecodeRecord(good + "x");
  ASSERT_FALSE(longer.ok());
  EXPECT_NE(longer.status().message().find("payload length"),
            std::string::npos);
}

TEST(RecordTest, MessagesNameTheProblemAndTheKind) {
  std::string bad = EncodeRecord(RecordKind::kKvChunk, "0123456789");
  bad.back() ^= 1;
  absl::StatusOr<Record> r = DecodeRecord(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "record: checksum mismatch (kind kv_chunk, 10 payload bytes)");
  absl::StatusOr<Record> where =
      DecodeRecordOf(bad, RecordKind::kKvChunk, "session S: layer 2 chunk 0");
  ASSERT_FALSE(where.ok());
  EXPECT_EQ(where.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(where.status().message(),
            "session S: layer 2 chunk 0: checksum mismatch (kind kv_chunk, 10 "
            "payload bytes)");
  absl::StatusOr<Record> wrong_kind = DecodeRecordOf(
      EncodeRecord(RecordKind::kSessionMeta, "x"), RecordKind::kKvChunk, "k");
  ASSERT_FALSE(wrong_kind.ok());
  EXPECT_EQ(wrong_kind.status().message(),
            "k: record of kind session_meta where kv_chunk was expected");
}

TEST(RecordTest, GarbageNeverDecodes) {
  // Deterministic pseudo-random inputs of every small length.
  uint32_t x = 12345;
  for (size_t n = 0; n < 300; ++n) {
    std::string s(n, '\0');
    for (char& c : s) {
      x = x * 1664525u + 1013904223u;
      c = static_cast<char>(x >> 24);
    }
    EXPECT_FALSE(DecodeRecord(s).ok()) << n;
  }
}

}  // namespace
}  // namespace wavekv
