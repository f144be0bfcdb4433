#include "index/eval/methods.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "index/eval/eval_math.h"
#include "index/retrieval.h"

namespace wavekv {
namespace eval {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// Σ_h softmax_h(logits_h) for `num_heads` rows of `n` logits.
std::vector<double> GroupSoftmaxScore(const std::vector<double>& logits,
                                      size_t num_heads, size_t n) {
  std::vector<double> score(n, 0.0);
  for (size_t h = 0; h < num_heads; ++h) {
    const double* l = &logits[h * n];
    const double lse = LogSumExp(l, n);
    for (size_t i = 0; i < n; ++i) score[i] += std::exp(l[i] - lse);
  }
  return score;
}

}  // namespace

std::string_view MethodName(Method method) {
  switch (method) {
    case Method::kWave:
      return "wave";
    case Method::kWaveNoTail:
      return "wave-no-tail";
    case Method::kStreamingLlm:
      return "streaming";
    case Method::kQuest:
      return "quest";
    case Method::kRandomClusters:
      return "random";
    case Method::kOracleTopK:
      return "oracle";
  }
  return "unknown";
}

absl::StatusOr<Method> ParseMethod(std::string_view name) {
  for (Method m : kAllMethods) {
    if (MethodName(m) == name) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "methods: unknown method \"", std::string(name),
      "\" (expected wave, wave-no-tail, streaming, quest, random, oracle)"));
}

absl::Status MethodsOptions::Validate() const {
  RETURN_IF_ERROR(index.Validate());
  if (quest_page_tokens < 1 || quest_page_tokens > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("methods.quest_page_tokens: must be in [1, 4096], got ",
                     quest_page_tokens));
  }
  if (num_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("methods.num_threads: must be >= 1, got ", num_threads));
  }
  if (max_block_segments > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("methods.max_block_segments: must be in [0, 1024], got ",
                     max_block_segments));
  }
  return absl::OkStatus();
}

MethodSuite::MethodSuite(const Workload& workload,
                         const MethodsOptions& options)
    : workload_(&workload), options_(options), index_(workload.head_dim()) {}

absl::StatusOr<MethodSuite> MethodSuite::Build(const Workload& workload,
                                               const MethodsOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  MethodSuite suite(workload, options);
  const size_t d = workload.head_dim();
  const uint64_t n = workload.num_tokens();

  auto start = std::chrono::steady_clock::now();
  const uint64_t max_tokens =
      uint64_t{options.max_block_segments} * options.index.segment_tokens;
  while (true) {
    TokenSpan block =
        NextIndexBlock(options.index, n, suite.index_.end_token());
    if (block.empty()) break;
    if (max_tokens > 0 && block.num_tokens() > max_tokens) {
      block.end = block.begin + max_tokens;
    }
    const KvRows rows{DType::kFp32,
                      d,
                      block.num_tokens(),
                      reinterpret_cast<const uint8_t*>(workload.keys().data() +
                                                       block.begin * d),
                      reinterpret_cast<const uint8_t*>(
                          workload.values().data() + block.begin * d),
                      0};
    RETURN_IF_ERROR(
        suite.index_
            .AddBlock(options.index, block.begin, rows, options.num_threads)
            .status());
  }
  suite.index_build_seconds_ = SecondsSince(start);
  for (const TokenSpan& s : SteadySpans(n, suite.index_.indexed_span())) {
    for (uint64_t t = s.begin; t < s.end; ++t) suite.steady_.push_back(t);
  }

  start = std::chrono::steady_clock::now();
  const size_t page = options.quest_page_tokens;
  const size_t num_pages = (n + page - 1) / page;
  suite.page_min_.assign(num_pages * d, 0.0f);
  suite.page_max_.assign(num_pages * d, 0.0f);
  const float* keys = workload.keys().data();
  for (size_t p = 0; p < num_pages; ++p) {
    float* lo = &suite.page_min_[p * d];
    float* hi = &suite.page_max_[p * d];
    std::copy(keys + p * page * d, keys + (p * page + 1) * d, lo);
    std::copy(keys + p * page * d, keys + (p * page + 1) * d, hi);
    const size_t end = std::min<size_t>(n, (p + 1) * page);
    for (size_t t = p * page + 1; t < end; ++t) {
      for (size_t j = 0; j < d; ++j) {
        lo[j] = std::min(lo[j], keys[t * d + j]);
        hi[j] = std::max(hi[j], keys[t * d + j]);
      }
    }
  }
  suite.quest_build_seconds_ = SecondsSince(start);
  return suite;
}

uint64_t MethodSuite::MarkSteady(std::vector<uint8_t>& selected) const {
  uint64_t count = 0;
  for (uint64_t t : steady_) {
    count += selected[t] == 0;
    selected[t] = 1;
  }
  return count;
}

std::vector<uint64_t> MethodSuite::MaskToTokens(
    const std::vector<uint8_t>& mask) {
  std::vector<uint64_t> tokens;
  for (uint64_t t = 0; t < mask.size(); ++t) {
    if (mask[t]) tokens.push_back(t);
  }
  return tokens;
}

absl::StatusOr<Selection> MethodSuite::Wave(absl::Span<const float> queries,
                                            bool with_tail) const {
  const size_t d = workload_->head_dim();
  const size_t g = queries.size() / d;
  ASSIGN_OR_RETURN(
      RetrievalPlan plan,
      PlanRetrieval(index_, queries, g, options_.index, DefaultScale(d)));
  Selection sel;
  sel.tokens = steady_;
  const auto slots = index_.slot_tokens();
  for (ClusterId c : plan.retrieval_clusters) {
    const uint64_t b = index_.cluster_offset(c);
    for (uint64_t s = b; s < b + index_.cluster_size(c); ++s) {
      sel.tokens.push_back(slots[s]);
    }
  }
  std::sort(sel.tokens.begin(), sel.tokens.end());
  if (with_tail) sel.tail = std::move(plan.tail);
  return sel;
}

Selection MethodSuite::StreamingLlm(uint64_t budget) const {
  const uint64_t n = workload_->num_tokens();
  Selection sel;
  if (budget >= n) {
    sel.tokens.resize(n);
    std::iota(sel.tokens.begin(), sel.tokens.end(), uint64_t{0});
    return sel;
  }
  const uint64_t sinks = std::min<uint64_t>(options_.index.sink_tokens, budget);
  for (uint64_t t = 0; t < sinks; ++t) sel.tokens.push_back(t);
  for (uint64_t t = n - (budget - sinks); t < n; ++t) sel.tokens.push_back(t);
  return sel;
}

Selection MethodSuite::Quest(absl::Span<const float> queries,
                             uint64_t budget) const {
  const size_t d = workload_->head_dim();
  const size_t g = queries.size() / d;
  const uint64_t n = workload_->num_tokens();
  const size_t page = options_.quest_page_tokens;
  const size_t num_pages = this->num_pages();
  std::vector<double> bounds(g * num_pages);
  for (size_t h = 0; h < g; ++h) {
    for (size_t p = 0; p < num_pages; ++p) {
      bounds[h * num_pages + p] = QuestUpperBound(&queries[h * d], p);
    }
  }
  const std::vector<double> score = GroupSoftmaxScore(bounds, g, num_pages);
  std::vector<uint32_t> order(num_pages);
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return score[a] > score[b]; });
  std::vector<uint8_t> mask(n, 0);
  uint64_t count = MarkSteady(mask);
  for (uint32_t p : order) {
    if (count >= budget) break;
    const uint64_t end = std::min<uint64_t>(n, (uint64_t{p} + 1) * page);
    for (uint64_t t = uint64_t{p} * page; t < end; ++t) {
      count += mask[t] == 0;
      mask[t] = 1;
    }
  }
  Selection sel;
  sel.tokens = MaskToTokens(mask);
  return sel;
}

size_t MethodSuite::num_pages() const {
  return page_min_.size() / workload_->head_dim();
}

double MethodSuite::QuestUpperBound(const float* query, size_t page) const {
  // Per channel the larger of q_j·min_j and q_j·max_j bounds q_j·k_j for
  // every key of the page (Quest's criticality estimate).
  const size_t d = workload_->head_dim();
  const float* lo = &page_min_[page * d];
  const float* hi = &page_max_[page * d];
  float acc = 0.0f;
  for (size_t j = 0; j < d; ++j) {
    acc += std::max(query[j] * lo[j], query[j] * hi[j]);
  }
  return DefaultScale(d) * acc;
}

Selection MethodSuite::RandomClusters(uint64_t budget, uint64_t draw) const {
  std::vector<ClusterId> clusters;
  for (ClusterId c = 0; c < index_.num_clusters(); ++c) {
    if (index_.cluster_size(c) > 0) clusters.push_back(c);
  }
  std::mt19937_64 rng(DeriveSeed(options_.seed, 0x72616e64, draw));
  std::shuffle(clusters.begin(), clusters.end(), rng);
  Selection sel;
  sel.tokens = steady_;
  const auto slots = index_.slot_tokens();
  for (ClusterId c : clusters) {
    if (sel.tokens.size() >= budget) break;
    const uint64_t b = index_.cluster_offset(c);
    for (uint64_t s = b; s < b + index_.cluster_size(c); ++s) {
      sel.tokens.push_back(slots[s]);
    }
  }
  std::sort(sel.tokens.begin(), sel.tokens.end());
  return sel;
}

Selection MethodSuite::TopTokens(absl::Span<const double> scores,
                                 uint64_t budget) {
  const uint64_t n = scores.size();
  std::vector<uint64_t> order(n);
  std::iota(order.begin(), order.end(), uint64_t{0});
  const uint64_t k = std::min(budget, n);
  auto better = [&](uint64_t a, uint64_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  if (k < n)
    std::nth_element(order.begin(), order.begin() + k, order.end(), better);
  order.resize(k);
  std::sort(order.begin(), order.end());
  Selection sel;
  sel.tokens = std::move(order);
  return sel;
}

}  // namespace eval
}  // namespace wavekv
