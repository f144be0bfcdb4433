#include "bench/decode_attention_wave.h"

#include <cmath>
#include <random>

#include "bench/decode_attention_kernels.h"

namespace wavekv::bench {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
Layout MakeLayout(int64_t context, int rows, uint64_t seed) {
  Layout l;
  l.rows = rows;
  l.indexed = context - kSteady;
  l.clusters = static_cast<int>(std::llround(l.indexed / 16.0));
  l.row_elems = 2 * l.indexed * kD;
  l.sizes.resize(int64_t{rows} * l.clusters);
  l.offsets.resize(l.sizes.size());
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> size_dist(4, 28);
  int64_t nonempty = 0;
  for (int r = 0; r < rows; ++r) {
    int32_t* s = l.sizes.data() + int64_t{r} * l.clusters;
    int64_t sum = 0;
    for (int c = 0; c < l.clusters; ++c) {
      s[c] = (rng() % 100 == 0) ? 0 : size_dist(rng);
      sum += s[c];
    }
    // Spread the difference to the exact token count over non-empty ones.
    int64_t diff = l.indexed - sum;
    for (int c = 0; diff != 0; c = (c + 1) % l.clusters) {
      if (s[c] == 0 || (diff < 0 && s[c] <= 1)) continue;
      const int step = diff > 0 ? 1 : -1;
      s[c] += step;
      diff -= step;
    }
    int64_t off = 0;
    for (int c = 0; c < l.clusters; ++c) {
      l.offsets[int64_t{r} * l.clusters + c] = off;
      off += 2 * int64_t{s[c]} * kD;
      nonempty += s[c] > 0;
    }
  }
  const double n = static_cast<double>(nonempty) / rows;
  l.retrieval = std::max(1, static_cast<int>(std::ceil(0.018 * n - 1e-3)));
  l.estimation = static_cast<int>(std::ceil(0.232 * n - 1e-3));
  return l;
}

std::unique_ptr<WaveLayer> MakeWaveLayer(const Layout& l, const void* store,
                                         double buffer_fraction, bool stage,
                                         uint64_t seed, int update_threads) {
  auto w = std::make_unique<WaveLayer>();
  w->layout = &l;
  const int rows = l.rows, C = l.clusters, S = l.retrieval;
  const int64_t nc = int64_t{rows} * C;
  w->centroids = Dev(nc * kD * 2);
  CKI(FillNormalHalf(w->centroids.get(), nc * kD, 0.5f, seed + 1, nullptr));
  w->value_sums = Dev(nc * kD * 4);
  CKI(FillNormalFloat(w->value_sums.get<float>(), nc * kD, 0.f, 4.f, seed + 2,
                      nullptr));
  std::vector<uint32_t> su(l.sizes.begin(), l.sizes.end());
  w->sizes_u32 = Upload(su);
  const int qh = rows * kGroup;
  w->queries = Dev(size_t(qh) * kD * 4);
  CKI(FillNormalFloat(w->queries.get<float>(), size_t(qh) * kD, 0.f, 1.f,
                      seed + 3, nullptr));
  const size_t ws =
      (cuda::RetrievalWorkspaceBytes(C, kGroup, kD) + 255) / 256 * 256;
  w->workspace = Dev(ws * rows);
  w->selected = Dev(size_t(rows) * S * 4);
  w->counts = Dev(size_t(rows) * 2 * 4);
  w->tail_max = Dev(size_t(qh) * 4);
  w->tail_den = Dev(size_t(qh) * 4);
  w->tail_num = Dev(size_t(qh) * kD * 4);
  w->problems.resize(rows);
  for (int r = 0; r < rows; ++r) {
    cuda::RetrievalProblem& p = w->problems[r];
    p.centroids = w->centroids.get<char>() + int64_t{r} * C * kD * 2;
    p.value_sums = w->value_sums.get<float>() + int64_t{r} * C * kD;
    p.sizes = w->sizes_u32.get<uint32_t>() + int64_t{r} * C;
    p.num_clusters = C;
    p.retrieval_clusters = S;
    p.estimation_clusters = l.estimation;
    p.queries = w->queries.get<float>() + int64_t{r} * kGroup * kD;
    p.workspace = w->workspace.get<char>() + r * ws;
    p.out_retrieval = w->selected.get<uint32_t>() + int64_t{r} * S;
    p.out_counts = w->counts.get<uint32_t>() + 2 * r;
    p.out_estimation = nullptr;
    p.out_max = w->tail_max.get<float>() + r * kGroup;
    p.out_den = w->tail_den.get<float>() + r * kGroup;
    p.out_num = w->tail_num.get<float>() + int64_t{r} * kGroup * kD;
  }
  w->problems_dev = Upload(w->problems);
  w->retrieval.centroid_type = ElemType::kFp16;
  w->retrieval.head_dim = kD;
  w->retrieval.group_size = kGroup;
  w->retrieval.scale = kScale;
  w->retrieval.num_problems = rows;
  w->retrieval.problems = w->problems.data();
  w->retrieval.device_problems = w->problems_dev.get<cuda::RetrievalProblem>();

  // Steady zone: random device K/V.
  w->steady_kv = Dev(size_t(rows) * 2 * kSteady * kD * 2);
  CKI(FillNormalHalf(w->steady_kv.get(), size_t(rows) * 2 * kSteady * kD, 1.f,
                     seed + 4, nullptr));
  ClusterPagesArgs& pa = w->pages_args;
  if (buffer_fraction > 0) {
    cuda::ClusterStoreLayout cl;
    cl.dtype = ElemType::kFp16;
    cl.head_dim = kD;
    cl.num_rows = rows;
    cl.num_clusters = C;
    cl.cluster_sizes = l.sizes;
    cl.cluster_offsets = l.offsets;
    for (int r = 0; r < rows; ++r) {
      cl.row_store.push_back(static_cast<const char*>(store) +
                             int64_t{r} * l.row_elems * 2);
    }
    cuda::WaveBufferOptions opt;
    opt.buffer_fraction = buffer_fraction;
    opt.max_selected = S;
    opt.stage_misses = stage;
    if (update_threads > 0) opt.update_threads = update_threads;
    auto b = cuda::WaveBuffer::Create(opt, std::move(cl));
    CKS(b.status());
    w->buffer = std::move(*b);
    for (int r = 0; r < rows; ++r) {
      const char* k =
          w->steady_kv.get<char>() + size_t(r) * 2 * kSteady * kD * 2;
      CKS(w->buffer->LoadSteady(r, k, k + kSteady * kD * 2, kSteady, nullptr));
    }
    w->buffer->FillPagesArgs(&pa);
    w->buffer->FillAttentionArgs(&w->attn);
  } else {
    w->sizes_i32 = Upload(l.sizes);
    w->offsets = Upload(l.offsets);
    std::vector<const void*> rs(rows), sk(rows), sv(rows);
    for (int r = 0; r < rows; ++r) {
      rs[r] = static_cast<const char*>(store) + int64_t{r} * l.row_elems * 2;
      sk[r] = w->steady_kv.get<char>() + size_t(r) * 2 * kSteady * kD * 2;
      sv[r] = static_cast<const char*>(sk[r]) + kSteady * kD * 2;
    }
    w->row_store = Upload(rs);
    std::vector<const void*> both(sk);
    both.insert(both.end(), sv.begin(), sv.end());
    w->steady_ptrs = Upload(both);
    w->steady_tokens = Upload(std::vector<int32_t>(rows, kSteady));
    pa.dtype = ElemType::kFp16;
    pa.head_dim = kD;
    pa.num_rows = rows;
    pa.num_clusters = C;
    pa.cluster_sizes = w->sizes_i32.get<int32_t>();
    pa.cluster_offsets = w->offsets.get<int64_t>();
    pa.row_store = w->row_store.get<const void*>();
    pa.steady_keys = w->steady_ptrs.get<const void*>();
    pa.steady_values = w->steady_ptrs.get<const void*>() + rows;
    pa.steady_tokens = w->steady_tokens.get<int32_t>();
  }
  pa.num_selected = S;
  pa.selected = w->selected.get<int32_t>();
  w->pages = Dev(size_t(rows) * (1 + S) * sizeof(KvPage));
  pa.pages = w->pages.get<KvPage>();

  PagedAttentionArgs& a = w->attn;
  a.dtype = ElemType::kFp16;
  a.head_dim = kD;
  a.num_rows = rows;
  a.group = kGroup;
  a.scale = kScale;
  a.queries = w->queries.get<float>();
  a.pages = w->pages.get<KvPage>();
  a.pages_per_row = 1 + S;
  a.tokens_hint = kSteady + int64_t{S} * 16;
  a.max_splits = kMaxSplits;
  w->scratch = Dev(cuda::SplitScratchFloats(qh, kD, kMaxSplits) * 4);
  a.split_scratch = w->scratch.get<float>();
  a.tail_max = w->tail_max.get<float>();
  a.tail_den = w->tail_den.get<float>();
  a.tail_num = w->tail_num.get<float>();
  w->out_max = Dev(qh * 4);
  w->out_den = Dev(qh * 4);
  w->out_num = Dev(size_t(qh) * kD * 4);
  w->out = Dev(size_t(qh) * kD * 4);
  a.out_max = w->out_max.get<float>();
  a.out_den = w->out_den.get<float>();
  a.out_num = w->out_num.get<float>();
  a.out = w->out.get<float>();
  CK(cudaDeviceSynchronize());
  return w;
}

void EnqueueWave(WaveLayer& w, cudaStream_t s, cudaEvent_t* ev) {
  if (ev == nullptr && w.fork_tail) {
    CKS(cuda::LaunchRetrieval(w.retrieval, s, w.fork));
    CKS(cuda::LaunchClusterPages(w.pages_args, s));
    PagedAttentionArgs a = w.attn;
    a.tail_ready = w.fork.tail_done;  // the merge waits, the splits do not
    CKS(cuda::LaunchPagedAttention(a, s));
    return;
  }
  if (ev) CK(cudaEventRecord(ev[0], s));
  CKS(cuda::LaunchRetrieval(w.retrieval, s));
  if (ev) CK(cudaEventRecord(ev[1], s));
  CKS(cuda::LaunchClusterPages(w.pages_args, s));
  if (ev) CK(cudaEventRecord(ev[2], s));
  CKS(cuda::LaunchPagedAttention(w.attn, s));
  if (ev) CK(cudaEventRecord(ev[3], s));
}

bool Capture(WaveLayer& w, cudaStream_t s) {
  if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) !=
      cudaSuccess) {
    return false;
  }
  EnqueueWave(w, s);
  if (cudaStreamEndCapture(s, &w.graph) != cudaSuccess) return false;
  return cudaGraphInstantiate(&w.exec, w.graph, 0) == cudaSuccess;
}

Stages TimeStages(WaveLayer& w, cudaStream_t s, int iters, uint64_t seed,
                  float walk) {
  cudaEvent_t ev[4];
  for (auto& e : ev) CK(cudaEventCreate(&e));
  Dev flush(192ull << 20);
  std::vector<double> t[3];
  for (int i = 0; i < iters; ++i) {
    CKI(QueryWalk(w.attn.queries == nullptr
                      ? nullptr
                      : const_cast<float*>(w.attn.queries),
                  w.layout->rows * kGroup, kD, walk, seed, 1000 + i, s));
    if (w.buffer) CKS(w.buffer->WaitForAdmissions(s));
    CK(cudaMemsetAsync(flush.get(), i, 192ull << 20, s));
    EnqueueWave(w, s, ev);
    if (w.buffer) {
      CKS(w.buffer->RecordSelection(w.selected.get<int32_t>(), s));
      CKS(w.buffer->Update());
    }
    CK(cudaEventSynchronize(ev[3]));
    for (int k = 0; k < 3; ++k) {
      float ms;
      CK(cudaEventElapsedTime(&ms, ev[k], ev[k + 1]));
      t[k].push_back(1000.0 * ms);
    }
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return {Median(t[0]), Median(t[1]), Median(t[2])};
}

}  // namespace wavekv::bench
