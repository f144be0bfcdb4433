// Plain C++ types of the wavekv engine: model shapes, session options and
// the results of Append / Retrieve. These mirror wavekv.v1 (proto/) without
// depending on it; transport/ converts between the two.
#ifndef WAVEKV_KVSTORE_TYPES_H_
#define WAVEKV_KVSTORE_TYPES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "index/dtype.h"

namespace wavekv {

// Attention shape of the model a session caches.
struct ModelShape {
  uint32_t num_layers = 0;    // 1..1024
  uint32_t num_q_heads = 0;   // 1..1024, multiple of num_kv_heads
  uint32_t num_kv_heads = 0;  // 1..256
  uint32_t head_dim = 0;      // 16..512, multiple of 8
  DType dtype = DType::kFp16;

  // InvalidArgument naming the field ("shape.head_dim: ...") if out of range.
  absl::Status Validate() const;
  uint32_t group_size() const { return num_q_heads / num_kv_heads; }
  // Bytes of K (or V) of one token of one layer: num_kv_heads*head_dim*elem.
  uint64_t TokenLayerBytes() const;
};

// Wave-index parameters with DESIGN.md's defaults.
struct IndexOptions {
  uint32_t sink_tokens = 4;            // 0..4096
  uint32_t recent_tokens = 64;         // 0..65536
  uint32_t segment_tokens = 8192;      // 64..1048576
  uint32_t cluster_size = 16;          // 1..4096, average tokens per cluster
  uint32_t kmeans_iterations = 9;      // 1..100
  uint32_t update_tokens = 1024;       // 16..1048576, multiple of cluster_size
  float retrieval_fraction = 0.018f;   // (0, 1]
  float estimation_fraction = 0.232f;  // [0, 1], sum with retrieval <= 1

  // InvalidArgument naming the field ("index_options.cluster_size: ...").
  absl::Status Validate() const;
};

enum class Durability : uint8_t { kNone = 1, kAsync = 2, kSync = 3 };

enum class RetrieveMode : uint8_t { kExact = 1, kWave = 2 };

// Wave-index progress of a session (values as wavekv.v1.IndexState).
enum class IndexState : uint8_t {
  kEmpty = 1,     // no index: too few tokens so far
  kBuilding = 2,  // some layer has tokens waiting for a (background) build
  kReady = 3,     // every layer is indexed up to its current build target
  kFailed = 4,    // a layer's build failed; see SessionInfo::index_error
};

// The tenant a call acts for; derived from credentials by the caller.
using TenantId = std::string;

struct SessionOptions {
  ModelShape shape;
  IndexOptions index;
  Durability durability = Durability::kNone;
  uint64_t max_tokens = 0;  // per layer; 0 = the engine's per-session limit
  std::string label;        // <= 128 bytes

  // Validates shape, index options, label; field names as in the proto.
  absl::Status Validate() const;
};

struct SessionInfo {
  std::string session_id;
  TenantId tenant;
  ModelShape shape;
  IndexOptions index;
  Durability durability = Durability::kNone;
  uint64_t max_tokens = 0;
  std::string label;
  std::vector<uint64_t> layer_tokens;  // per layer
  uint64_t num_tokens = 0;             // min of layer_tokens
  uint64_t durable_tokens = 0;
  uint64_t memory_bytes = 0;  // host bytes held (exact)
  int64_t created_unix_ms = 0;
  int64_t last_access_unix_ms = 0;
  // Tokens of each layer covered by its wave index (the others are steady
  // zone, or wait for the background build).
  std::vector<uint64_t> layer_indexed_tokens;
  IndexState index_state = IndexState::kEmpty;
  std::string index_error;  // set when index_state is kFailed
};

// K/V of `num_tokens` consecutive tokens of one layer, starting at
// `start_token`; keys/values are [num_tokens][num_kv_heads][head_dim] in the
// session dtype. The spans must stay valid for the duration of the call.
struct LayerAppend {
  uint32_t layer = 0;
  uint64_t start_token = 0;
  uint32_t num_tokens = 0;
  absl::Span<const uint8_t> keys;
  absl::Span<const uint8_t> values;
};

struct AppendResult {
  std::vector<uint64_t> layer_tokens;
  uint64_t num_tokens = 0;
  uint64_t durable_tokens = 0;
};

// One session's query at the Retrieve layer: fp32 [num_q_heads][head_dim].
struct RetrieveQuery {
  std::string session_id;
  absl::Span<const float> query;
};

struct RetrieveOptions {
  uint32_t layer = 0;
  RetrieveMode mode = RetrieveMode::kExact;
  bool include_kv = false;
  // kWave on a layer whose index is not ready: false answers Unavailable
  // (FailedPrecondition if its build failed); true serves that session in
  // kExact mode instead (SessionResult::mode says which was served).
  bool exact_if_not_ready = false;
};

// Slot addresses of one (session, layer, kv head). Two stores share the
// uint64 address space:
//  - the token-order store (steady zone and tokens not yet indexed): slot
//    t holds token t, for t < kClusterSlotBase;
//  - the cluster-major store of indexed tokens: slot kClusterSlotBase + s
//    is the wave index's slot s; cluster c is the run of slots starting at
//    its offset, and clusters never move once built.
// When tokens are indexed they leave the token-order store: ranges over
// them from an earlier EXACT answer then fail in FetchSlots
// (FailedPrecondition, "retrieve again"). Cluster slots stay valid.
inline constexpr uint64_t kClusterSlotBase = uint64_t{1} << 48;

struct SlotRange {
  uint32_t cluster_id = 0;
  uint64_t first_slot = 0;
  uint32_t num_slots = 0;
};

struct TokenRange {
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Estimation-zone partial softmax for one q head (see index/attention.h).
struct TailStats {
  float max_logit = 0.0f;
  float denominator = 0.0f;
  std::vector<float> numerator;  // [head_dim]
};

struct KvHeadResult {
  uint32_t kv_head = 0;
  std::vector<SlotRange> retrieval;
  std::vector<TailStats> tail;  // WAVE: one per q head of the group
  std::string keys;             // include_kv: [slots][head_dim], dtype bytes
  std::string values;
};

struct SessionResult {
  std::string session_id;
  uint64_t num_tokens = 0;
  uint64_t indexed_tokens = 0;
  std::vector<TokenRange> steady;
  uint64_t layout_epoch = 0;
  std::vector<KvHeadResult> heads;  // one per kv head
  // The mode served: kExact where exact_if_not_ready applied.
  RetrieveMode mode = RetrieveMode::kExact;
};

// K/V of one slot range, as produced by Engine::FetchSlots.
struct SlotChunk {
  uint32_t kv_head = 0;
  uint32_t cluster_id = 0;
  uint64_t first_slot = 0;
  uint32_t num_slots = 0;
  std::string keys;  // [num_slots][head_dim], dtype bytes
  std::string values;
  std::vector<uint64_t> positions;
};

struct HeadSlots {
  uint32_t kv_head = 0;
  std::vector<SlotRange> ranges;
};

struct FetchRequest {
  std::string session_id;
  uint32_t layer = 0;
  uint64_t layout_epoch = 0;  // 0 = do not check
  std::vector<HeadSlots> heads;
  uint32_t max_chunk_bytes = 0;  // 0 = 1 MiB; else 4 KiB..4 MiB
};

struct SessionPage {
  std::vector<SessionInfo> sessions;
  std::string next_page_token;  // empty at the end
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_TYPES_H_
