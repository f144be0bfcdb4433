// ClusterStore: the K/V of the indexed tokens of one (session, layer, kv
// head) in the wave index's cluster-major slot order, with the token
// position of each slot. Slot s here is the index's slot s: cluster c is the
// run [cluster_offset(c), cluster_offset(c) + size(c)), so one cluster is one
// contiguous range to copy or send.
//
// The store grows by whole blocks (one per index build): a Segment holds
// one block's slots in one allocation. A build fills its segment without any
// lock (token order first, then Permute() into cluster-major order) and the
// engine installs it under the layer's writer lock, which only moves a
// pointer. Installed slots never move.
//
// Not thread-safe: the owning session's layer lock guards the store
// (readers may share const calls). A Segment belongs to one thread until
// it is installed.
//
// Example:
//   ASSIGN_OR_RETURN(auto seg, ClusterStore::Segment::Allocate(
//                                  store.num_slots(), n, row_bytes));
//   ... fill seg.keys()/values() in token order, seg.Permute(order) ...
//   store.Install(std::move(seg));
#ifndef WAVEKV_KVSTORE_CLUSTER_STORE_H_
#define WAVEKV_KVSTORE_CLUSTER_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvstore/host_arena.h"

namespace wavekv {

class ClusterStore {
 public:
  // One block's slots: [num_slots] key rows, [num_slots] value rows,
  // [num_slots] uint64 positions, in one HostArena block.
  class Segment {
   public:
    // Bytes Allocate() takes for `num_slots` slots of `row_bytes` (the
    // arena block: what the memory budget holds).
    static uint64_t BytesFor(uint64_t num_slots, size_t row_bytes);

    // A segment for slots [first_slot, first_slot + num_slots) from `arena`
    // (HostArena::Default() if null), which must outlive it. Contents are
    // uninitialised. ResourceExhausted if the allocation fails.
    // REQUIRES: num_slots >= 1; row_bytes > 0.
    static absl::StatusOr<Segment> Allocate(uint64_t first_slot,
                                            uint64_t num_slots,
                                            size_t row_bytes,
                                            HostArena* arena = nullptr);

    Segment(Segment&&) = default;
    Segment& operator=(Segment&&) = default;

    uint64_t first_slot() const { return first_slot_; }
    uint64_t num_slots() const { return num_slots_; }
    uint64_t memory_bytes() const { return BytesFor(num_slots_, row_bytes_); }

    // Contiguous [num_slots][row_bytes] rows and [num_slots] positions.
    uint8_t* keys() { return bytes_.data(); }
    uint8_t* values() { return bytes_.data() + num_slots_ * row_bytes_; }
    uint64_t* positions();
    const uint8_t* keys() const { return bytes_.data(); }
    const uint8_t* values() const {
      return bytes_.data() + num_slots_ * row_bytes_;
    }
    const uint64_t* positions() const;

    // Reorders the key and value rows in place so that row i becomes the
    // old row source[i] (a gather). REQUIRES: `source` is a permutation of
    // [0, num_slots()).
    void Permute(absl::Span<const uint64_t> source);

   private:
    Segment(uint64_t first_slot, uint64_t num_slots, size_t row_bytes,
            HostBlock bytes);

    uint64_t first_slot_;
    uint64_t num_slots_;
    size_t row_bytes_;
    HostBlock bytes_;
  };

  // REQUIRES: row_bytes > 0.
  explicit ClusterStore(size_t row_bytes) : row_bytes_(row_bytes) {}

  ClusterStore(ClusterStore&&) = default;
  ClusterStore& operator=(ClusterStore&&) = default;

  size_t row_bytes() const { return row_bytes_; }
  uint64_t num_slots() const { return num_slots_; }
  uint64_t memory_bytes() const { return memory_bytes_; }

  // Appends `segment`'s slots. REQUIRES: segment.first_slot() ==
  // num_slots() and it was allocated with row_bytes().
  void Install(Segment segment);

  // Copies slots [first_slot, first_slot + n) out, across segments (any
  // output may be null). REQUIRES: first_slot + n <= num_slots().
  void CopyOut(uint64_t first_slot, uint64_t n, uint8_t* keys, uint8_t* values,
               uint64_t* positions) const;

  // Frees every segment; returns the bytes freed.
  uint64_t Clear();

 private:
  size_t row_bytes_;
  std::vector<Segment> segments_;  // ascending, contiguous first slots
  uint64_t num_slots_ = 0;
  uint64_t memory_bytes_ = 0;
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_CLUSTER_STORE_H_
