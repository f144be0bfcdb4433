#include "kvstore/cluster_store.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"

namespace wavekv {

namespace {

uint64_t PayloadBytes(uint64_t num_slots, size_t row_bytes) {
  return num_slots * (2 * row_bytes + sizeof(uint64_t));
}

}  // namespace

uint64_t ClusterStore::Segment::BytesFor(uint64_t num_slots, size_t row_bytes) {
  return HostArena::BlockBytes(PayloadBytes(num_slots, row_bytes));
}

absl::StatusOr<ClusterStore::Segment> ClusterStore::Segment::Allocate(
    uint64_t first_slot, uint64_t num_slots, size_t row_bytes,
    HostArena* arena) {
  ABSL_RAW_CHECK(num_slots >= 1 && row_bytes > 0, "Segment: empty segment");
  if (arena == nullptr) arena = &HostArena::Default();
  const uint64_t bytes = PayloadBytes(num_slots, row_bytes);
  absl::StatusOr<HostBlock> data = arena->Allocate(bytes);
  if (!data.ok()) {
    return absl::Status(
        data.status().code(),
        absl::StrCat("memory: allocating ", bytes,
                     " bytes of host memory for the cluster store failed: ",
                     data.status().message()));
  }
  return Segment(first_slot, num_slots, row_bytes, *std::move(data));
}

ClusterStore::Segment::Segment(uint64_t first_slot, uint64_t num_slots,
                               size_t row_bytes, HostBlock bytes)
    : first_slot_(first_slot),
      num_slots_(num_slots),
      row_bytes_(row_bytes),
      bytes_(std::move(bytes)) {}

uint64_t* ClusterStore::Segment::positions() {
  // Rows are multiples of 8 bytes (SlotStore's requirement), so positions
  // are aligned.
  return reinterpret_cast<uint64_t*>(bytes_.data() +
                                     2 * num_slots_ * row_bytes_);
}

const uint64_t* ClusterStore::Segment::positions() const {
  return reinterpret_cast<const uint64_t*>(bytes_.data() +
                                           2 * num_slots_ * row_bytes_);
}

void ClusterStore::Segment::Permute(absl::Span<const uint64_t> source) {
  ABSL_RAW_CHECK(source.size() == num_slots_, "Permute: wrong size");
  const size_t row = row_bytes_;
  std::vector<bool> done(num_slots_, false);
  std::vector<uint8_t> tmp(2 * row);
  for (uint8_t* base : {keys(), values()}) {
    std::fill(done.begin(), done.end(), false);
    for (uint64_t start = 0; start < num_slots_; ++start) {
      if (done[start]) continue;
      // Follow the cycle start <- source[start] <- source[source[start]]...
      std::memcpy(tmp.data(), base + start * row, row);
      uint64_t j = start;
      while (true) {
        done[j] = true;
        const uint64_t from = source[j];
        ABSL_RAW_CHECK(from < num_slots_, "Permute: source out of range");
        if (from == start) {
          std::memcpy(base + j * row, tmp.data(), row);
          break;
        }
        std::memcpy(base + j * row, base + from * row, row);
        j = from;
      }
    }
  }
}

void ClusterStore::Install(Segment segment) {
  ABSL_RAW_CHECK(segment.first_slot() == num_slots_,
                 "ClusterStore::Install: segment does not continue the store");
  num_slots_ += segment.num_slots();
  memory_bytes_ += segment.memory_bytes();
  segments_.push_back(std::move(segment));
}

void ClusterStore::CopyOut(uint64_t first_slot, uint64_t n, uint8_t* keys,
                           uint8_t* values, uint64_t* positions) const {
  ABSL_RAW_CHECK(first_slot <= num_slots_ && n <= num_slots_ - first_slot,
                 "ClusterStore::CopyOut beyond the stored slots");
  if (n == 0) return;
  // The segment holding first_slot: the last one starting at or before it.
  auto it = std::upper_bound(
      segments_.begin(), segments_.end(), first_slot,
      [](uint64_t slot, const Segment& s) { return slot < s.first_slot(); });
  --it;
  uint64_t done = 0;
  while (done < n) {
    const Segment& seg = *it;
    const uint64_t offset = first_slot + done - seg.first_slot();
    const uint64_t run = std::min(n - done, seg.num_slots() - offset);
    if (keys != nullptr) {
      std::memcpy(keys + done * row_bytes_, seg.keys() + offset * row_bytes_,
                  run * row_bytes_);
    }
    if (values != nullptr) {
      std::memcpy(values + done * row_bytes_,
                  seg.values() + offset * row_bytes_, run * row_bytes_);
    }
    if (positions != nullptr) {
      std::memcpy(positions + done, seg.positions() + offset,
                  run * sizeof(uint64_t));
    }
    done += run;
    ++it;
  }
}

uint64_t ClusterStore::Clear() {
  const uint64_t freed = memory_bytes_;
  segments_.clear();
  segments_.shrink_to_fit();
  num_slots_ = 0;
  memory_bytes_ = 0;
  return freed;
}

}  // namespace wavekv
