// Paged split-K flash-decoding kernels (see paged_attention.h for the
// contract).
//
// Split kernel: grid (num_splits, num_rows); a block serves the whole GQA
// group of one row, so every K/V byte is read once. A row's tokens are cut
// into tiles of 16 KiB of keys + 16 KiB of values; split s takes tiles s,
// s + num_splits, s + 2 * num_splits, ... (interleaved, so a run of costly
// pages — e.g. the wave buffer's misses, which cluster at the low-ranked end
// of a selection and are read from host memory — is spread over all splits
// instead of landing on the last few). Tiles are staged through shared
// memory two deep with cp.async (16-byte copies that need no registers, so
// many bytes are in flight per thread).
//
// Page lookup: before a tile's copies the block finds the page holding its
// first token with a block-wide search (each level: one sampled load per
// thread and a barrier count, 128-way, so one level for up to ~8K pages)
// and loads the next 128 page descriptors into shared memory; each copying
// thread then resolves its tokens in that window (binary search, then a
// forward cursor). A tile the window does not cover (more than ~64 empty or
// tiny pages) continues through the page table in global memory. Pages may
// point at device memory, mapped pinned host memory (the copy is then a
// zero-copy PCIe read) or wave-buffer slots.
//
// Compute: kLanes = head_dim / 8 threads per token, 8 elements each; U
// tokens are folded into the running softmax at once (one rescale per U
// tokens). The block then reduces its token groups in shared memory (the
// tile buffers, free by then). Merge kernel: one block per q head combines
// the splits and the estimated tail triple with a log-sum-exp rescale.
//
// Launch latency: on sm_90 the page-table, split and merge kernels are
// launched with programmatic dependent launch: each kernel lets its
// successor's blocks be scheduled as soon as it starts, and each waits for
// its predecessor grid (griddepcontrol.wait) before touching global memory,
// so the launch gaps between the three kernels are hidden (also inside a
// CUDA graph). WAVEKV_PAGED_NO_PDL=1 in the environment turns this off.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <cstdlib>
#include <cub/block/block_scan.cuh>

#include "index/cuda/paged_attention_raw.h"
#include "index/cuda/split_merge.cuh"
#include "index/cuda/vec_load.cuh"

namespace wavekv::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kTileBytes = 16384;  // keys of one tile (values: the same)
constexpr int kStages = 2;
constexpr int kSmemBytes = kStages * 2 * kTileBytes;
// Page descriptors cached per block (8 KiB), and the most pages one tile
// is assumed to span when sizing the search (more spill to global memory).
constexpr int kWindow = 2 * kThreads;
constexpr int kWindowSlack = 64;

// Programmatic dependent launch (sm_90+; no-ops below).
__device__ __forceinline__ void WaitForPriorGrids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void CpAsync16(void* smem, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const size_t g = __cvta_generic_to_global(src);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g));
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <typename T, int D>
struct Shape {
  static constexpr int kRowBytes = D * static_cast<int>(sizeof(T));
  static constexpr int kChunksPerTok = kRowBytes / 16;
  static constexpr int kTileTokens = kTileBytes / kRowBytes;
  static constexpr int kTokPerPass = kThreads / kChunksPerTok;
  static constexpr int kPasses = kTileTokens / kTokPerPass;
  static constexpr int kLanes = D / 8;  // compute threads per token
  static constexpr int kTokGroups = kThreads / kLanes;
  static constexpr int kTokPerThread = kTileTokens / kTokGroups;
  static_assert(kPasses * kTokPerPass == kTileTokens, "tile shape");
  static_assert(kTokPerThread % 4 == 0, "tile shape");
  static_assert(kTokGroups * (D + 2) * 4 <= kSmemBytes, "reduction space");
};

// Forward-only position in a row's page table in global memory (the
// fallback past the shared-memory window).
struct Cursor {
  int p;     // current page index (absolute)
  int last;  // last page index of the row
  int64_t first;
  int64_t end;  // first + num_tokens

  __device__ __forceinline__ void Advance(const KvPage* pages, int64_t tok) {
    while (tok >= end && p < last) {
      ++p;
      first = pages[p].first_token;
      end = first + pages[p].num_tokens;
    }
  }
};

// G: q heads per row this instantiation holds (>= the real group).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads)
    PagedSplitKernel(PagedAttentionArgs a, int num_splits) {
  using S = Shape<T, D>;
  constexpr int TT = S::kTileTokens;
  constexpr int U = G <= 4 ? 4 : 2;  // tokens folded into the softmax at once
  extern __shared__ __align__(16) char smem[];
  __shared__ __align__(16) char s_win_raw[kWindow * sizeof(KvPage)];
  KvPage* s_win = reinterpret_cast<KvPage*>(s_win_raw);
  WaitForPriorGrids();
  AllowDependentLaunch();
  const int row = blockIdx.y;
  const int split = blockIdx.x;
  const int tid = threadIdx.x;
  const int group = a.group;
  const int row_begin = row * a.pages_per_row;
  const int last = row_begin + a.pages_per_row - 1;
  const KvPage* pages = a.pages;

  const int lane = tid % S::kLanes;
  const int tg = tid / S::kLanes;
  float q[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      q[h][i] = h < group
                    ? a.queries[(static_cast<int64_t>(row) * group + h) * D +
                                lane * 8 + i] *
                          a.scale
                    : 0.f;
    }
  }
  const int32_t last_first = pages[last].first_token;
  const int32_t last_n = pages[last].num_tokens;

  const char* pool = static_cast<const char*>(a.slot_pool);
  const int copy_tok = tid / S::kChunksPerTok;
  const int copy_off = (tid % S::kChunksPerTok) * 16;

  // Window of page descriptors [w_lo, w_lo + w_n) in s_win covering tokens
  // [w_first, w_end). Block-uniform.
  int w_lo = 0, w_n = 0;
  int64_t w_first = 0, w_end = 0;
  // Makes the window cover [x, x_end) if the next kWindow pages allow
  // (called by the whole block with the same arguments).
  auto locate = [&](int64_t x, int64_t x_end) {
    if (w_n > 0 && w_first <= x && x_end <= w_end) return;
    // Last page with first_token <= x lies in [lo, hi]; first_token is
    // nondecreasing and pages[row_begin].first_token == 0 <= x.
    int lo = row_begin, hi = last;
    while (hi - lo + 1 > kWindow - kWindowSlack) {
      const int stride = (hi - lo + kThreads) / kThreads;
      const int pi = lo + tid * stride;
      const bool le = pi <= hi && pages[pi].first_token <= x;
      const int cnt = max(__syncthreads_count(le), 1);
      lo += (cnt - 1) * stride;
      hi = min(hi, lo + stride - 1);
    }
    __syncthreads();  // every thread is done with the previous window
    w_lo = lo;
    w_n = min(kWindow, last - lo + 1);
#pragma unroll
    for (int j = tid; j < kWindow; j += kThreads) {
      if (j < w_n) s_win[j] = pages[lo + j];
    }
    __syncthreads();
    w_first = s_win[0].first_token;
    w_end = static_cast<int64_t>(s_win[w_n - 1].first_token) +
            s_win[w_n - 1].num_tokens;
  };

  // The first tile's page search goes out together with the load of the
  // row's last page (the row's length): one round trip fewer before the
  // first copies. A split past the row's end wastes only that search.
  locate(static_cast<int64_t>(split) * TT, static_cast<int64_t>(split) * TT);
  const int64_t total = static_cast<int64_t>(last_first) + last_n;
  const int64_t row_tiles = (total + TT - 1) / TT;
  const int my_tiles =
      split < row_tiles
          ? static_cast<int>((row_tiles - split + num_splits - 1) / num_splits)
          : 0;

  // Bit (buf * kPasses + pass): this thread's chunk of that pass of the
  // tile in buffer `buf` goes to the staging area too.
  unsigned stage_mask = 0;
  char* const stage_base = static_cast<char*>(a.stage);
  const bool staging = stage_base != nullptr;
  auto tile_first = [&](int i) {
    return static_cast<int64_t>(split + i * num_splits) * TT;
  };

  auto issue = [&](int i, int buf) {
    char* sk = smem + buf * 2 * kTileBytes;
    char* sv = sk + kTileBytes;
    const int64_t tile_start = tile_first(i);
    const int64_t tile_end = min(total, tile_start + TT);
    locate(tile_start, tile_end);
    stage_mask &= ~(((1u << S::kPasses) - 1) << (buf * S::kPasses));
    // This thread's first token of the tile, then a forward cursor.
    int wp = 0;
    {
      const int64_t t0 = tile_start + copy_tok;
      int lo = 0, hi = w_n - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (s_win[mid].first_token <= t0) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      wp = lo;
    }
    Cursor gc;  // past the window (rare): global page table
    gc.p = -1;
#pragma unroll
    for (int pass = 0; pass < S::kPasses; ++pass) {
      const int tt = pass * S::kTokPerPass + copy_tok;
      const int64_t tok = tile_start + tt;
      char* dk = sk + tt * S::kRowBytes + copy_off;
      char* dv = sv + tt * S::kRowBytes + copy_off;
      if (tok < tile_end) {
        int64_t first;
        int slot_list, stage;
        const char *keys, *values;
        if (tok < w_end) {
          while (tok >= static_cast<int64_t>(s_win[wp].first_token) +
                            s_win[wp].num_tokens &&
                 wp < w_n - 1) {
            ++wp;
          }
          const KvPage& pg = s_win[wp];
          first = pg.first_token;
          slot_list = pg.slot_list;
          stage = pg.stage;
          keys = static_cast<const char*>(pg.keys);
          values = static_cast<const char*>(pg.values);
        } else {
          if (gc.p < 0) {
            gc.p = w_lo + w_n - 1;
            gc.last = last;
            gc.first = s_win[w_n - 1].first_token;
            gc.end = w_end;
          }
          gc.Advance(pages, tok);
          const KvPage& pg = pages[gc.p];
          first = gc.first;
          slot_list = pg.slot_list;
          stage = pg.stage;
          keys = static_cast<const char*>(pg.keys);
          values = static_cast<const char*>(pg.values);
        }
        const int64_t local = tok - first;
        const char *kp, *vp;
        if (slot_list >= 0) {
          const int slot = a.slot_ids[slot_list + local / kSlotTokens];
          kp = pool + (static_cast<int64_t>(slot) * 2 * kSlotTokens +
                       local % kSlotTokens) *
                          S::kRowBytes;
          vp = kp + kSlotTokens * S::kRowBytes;
        } else {
          kp = keys + local * S::kRowBytes;
          vp = values + local * S::kRowBytes;
          if (staging && stage && tok < a.stage_row_tokens) {
            stage_mask |= 1u << (buf * S::kPasses + pass);
          }
        }
        CpAsync16(dk, kp + copy_off);
        CpAsync16(dv, vp + copy_off);
      } else {
        *reinterpret_cast<uint4*>(dk) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dv) = make_uint4(0, 0, 0, 0);
      }
    }
    CpAsyncCommit();
  };

  // Copies this thread's staged chunks of tile i in buffer `buf` (already
  // landed in shared memory) to the staging area.
  auto stage_out = [&](int i, int buf) {
    const unsigned m = stage_mask >> (buf * S::kPasses);
    if ((m & ((1u << S::kPasses) - 1)) == 0) return;
    const char* sk = smem + buf * 2 * kTileBytes;
    const char* sv = sk + kTileBytes;
    const int64_t tile_start = tile_first(i);
    for (int pass = 0; pass < S::kPasses; ++pass) {
      if (!(m & (1u << pass))) continue;
      const int tt = pass * S::kTokPerPass + copy_tok;
      const int64_t t = tile_start + tt;
      char* gk = stage_base +
                 ((2 * static_cast<int64_t>(row)) * a.stage_row_tokens + t) *
                     S::kRowBytes +
                 copy_off;
      char* gv = gk + a.stage_row_tokens * S::kRowBytes;
      *reinterpret_cast<uint4*>(gk) =
          *reinterpret_cast<const uint4*>(sk + tt * S::kRowBytes + copy_off);
      *reinterpret_cast<uint4*>(gv) =
          *reinterpret_cast<const uint4*>(sv + tt * S::kRowBytes + copy_off);
    }
  };

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -FLT_MAX;
    l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[h][i] = 0.f;
  }

  if (my_tiles > 0) issue(0, 0);
  for (int i = 0; i < my_tiles; ++i) {
    if (i + 1 < my_tiles) {
      issue(i + 1, (i + 1) % kStages);
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if (staging) stage_out(i, i % kStages);
    const char* sk = smem + (i % kStages) * 2 * kTileBytes;
    const char* sv = sk + kTileBytes;
    const int valid_n =
        static_cast<int>(min(static_cast<int64_t>(TT), total - tile_first(i)));
#pragma unroll
    for (int j = 0; j < S::kTokPerThread; j += U) {
      float s[U][G];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int t = (j + u) * S::kTokGroups + tg;
        float k[8];
        Load8AsFloat<T>(sk + t * S::kRowBytes + lane * 8 * sizeof(T), k);
#pragma unroll
        for (int h = 0; h < G; ++h) {
          float dot = 0.f;
          if (h < group) {
#pragma unroll
            for (int e = 0; e < 8; ++e) dot += q[h][e] * k[e];
          }
#pragma unroll
          for (int off = S::kLanes / 2; off > 0; off /= 2)
            dot += __shfl_xor_sync(0xffffffffu, dot, off, S::kLanes);
          s[u][h] = dot;
        }
      }
      float p[U][G];
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float mx = m[h];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if ((j + u) * S::kTokGroups + tg < valid_n) mx = fmaxf(mx, s[u][h]);
        }
        if (mx > m[h]) {
          const float corr = __expf(m[h] - mx);
          l[h] *= corr;
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[h][e] *= corr;
          m[h] = mx;
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const bool valid = (j + u) * S::kTokGroups + tg < valid_n;
          p[u][h] = valid ? __expf(s[u][h] - mx) : 0.f;
          l[h] += p[u][h];
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int t = (j + u) * S::kTokGroups + tg;
        float v[8];
        Load8AsFloat<T>(sv + t * S::kRowBytes + lane * 8 * sizeof(T), v);
#pragma unroll
        for (int h = 0; h < G; ++h) {
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[h][e] += p[u][h] * v[e];
        }
      }
    }
    __syncthreads();  // the stage is refilled by the next iteration's issue
  }

  // Block reduction across token groups, one q head at a time, in the tile
  // buffers (no copies are in flight any more).
  float* s_m = reinterpret_cast<float*>(smem);
  float* s_l = s_m + S::kTokGroups;
  float* s_acc = s_l + S::kTokGroups;  // [kTokGroups][D]
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (h >= group) break;  // uniform across the block
    if (lane == 0) {
      s_m[tg] = m[h];
      s_l[tg] = l[h];
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) s_acc[tg * D + lane * 8 + e] = acc[h][e];
    __syncthreads();
    float* slot =
        SplitPartial(a.split_scratch, D, row * group + h, split, a.max_splits);
    for (int d = tid; d < D; d += kThreads) {
      float mm = -FLT_MAX;
      for (int g = 0; g < S::kTokGroups; ++g) {
        if (s_l[g] > 0.f) mm = fmaxf(mm, s_m[g]);
      }
      float den = 0.f, num = 0.f;
      for (int g = 0; g < S::kTokGroups; ++g) {
        if (s_l[g] == 0.f) continue;
        const float w = __expf(s_m[g] - mm);
        den += s_l[g] * w;
        num += s_acc[g * D + d] * w;
      }
      slot[2 + d] = num;
      if (d == 0) {
        slot[0] = den > 0.f ? mm : -INFINITY;
        slot[1] = den;
      }
    }
    __syncthreads();
  }
}

template <int D>
__global__ void PagedMergeKernel(PagedAttentionArgs a, int num_splits) {
  WaitForPriorGrids();
  AllowDependentLaunch();
  MergeSplits<D>(
      {a.split_scratch, a.max_splits, num_splits, a.tail_max, a.tail_den,
       a.tail_num, a.out_max, a.out_den, a.out_num, a.out},
      blockIdx.x);
}

// Whether launches on the current device use programmatic dependent launch.
bool UsePdl() {
  static const bool disabled = [] {
    const char* v = std::getenv("WAVEKV_PAGED_NO_PDL");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  if (disabled) return false;
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                             device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major >= 9;
}

// Launches `kernel` on `stream`, as a programmatic dependent of the previous
// kernel where supported.
template <typename... Params, typename... Args>
cudaError_t LaunchDependent(void (*kernel)(Params...), dim3 grid, dim3 block,
                            size_t smem, cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  // Not on the legacy default stream (implicitly synchronising).
  if (stream != nullptr && stream != cudaStreamLegacy && UsePdl()) {
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <typename T, int D, int G>
cudaError_t PrepareSplit() {
  static const cudaError_t attr = cudaFuncSetAttribute(
      PagedSplitKernel<T, D, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      kSmemBytes);
  return attr;
}

template <typename T, int D, int G>
int SplitBlocksPerSm() {
  if (cudaError_t e = PrepareSplit<T, D, G>(); e != cudaSuccess) {
    return -static_cast<int>(e);
  }
  int blocks = 0;
  const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, PagedSplitKernel<T, D, G>, kThreads, kSmemBytes);
  return e == cudaSuccess ? blocks : -static_cast<int>(e);
}

template <typename T, int D>
int BlocksPerSmD(int group) {
  if (group <= 1) return SplitBlocksPerSm<T, D, 1>();
  if (group <= 2) return SplitBlocksPerSm<T, D, 2>();
  if (group <= 4) return SplitBlocksPerSm<T, D, 4>();
  return SplitBlocksPerSm<T, D, 8>();
}

template <typename T>
int BlocksPerSmT(const PagedAttentionArgs& a) {
  switch (a.head_dim) {
    case 64:
      return BlocksPerSmD<T, 64>(a.group);
    case 128:
      return BlocksPerSmD<T, 128>(a.group);
    case 256:
      return BlocksPerSmD<T, 256>(a.group);
    default:
      return -static_cast<int>(cudaErrorInvalidValue);
  }
}

template <typename T, int D, int G>
int LaunchSplit(const PagedAttentionArgs& a, int num_splits,
                cudaStream_t stream) {
  if (cudaError_t e = PrepareSplit<T, D, G>(); e != cudaSuccess) {
    return static_cast<int>(e);
  }
  return static_cast<int>(
      LaunchDependent(PagedSplitKernel<T, D, G>, dim3(num_splits, a.num_rows),
                      dim3(kThreads), kSmemBytes, stream, a, num_splits));
}

template <typename T, int D>
int Launch(const PagedAttentionArgs& a, int num_splits, cudaStream_t stream) {
  int err;
  if (a.group <= 1) {
    err = LaunchSplit<T, D, 1>(a, num_splits, stream);
  } else if (a.group <= 2) {
    err = LaunchSplit<T, D, 2>(a, num_splits, stream);
  } else if (a.group <= 4) {
    err = LaunchSplit<T, D, 4>(a, num_splits, stream);
  } else {
    err = LaunchSplit<T, D, 8>(a, num_splits, stream);
  }
  if (err != 0) return err;
  constexpr int kMergeThreads = D < 128 ? D : 128;
  return static_cast<int>(
      LaunchDependent(PagedMergeKernel<D>, dim3(a.num_rows * a.group),
                      dim3(kMergeThreads), 0, stream, a, num_splits));
}

template <typename T>
int LaunchTyped(const PagedAttentionArgs& a, int num_splits,
                cudaStream_t stream) {
  switch (a.head_dim) {
    case 64:
      return Launch<T, 64>(a, num_splits, stream);
    case 128:
      return Launch<T, 128>(a, num_splits, stream);
    case 256:
      return Launch<T, 256>(a, num_splits, stream);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

// Page-table build: one block per row; kPagesItems consecutive selected
// ids per thread, so up to kPagesThreads * kPagesItems ids cost one round
// of independent loads (ids, then sizes / offsets / slot lists) and one
// block scan.
constexpr int kPagesThreads = 512;
constexpr int kPagesItems = 4;

__global__ void __launch_bounds__(kPagesThreads)
    ClusterPagesKernel(ClusterPagesArgs a, int elem_bytes) {
  using Scan = cub::BlockScan<int, kPagesThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ unsigned s_lookups, s_hits;
  WaitForPriorGrids();
  AllowDependentLaunch();
  const int r = blockIdx.x;
  const int tid = threadIdx.x;
  const int sel = a.num_selected;
  const int nc = a.num_clusters;
  KvPage* out = a.pages + static_cast<int64_t>(r) * (1 + sel);
  const int steady_n =
      a.steady_tokens != nullptr ? max(0, a.steady_tokens[r]) : 0;
  if (tid == 0) {
    KvPage steady;
    steady.num_tokens = steady_n;
    if (steady_n > 0) {
      steady.keys = a.steady_keys[r];
      steady.values = a.steady_values[r];
    }
    out[0] = steady;
    s_lookups = 0;
    s_hits = 0;
  }
  __syncthreads();
  const char* store =
      sel > 0 ? static_cast<const char*>(a.row_store[r]) : nullptr;
  const int64_t row_bytes = static_cast<int64_t>(a.head_dim) * elem_bytes;
  const int32_t* ids = a.selected + static_cast<int64_t>(r) * sel;
  const int64_t rc0 = static_cast<int64_t>(r) * nc;
  int carry = steady_n;
  unsigned lookups = 0, hits = 0;
  for (int base = 0; base < sel; base += kPagesThreads * kPagesItems) {
    int c[kPagesItems], n[kPagesItems], sl[kPagesItems];
    int64_t off[kPagesItems];
#pragma unroll
    for (int j = 0; j < kPagesItems; ++j) {
      const int i = base + tid * kPagesItems + j;
      c[j] = i < sel ? ids[i] : -1;
    }
#pragma unroll
    for (int j = 0; j < kPagesItems; ++j) {
      const bool ok = c[j] >= 0 && c[j] < nc;
      n[j] = ok ? max(0, a.cluster_sizes[rc0 + c[j]]) : 0;
      off[j] = ok ? a.cluster_offsets[rc0 + c[j]] : 0;
      sl[j] = ok && a.cluster_slot_list != nullptr
                  ? a.cluster_slot_list[rc0 + c[j]]
                  : -1;
    }
    int excl[kPagesItems];
    int total = 0;
    Scan(scan_tmp).ExclusiveSum(n, excl, total);
#pragma unroll
    for (int j = 0; j < kPagesItems; ++j) {
      const int i = base + tid * kPagesItems + j;
      if (i >= sel) continue;
      KvPage pg;
      pg.first_token = carry + excl[j];
      pg.num_tokens = n[j];
      if (n[j] > 0) {
        const char* k = store + off[j] * elem_bytes;
        pg.keys = k;
        pg.values = k + n[j] * row_bytes;
        pg.slot_list = sl[j];
        pg.stage = a.stage_misses && sl[j] < 0 ? 1 : 0;
        ++lookups;
        if (sl[j] >= 0) ++hits;
      }
      out[1 + i] = pg;
    }
    carry += total;
    __syncthreads();  // scan_tmp is reused by the next round
  }
  if (lookups > 0) atomicAdd(&s_lookups, lookups);
  if (hits > 0) atomicAdd(&s_hits, hits);
  __syncthreads();
  if (tid == 0) {
    if (a.lookups != nullptr && s_lookups > 0) atomicAdd(a.lookups, s_lookups);
    if (a.hits != nullptr && s_hits > 0) atomicAdd(a.hits, s_hits);
  }
}

}  // namespace

int LaunchPagedAttentionRaw(const PagedAttentionArgs& args, int num_splits,
                            cudaStream_t stream) {
  switch (args.dtype) {
    case ElemType::kFp16:
      return LaunchTyped<__half>(args, num_splits, stream);
    case ElemType::kBf16:
      return LaunchTyped<__nv_bfloat16>(args, num_splits, stream);
    case ElemType::kFp32:
      return LaunchTyped<float>(args, num_splits, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int PagedSplitBlocksPerSm(const PagedAttentionArgs& args) {
  switch (args.dtype) {
    case ElemType::kFp16:
      return BlocksPerSmT<__half>(args);
    case ElemType::kBf16:
      return BlocksPerSmT<__nv_bfloat16>(args);
    case ElemType::kFp32:
      return BlocksPerSmT<float>(args);
  }
  return -static_cast<int>(cudaErrorInvalidValue);
}

int LaunchClusterPagesRaw(const ClusterPagesArgs& args, cudaStream_t stream) {
  const int elem = args.dtype == ElemType::kFp32 ? 4 : 2;
  return static_cast<int>(
      LaunchDependent(ClusterPagesKernel, dim3(args.num_rows),
                      dim3(kPagesThreads), 0, stream, args, elem));
}

}  // namespace wavekv::cuda
