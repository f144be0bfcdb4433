// SlotStore: the K/V of one (session, layer, kv head) in host memory, in
// slot order, with the token position of each slot.
//
// Slots are the store's cluster-major order: they are contiguous, and a
// cluster of the wave index is one run of slots. Until an index reorders
// them, slot i holds token i. A slot is `row_bytes` of key, `row_bytes` of
// value ([head_dim] in the session dtype) and a uint64 position.
//
// Memory comes in chunks, each one block of a HostArena (pinned host memory)
// holding the keys, values and positions of its slots. Chunk sizes start at
// `first_chunk_slots` and double up to `max_chunk_slots`, then stay there:
// small sessions (decode tests, short prompts) do not pay for a 1024-slot chunk
// per kv head of every layer, and long ones waste at most one chunk.
// memory_bytes() is the exact sum of the chunk allocations, and GrowthBytes()
// tells in advance what growing will allocate, so callers can reserve budget
// before they allocate.
//
// Once the wave index clusters a range of tokens, their slots are dropped
// (DropRange) and the chunks entirely inside the range are freed; slot
// addresses never change.
//
// Not thread-safe: the owning session's layer lock guards every call
// (readers may share const calls).
//
// Example:
//   SlotStore store(/*row_bytes=*/256);
//   uint64_t need = store.GrowthBytes(store.num_slots() + n);
//   RETURN_IF_ERROR(budget.TryReserve(need));
//   RETURN_IF_ERROR(store.Reserve(store.num_slots() + n));  // allocates `need`
//   store.Append(keys, values, stride, n,
//   /*first_position=*/store.num_slots());
#ifndef WAVEKV_KVSTORE_SLOT_STORE_H_
#define WAVEKV_KVSTORE_SLOT_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "kvstore/host_arena.h"

namespace wavekv {

struct ChunkGeometry {
  // Slots of the first chunk; a power of two >= 1.
  uint32_t first_chunk_slots = 16;
  // Slots of every chunk once the doubling reaches it; a power of two
  // >= first_chunk_slots.
  uint32_t max_chunk_slots = 1024;

  // InvalidArgument naming the field if not as above.
  absl::Status Validate() const;
};

class SlotStore {
 public:
  // Chunks come from `arena` (HostArena::Default() if null), which must
  // outlive the store.
  // REQUIRES: row_bytes > 0 and row_bytes % 8 == 0; geometry.Validate() ok.
  explicit SlotStore(size_t row_bytes, ChunkGeometry geometry = {},
                     HostArena* arena = nullptr);

  SlotStore(SlotStore&&) = default;
  SlotStore& operator=(SlotStore&&) = default;
  SlotStore(const SlotStore&) = delete;
  SlotStore& operator=(const SlotStore&) = delete;

  size_t row_bytes() const { return row_bytes_; }
  uint64_t num_slots() const { return num_slots_; }
  // Slots the allocated chunks can hold.
  uint64_t capacity_slots() const { return capacity_slots_; }
  // Bytes of all chunks' arena blocks (exact).
  uint64_t memory_bytes() const { return memory_bytes_; }

  // Bytes Reserve(num_slots) would allocate now (0 if the capacity suffices).
  uint64_t GrowthBytes(uint64_t num_slots) const;

  // Allocates chunks until capacity_slots() >= num_slots. If an allocation
  // fails, frees the chunks this call allocated and returns
  // ResourceExhausted; the store is then as before.
  absl::Status Reserve(uint64_t num_slots);

  // Frees chunks beyond those needed for num_slots(); returns the bytes
  // freed. Used to roll back a Reserve whose append did not happen.
  uint64_t ReleaseUnused();

  // Appends `n` slots. Slot j's key is the row_bytes at keys + j*src_stride
  // (likewise values); its position is first_position + j.
  // REQUIRES: capacity_slots() >= num_slots() + n; src_stride >= row_bytes.
  void Append(const uint8_t* keys, const uint8_t* values, size_t src_stride,
              uint64_t n, uint64_t first_position);

  // Copies slots [first_slot, first_slot + n) out, across chunks: keys and
  // values get n*row_bytes bytes each, positions n entries. Any output may be
  // null to skip it. REQUIRES: first_slot + n <= num_slots().
  void CopyOut(uint64_t first_slot, uint64_t n, uint8_t* keys, uint8_t* values,
               uint64_t* positions) const;

  // Drops the slots [begin, end) (tokens that moved into the wave index's
  // cluster store): every chunk lying entirely inside the range is freed;
  // chunks the range only overlaps stay allocated for their other slots.
  // Dropped slots keep their addresses but can no longer be read (Holds()
  // is false for them). Returns the bytes freed.
  // REQUIRES: begin <= end <= num_slots(); if slots were dropped before,
  // begin equals that range's begin and end is at least its end (the
  // dropped range only grows at its end).
  uint64_t DropRange(uint64_t begin, uint64_t end);

  // Whether slots [first, first + n) are all stored and none is dropped.
  bool Holds(uint64_t first, uint64_t n) const;
  // The dropped range [dropped_begin(), dropped_end()); empty if none.
  uint64_t dropped_begin() const { return dropped_begin_; }
  uint64_t dropped_end() const { return dropped_end_; }

  // Frees every chunk and empties the store; returns the bytes freed.
  uint64_t Clear();

 private:
  struct Chunk {
    // [slots] K, [slots] V, [slots] pos; empty once dropped (DropRange).
    HostBlock bytes;
    uint32_t slots = 0;
  };
  struct Location {
    size_t chunk;
    uint32_t offset;
  };

  uint32_t ChunkSlots(size_t chunk_index) const;
  uint64_t ChunkStart(size_t chunk_index) const;
  uint64_t ChunkBytes(uint32_t slots) const;
  // The arena block of a chunk of `slots` (what the budget holds).
  uint64_t ChunkBlockBytes(uint32_t slots) const;
  Location Locate(uint64_t slot) const;
  uint8_t* KeyRow(const Chunk& c, uint32_t offset) const;
  uint8_t* ValueRow(const Chunk& c, uint32_t offset) const;
  uint8_t* PositionAt(const Chunk& c, uint32_t offset) const;

  size_t row_bytes_;
  ChunkGeometry geometry_;
  HostArena* arena_;
  uint32_t ramp_chunks_;  // chunks of the doubling ramp
  uint64_t ramp_slots_;   // slots of the ramp chunks together
  std::vector<Chunk> chunks_;
  uint64_t num_slots_ = 0;
  uint64_t capacity_slots_ = 0;
  uint64_t memory_bytes_ = 0;
  uint64_t dropped_begin_ = 0;
  uint64_t dropped_end_ = 0;
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_SLOT_STORE_H_
