// Fuzz target: arbitrary bytes as a persisted wave index
// (index/wave_index_codec.h). Checks, besides "never crash, leak or hang":
//  - every rejection is DATA_LOSS with a message;
//  - an accepted encoding re-encodes to the same bytes, so nothing is
//    silently dropped or reinterpreted. Two exceptions, both harmless: the
//    decoder does not check the u16 reserved field, and an index without
//    slots whose [begin_token, end_token) is empty but not [0, 0) comes back
//    as [0, 0) (WaveIndex keeps both 0 while empty);
//  - an accepted index is usable: ranking a query over it (PlanRetrieval)
//    succeeds and selects only non-empty clusters that exist.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "index/retrieval.h"
#include "index/wave_index_codec.h"

namespace {

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "wave_index_codec_fuzzer: %s\n", what);
  std::abort();
}

// Byte offset and length of the header's reserved field.
constexpr size_t kReservedOffset = 8;
constexpr size_t kReservedBytes = 2;
// begin_token and end_token (u64 each).
constexpr size_t kTokenRangeOffset = 14;
constexpr size_t kTokenRangeBytes = 16;
// Ranking cost grows with clusters x head_dim; larger accepted indexes are
// only round-tripped.
constexpr size_t kMaxRankedFloats = size_t{1} << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace wavekv;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<WaveIndex> index = DecodeWaveIndex(bytes);
  if (!index.ok()) {
    if (index.status().code() != absl::StatusCode::kDataLoss) {
      Fail("rejection is not DATA_LOSS");
    }
    if (index.status().message().empty()) Fail("rejection without a message");
    return 0;
  }
  std::string again = EncodeWaveIndex(*index);
  if (again.size() != bytes.size()) Fail("re-encoding changed the size");
  for (size_t i = 0; i < kReservedBytes; ++i) {
    again[kReservedOffset + i] = bytes[kReservedOffset + i];
  }
  std::string expected(bytes);
  if (index->num_slots() == 0) {
    expected.replace(kTokenRangeOffset, kTokenRangeBytes, kTokenRangeBytes,
                     '\0');
  }
  if (again != expected) Fail("re-encoding changed the bytes");

  const size_t d = index->head_dim();
  if (index->num_clusters() * d > kMaxRankedFloats || d > 4096) return 0;
  std::vector<float> query(d);
  for (size_t i = 0; i < d; ++i) {
    query[i] = static_cast<float>(static_cast<int>(i % 7) - 3) * 0.25f;
  }
  WaveIndexParams params;
  params.retrieval_fraction = 0.25f;
  params.estimation_fraction = 0.5f;
  absl::StatusOr<RetrievalPlan> plan =
      PlanRetrieval(*index, query, 1, params, DefaultScale(d));
  if (!plan.ok()) Fail("PlanRetrieval failed on an accepted index");
  for (ClusterId c : plan->retrieval_clusters) {
    if (c >= index->num_clusters() || index->cluster_size(c) == 0) {
      Fail("retrieval zone holds a missing or empty cluster");
    }
  }
  for (ClusterId c : plan->estimation_clusters) {
    if (c >= index->num_clusters() || index->cluster_size(c) == 0) {
      Fail("estimation zone holds a missing or empty cluster");
    }
  }
  if (plan->tail.size() != 1) Fail("one tail per query head expected");
  return 0;
}
