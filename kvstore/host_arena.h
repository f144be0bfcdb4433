// HostArena: the engine's pinned host memory for K/V chunks.
//
// Memory comes from large slabs (default 64 MiB) mapped with mmap, advised
// (MADV_HUGEPAGE, MADV_DONTFORK so that a forked child never shares pages
// that a NIC or GPU may be writing) and locked with mlock, best effort: a
// refused mlock is counted (HostArenaStats::lock_failures) and the slab is
// used unlocked. Each slab is handed to an optional registration hook when
// it is mapped (cudaHostRegister for the GPU path, ucp_mem_map for UCX) and
// to the unregistration hook before it is unmapped, so registered memory is
// registered once per slab, never per chunk.
//
// Allocation:
//  - blocks of more than kHostSmallMaxBytes: whole 4 KiB pages, best fit
//    over the free page runs of all slabs (a size-ordered free list;
//    neighbouring free runs coalesce on free). A block larger than a slab
//    gets a slab of its own.
//  - smaller blocks: size classes of kHostSmallClassBytes steps, carved out
//    of whole pages dedicated to one class (tiny sessions do not pay a page
//    per kv head).
// BlockBytes(n) says in advance exactly what Allocate(n) takes: callers
// reserve that in the MemoryBudget, so the budget and the arena agree to the
// byte (HostArenaStats::used_bytes is the sum over live blocks).
//
// Slabs that become entirely free are unmapped beyond
// retain_free_slabs, so a burst does not keep its memory locked forever.
//
// Thread-safe. The arena's mutex is not held while a slab is mapped,
// locked or registered (those can take milliseconds), nor while hooks run.
// REQUIRES: every HostBlock is destroyed before its arena (an arena
// destroyed with live blocks leaks their slabs rather than unmapping memory
// still in use, and logs it).
//
// Example:
//   HostArena arena(HostArenaOptions{});
//   RETURN_IF_ERROR(budget.TryReserve(HostArena::BlockBytes(n)));
//   ASSIGN_OR_RETURN(HostBlock block, arena.Allocate(n));
//   std::memcpy(block.data(), src, n);
#ifndef WAVEKV_KVSTORE_HOST_ARENA_H_
#define WAVEKV_KVSTORE_HOST_ARENA_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace wavekv {

inline constexpr uint64_t kHostPageBytes = 4096;
// Blocks up to this size come from size classes; larger ones are pages.
inline constexpr uint64_t kHostSmallMaxBytes = 2048;
inline constexpr uint64_t kHostSmallClassBytes = 256;

struct HostArenaOptions {
  // Bytes of one slab; a multiple of kHostPageBytes, >= 64 KiB.
  uint64_t slab_bytes = 64ull << 20;
  // mlock every slab (best effort: failures are counted, not fatal).
  bool lock_memory = true;
  // Entirely free slabs kept mapped for reuse; the rest are unmapped.
  uint32_t retain_free_slabs = 1;
  // Called with every new slab before any block of it is handed out; an
  // error fails the allocation that needed the slab (which is unmapped).
  // Runs without the arena's lock; must be thread-safe; must not call into
  // the arena. Empty: no registration.
  std::function<absl::Status(void* base, uint64_t bytes)> register_slab;
  // Called before a slab registered above is unmapped. Same rules.
  std::function<void(void* base, uint64_t bytes)> unregister_slab;

  // InvalidArgument naming the field.
  absl::Status Validate() const;
};

struct HostArenaStats {
  uint64_t slabs = 0;
  uint64_t reserved_bytes = 0;      // mapped bytes of all slabs
  uint64_t locked_bytes = 0;        // of those, mlocked
  uint64_t used_bytes = 0;          // sum of BlockBytes over live blocks
  uint64_t free_bytes = 0;          // free pages in all slabs
  uint64_t largest_free_bytes = 0;  // the longest free page run
  // Unusable bytes of pages dedicated to small classes (whole pages held
  // minus the classes' blocks in use).
  uint64_t small_slack_bytes = 0;
  // 1 - largest_free_bytes / free_bytes: 0 when all free memory is one run
  // (or there is none), towards 1 when it is scattered.
  double fragmentation = 0.0;
  // Counters since construction.
  uint64_t allocations = 0;
  uint64_t frees = 0;
  uint64_t failed_allocations = 0;
  uint64_t slabs_mapped = 0;
  uint64_t slabs_unmapped = 0;
  uint64_t lock_failures = 0;  // slabs whose mlock was refused
};

class HostArena;

// One allocation of a HostArena: RAII, move-only; returns its memory to the
// arena when destroyed or reset. Not thread-safe (one owner).
class HostBlock {
 public:
  HostBlock() = default;
  HostBlock(HostBlock&& other) noexcept;
  HostBlock& operator=(HostBlock&& other) noexcept;
  HostBlock(const HostBlock&) = delete;
  HostBlock& operator=(const HostBlock&) = delete;
  ~HostBlock() { reset(); }

  uint8_t* data() const { return data_; }
  // HostArena::BlockBytes of the requested size (what the budget holds).
  uint64_t bytes() const { return bytes_; }
  explicit operator bool() const { return data_ != nullptr; }
  // Frees the block now (no-op when empty).
  void reset();

 private:
  friend class HostArena;
  HostBlock(HostArena* arena, uint8_t* data, uint64_t bytes, void* slab)
      : arena_(arena), data_(data), bytes_(bytes), slab_(slab) {}

  HostArena* arena_ = nullptr;
  uint8_t* data_ = nullptr;
  uint64_t bytes_ = 0;
  void* slab_ = nullptr;  // HostArena::Slab of a page block; null if small
};

class HostArena {
 public:
  // REQUIRES: options.Validate() ok.
  explicit HostArena(HostArenaOptions options = {});
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  // The process-wide arena with default options (never destroyed), for
  // stores created without an arena of their own (unit tests, tools).
  static HostArena& Default();

  // Exactly the bytes Allocate(bytes) takes: 0 for 0, the size class for
  // small blocks, whole pages otherwise.
  static uint64_t BlockBytes(uint64_t bytes);

  // A block of at least `bytes` (BlockBytes(bytes) of them) aligned to 64
  // bytes (pages for page blocks), contents unspecified. An empty block
  // for 0. ResourceExhausted naming the size if mapping a slab fails;
  // the registration hook's error if it refuses the new slab.
  absl::StatusOr<HostBlock> Allocate(uint64_t bytes);

  // Calls fn(base, bytes) for every mapped slab (under the arena's lock:
  // fn must not call into the arena). For registering slabs with a
  // transport created after the arena.
  void ForEachSlab(
      absl::FunctionRef<void(void* base, uint64_t bytes)> fn) const;

  HostArenaStats Stats() const;
  const HostArenaOptions& options() const { return options_; }

 private:
  friend class HostBlock;
  struct Slab {
    uint8_t* base = nullptr;
    uint64_t pages = 0;
    bool locked = false;
    bool registered = false;
    // Free page runs of this slab: first page -> pages (for coalescing).
    std::map<uint64_t, uint64_t> free_runs;
    uint64_t free_pages = 0;
  };
  // A page dedicated to one small size class.
  struct SmallPage {
    uint32_t class_index = 0;
    uint32_t capacity = 0;  // blocks per page
    uint32_t used = 0;
    uint32_t free_mask = 0;  // bit i: block i is free (capacity <= 16)
    Slab* slab = nullptr;
  };
  // Free runs of all slabs, best fit first: (pages, slab, first page).
  using RunKey = std::tuple<uint64_t, Slab*, uint64_t>;

  static constexpr uint32_t kSmallClasses =
      kHostSmallMaxBytes / kHostSmallClassBytes;

  absl::StatusOr<HostBlock> AllocateSmall(uint64_t block_bytes);
  // Whole pages; null if no slab has a run long enough.
  uint8_t* TakePagesLocked(uint64_t pages, Slab** slab)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PutPagesLocked(Slab* slab, uint8_t* data, uint64_t pages)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Maps, advises, locks and registers a slab of `pages` (no lock held).
  absl::StatusOr<std::unique_ptr<Slab>> MapSlab(uint64_t pages);
  void UnmapSlab(std::unique_ptr<Slab> slab);
  void AddSlabLocked(std::unique_ptr<Slab> slab)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes entirely free slabs beyond the retained ones; returns them for
  // unmapping outside the lock.
  std::vector<std::unique_ptr<Slab>> TrimLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Free(uint8_t* data, uint64_t bytes, void* slab);

  const HostArenaOptions options_;
  const uint64_t slab_pages_;

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Slab>> slabs_ ABSL_GUARDED_BY(mu_);
  std::set<RunKey> runs_ ABSL_GUARDED_BY(mu_);
  // Small pages by address, and per class the pages with a free block.
  absl::flat_hash_map<uint8_t*, SmallPage> small_pages_ ABSL_GUARDED_BY(mu_);
  std::vector<std::set<uint8_t*>> partial_pages_ ABSL_GUARDED_BY(mu_);
  HostArenaStats counters_ ABSL_GUARDED_BY(mu_);  // counter fields only
  uint64_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t small_page_count_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t small_used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_HOST_ARENA_H_
