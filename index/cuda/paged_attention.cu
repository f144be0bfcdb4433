// Paged split-K flash-decoding kernels (see paged_attention.h for the
// contract).
//
// Split kernel: grid (num_splits, num_rows); a block serves the whole GQA
// group of one row over one contiguous range of the row's tokens, so every
// K/V byte is read once. Tokens are staged through shared memory in tiles of
// 16 KiB of keys + 16 KiB of values, two stages deep, with cp.async (16-byte
// copies that need no registers, so many bytes are in flight per thread).
// Each copying thread resolves its token to an address through the page
// table with a cursor that only moves forward (its tokens increase), so a
// page lookup costs a compare for most tokens. Pages may point at device
// memory, mapped pinned host memory (the copy is then a zero-copy PCIe read)
// or wave-buffer slots. Compute: kLanes = head_dim / 8 threads per token, 8
// elements each; U tokens are folded into the running softmax at once (one
// rescale per U tokens). The block then reduces its token groups in shared
// memory. Merge kernel: one block per q head combines the splits and the
// estimated tail triple with a log-sum-exp rescale.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
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

// Forward-only position in a row's page table.
struct Cursor {
  int p;     // current page index (absolute)
  int last;  // last page index of the row
  int64_t first;
  int64_t end;  // first + num_tokens
  int slot_list;
  int stage;
  const char* keys;
  const char* values;

  __device__ __forceinline__ void Load(const KvPage* pages) {
    const KvPage& pg = pages[p];
    first = pg.first_token;
    end = first + pg.num_tokens;
    slot_list = pg.slot_list;
    stage = pg.stage;
    keys = static_cast<const char*>(pg.keys);
    values = static_cast<const char*>(pg.values);
  }
  // Positions the cursor on the page holding token `tok` (< row total).
  __device__ __forceinline__ void Seek(const KvPage* pages, int row_begin,
                                       int64_t tok) {
    int lo = row_begin, hi = last;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (pages[mid].first_token <= tok) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    p = lo;
    Load(pages);
    Advance(pages, tok);
  }
  __device__ __forceinline__ void Advance(const KvPage* pages, int64_t tok) {
    while (tok >= end && p < last) {
      ++p;
      Load(pages);
    }
  }
};

// G: q heads per row this instantiation holds (>= the real group).
template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads)
    PagedSplitKernel(PagedAttentionArgs a, int num_splits) {
  using S = Shape<T, D>;
  constexpr int U = G <= 4 ? 4 : 2;  // tokens folded into the softmax at once
  extern __shared__ __align__(16) char smem[];
  const int row = blockIdx.y;
  const int split = blockIdx.x;
  const int tid = threadIdx.x;
  const int group = a.group;
  const int row_begin = row * a.pages_per_row;
  const KvPage* pages = a.pages;

  Cursor cur;
  cur.last = row_begin + a.pages_per_row - 1;
  const KvPage& last_pg = pages[cur.last];
  const int64_t total =
      static_cast<int64_t>(last_pg.first_token) + last_pg.num_tokens;
  const int64_t chunk = (total + num_splits - 1) / num_splits;
  const int64_t begin = min(total, static_cast<int64_t>(split) * chunk);
  const int64_t end = min(total, begin + chunk);
  const int num_tiles =
      static_cast<int>((end - begin + S::kTileTokens - 1) / S::kTileTokens);

  const char* pool = static_cast<const char*>(a.slot_pool);
  const int copy_tok = tid / S::kChunksPerTok;
  const int copy_off = (tid % S::kChunksPerTok) * 16;
  if (begin < end) cur.Seek(pages, row_begin, begin + copy_tok);

  // Bit (buf * kPasses + pass): this thread's chunk of that pass of the
  // tile in buffer `buf` goes to the staging area too.
  unsigned stage_mask = 0;
  char* const stage_base = static_cast<char*>(a.stage);
  const bool staging = stage_base != nullptr;

  auto issue = [&](int tile, int buf) {
    char* sk = smem + buf * 2 * kTileBytes;
    char* sv = sk + kTileBytes;
    const int64_t tile_start =
        begin + static_cast<int64_t>(tile) * S::kTileTokens;
    stage_mask &= ~(((1u << S::kPasses) - 1) << (buf * S::kPasses));
#pragma unroll
    for (int pass = 0; pass < S::kPasses; ++pass) {
      const int tt = pass * S::kTokPerPass + copy_tok;
      const int64_t tok = tile_start + tt;
      char* dk = sk + tt * S::kRowBytes + copy_off;
      char* dv = sv + tt * S::kRowBytes + copy_off;
      if (tok < end) {
        cur.Advance(pages, tok);
        const int64_t local = tok - cur.first;
        const char *kp, *vp;
        if (cur.slot_list >= 0) {
          const int slot = a.slot_ids[cur.slot_list + local / kSlotTokens];
          kp = pool + (static_cast<int64_t>(slot) * 2 * kSlotTokens +
                       local % kSlotTokens) *
                          S::kRowBytes;
          vp = kp + kSlotTokens * S::kRowBytes;
        } else {
          kp = cur.keys + local * S::kRowBytes;
          vp = cur.values + local * S::kRowBytes;
          if (staging && cur.stage && tok < a.stage_row_tokens) {
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
  auto stage_out = [&](int tile, int buf) {
    const unsigned m = stage_mask >> (buf * S::kPasses);
    if ((m & ((1u << S::kPasses) - 1)) == 0) return;
    const char* sk = smem + buf * 2 * kTileBytes;
    const char* sv = sk + kTileBytes;
    const int64_t tile_start =
        begin + static_cast<int64_t>(tile) * S::kTileTokens;
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

  const int lane = tid % S::kLanes;
  const int tg = tid / S::kLanes;
  float q[G][8];
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -FLT_MAX;
    l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      acc[h][i] = 0.f;
      q[h][i] = h < group
                    ? a.queries[(static_cast<int64_t>(row) * group + h) * D +
                                lane * 8 + i] *
                          a.scale
                    : 0.f;
    }
  }

  if (num_tiles > 0) issue(0, 0);
  for (int tile = 0; tile < num_tiles; ++tile) {
    if (tile + 1 < num_tiles) {
      issue(tile + 1, (tile + 1) % kStages);
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if (staging) stage_out(tile, tile % kStages);
    const char* sk = smem + (tile % kStages) * 2 * kTileBytes;
    const char* sv = sk + kTileBytes;
    const int64_t tile_start =
        begin + static_cast<int64_t>(tile) * S::kTileTokens;
    const int valid_n = static_cast<int>(
        min(static_cast<int64_t>(S::kTileTokens), end - tile_start));
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
            for (int i = 0; i < 8; ++i) dot += q[h][i] * k[i];
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
          for (int i = 0; i < 8; ++i) acc[h][i] *= corr;
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
          for (int i = 0; i < 8; ++i) acc[h][i] += p[u][h] * v[i];
        }
      }
    }
    __syncthreads();  // the stage is refilled by the next iteration's issue
  }

  // Block reduction across token groups, one q head at a time.
  __shared__ float s_m[S::kTokGroups];
  __shared__ float s_l[S::kTokGroups];
  __shared__ float s_acc[S::kTokGroups][D];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (h >= group) break;  // uniform across the block
    if (lane == 0) {
      s_m[tg] = m[h];
      s_l[tg] = l[h];
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) s_acc[tg][lane * 8 + i] = acc[h][i];
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
        num += s_acc[g][d] * w;
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
  MergeSplits<D>({a.split_scratch, a.max_splits, num_splits, a.tail_max,
                  a.tail_den, a.tail_num, a.out_max, a.out_den, a.out_num,
                  a.out},
                 blockIdx.x);
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
  dim3 grid(num_splits, a.num_rows);
  PagedSplitKernel<T, D, G>
      <<<grid, kThreads, kSmemBytes, stream>>>(a, num_splits);
  return static_cast<int>(cudaGetLastError());
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
  const int merge_blocks = a.num_rows * a.group;
  PagedMergeKernel<D>
      <<<merge_blocks, kMergeThreads, 0, stream>>>(a, num_splits);
  return static_cast<int>(cudaGetLastError());
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

constexpr int kPagesThreads = 256;

__global__ void __launch_bounds__(kPagesThreads)
    ClusterPagesKernel(ClusterPagesArgs a, int elem_bytes) {
  using Scan = cub::BlockScan<int, kPagesThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int carry;
  __shared__ unsigned s_lookups, s_hits;
  const int r = blockIdx.x;
  const int tid = threadIdx.x;
  const int sel = a.num_selected;
  const int nc = a.num_clusters;
  KvPage* out = a.pages + static_cast<int64_t>(r) * (1 + sel);
  if (tid == 0) {
    KvPage steady;
    steady.num_tokens = a.steady_tokens != nullptr ? a.steady_tokens[r] : 0;
    if (steady.num_tokens > 0) {
      steady.keys = a.steady_keys[r];
      steady.values = a.steady_values[r];
    }
    out[0] = steady;
    carry = steady.num_tokens;
    s_lookups = 0;
    s_hits = 0;
  }
  __syncthreads();
  const int64_t row_bytes = static_cast<int64_t>(a.head_dim) * elem_bytes;
  for (int base = 0; base < sel; base += kPagesThreads) {
    const int i = base + tid;
    int c = -1, n = 0;
    if (i < sel) {
      c = a.selected[static_cast<int64_t>(r) * sel + i];
      if (c >= 0 && c < nc) {
        n = max(0, a.cluster_sizes[static_cast<int64_t>(r) * nc + c]);
      }
    }
    int excl = 0, total = 0;
    Scan(scan_tmp).ExclusiveSum(n, excl, total);
    if (i < sel) {
      KvPage pg;
      pg.first_token = carry + excl;
      pg.num_tokens = n;
      if (n > 0) {
        const int64_t rc = static_cast<int64_t>(r) * nc + c;
        const char* k = static_cast<const char*>(a.row_store[r]) +
                        a.cluster_offsets[rc] * elem_bytes;
        pg.keys = k;
        pg.values = k + n * row_bytes;
        pg.slot_list =
            a.cluster_slot_list != nullptr ? a.cluster_slot_list[rc] : -1;
        pg.stage = a.stage_misses && pg.slot_list < 0 ? 1 : 0;
        atomicAdd(&s_lookups, 1u);
        if (pg.slot_list >= 0) atomicAdd(&s_hits, 1u);
      }
      out[1 + i] = pg;
    }
    __syncthreads();  // every thread has read `carry`
    if (tid == 0) carry += total;
    __syncthreads();
  }
  if (tid == 0) {
    if (a.lookups != nullptr) atomicAdd(a.lookups, s_lookups);
    if (a.hits != nullptr) atomicAdd(a.hits, s_hits);
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
  ClusterPagesKernel<<<args.num_rows, kPagesThreads, 0, stream>>>(args, elem);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wavekv::cuda
