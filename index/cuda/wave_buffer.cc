#include "index/cuda/wave_buffer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace wavekv::cuda {
namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  if (err == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": ", cudaGetErrorString(err)));
  }
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

#define WB_CUDA(expr, what)                                              \
  do {                                                                   \
    if (absl::Status _s = CudaStatus((expr), what); !_s.ok()) return _s; \
  } while (0)

size_t ElemBytes(ElemType t) { return t == ElemType::kFp32 ? 4 : 2; }

}  // namespace

absl::Status WaveBufferOptions::Validate() const {
  if (!(buffer_fraction > 0.0 && buffer_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "buffer_fraction: ", buffer_fraction, " must be in (0, 1]"));
  }
  if (steady_capacity_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "steady_capacity_tokens: ", steady_capacity_tokens, " must be >= 0"));
  }
  if (update_threads < 1 || update_threads > kMaxAdmitSegments) {
    return absl::InvalidArgumentError(
        absl::StrCat("update_threads: ", update_threads, " must be in 1..",
                     kMaxAdmitSegments));
  }
  if (update_ids_per_thread < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "update_ids_per_thread: ", update_ids_per_thread, " must be >= 1"));
  }
  if (max_selected <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_selected: ", max_selected, " must be > 0"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WaveBuffer>> WaveBuffer::Create(
    const WaveBufferOptions& options, ClusterStoreLayout layout) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (layout.head_dim != 64 && layout.head_dim != 128 &&
      layout.head_dim != 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim: ", layout.head_dim, " is not supported (64, 128 or 256)"));
  }
  const int64_t n = int64_t{layout.num_rows} * layout.num_clusters;
  if (static_cast<int64_t>(layout.cluster_offsets.size()) != n ||
      static_cast<int64_t>(layout.row_store.size()) != layout.num_rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster_offsets/row_store: expected ", n, "/", layout.num_rows,
        " entries, got ", layout.cluster_offsets.size(), "/",
        layout.row_store.size()));
  }
  // Capacity: the fraction of the largest row's slots, at least one.
  auto sizing = WaveBufferLru::Create(layout.num_rows, layout.num_clusters,
                                      layout.cluster_sizes, 0, kSlotTokens);
  if (!sizing.ok()) return sizing.status();
  const int64_t pieces = sizing->slot_table_size() / layout.num_rows;
  const int64_t slots = std::max<int64_t>(
      1, static_cast<int64_t>(std::ceil(options.buffer_fraction * pieces)));
  auto lru = WaveBufferLru::Create(layout.num_rows, layout.num_clusters,
                                   layout.cluster_sizes,
                                   static_cast<int>(slots), kSlotTokens);
  if (!lru.ok()) return lru.status();
  std::unique_ptr<WaveBuffer> b(
      new WaveBuffer(options, std::move(layout), std::move(*lru)));
  if (absl::Status s = b->Init(); !s.ok()) return s;
  return b;
}

WaveBuffer::WaveBuffer(const WaveBufferOptions& options,
                       ClusterStoreLayout layout, WaveBufferLru lru)
    : options_(options), layout_(std::move(layout)), lru_(std::move(lru)) {}

WaveBuffer::~WaveBuffer() {
  if (async_thread_.joinable()) {
    {
      absl::MutexLock lock(&async_mu_);
      async_stop_ = true;
    }
    async_thread_.join();
  }
  if (copy_stream_ != nullptr) {
    cudaStreamSynchronize(copy_stream_);
    cudaStreamDestroy(copy_stream_);
  }
  if (ids_ready_ != nullptr) cudaEventDestroy(ids_ready_);
  if (admitted_ != nullptr) cudaEventDestroy(admitted_);
}

absl::StatusOr<void*> WaveBuffer::AllocDevice(size_t bytes, DevicePtr* owner) {
  void* p = nullptr;
  WB_CUDA(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc");
  owner->reset(p);
  device_bytes_ += bytes;
  return p;
}

absl::Status WaveBuffer::Init() {
  const int rows = layout_.num_rows;
  const int64_t nc = int64_t{rows} * layout_.num_clusters;
  row_bytes_ = layout_.head_dim * ElemBytes(layout_.dtype);
  const size_t slot_bytes = 2 * kSlotTokens * row_bytes_;
  const int64_t slots = int64_t{rows} * lru_.slots_per_row();

  auto alloc = [&](size_t bytes, DevicePtr* owner) -> absl::Status {
    return AllocDevice(bytes, owner).status();
  };
  if (absl::Status s = alloc(slots * slot_bytes, &pool_); !s.ok()) return s;
  if (absl::Status s = alloc(lru_.slot_table_size() * 4, &slot_ids_); !s.ok()) {
    return s;
  }
  if (absl::Status s = alloc(nc * 4, &slot_list_); !s.ok()) return s;
  if (absl::Status s = alloc(nc * 4, &sizes_); !s.ok()) return s;
  if (absl::Status s = alloc(nc * 8, &offsets_); !s.ok()) return s;
  if (absl::Status s = alloc(rows * sizeof(void*), &row_store_); !s.ok()) {
    return s;
  }
  const size_t steady_row = options_.steady_capacity_tokens * row_bytes_;
  if (absl::Status s = alloc(2 * rows * steady_row, &steady_); !s.ok()) {
    return s;
  }
  if (absl::Status s = alloc(rows * sizeof(void*), &steady_keys_); !s.ok()) {
    return s;
  }
  if (absl::Status s = alloc(rows * sizeof(void*), &steady_values_); !s.ok()) {
    return s;
  }
  if (absl::Status s = alloc(rows * 4, &steady_tokens_); !s.ok()) return s;
  if (options_.stage_misses) {
    int32_t max_size = 0;
    for (int32_t x : layout_.cluster_sizes) max_size = std::max(max_size, x);
    stage_row_tokens_ = options_.steady_capacity_tokens +
                        int64_t{options_.max_selected} * max_size;
    if (absl::Status s =
            alloc(2 * rows * stage_row_tokens_ * row_bytes_, &stage_);
        !s.ok()) {
      return s;
    }
  }

  WB_CUDA(cudaMemset(slot_ids_.get(), 0xFF, lru_.slot_table_size() * 4),
          "cudaMemset");
  WB_CUDA(cudaMemset(slot_list_.get(), 0xFF, nc * 4), "cudaMemset");
  WB_CUDA(cudaMemset(steady_tokens_.get(), 0, rows * 4), "cudaMemset");
  WB_CUDA(cudaMemcpy(sizes_.get(), layout_.cluster_sizes.data(), nc * 4,
                     cudaMemcpyHostToDevice),
          "cudaMemcpy");
  WB_CUDA(cudaMemcpy(offsets_.get(), layout_.cluster_offsets.data(), nc * 8,
                     cudaMemcpyHostToDevice),
          "cudaMemcpy");
  WB_CUDA(cudaMemcpy(row_store_.get(), layout_.row_store.data(),
                     rows * sizeof(void*), cudaMemcpyHostToDevice),
          "cudaMemcpy");
  std::vector<const void*> sk(rows), sv(rows);
  for (int r = 0; r < rows; ++r) {
    sk[r] = static_cast<char*>(steady_.get()) + 2 * r * steady_row;
    sv[r] = static_cast<const char*>(sk[r]) + steady_row;
  }
  WB_CUDA(cudaMemcpy(steady_keys_.get(), sk.data(), rows * sizeof(void*),
                     cudaMemcpyHostToDevice),
          "cudaMemcpy");
  WB_CUDA(cudaMemcpy(steady_values_.get(), sv.data(), rows * sizeof(void*),
                     cudaMemcpyHostToDevice),
          "cudaMemcpy");
  steady_tokens_host_.assign(rows, 0);

  // Pinned staging, sized for the worst step: every slot refilled (a slot
  // takes at most one copy and one slot-id write per step: what a step
  // admits it does not evict), every resident cluster evicted and as many
  // admitted (<= one per slot each). Rows own fixed ranges of it, so each
  // Update thread fills the segment of its rows.
  max_copies_ = static_cast<size_t>(slots);
  max_writes_ = 3 * static_cast<size_t>(slots);
  workers_ = std::make_unique<WaveBufferWorkers>(
      std::min(options_.update_threads, rows));
  void* p = nullptr;
  WB_CUDA(cudaHostAlloc(&p, int64_t{rows} * options_.max_selected * 4,
                        cudaHostAllocDefault),
          "cudaHostAlloc");
  host_ids_.reset(p);
  WB_CUDA(
      cudaHostAlloc(&p, max_copies_ * sizeof(SlotCopy), cudaHostAllocMapped),
      "cudaHostAlloc");
  host_copies_.reset(p);
  WB_CUDA(cudaHostAlloc(&p, max_writes_ * sizeof(SlotTableWrite),
                        cudaHostAllocMapped),
          "cudaHostAlloc");
  host_writes_.reset(p);
  int lo = 0, hi = 0;
  WB_CUDA(cudaDeviceGetStreamPriorityRange(&lo, &hi), "stream priorities");
  // Admissions are for later steps: the lowest priority.
  WB_CUDA(
      cudaStreamCreateWithPriority(&copy_stream_, cudaStreamNonBlocking, lo),
      "cudaStreamCreate");
  WB_CUDA(cudaEventCreateWithFlags(&ids_ready_, cudaEventDisableTiming),
          "cudaEventCreate");
  WB_CUDA(cudaEventCreateWithFlags(&admitted_, cudaEventDisableTiming),
          "cudaEventCreate");
  WB_CUDA(cudaEventRecord(admitted_, copy_stream_), "cudaEventRecord");
  return absl::OkStatus();
}

void WaveBuffer::FillPagesArgs(ClusterPagesArgs* a) const {
  a->dtype = layout_.dtype;
  a->head_dim = layout_.head_dim;
  a->num_rows = layout_.num_rows;
  a->num_clusters = layout_.num_clusters;
  a->cluster_sizes = static_cast<const int32_t*>(sizes_.get());
  a->cluster_offsets = static_cast<const int64_t*>(offsets_.get());
  a->row_store = static_cast<const void* const*>(row_store_.get());
  a->cluster_slot_list = static_cast<const int32_t*>(slot_list_.get());
  a->steady_keys = static_cast<const void* const*>(steady_keys_.get());
  a->steady_values = static_cast<const void* const*>(steady_values_.get());
  a->steady_tokens = static_cast<const int32_t*>(steady_tokens_.get());
  a->stage_misses = stage_ != nullptr;
}

void WaveBuffer::FillAttentionArgs(PagedAttentionArgs* a) const {
  a->slot_pool = pool_.get();
  a->slot_ids = static_cast<const int32_t*>(slot_ids_.get());
  a->stage = stage_.get();
  a->stage_row_tokens = stage_row_tokens_;
}

absl::Status WaveBuffer::LoadSteady(int row, const void* keys,
                                    const void* values, int num_tokens,
                                    cudaStream_t stream) {
  if (row < 0 || row >= layout_.num_rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "row: ", row, " out of range [0, ", layout_.num_rows, ")"));
  }
  if (num_tokens < 0 || num_tokens > options_.steady_capacity_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_tokens: ", num_tokens, " exceeds steady_capacity_tokens ",
        options_.steady_capacity_tokens));
  }
  const size_t steady_row = options_.steady_capacity_tokens * row_bytes_;
  char* dst = static_cast<char*>(steady_.get()) + 2 * row * steady_row;
  const size_t bytes = num_tokens * row_bytes_;
  WB_CUDA(cudaMemcpyAsync(dst, keys, bytes, cudaMemcpyDefault, stream),
          "cudaMemcpyAsync");
  WB_CUDA(cudaMemcpyAsync(dst + steady_row, values, bytes, cudaMemcpyDefault,
                          stream),
          "cudaMemcpyAsync");
  steady_tokens_host_[row] = num_tokens;
  WB_CUDA(cudaMemcpyAsync(static_cast<int32_t*>(steady_tokens_.get()) + row,
                          &steady_tokens_host_[row], 4, cudaMemcpyHostToDevice,
                          stream),
          "cudaMemcpyAsync");
  return absl::OkStatus();
}

absl::Status WaveBuffer::UpdateAsync() {
  if (absl::Status s = FinishUpdate(); !s.ok()) return s;
  if (!selection_pending_) {
    return absl::FailedPreconditionError(
        "wave buffer: UpdateAsync without a RecordSelection since the last "
        "Update");
  }
  absl::MutexLock lock(&async_mu_);
  if (!async_thread_.joinable()) {
    async_thread_ = std::thread([this] { AsyncLoop(); });
  }
  async_pending_ = true;
  return absl::OkStatus();
}

absl::Status WaveBuffer::FinishUpdate() {
  absl::MutexLock lock(&async_mu_);
  async_mu_.Await(absl::Condition(
      +[](bool* pending) { return !*pending; }, &async_pending_));
  return std::exchange(async_status_, absl::OkStatus());
}

void WaveBuffer::AsyncLoop() {
  absl::MutexLock lock(&async_mu_);
  while (true) {
    async_mu_.Await(absl::Condition(
        +[](WaveBuffer* b) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return b->async_pending_ || b->async_stop_;  // Await holds the lock
        },
        this));
    if (async_stop_) return;
    async_mu_.Unlock();
    absl::Status s = Update();
    async_mu_.Lock();
    async_status_ = std::move(s);
    async_pending_ = false;
  }
}

absl::Status WaveBuffer::WaitForAdmissions(cudaStream_t stream) {
  if (absl::Status s = FinishUpdate(); !s.ok()) return s;
  WB_CUDA(cudaStreamWaitEvent(stream, admitted_, 0), "cudaStreamWaitEvent");
  return absl::OkStatus();
}

absl::Status WaveBuffer::RecordSelection(const int32_t* selected,
                                         cudaStream_t stream) {
  WB_CUDA(cudaMemcpyAsync(host_ids_.get(), selected,
                          int64_t{layout_.num_rows} * options_.max_selected * 4,
                          cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
  WB_CUDA(cudaEventRecord(ids_ready_, stream), "cudaEventRecord");
  selection_pending_ = true;
  return absl::OkStatus();
}

absl::Status WaveBuffer::Update() {
  if (!selection_pending_) {
    return absl::FailedPreconditionError(
        "wave buffer: Update without a RecordSelection since the last one");
  }
  selection_pending_ = false;
  WB_CUDA(cudaEventSynchronize(ids_ready_), "cudaEventSynchronize");
  // The staging buffers are reused: the previous admission must be done
  // (it is, when the caller waited for it before this step's attention).
  WB_CUDA(cudaEventSynchronize(admitted_), "cudaEventSynchronize");
  const auto t0 = std::chrono::steady_clock::now();
  const int rows = layout_.num_rows;
  const int64_t n_ids = int64_t{rows} * options_.max_selected;
  const auto ids =
      absl::MakeConstSpan(static_cast<const int32_t*>(host_ids_.get()), n_ids);
  // Rows are independent: split them over the threads when there is enough
  // work (the bookkeeping is bound by cache misses on the per-cluster state,
  // so threads help even for a few rows).
  const int parts = static_cast<int>(std::clamp<int64_t>(
      n_ids / options_.update_ids_per_thread, 1, workers_->threads()));
  parts_.resize(parts);
  lru_.BeginStep();
  workers_->Run(parts, [&](int t) { UpdatePart(t, parts, ids); });
  AdmitArgs a;
  a.num_segments = parts;
  for (int t = 0; t < parts; ++t) {
    Part& p = parts_[t];
    lru_.AddStats(p.stats);
    if (p.overfull) {
      return absl::InternalError("wave buffer: admission plan exceeds staging");
    }
    a.copy_begin[t] = p.copy_begin;
    a.copy_count[t] = p.num_copies;
    a.write_begin[t] = p.write_begin;
    a.write_count[t] = p.num_writes;
    a.num_copies += p.num_copies;
    a.num_writes += p.num_writes;
  }
  a.row_bytes = static_cast<int>(row_bytes_);
  a.copies = static_cast<const SlotCopy*>(host_copies_.get());
  a.writes = static_cast<const SlotTableWrite*>(host_writes_.get());
  a.slot_ids = static_cast<int32_t*>(slot_ids_.get());
  a.slot_list = static_cast<int32_t*>(slot_list_.get());
  WB_CUDA(static_cast<cudaError_t>(LaunchAdmitRaw(a, copy_stream_)),
          "wave buffer admission launch");
  WB_CUDA(cudaEventRecord(admitted_, copy_stream_), "cudaEventRecord");
  bookkeeping_seconds_ +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  return absl::OkStatus();
}

void WaveBuffer::UpdatePart(int t, int parts, absl::Span<const int32_t> ids) {
  const int rows = layout_.num_rows;
  const int row_begin = static_cast<int>(int64_t{rows} * t / parts);
  const int row_end = static_cast<int>(int64_t{rows} * (t + 1) / parts);
  Part& part = parts_[t];
  part.plan.Clear();
  part.stats = {};
  lru_.StepRows(ids, options_.max_selected,
                absl::MakeConstSpan(steady_tokens_host_), row_begin, row_end,
                &part.plan, &part.stats);
  // This part's segments: its rows' shares of the staging buffers.
  const int64_t slots = lru_.slots_per_row();
  part.copy_begin = static_cast<int>(row_begin * slots);
  part.write_begin = static_cast<int>(3 * row_begin * slots);
  const WaveBufferPlan& plan = part.plan;
  const int64_t n_writes =
      plan.slot_id_writes.size() + plan.slot_list_writes.size();
  part.overfull = static_cast<int64_t>(plan.copies.size()) >
                      (row_end - row_begin) * slots ||
                  n_writes > 3 * (row_end - row_begin) * slots;
  part.num_copies = part.num_writes = 0;
  if (part.overfull) return;
  part.num_copies = static_cast<int>(plan.copies.size());
  part.num_writes = static_cast<int>(n_writes);

  SlotCopy* out = static_cast<SlotCopy*>(host_copies_.get()) + part.copy_begin;
  const int nc = layout_.num_clusters;
  const size_t slot_bytes = 2 * kSlotTokens * row_bytes_;
  const size_t elem = ElemBytes(layout_.dtype);
  char* const pool = static_cast<char*>(pool_.get());
  const char* const stage = static_cast<const char*>(stage_.get());
  for (const WaveBufferPlan::Copy& c : plan.copies) {
    SlotCopy& o = *out++;
    o.num_tokens = c.num_tokens;
    o.dst = pool + size_t(c.slot) * slot_bytes;
    if (stage != nullptr && c.first_token >= 0 &&
        c.first_token + c.num_tokens <= stage_row_tokens_) {
      // From the copy the attention kernel staged in device memory.
      const char* sk =
          stage +
          (2 * int64_t{c.row} * stage_row_tokens_ + c.first_token) * row_bytes_;
      o.src_keys = sk;
      o.src_values = sk + stage_row_tokens_ * row_bytes_;
    } else {
      const int64_t k = int64_t{c.row} * nc + c.cluster;
      const int32_t size = layout_.cluster_sizes[k];
      const int first_tok = c.piece * kSlotTokens;
      const char* base = static_cast<const char*>(layout_.row_store[c.row]) +
                         layout_.cluster_offsets[k] * elem;
      o.src_keys = base + first_tok * row_bytes_;
      o.src_values = base + (size_t(size) + first_tok) * row_bytes_;
    }
  }
  SlotTableWrite* w =
      static_cast<SlotTableWrite*>(host_writes_.get()) + part.write_begin;
  for (const auto& x : plan.slot_id_writes) *w++ = {x.index, x.value, 0};
  for (const auto& x : plan.slot_list_writes) *w++ = {x.index, x.value, 1};
}

}  // namespace wavekv::cuda
