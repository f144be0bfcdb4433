// The wave buffer (DESIGN.md, "Wave buffer"), GPU storage: one layer's cache
// of cluster pieces in device memory, for a cluster store that lives in
// mapped pinned host memory.
//
// Device state: a slot pool (buffer_fraction of each row's cluster slots,
// default 5%; a slot = kSlotTokens tokens of K then V), the slot-id and
// slot-list tables LaunchClusterPages reads, the store's cluster sizes and
// offsets, and a steady zone per row that is always resident (never part of
// the LRU). Host state: the LRU bookkeeping (wave_buffer_lru.h).
//
// One decode step of the layer, all enqueued on the caller's `stream`:
//   buffer.WaitForAdmissions(stream);       // last step's copies are in
//   <selection kernel writes ranked ids [rows][max_selected] on the device>
//   LaunchClusterPages(args filled by FillPagesArgs, stream);
//   LaunchPagedAttention(args filled by FillAttentionArgs, stream);
//   buffer.RecordSelection(ids, stream);    // async copy of the ids to host
//   ... enqueue other layers ...
//   buffer.Update();  // CPU: waits for the ids, LRU, admission copies
// Resident clusters are read from the slots; every other selected cluster
// is read by the attention kernel straight from pinned host memory in the
// same launch (zero-copy), and Update copies it into the buffer on the
// buffer's own stream for later steps (from the staging copy the attention
// kernel made of it, so each miss crosses PCIe once). So nothing selected is
// ever dropped; clusters that do not fit are counted
// (stats().overflow_clusters). Update's CPU work and copies overlap the GPU
// work enqueued after RecordSelection; call Update before the same buffer's
// next WaitForAdmissions.
//
// Not thread-safe: one thread drives a buffer (different buffers, e.g. one
// per layer, are independent); UpdateAsync hands one Update to the buffer's
// own thread under the rules stated there.
#ifndef WAVEKV_INDEX_CUDA_WAVE_BUFFER_H_
#define WAVEKV_INDEX_CUDA_WAVE_BUFFER_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "index/cuda/paged_attention_raw.h"
#include "index/cuda/wave_buffer_lru.h"
#include "index/cuda/wave_buffer_raw.h"

namespace wavekv::cuda {

struct WaveBufferOptions {
  // Fraction of each row's cluster slots held in device memory, in (0, 1].
  double buffer_fraction = 0.05;
  // Steady-zone capacity per row: sinks + recent window + one update batch.
  int steady_capacity_tokens = 4 + 64 + 1024;
  // Most selected ids per row per step (the width of the selection).
  int max_selected = 0;
  // Admit missed clusters from a device staging area that the attention
  // kernel fills as it reads them (one PCIe read per miss); false: the
  // admission copy reads the host store again.
  bool stage_misses = true;
  // Most CPU threads for one Update, 1..kMaxAdmitSegments (at most one per
  // row and one per update_ids_per_thread ids selected per step). Started once,
  // at Create; they sleep between Updates.
  int update_threads = 8;
  // Selected ids (rows x max_selected) per Update thread, >= 1: fewer threads
  // when a step selects less (waking a thread costs more than a few rows).
  int update_ids_per_thread = 1024;

  absl::Status Validate() const;
};

// One layer's cluster store: per row, clusters in cluster-major order, each
// [size][head_dim] keys then [size][head_dim] values.
struct ClusterStoreLayout {
  ElemType dtype = ElemType::kFp16;
  int head_dim = 128;
  int num_rows = 0;
  int num_clusters = 0;                  // per row
  std::vector<int32_t> cluster_sizes;    // [rows][clusters] tokens
  std::vector<int64_t> cluster_offsets;  // [rows][clusters] element offsets
  // [rows] base of each row's store: mapped pinned host memory (or device
  // memory; Update's copies read it from GPU threads either way).
  std::vector<const void*> row_store;
};

class WaveBuffer {
 public:
  // Allocates the device state and the pinned staging buffers.
  // InvalidArgument naming the field on bad options or layout;
  // ResourceExhausted if device memory runs out; Internal on other CUDA
  // errors.
  static absl::StatusOr<std::unique_ptr<WaveBuffer>> Create(
      const WaveBufferOptions& options, ClusterStoreLayout layout);
  ~WaveBuffer();
  WaveBuffer(const WaveBuffer&) = delete;
  WaveBuffer& operator=(const WaveBuffer&) = delete;

  // Sets the store, wave-buffer and steady-zone fields of `args` (dtype,
  // head_dim, rows, clusters, sizes, offsets, row_store, slot lists, steady).
  // The caller sets selected, num_selected, pages and counters.
  void FillPagesArgs(ClusterPagesArgs* args) const;
  // Sets slot_pool and slot_ids of `args`.
  void FillAttentionArgs(PagedAttentionArgs* args) const;

  // Copies `num_tokens` steady-zone keys and values of `row` (any memory)
  // into the buffer. InvalidArgument if it exceeds the capacity.
  absl::Status LoadSteady(int row, const void* keys, const void* values,
                          int num_tokens, cudaStream_t stream);

  // Makes `stream` wait until the admissions of the last Update are in
  // (first waits, on the host, for an UpdateAsync in flight and returns its
  // error, if any).
  absl::Status WaitForAdmissions(cudaStream_t stream);
  // Enqueues the copy of this step's ranked ids ([rows][max_selected],
  // device) to pinned host memory on `stream`.
  absl::Status RecordSelection(const int32_t* selected, cudaStream_t stream);
  // Waits for the recorded ids, runs the LRU bookkeeping and enqueues the
  // admission copies and table writes on the buffer's own stream.
  // FailedPrecondition if no selection was recorded since the last Update.
  absl::Status Update();
  // Update on the buffer's own thread (started on first use), so the caller
  // can enqueue other layers without waiting for this step's ids or
  // bookkeeping; the next WaitForAdmissions (or FinishUpdate) joins it.
  // Until then the caller must not call Update, UpdateAsync, RecordSelection
  // or the stats accessors. FailedPrecondition as Update.
  absl::Status UpdateAsync();
  // Waits for an UpdateAsync in flight (none: returns at once) and returns
  // its status.
  absl::Status FinishUpdate();

  const WaveBufferStats& stats() const { return lru_.stats(); }
  int slots_per_row() const { return lru_.slots_per_row(); }
  size_t device_bytes() const { return device_bytes_; }
  // CPU time spent in Update after its waits (LRU bookkeeping, building and
  // enqueueing the admissions), summed over all Updates.
  double bookkeeping_seconds() const { return bookkeeping_seconds_; }

 private:
  struct DeviceFree {
    void operator()(void* p) const { cudaFree(p); }
  };
  struct HostFree {
    void operator()(void* p) const { cudaFreeHost(p); }
  };
  using DevicePtr = std::unique_ptr<void, DeviceFree>;
  using HostPtr = std::unique_ptr<void, HostFree>;

  WaveBuffer(const WaveBufferOptions& options, ClusterStoreLayout layout,
             WaveBufferLru lru);
  absl::Status Init();
  absl::StatusOr<void*> AllocDevice(size_t bytes, DevicePtr* owner);

  WaveBufferOptions options_;
  ClusterStoreLayout layout_;
  // Fills part `t` of `parts` of the admission: runs the bookkeeping of its
  // rows and writes its copies and table writes into its segment of the
  // pinned staging buffers.
  void UpdatePart(int t, int parts, absl::Span<const int32_t> ids);

  WaveBufferLru lru_;
  std::unique_ptr<WaveBufferWorkers> workers_;
  struct alignas(64) Part {  // one per Update thread
    WaveBufferPlan plan;
    WaveBufferStats stats;
    int copy_begin = 0, num_copies = 0;
    int write_begin = 0, num_writes = 0;
    bool overfull = false;  // the plan did not fit its staging segment
  };
  std::vector<Part> parts_;
  size_t row_bytes_ = 0;  // bytes of one token's keys (or values)
  size_t device_bytes_ = 0;

  // Device state.
  DevicePtr pool_, slot_ids_, slot_list_, sizes_, offsets_, row_store_;
  DevicePtr steady_, steady_keys_, steady_values_, steady_tokens_;
  DevicePtr stage_;  // [rows][2][stage_row_tokens_][head_dim], or null
  int64_t stage_row_tokens_ = 0;
  std::vector<int32_t> steady_tokens_host_;
  // Pinned staging: selected ids, admission copies and table writes.
  HostPtr host_ids_, host_copies_, host_writes_;
  size_t max_copies_ = 0, max_writes_ = 0;
  cudaStream_t copy_stream_ = nullptr;
  cudaEvent_t ids_ready_ = nullptr, admitted_ = nullptr;
  bool selection_pending_ = false;
  double bookkeeping_seconds_ = 0;

  // UpdateAsync's thread and its hand-off.
  void AsyncLoop();
  absl::Mutex async_mu_;
  bool async_pending_ ABSL_GUARDED_BY(async_mu_) = false;
  bool async_stop_ ABSL_GUARDED_BY(async_mu_) = false;
  absl::Status async_status_ ABSL_GUARDED_BY(async_mu_);
  std::thread async_thread_;
};

}  // namespace wavekv::cuda

#endif  // WAVEKV_INDEX_CUDA_WAVE_BUFFER_H_
