// Data for retrieve_layer_bench: one layer of the Llama-3-8B attention shape
// (32 q heads, 8 kv heads, head_dim 128, fp16) for many sessions, in the
// three forms the benchmark reads, plus the fork-join loop it splits work
// with.
//
//  - IndexPool: wave indexes of the layer (one WaveIndex per kv head) for
//    several sessions, built by WaveIndex::FromParts from random data of
//    the shape k-means produces (clusters = indexed tokens / cluster_size,
//    lognormal cluster sizes with a few empty clusters, centroids near one
//    of 256 topic directions, value sums of the right magnitude). The
//    benchmark measures retrieval, not clustering: clustering 1M tokens
//    takes minutes on the 2-core build box (wave_index_bench measures it).
//  - KvPool: the layer's K/V in token order per (session, kv head), random
//    fp16, for exact attention over the whole context.
//  - EngineSessions: an Engine holding sessions with real appends whose
//    indexes were built by the engine itself (k-means), for the whole
//    Engine::Retrieve call.
// Pools hold at most a byte cap of distinct sessions; a batch larger than
// the pool reuses them round robin (Rotation), still reading far more
// bytes than the last-level cache between two reads of one session.
//
// Not thread-safe: build and destroy from one thread; the const reads of a
// built pool may run concurrently.
#ifndef WAVEKV_BENCH_RETRIEVE_LAYER_FIXTURES_H_
#define WAVEKV_BENCH_RETRIEVE_LAYER_FIXTURES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "index/wave_index.h"
#include "kvstore/engine.h"
#include "kvstore/types.h"

namespace wavekv::bench {

// The layer shape of every session.
inline constexpr uint32_t kQHeads = 32;
inline constexpr uint32_t kKvHeads = 8;
inline constexpr uint32_t kGroup = kQHeads / kKvHeads;
inline constexpr uint32_t kHeadDim = 128;
inline constexpr DType kDType = DType::kFp16;
ModelShape LayerShape();  // one layer of the shape above

// Round-robin choice of `batch` distinct pool members per step.
class Rotation {
 public:
  explicit Rotation(size_t pool_size) : pool_size_(pool_size) {}
  // Member of slot j (< batch) of the current step.
  size_t Member(size_t j) const { return (first_ + j) % pool_size_; }
  void Advance(size_t batch) { first_ = (first_ + batch) % pool_size_; }

 private:
  size_t pool_size_;
  size_t first_ = 0;
};

// One query per session slot: fp32 [kQHeads][kHeadDim], each head near one
// of the topic directions the synthetic keys and centroids are built from.
std::vector<std::vector<float>> MakeQueries(size_t num_sessions);

class IndexPool {
 public:
  // Builds sessions until `max_sessions` or until `cap_bytes` of index
  // memory would be passed (at least one session).
  IndexPool(uint64_t context_tokens, size_t max_sessions, uint64_t cap_bytes);

  uint64_t context_tokens() const { return context_tokens_; }
  size_t num_sessions() const { return sessions_.size(); }
  // REQUIRES: s < num_sessions(), h < kKvHeads.
  const WaveIndex& index(size_t s, uint32_t h) const { return sessions_[s][h]; }
  // Per session (8 kv heads): centroid bytes as stored for scoring
  // (fp32 panels) and value-sum bytes (fp32).
  uint64_t centroid_bytes() const;
  uint64_t value_sum_bytes() const;
  uint64_t memory_bytes_per_session() const;

 private:
  uint64_t context_tokens_;
  std::vector<std::vector<WaveIndex>> sessions_;  // [session][kv head]
};

class KvPool {
 public:
  // Random fp16 K/V: `max_sessions` sessions or fewer to stay within
  // `cap_bytes` (at least one).
  KvPool(uint64_t context_tokens, size_t max_sessions, uint64_t cap_bytes);

  uint64_t context_tokens() const { return context_tokens_; }
  size_t num_sessions() const { return keys_.size(); }
  // K+V bytes of one session's layer.
  uint64_t bytes_per_session() const;
  // Token-order K/V of kv head h of session s.
  const uint8_t* keys(size_t s, uint32_t h) const;
  const uint8_t* values(size_t s, uint32_t h) const;

 private:
  uint64_t context_tokens_;
  std::vector<std::unique_ptr<uint16_t[]>> keys_, values_;  // [session]
};

class EngineSessions {
 public:
  // Opens an engine with EngineOptions' defaults (retrieve_threads
  // included) but `index_threads` background build threads, creates
  // `num_sessions` one-layer sessions, appends `context_tokens` tokens of
  // synthetic K/V to each in one Append (the prefill build), and waits
  // until every index is READY. Aborts with a message on any error.
  EngineSessions(uint64_t context_tokens, size_t num_sessions,
                 uint32_t index_threads);

  Engine& engine() { return *engine_; }
  uint64_t context_tokens() const { return context_tokens_; }
  const std::vector<std::string>& session_ids() const { return ids_; }
  double build_seconds() const { return build_seconds_; }

 private:
  uint64_t context_tokens_;
  std::unique_ptr<Engine> engine_;
  std::vector<std::string> ids_;
  double build_seconds_ = 0.0;
};

inline constexpr char kTenant[] = "bench";

}  // namespace wavekv::bench

#endif  // WAVEKV_BENCH_RETRIEVE_LAYER_FIXTURES_H_
