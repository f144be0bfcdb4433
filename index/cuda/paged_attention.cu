// Paged split-K flash-decoding kernels (see paged_attention.h for the
// contract).
//
// Split kernel: grid (num_splits, num_rows); a block serves the whole GQA
// group of one row, so every K/V byte is read once. A row's tokens are cut
// into tiles of 16 KiB of keys + 16 KiB of values. Rows of several pages:
// split s takes tiles s, s + num_splits, s + 2 * num_splits, ...
// (interleaved, so a run of costly pages — e.g. the wave buffer's misses,
// which cluster at the low-ranked end of a selection and are read from host
// memory — is spread over all splits instead of landing on the last few).
// Rows of one page (full attention): one contiguous range per split. Tiles
// are staged through shared memory two deep with cp.async (16-byte copies
// that need no registers, so many bytes are in flight per thread).
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
};

// G: q heads per row this instantiation holds (>= the real group).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads)
    PagedSplitKernel(PagedAttentionArgs a, int num_splits, int chunk_tiles) {
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

  // Interleaved: the first tile's page search goes out together with the
  // load of the row's last page (the row's length), one round trip fewer
  // before the first copies (a split past the row's end wastes only that
  // search).
  if (chunk_tiles > 0) {
    const int64_t x = static_cast<int64_t>(split) * chunk_tiles * TT;
    locate(x, x);
  }
  const int64_t total = static_cast<int64_t>(last_first) + last_n;
  const int64_t row_tiles = (total + TT - 1) / TT;
  // Split s takes chunks s, s + num_splits, ... of g consecutive tiles.
  const int g =
      chunk_tiles > 0
          ? chunk_tiles
          : static_cast<int>(
                max(int64_t{1}, (row_tiles + num_splits - 1) / num_splits));
  const int64_t span = static_cast<int64_t>(g) * num_splits;
  const int my_tiles = static_cast<int>(
      row_tiles / span * g +
      min(int64_t{g},
          max(int64_t{0}, row_tiles % span - static_cast<int64_t>(split) * g)));

  // Bit (buf * kPasses + pass): this thread's chunk of that pass of the
  // tile in buffer `buf` goes to the staging area too.
  unsigned stage_mask = 0;
  char* const stage_base = static_cast<char*>(a.stage);
  const bool staging = stage_base != nullptr;
  // The block's next tile (walked in order, no divisions) and the first
  // token of the tile in each buffer.
  int next_tile = split * g, next_within = 0;
  int64_t buf_start0 = 0, buf_start1 = 0;
  static_assert(kStages == 2, "two tile buffers");

  // Enqueues the copies of the block's next tile into buffer `buf`.
  auto issue = [&](int buf) {
    char* sk = smem + buf * 2 * kTileBytes;
    char* sv = sk + kTileBytes;
    const int64_t tile_start = static_cast<int64_t>(next_tile) * TT;
    if (++next_within == g) {
      next_within = 0;
      next_tile += (num_splits - 1) * g + 1;
    } else {
      ++next_tile;
    }
    if (buf == 0) {
      buf_start0 = tile_start;
    } else {
      buf_start1 = tile_start;
    }
    const int64_t tile_end = min(total, tile_start + TT);
    locate(tile_start, tile_end);
    stage_mask &= ~(((1u << S::kPasses) - 1) << (buf * S::kPasses));
    // This thread's first token of the tile, then a forward cursor whose
    // page lives in registers (reloaded only when a token leaves it).
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
    int gp = -1;  // page index once past the window (rare)
    int64_t first, pend;
    int slot_list, stage;
    const char *keys, *values;
    auto load_page = [&](const KvPage& pg) {
      first = pg.first_token;
      pend = first + pg.num_tokens;
      slot_list = pg.slot_list;
      stage = pg.stage;
      keys = static_cast<const char*>(pg.keys);
      values = static_cast<const char*>(pg.values);
    };
    load_page(s_win[wp]);
#pragma unroll
    for (int pass = 0; pass < S::kPasses; ++pass) {
      const int tt = pass * S::kTokPerPass + copy_tok;
      const int64_t tok = tile_start + tt;
      char* dk = sk + tt * S::kRowBytes + copy_off;
      char* dv = sv + tt * S::kRowBytes + copy_off;
      if (tok < tile_end) {
        if (tok >= pend) {
          if (tok < w_end) {
            // A later window page holds it (the last one ends at w_end).
            do {
              ++wp;
            } while (tok >= static_cast<int64_t>(s_win[wp].first_token) +
                                s_win[wp].num_tokens);
            load_page(s_win[wp]);
          } else {
            int p = gp >= 0 ? gp : w_lo + w_n - 1;
            do {
              ++p;
              load_page(pages[p]);
            } while (tok >= pend && p < last);
            gp = p;
          }
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

  // Copies this thread's staged chunks of the tile in buffer `buf` (already
  // landed in shared memory) to the staging area.
  auto stage_out = [&](int buf) {
    const unsigned m = stage_mask >> (buf * S::kPasses);
    if ((m & ((1u << S::kPasses) - 1)) == 0) return;
    const char* sk = smem + buf * 2 * kTileBytes;
    const char* sv = sk + kTileBytes;
    const int64_t tile_start = buf == 0 ? buf_start0 : buf_start1;
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

  if (my_tiles > 0) issue(0);
  for (int i = 0; i < my_tiles; ++i) {
    const int buf = i & 1;
    if (i + 1 < my_tiles) {
      issue(buf ^ 1);
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if (staging) stage_out(buf);
    const char* sk = smem + buf * 2 * kTileBytes;
    const char* sv = sk + kTileBytes;
    const int64_t tile_start = buf == 0 ? buf_start0 : buf_start1;
    const int valid_n =
        static_cast<int>(min(static_cast<int64_t>(TT), total - tile_start));
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

  // Block reduction across token groups, all q heads at once, in the tile
  // buffers (no copies are in flight any more).
  static_assert(G * S::kTokGroups * (D + 2) * 4 <= kSmemBytes, "reduction");
  float* s_m = reinterpret_cast<float*>(smem);  // [G][kTokGroups]
  float* s_l = s_m + G * S::kTokGroups;
  float* s_acc = s_l + G * S::kTokGroups;  // [G][kTokGroups][D]
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (h >= group) break;  // uniform across the block
    if (lane == 0) {
      s_m[h * S::kTokGroups + tg] = m[h];
      s_l[h * S::kTokGroups + tg] = l[h];
    }
    float4* dst = reinterpret_cast<float4*>(
        s_acc + (h * S::kTokGroups + tg) * D + lane * 8);
    dst[0] = make_float4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]);
    dst[1] = make_float4(acc[h][4], acc[h][5], acc[h][6], acc[h][7]);
  }
  __syncthreads();
  for (int o = tid; o < group * D; o += kThreads) {
    const int h = o / D, d = o % D;
    const float* hm = s_m + h * S::kTokGroups;
    const float* hl = s_l + h * S::kTokGroups;
    float mm = -FLT_MAX;
    for (int g2 = 0; g2 < S::kTokGroups; ++g2) {
      if (hl[g2] > 0.f) mm = fmaxf(mm, hm[g2]);
    }
    float den = 0.f, num = 0.f;
    for (int g2 = 0; g2 < S::kTokGroups; ++g2) {
      if (hl[g2] == 0.f) continue;
      const float w = __expf(hm[g2] - mm);
      den += hl[g2] * w;
      num += s_acc[(h * S::kTokGroups + g2) * D + d] * w;
    }
    float* slot =
        SplitPartial(a.split_scratch, D, row * group + h, split, a.max_splits);
    slot[2 + d] = num;
    if (d == 0) {
      slot[0] = den > 0.f ? mm : -INFINITY;
      slot[1] = den;
    }
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

// Tiles per chunk of the split assignment: 1 (interleaved) for paged rows,
// 0 (one contiguous range per split) for rows of one run, where nothing can
// be unbalanced. WAVEKV_PAGED_CHUNK_TILES=N overrides (diagnostics).
int ChunkTiles(const PagedAttentionArgs& a) {
  static const int forced = [] {
    const char* v = std::getenv("WAVEKV_PAGED_CHUNK_TILES");
    return v != nullptr && v[0] != '\0' ? std::atoi(v) : -1;
  }();
  if (forced >= 0) return forced;
  return a.pages_per_row == 1 ? 0 : 1;
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
  return static_cast<int>(LaunchDependent(
      PagedSplitKernel<T, D, G>, dim3(num_splits, a.num_rows), dim3(kThreads),
      kSmemBytes, stream, a, num_splits, ChunkTiles(a)));
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
  if (a.tail_ready != nullptr) {
    if (cudaError_t e = cudaStreamWaitEvent(stream, a.tail_ready);
        e != cudaSuccess) {
      return static_cast<int>(e);
    }
  }
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
// ids per thread (the smallest of 1, 2, 4, 8 that covers the selection),
// so up to 2048 ids cost one round of independent loads (ids, then sizes /
// offsets / slot lists) and one block scan.
constexpr int kPagesThreads = 256;

template <int kPagesItems>
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
  const dim3 grid(args.num_rows), block(kPagesThreads);
  cudaError_t e;
  if (args.num_selected <= kPagesThreads) {
    e = LaunchDependent(ClusterPagesKernel<1>, grid, block, 0, stream, args,
                        elem);
  } else if (args.num_selected <= 2 * kPagesThreads) {
    e = LaunchDependent(ClusterPagesKernel<2>, grid, block, 0, stream, args,
                        elem);
  } else if (args.num_selected <= 4 * kPagesThreads) {
    e = LaunchDependent(ClusterPagesKernel<4>, grid, block, 0, stream, args,
                        elem);
  } else {
    e = LaunchDependent(ClusterPagesKernel<8>, grid, block, 0, stream, args,
                        elem);
  }
  return static_cast<int>(e);
}

}  // namespace wavekv::cuda
