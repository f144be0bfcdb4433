#include "kvstore/host_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"

namespace wavekv {
namespace {

uint64_t RoundUp(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

}  // namespace

absl::Status HostArenaOptions::Validate() const {
  if (slab_bytes < (64u << 10) || slab_bytes % kHostPageBytes != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("slab_bytes: ", slab_bytes,
                     " is not a multiple of 4096 bytes of at least 65536"));
  }
  return absl::OkStatus();
}

HostBlock::HostBlock(HostBlock&& other) noexcept
    : arena_(other.arena_),
      data_(other.data_),
      bytes_(other.bytes_),
      slab_(other.slab_) {
  other.arena_ = nullptr;
  other.data_ = nullptr;
  other.bytes_ = 0;
  other.slab_ = nullptr;
}

HostBlock& HostBlock::operator=(HostBlock&& other) noexcept {
  if (this != &other) {
    reset();
    std::swap(arena_, other.arena_);
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
    std::swap(slab_, other.slab_);
  }
  return *this;
}

void HostBlock::reset() {
  if (data_ != nullptr) arena_->Free(data_, bytes_, slab_);
  arena_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
  slab_ = nullptr;
}

HostArena::HostArena(HostArenaOptions options)
    : options_(std::move(options)),
      slab_pages_(options_.slab_bytes / kHostPageBytes),
      partial_pages_(kSmallClasses) {
  ABSL_RAW_CHECK(options_.Validate().ok(), "HostArena: bad options");
}

HostArena::~HostArena() {
  std::vector<std::unique_ptr<Slab>> slabs;
  {
    absl::MutexLock lock(&mu_);
    if (used_bytes_ != 0) {
      // Blocks still point into the slabs: leak the mappings rather than
      // pull memory from under them.
      ABSL_RAW_LOG(ERROR, "HostArena destroyed with %llu bytes in use",
                   static_cast<unsigned long long>(used_bytes_));
      for (std::unique_ptr<Slab>& slab : slabs_) (void)slab.release();
      slabs_.clear();
      return;
    }
    slabs = std::move(slabs_);
    slabs_.clear();
    runs_.clear();
  }
  for (std::unique_ptr<Slab>& slab : slabs) UnmapSlab(std::move(slab));
}

HostArena& HostArena::Default() {
  static HostArena* const arena = [] {
    HostArenaOptions options;
    options.slab_bytes = 8ull << 20;
    options.lock_memory = false;  // tools and tests: no pinned memory
    return new HostArena(options);
  }();
  return *arena;
}

uint64_t HostArena::BlockBytes(uint64_t bytes) {
  if (bytes == 0) return 0;
  if (bytes <= kHostSmallMaxBytes) return RoundUp(bytes, kHostSmallClassBytes);
  return RoundUp(bytes, kHostPageBytes);
}

absl::StatusOr<std::unique_ptr<HostArena::Slab>> HostArena::MapSlab(
    uint64_t pages) {
  const uint64_t bytes = pages * kHostPageBytes;
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    return absl::ResourceExhaustedError(
        absl::StrCat("memory: mapping a host arena slab of ", bytes,
                     " bytes failed: ", std::strerror(err)));
  }
  // Both advisory: huge pages cut TLB misses on scans of long contexts;
  // DONTFORK keeps pages a device may write out of forked children.
  (void)madvise(base, bytes, MADV_HUGEPAGE);
  (void)madvise(base, bytes, MADV_DONTFORK);
  auto slab = std::make_unique<Slab>();
  slab->base = static_cast<uint8_t*>(base);
  slab->pages = pages;
  if (options_.lock_memory) slab->locked = mlock(base, bytes) == 0;
  if (options_.register_slab) {
    if (absl::Status s = options_.register_slab(base, bytes); !s.ok()) {
      if (slab->locked) (void)munlock(base, bytes);
      (void)munmap(base, bytes);
      return absl::Status(
          s.code(), absl::StrCat("memory: registering a host arena slab of ",
                                 bytes, " bytes failed: ", s.message()));
    }
    slab->registered = true;
  }
  slab->free_runs.emplace(0, pages);
  slab->free_pages = pages;
  return slab;
}

void HostArena::UnmapSlab(std::unique_ptr<Slab> slab) {
  const uint64_t bytes = slab->pages * kHostPageBytes;
  if (slab->registered && options_.unregister_slab) {
    options_.unregister_slab(slab->base, bytes);
  }
  // munmap also unlocks.
  (void)munmap(slab->base, bytes);
}

void HostArena::AddSlabLocked(std::unique_ptr<Slab> slab) {
  ++counters_.slabs_mapped;
  if (options_.lock_memory && !slab->locked) ++counters_.lock_failures;
  runs_.emplace(slab->pages, slab.get(), 0);
  slabs_.push_back(std::move(slab));
}

uint8_t* HostArena::TakePagesLocked(uint64_t pages, Slab** slab_out) {
  // Best fit: the shortest run that is long enough.
  auto it = runs_.lower_bound(RunKey{pages, nullptr, 0});
  if (it == runs_.end()) return nullptr;
  const auto [run_pages, slab, first] = *it;
  runs_.erase(it);
  slab->free_runs.erase(first);
  if (run_pages > pages) {
    slab->free_runs.emplace(first + pages, run_pages - pages);
    runs_.emplace(run_pages - pages, slab, first + pages);
  }
  slab->free_pages -= pages;
  *slab_out = slab;
  return slab->base + first * kHostPageBytes;
}

void HostArena::PutPagesLocked(Slab* slab, uint8_t* data, uint64_t pages) {
  uint64_t first = static_cast<uint64_t>(data - slab->base) / kHostPageBytes;
  uint64_t length = pages;
  auto next = slab->free_runs.lower_bound(first);
  if (next != slab->free_runs.end() && next->first == first + length) {
    runs_.erase(RunKey{next->second, slab, next->first});
    length += next->second;
    next = slab->free_runs.erase(next);
  }
  if (next != slab->free_runs.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == first) {
      runs_.erase(RunKey{prev->second, slab, prev->first});
      first = prev->first;
      length += prev->second;
      slab->free_runs.erase(prev);
    }
  }
  slab->free_runs.emplace(first, length);
  runs_.emplace(length, slab, first);
  slab->free_pages += pages;
}

std::vector<std::unique_ptr<HostArena::Slab>> HostArena::TrimLocked() {
  std::vector<std::unique_ptr<Slab>> out;
  uint32_t kept = 0;
  for (auto it = slabs_.begin(); it != slabs_.end();) {
    Slab& slab = **it;
    const bool empty = slab.free_pages == slab.pages;
    // Only standard slabs are worth keeping; a block's own slab goes.
    if (!empty ||
        (slab.pages == slab_pages_ && kept++ < options_.retain_free_slabs)) {
      ++it;
      continue;
    }
    runs_.erase(RunKey{slab.pages, &slab, 0});
    ++counters_.slabs_unmapped;
    out.push_back(std::move(*it));
    it = slabs_.erase(it);
  }
  return out;
}

absl::StatusOr<HostBlock> HostArena::Allocate(uint64_t bytes) {
  if (bytes == 0) return HostBlock();
  const uint64_t block_bytes = BlockBytes(bytes);
  if (block_bytes <= kHostSmallMaxBytes) return AllocateSmall(block_bytes);
  const uint64_t pages = block_bytes / kHostPageBytes;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      Slab* slab = nullptr;
      if (uint8_t* data = TakePagesLocked(pages, &slab); data != nullptr) {
        ++counters_.allocations;
        used_bytes_ += block_bytes;
        return HostBlock(this, data, block_bytes, slab);
      }
    }
    // No run is long enough (or another thread took the slab this call
    // mapped): map one, outside the lock.
    absl::StatusOr<std::unique_ptr<Slab>> slab =
        MapSlab(std::max(pages, slab_pages_));
    absl::MutexLock lock(&mu_);
    if (!slab.ok()) {
      ++counters_.failed_allocations;
      return slab.status();
    }
    AddSlabLocked(*std::move(slab));
  }
}

absl::StatusOr<HostBlock> HostArena::AllocateSmall(uint64_t block_bytes) {
  const uint32_t class_index =
      static_cast<uint32_t>(block_bytes / kHostSmallClassBytes) - 1;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      std::set<uint8_t*>& partial = partial_pages_[class_index];
      uint8_t* page = nullptr;
      if (!partial.empty()) {
        page = *partial.begin();
      } else {
        Slab* slab = nullptr;
        page = TakePagesLocked(1, &slab);
        if (page != nullptr) {
          SmallPage sp;
          sp.class_index = class_index;
          sp.capacity = static_cast<uint32_t>(kHostPageBytes / block_bytes);
          sp.free_mask = (1u << sp.capacity) - 1;  // capacity <= 16
          sp.slab = slab;
          small_pages_.emplace(page, sp);
          partial.insert(page);
          ++small_page_count_;
        }
      }
      if (page != nullptr) {
        SmallPage& sp = small_pages_.at(page);
        const int i = std::countr_zero(sp.free_mask);
        sp.free_mask &= ~(1u << i);
        if (++sp.used == sp.capacity) partial.erase(page);
        ++counters_.allocations;
        used_bytes_ += block_bytes;
        small_used_bytes_ += block_bytes;
        return HostBlock(this, page + uint64_t(i) * block_bytes, block_bytes,
                         nullptr);
      }
    }
    absl::StatusOr<std::unique_ptr<Slab>> slab = MapSlab(slab_pages_);
    absl::MutexLock lock(&mu_);
    if (!slab.ok()) {
      ++counters_.failed_allocations;
      return slab.status();
    }
    AddSlabLocked(*std::move(slab));
  }
}

void HostArena::Free(uint8_t* data, uint64_t bytes, void* slab_ptr) {
  std::vector<std::unique_ptr<Slab>> unmap;
  {
    absl::MutexLock lock(&mu_);
    ++counters_.frees;
    used_bytes_ -= bytes;
    if (slab_ptr != nullptr) {
      PutPagesLocked(static_cast<Slab*>(slab_ptr), data,
                     bytes / kHostPageBytes);
    } else {
      uint8_t* page = reinterpret_cast<uint8_t*>(
          reinterpret_cast<uintptr_t>(data) & ~uintptr_t{kHostPageBytes - 1});
      auto it = small_pages_.find(page);
      ABSL_RAW_CHECK(it != small_pages_.end(), "HostArena: foreign block");
      SmallPage& sp = it->second;
      const uint64_t i = static_cast<uint64_t>(data - page) / bytes;
      sp.free_mask |= 1u << i;
      small_used_bytes_ -= bytes;
      std::set<uint8_t*>& partial = partial_pages_[sp.class_index];
      if (--sp.used == 0) {
        partial.erase(page);
        Slab* slab = sp.slab;
        small_pages_.erase(it);
        --small_page_count_;
        PutPagesLocked(slab, page, 1);
      } else {
        partial.insert(page);
      }
    }
    unmap = TrimLocked();
  }
  for (std::unique_ptr<Slab>& slab : unmap) UnmapSlab(std::move(slab));
}

void HostArena::ForEachSlab(
    absl::FunctionRef<void(void* base, uint64_t bytes)> fn) const {
  absl::MutexLock lock(&mu_);
  for (const std::unique_ptr<Slab>& slab : slabs_) {
    fn(slab->base, slab->pages * kHostPageBytes);
  }
}

HostArenaStats HostArena::Stats() const {
  absl::MutexLock lock(&mu_);
  HostArenaStats stats = counters_;
  stats.slabs = slabs_.size();
  for (const std::unique_ptr<Slab>& slab : slabs_) {
    const uint64_t bytes = slab->pages * kHostPageBytes;
    stats.reserved_bytes += bytes;
    if (slab->locked) stats.locked_bytes += bytes;
    stats.free_bytes += slab->free_pages * kHostPageBytes;
  }
  stats.used_bytes = used_bytes_;
  stats.largest_free_bytes =
      runs_.empty() ? 0 : std::get<0>(*runs_.rbegin()) * kHostPageBytes;
  stats.small_slack_bytes =
      small_page_count_ * kHostPageBytes - small_used_bytes_;
  stats.fragmentation =
      stats.free_bytes == 0
          ? 0.0
          : 1.0 - static_cast<double>(stats.largest_free_bytes) /
                      static_cast<double>(stats.free_bytes);
  return stats;
}

}  // namespace wavekv
