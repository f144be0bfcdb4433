// Chunk allocation: the engine's HostArena (pinned slabs, page runs, size
// classes) against the allocation path it replaced (operator new[] from
// the C++ heap, glibc malloc), for the block sizes the stores use. Each
// iteration allocates a block, writes one byte per 4 KiB page (a chunk is
// always written right after it is allocated, so first-touch page faults
// are part of the cost), and frees it; "live" variants keep a window of
// blocks alive, as sessions do.
//
//   bazel run --config=ci //kvstore:host_arena_bench
#include <cstdint>
#include <deque>
#include <memory>

#include "benchmark/benchmark.h"
#include "kvstore/host_arena.h"

namespace wavekv {
namespace {

void Touch(uint8_t* p, uint64_t bytes) {
  for (uint64_t off = 0; off < bytes; off += kHostPageBytes) p[off] = 1;
  benchmark::DoNotOptimize(p);
}

// Sizes: a first ramp chunk of 16 slots (d=128 fp16: 16 * 520 bytes), a
// 1024-slot chunk, and a 64K-token cluster-store segment.
void Sizes(benchmark::internal::Benchmark* b) {
  b->Arg(16 * 520)->Arg(1024 * 520)->Arg(65536 * 520);
}

void BM_HeapAllocTouchFree(benchmark::State& state) {
  const uint64_t bytes = static_cast<uint64_t>(state.range(0));
  for (auto _ : state) {
    std::unique_ptr<uint8_t[]> p(new uint8_t[bytes]);
    Touch(p.get(), bytes);
  }
  state.SetBytesProcessed(state.iterations() * int64_t(bytes));
}
BENCHMARK(BM_HeapAllocTouchFree)->Apply(Sizes);

void BM_ArenaAllocTouchFree(benchmark::State& state) {
  const uint64_t bytes = static_cast<uint64_t>(state.range(0));
  HostArenaOptions o;
  o.lock_memory = state.range(1) != 0;
  HostArena arena(o);
  for (auto _ : state) {
    HostBlock b = *arena.Allocate(bytes);
    Touch(b.data(), bytes);
  }
  state.SetBytesProcessed(state.iterations() * int64_t(bytes));
  state.counters["locked"] = arena.Stats().locked_bytes > 0;
}
BENCHMARK(BM_ArenaAllocTouchFree)
    ->ArgsProduct({{16 * 520, 1024 * 520, 65536 * 520}, {0, 1}});

// A window of 256 live 1024-slot chunks (~130 MiB), oldest freed first:
// the steady state of sessions growing and closing.
template <bool kArena>
void BM_LiveWindow(benchmark::State& state) {
  const uint64_t bytes = 1024 * 520;
  HostArenaOptions o;
  o.lock_memory = state.range(0) != 0;
  HostArena arena(o);
  std::deque<HostBlock> arena_live;
  std::deque<std::unique_ptr<uint8_t[]>> heap_live;
  for (auto _ : state) {
    if constexpr (kArena) {
      arena_live.push_back(*arena.Allocate(bytes));
      Touch(arena_live.back().data(), bytes);
      if (arena_live.size() > 256) arena_live.pop_front();
    } else {
      heap_live.emplace_back(new uint8_t[bytes]);
      Touch(heap_live.back().get(), bytes);
      if (heap_live.size() > 256) heap_live.pop_front();
    }
  }
  state.SetBytesProcessed(state.iterations() * int64_t(bytes));
  if constexpr (kArena) {
    state.counters["fragmentation"] = arena.Stats().fragmentation;
  }
}
BENCHMARK_TEMPLATE(BM_LiveWindow, false)->Arg(0);
BENCHMARK_TEMPLATE(BM_LiveWindow, true)->Arg(0)->Arg(1);

}  // namespace
}  // namespace wavekv
