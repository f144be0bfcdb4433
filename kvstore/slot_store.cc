#include "kvstore/slot_store.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"

namespace wavekv {
namespace {

bool IsPowerOfTwo(uint32_t x) { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace

absl::Status ChunkGeometry::Validate() const {
  if (!IsPowerOfTwo(first_chunk_slots)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "first_chunk_slots: ", first_chunk_slots, " is not a power of two"));
  }
  if (!IsPowerOfTwo(max_chunk_slots) || max_chunk_slots < first_chunk_slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_chunk_slots: ", max_chunk_slots,
                     " is not a power of two >= first_chunk_slots (",
                     first_chunk_slots, ")"));
  }
  return absl::OkStatus();
}

SlotStore::SlotStore(size_t row_bytes, ChunkGeometry geometry, HostArena* arena)
    : row_bytes_(row_bytes),
      geometry_(geometry),
      arena_(arena != nullptr ? arena : &HostArena::Default()) {
  ABSL_RAW_CHECK(row_bytes > 0 && row_bytes % 8 == 0,
                 "SlotStore: row_bytes must be a positive multiple of 8");
  ABSL_RAW_CHECK(geometry.Validate().ok(), "SlotStore: bad ChunkGeometry");
  // Ramp chunks: first, 2*first, ..., max (each a power of two).
  ramp_chunks_ =
      static_cast<uint32_t>(std::countr_zero(geometry_.max_chunk_slots /
                                             geometry_.first_chunk_slots) +
                            1);
  ramp_slots_ = uint64_t{geometry_.first_chunk_slots} *
                ((uint64_t{1} << ramp_chunks_) - 1);
}

uint32_t SlotStore::ChunkSlots(size_t chunk_index) const {
  if (chunk_index < ramp_chunks_) {
    return geometry_.first_chunk_slots << chunk_index;
  }
  return geometry_.max_chunk_slots;
}

uint64_t SlotStore::ChunkStart(size_t chunk_index) const {
  if (chunk_index < ramp_chunks_) {
    return uint64_t{geometry_.first_chunk_slots} *
           ((uint64_t{1} << chunk_index) - 1);
  }
  return ramp_slots_ +
         uint64_t{geometry_.max_chunk_slots} * (chunk_index - ramp_chunks_);
}

uint64_t SlotStore::ChunkBytes(uint32_t slots) const {
  // Key row + value row + 8-byte position per slot.
  return uint64_t{slots} * (2 * row_bytes_ + sizeof(uint64_t));
}

uint64_t SlotStore::ChunkBlockBytes(uint32_t slots) const {
  return HostArena::BlockBytes(ChunkBytes(slots));
}

SlotStore::Location SlotStore::Locate(uint64_t slot) const {
  if (slot < ramp_slots_) {
    // Chunk k starts at first * (2^k - 1).
    const uint64_t q = slot / geometry_.first_chunk_slots + 1;
    const size_t k = static_cast<size_t>(std::bit_width(q) - 1);
    const uint64_t start =
        uint64_t{geometry_.first_chunk_slots} * ((uint64_t{1} << k) - 1);
    return {k, static_cast<uint32_t>(slot - start)};
  }
  const uint64_t rest = slot - ramp_slots_;
  return {ramp_chunks_ + static_cast<size_t>(rest / geometry_.max_chunk_slots),
          static_cast<uint32_t>(rest % geometry_.max_chunk_slots)};
}

uint8_t* SlotStore::KeyRow(const Chunk& c, uint32_t offset) const {
  return c.bytes.data() + size_t{offset} * row_bytes_;
}

uint8_t* SlotStore::ValueRow(const Chunk& c, uint32_t offset) const {
  return c.bytes.data() + (size_t{c.slots} + offset) * row_bytes_;
}

uint8_t* SlotStore::PositionAt(const Chunk& c, uint32_t offset) const {
  return c.bytes.data() + 2 * size_t{c.slots} * row_bytes_ +
         size_t{offset} * sizeof(uint64_t);
}

uint64_t SlotStore::GrowthBytes(uint64_t num_slots) const {
  uint64_t bytes = 0;
  uint64_t capacity = capacity_slots_;
  size_t k = chunks_.size();
  // Ramp chunks one by one (at most ~log2(max/first) of them).
  for (; capacity < num_slots && k < ramp_chunks_; ++k) {
    const uint32_t slots = ChunkSlots(k);
    capacity += slots;
    bytes += ChunkBlockBytes(slots);
  }
  if (capacity < num_slots) {
    const uint64_t max_slots = geometry_.max_chunk_slots;
    const uint64_t chunks = (num_slots - capacity + max_slots - 1) / max_slots;
    bytes += chunks * ChunkBlockBytes(geometry_.max_chunk_slots);
  }
  return bytes;
}

absl::Status SlotStore::Reserve(uint64_t num_slots) {
  const size_t chunks_before = chunks_.size();
  const uint64_t capacity_before = capacity_slots_;
  const uint64_t memory_before = memory_bytes_;
  while (capacity_slots_ < num_slots) {
    const uint32_t slots = ChunkSlots(chunks_.size());
    const uint64_t bytes = ChunkBytes(slots);
    absl::StatusOr<HostBlock> block = arena_->Allocate(bytes);
    if (!block.ok()) {
      chunks_.resize(chunks_before);
      capacity_slots_ = capacity_before;
      memory_bytes_ = memory_before;
      return absl::Status(block.status().code(),
                          absl::StrCat("memory: allocating a chunk of ", bytes,
                                       " bytes of host memory failed: ",
                                       block.status().message()));
    }
    Chunk chunk;
    chunk.bytes = *std::move(block);
    chunk.slots = slots;
    memory_bytes_ += chunk.bytes.bytes();
    chunks_.push_back(std::move(chunk));
    capacity_slots_ += slots;
  }
  return absl::OkStatus();
}

uint64_t SlotStore::ReleaseUnused() {
  uint64_t freed = 0;
  // A chunk is unused when the slots before it already hold num_slots_.
  while (!chunks_.empty() &&
         capacity_slots_ - chunks_.back().slots >= num_slots_) {
    const uint32_t slots = chunks_.back().slots;
    freed += chunks_.back().bytes.bytes();
    capacity_slots_ -= slots;
    chunks_.pop_back();
  }
  memory_bytes_ -= freed;
  return freed;
}

void SlotStore::Append(const uint8_t* keys, const uint8_t* values,
                       size_t src_stride, uint64_t n, uint64_t first_position) {
  ABSL_RAW_CHECK(num_slots_ + n <= capacity_slots_,
                 "SlotStore::Append beyond the reserved capacity");
  uint64_t done = 0;
  while (done < n) {
    const Location loc = Locate(num_slots_);
    const Chunk& chunk = chunks_[loc.chunk];
    const uint64_t run = std::min<uint64_t>(n - done, chunk.slots - loc.offset);
    const uint8_t* k = keys + done * src_stride;
    const uint8_t* v = values + done * src_stride;
    if (src_stride == row_bytes_) {
      std::memcpy(KeyRow(chunk, loc.offset), k, run * row_bytes_);
      std::memcpy(ValueRow(chunk, loc.offset), v, run * row_bytes_);
    } else {
      for (uint64_t j = 0; j < run; ++j) {
        const auto off = static_cast<uint32_t>(loc.offset + j);
        std::memcpy(KeyRow(chunk, off), k + j * src_stride, row_bytes_);
        std::memcpy(ValueRow(chunk, off), v + j * src_stride, row_bytes_);
      }
    }
    for (uint64_t j = 0; j < run; ++j) {
      const uint64_t position = first_position + done + j;
      std::memcpy(PositionAt(chunk, static_cast<uint32_t>(loc.offset + j)),
                  &position, sizeof(position));
    }
    done += run;
    num_slots_ += run;
  }
}

void SlotStore::CopyOut(uint64_t first_slot, uint64_t n, uint8_t* keys,
                        uint8_t* values, uint64_t* positions) const {
  ABSL_RAW_CHECK(Holds(first_slot, n),
                 "SlotStore::CopyOut of slots not stored or dropped");
  uint64_t done = 0;
  while (done < n) {
    const Location loc = Locate(first_slot + done);
    const Chunk& chunk = chunks_[loc.chunk];
    const uint64_t run = std::min<uint64_t>(n - done, chunk.slots - loc.offset);
    if (keys != nullptr) {
      std::memcpy(keys + done * row_bytes_, KeyRow(chunk, loc.offset),
                  run * row_bytes_);
    }
    if (values != nullptr) {
      std::memcpy(values + done * row_bytes_, ValueRow(chunk, loc.offset),
                  run * row_bytes_);
    }
    if (positions != nullptr) {
      std::memcpy(positions + done, PositionAt(chunk, loc.offset),
                  run * sizeof(uint64_t));
    }
    done += run;
  }
}

uint64_t SlotStore::DropRange(uint64_t begin, uint64_t end) {
  ABSL_RAW_CHECK(begin <= end && end <= num_slots_,
                 "SlotStore::DropRange beyond the stored slots");
  ABSL_RAW_CHECK(dropped_begin_ == dropped_end_ ||
                     (begin == dropped_begin_ && end >= dropped_end_),
                 "SlotStore::DropRange must extend the dropped range");
  dropped_begin_ = begin;
  dropped_end_ = end;
  if (begin == end) return 0;
  uint64_t freed = 0;
  const size_t last = Locate(end - 1).chunk;
  for (size_t k = Locate(begin).chunk; k <= last; ++k) {
    Chunk& chunk = chunks_[k];
    const uint64_t start = ChunkStart(k);
    if (!chunk.bytes || start < begin || start + chunk.slots > end) {
      continue;
    }
    freed += chunk.bytes.bytes();
    chunk.bytes.reset();
  }
  memory_bytes_ -= freed;
  return freed;
}

bool SlotStore::Holds(uint64_t first, uint64_t n) const {
  if (first > num_slots_ || n > num_slots_ - first) return false;
  // Disjoint from [dropped_begin_, dropped_end_) (or n == 0).
  return n == 0 || first + n <= dropped_begin_ || first >= dropped_end_;
}

uint64_t SlotStore::Clear() {
  const uint64_t freed = memory_bytes_;
  chunks_.clear();
  chunks_.shrink_to_fit();
  num_slots_ = 0;
  capacity_slots_ = 0;
  memory_bytes_ = 0;
  dropped_begin_ = 0;
  dropped_end_ = 0;
  return freed;
}

}  // namespace wavekv
