#include "client/demo.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/attention_reference.h"
#include "client/synthetic_kv.h"
#include "client/text_table.h"
#include "common/status_macros.h"

namespace wavekv {
namespace {

const char* ModeName(v1::RetrieveMode mode) {
  return mode == v1::RETRIEVE_MODE_WAVE ? "wave" : "exact";
}

v1::DType ToProto(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
      return v1::DTYPE_FP16;
    case DType::kBf16:
      return v1::DTYPE_BF16;
    case DType::kFp32:
      return v1::DTYPE_FP32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

// "exact", "wave", "exact+wave".
std::string ModesName(const std::vector<v1::RetrieveMode>& modes) {
  std::string out;
  for (v1::RetrieveMode m : modes) {
    absl::StrAppend(&out, out.empty() ? "" : "+", ModeName(m));
  }
  return out;
}

// "950", "12.3k", "4.56M".
std::string FormatCount(double x) {
  if (x < 1e4) return absl::StrFormat("%.0f", x);
  if (x < 1e6) return absl::StrFormat("%.1fk", x / 1e3);
  return absl::StrFormat("%.2fM", x / 1e6);
}

// Nearest-rank percentile; zero for an empty set.
absl::Duration Percentile(std::vector<absl::Duration> values, double p) {
  if (values.empty()) return absl::ZeroDuration();
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(p * values.size()));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

// The demo's own copy of every layer's K/V, in the wire layout.
class LocalKv {
 public:
  LocalKv(uint32_t num_layers, uint64_t capacity_tokens, uint64_t token_bytes)
      : token_bytes_(token_bytes),
        keys_(num_layers, std::vector<uint8_t>(capacity_tokens * token_bytes)),
        values_(num_layers,
                std::vector<uint8_t>(capacity_tokens * token_bytes)) {}

  uint8_t* keys(uint32_t layer, uint64_t token) {
    return keys_[layer].data() + token * token_bytes_;
  }
  uint8_t* values(uint32_t layer, uint64_t token) {
    return values_[layer].data() + token * token_bytes_;
  }
  absl::Span<const uint8_t> KeyBytes(uint32_t layer, uint64_t first,
                                     uint64_t n) const {
    return absl::MakeConstSpan(keys_[layer])
        .subspan(first * token_bytes_, n * token_bytes_);
  }
  absl::Span<const uint8_t> ValueBytes(uint32_t layer, uint64_t first,
                                       uint64_t n) const {
    return absl::MakeConstSpan(values_[layer])
        .subspan(first * token_bytes_, n * token_bytes_);
  }
  LayerKvView View(uint32_t layer, uint64_t num_tokens) const {
    return LayerKvView{KeyBytes(layer, 0, num_tokens),
                       ValueBytes(layer, 0, num_tokens), num_tokens};
  }

 private:
  const uint64_t token_bytes_;
  std::vector<std::vector<uint8_t>> keys_;
  std::vector<std::vector<uint8_t>> values_;
};

// Generates tokens [first, first + n) of `layer` into `local`, on up to
// hardware_concurrency threads (SyntheticKv is pure per token).
void GenerateParallel(const SyntheticKv& kv, LocalKv& local, uint32_t layer,
                      uint64_t first, uint64_t n) {
  const uint64_t threads = std::clamp<uint64_t>(
      std::thread::hardware_concurrency(), 1, std::max<uint64_t>(n / 256, 1));
  std::vector<std::thread> workers;
  for (uint64_t i = 0; i < threads; ++i) {
    const uint64_t b = first + n * i / threads;
    const uint64_t e = first + n * (i + 1) / threads;
    workers.emplace_back([&, b, e] {
      kv.Generate(layer, b, e - b, local.keys(layer, b),
                  local.values(layer, b));
    });
  }
  for (std::thread& w : workers) w.join();
}

// Checks that an answer's retrieval slots (by their fetched positions) and
// steady ranges never name a token twice and stay below num_tokens; in
// EXACT mode they must cover every token. Returns the tokens covered per kv
// head (averaged over heads).
absl::StatusOr<uint64_t> CheckCoverage(const v1::SessionResult& result,
                                       const std::vector<FetchedHead>& fetched,
                                       bool exact) {
  const uint64_t n = result.num_tokens();
  uint64_t covered_total = 0;
  for (const v1::KvHeadResult& answer_head : result.heads()) {
    const uint32_t h = answer_head.kv_head();
    std::vector<bool> seen(n, false);
    uint64_t covered = 0;
    auto mark = [&](uint64_t t) -> absl::Status {
      if (t >= n || seen[t]) {
        return absl::InternalError(absl::StrCat(
            "answer check: kv head ", h, " names token ", t,
            t >= n ? absl::StrCat(" of only ", n) : std::string(" twice")));
      }
      seen[t] = true;
      ++covered;
      return absl::OkStatus();
    };
    for (const FetchedHead& f : fetched) {
      if (f.kv_head != h) continue;
      for (uint64_t t : f.positions) RETURN_IF_ERROR(mark(t));
    }
    for (const v1::TokenRange& r : result.steady()) {
      for (uint64_t t = r.begin(); t < r.end(); ++t) RETURN_IF_ERROR(mark(t));
    }
    if (exact && covered != n) {
      return absl::InternalError(
          absl::StrCat("answer check: EXACT answer of kv head ", h, " covers ",
                       covered, " of ", n, " tokens"));
    }
    covered_total += covered;
  }
  return result.heads().empty() ? 0 : covered_total / result.heads_size();
}

struct Errors {
  double max_abs = 0;
  double rel = 0;
};

Errors Compare(const std::vector<float>& got, const std::vector<float>& want) {
  Errors e;
  double scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    e.max_abs = std::max(e.max_abs, std::abs(double{got[i]} - want[i]));
    scale = std::max(scale, std::abs(double{want[i]}));
  }
  e.rel = scale > 0 ? e.max_abs / scale : e.max_abs;
  return e;
}

class Demo {
 public:
  Demo(WaveKvClient& client, const DemoOptions& options, std::ostream& out)
      : client_(client),
        options_(options),
        out_(out),
        kv_(SyntheticOptions(options)),
        shape_{options.num_q_heads, options.num_kv_heads, options.head_dim,
               options.dtype},
        local_(options.num_layers,
               options.context_tokens + options.decode_steps, kv_.TokenBytes()),
        include_kv_(options.include_kv) {}

  absl::StatusOr<DemoReport> Run();

 private:
  static SyntheticKvOptions SyntheticOptions(const DemoOptions& o) {
    SyntheticKvOptions s;
    s.num_layers = o.num_layers;
    s.num_q_heads = o.num_q_heads;
    s.num_kv_heads = o.num_kv_heads;
    s.head_dim = o.head_dim;
    s.dtype = o.dtype;
    s.seed = o.seed;
    return s;
  }

  absl::Status CreateSession();
  absl::Status Prefill();
  absl::Status DecodeStep(uint32_t step);
  absl::StatusOr<DemoSample> RetrieveLayer(uint32_t step, uint32_t layer,
                                           uint64_t num_tokens,
                                           v1::RetrieveMode mode);
  bool Runs(v1::RetrieveMode mode) const {
    return std::find(options_.modes.begin(), options_.modes.end(), mode) !=
           options_.modes.end();
  }
  // Retrieve in `mode`; WAVE calls the server cannot serve are retried in
  // EXACT (the served mode is written back to `mode`); `took` is the time
  // of the call that answered, not of refused ones.
  absl::StatusOr<v1::RetrieveResponse> RetrieveWithFallback(
      uint32_t layer, const std::vector<float>& query, v1::RetrieveMode& mode,
      absl::Duration& took);
  // Counts a WAVE call answered in EXACT; explains the first one.
  void NoteWaveFallback(const std::string& why);
  // WAVE mode: polls GetSession until the wave index is ready (or failed,
  // or options_.index_wait passed), showing its progress.
  absl::Status WaitForIndex();
  void PrintSummary();

  WaveKvClient& client_;
  const DemoOptions& options_;
  std::ostream& out_;
  const SyntheticKv kv_;
  const AttentionShape shape_;
  LocalKv local_;
  bool include_kv_;
  bool wave_note_printed_ = false;
  DemoReport report_;
};

absl::Status Demo::CreateSession() {
  v1::CreateSessionRequest request;
  v1::ModelShape* shape = request.mutable_shape();
  shape->set_num_layers(options_.num_layers);
  shape->set_num_q_heads(options_.num_q_heads);
  shape->set_num_kv_heads(options_.num_kv_heads);
  shape->set_head_dim(options_.head_dim);
  shape->set_dtype(ToProto(options_.dtype));
  request.set_max_tokens(options_.context_tokens + options_.decode_steps);
  request.set_label(options_.label);
  ASSIGN_OR_RETURN(v1::SessionInfo info, client_.CreateSession(request));
  report_.session_id = info.session_id();
  out_ << "session " << info.session_id() << " created (max "
       << info.max_tokens() << " tokens per layer)\n\n";
  return absl::OkStatus();
}

absl::Status Demo::Prefill() {
  const uint64_t n = options_.context_tokens;
  out_ << absl::StrFormat(
      "prefill: %d layers x %d tokens (keys: %d centres per kv head + %d "
      "outlier channels; values: random)\n",
      options_.num_layers, n, kv_.options().clusters_per_head,
      kv_.options().outlier_channels);
  absl::Duration generate_total;
  for (uint32_t layer = 0; layer < options_.num_layers; ++layer) {
    const absl::Time g0 = absl::Now();
    GenerateParallel(kv_, local_, layer, 0, n);
    generate_total += absl::Now() - g0;

    const absl::Time t0 = absl::Now();
    auto progress = [&](const AppendProgress& p) {
      if (!options_.interactive) return;
      const double s = absl::ToDoubleSeconds(absl::Now() - t0);
      out_ << absl::StrFormat(
                  "\r  layer %d/%d: %d/%d tokens  %s  %.0f tokens/s   ",
                  layer + 1, options_.num_layers, p.tokens_done, p.tokens_total,
                  FormatBytes(p.bytes_sent), s > 0 ? p.tokens_done / s : 0.0)
           << std::flush;
    };
    uint32_t requests = 0;
    ASSIGN_OR_RETURN(v1::AppendResponse response,
                     client_.AppendPrefill(report_.session_id, layer, 0, n,
                                           local_.KeyBytes(layer, 0, n),
                                           local_.ValueBytes(layer, 0, n),
                                           [&](const AppendProgress& p) {
                                             requests = p.requests;
                                             progress(p);
                                           }));
    const absl::Duration took = absl::Now() - t0;
    const uint64_t bytes = 2 * n * kv_.TokenBytes();
    report_.prefill_bytes += bytes;
    report_.prefill_time += took;
    const double s = std::max(absl::ToDoubleSeconds(took), 1e-9);
    if (options_.interactive) out_ << '\r';
    out_ << absl::StrFormat(
        "  layer %d/%d: %d tokens  %s in %s  %s tokens/s  %.0f MiB/s  "
        "(%d request%s; server has %d tokens)\n",
        layer + 1, options_.num_layers, n, FormatBytes(bytes),
        FormatLatency(took), FormatCount(n / s), bytes / s / (1 << 20),
        requests, requests == 1 ? "" : "s",
        response.layer_tokens_size() > static_cast<int>(layer)
            ? response.layer_tokens(layer)
            : 0);
  }
  const double s = std::max(absl::ToDoubleSeconds(report_.prefill_time), 1e-9);
  out_ << absl::StrFormat(
      "  total: %s sent in %s (%.0f MiB/s); generating the K/V took %s\n\n",
      FormatBytes(report_.prefill_bytes), FormatLatency(report_.prefill_time),
      report_.prefill_bytes / s / (1 << 20), FormatLatency(generate_total));
  return absl::OkStatus();
}

absl::StatusOr<v1::RetrieveResponse> Demo::RetrieveWithFallback(
    uint32_t layer, const std::vector<float>& query, v1::RetrieveMode& mode,
    absl::Duration& took) {
  const QueryView view{report_.session_id, query};
  while (true) {
    RetrieveParams params;
    params.layer = layer;
    params.mode = mode;
    params.include_kv = include_kv_;
    // Layers whose index is not ready are answered in EXACT (result.mode).
    params.exact_if_not_ready = mode == v1::RETRIEVE_MODE_WAVE;
    const absl::Time t0 = absl::Now();
    absl::StatusOr<v1::RetrieveResponse> response =
        client_.Retrieve(params, {&view, 1});
    took = absl::Now() - t0;
    if (response.ok()) {
      if (mode == v1::RETRIEVE_MODE_WAVE && response->results_size() == 1 &&
          response->results(0).mode() == v1::RETRIEVE_MODE_EXACT) {
        NoteWaveFallback(absl::StrCat("the wave index of layer ", layer,
                                      " is not ready yet"));
        mode = v1::RETRIEVE_MODE_EXACT;
      }
      return response;
    }
    const absl::StatusCode code = response.status().code();
    // A server that cannot serve WAVE at all (or whose index build failed):
    // ask again in EXACT.
    if (mode == v1::RETRIEVE_MODE_WAVE &&
        (code == absl::StatusCode::kUnavailable ||
         code == absl::StatusCode::kUnimplemented ||
         code == absl::StatusCode::kFailedPrecondition)) {
      NoteWaveFallback(response.status().ToString());
      mode = v1::RETRIEVE_MODE_EXACT;
      continue;
    }
    if (include_kv_ && code == absl::StatusCode::kResourceExhausted) {
      out_ << "  note: Retrieve refused the K/V inline (" << response.status()
           << "); using FetchClusters from here on\n";
      include_kv_ = false;
      continue;
    }
    return response;
  }
}

void Demo::NoteWaveFallback(const std::string& why) {
  ++report_.wave_fallbacks;
  if (wave_note_printed_) return;
  wave_note_printed_ = true;
  out_ << "  note: WAVE answered in EXACT (" << why
       << "); such rows show as exact*\n";
}

absl::Status Demo::WaitForIndex() {
  const absl::Time deadline = absl::Now() + options_.index_wait;
  const absl::Time t0 = absl::Now();
  while (true) {
    ASSIGN_OR_RETURN(v1::SessionInfo info,
                     client_.GetSession(report_.session_id));
    uint64_t indexed = 0, total = 0;
    for (int l = 0; l < info.layer_indexed_tokens_size(); ++l) {
      indexed += info.layer_indexed_tokens(l);
    }
    for (uint64_t t : info.layer_tokens()) total += t;
    const std::string progress = absl::StrFormat(
        "wave index: %d of %d tokens indexed over %d layers (%s)", indexed,
        total, info.layer_tokens_size(), FormatLatency(absl::Now() - t0));
    switch (info.index_state()) {
      case v1::INDEX_STATE_READY:
        out_ << (options_.interactive ? "\r" : "") << progress << ", ready\n\n";
        return absl::OkStatus();
      case v1::INDEX_STATE_FAILED:
        out_ << (options_.interactive ? "\r" : "") << progress
             << ", FAILED: " << info.index_error()
             << "\n  WAVE calls will be answered in EXACT\n\n";
        return absl::OkStatus();
      case v1::INDEX_STATE_EMPTY:  // no build pending: none is coming
        out_ << (options_.interactive ? "\r" : "") << progress
             << ", none built (too few tokens to index): WAVE calls will be "
                "answered in EXACT\n\n";
        return absl::OkStatus();
      case v1::INDEX_STATE_UNSPECIFIED:
        out_ << "wave index: the server does not report index progress\n\n";
        return absl::OkStatus();
      default:
        break;
    }
    if (absl::Now() >= deadline) {
      out_ << (options_.interactive ? "\r" : "") << progress
           << ", not ready after " << FormatLatency(options_.index_wait)
           << ": layers without an index are answered in EXACT\n\n";
      return absl::OkStatus();
    }
    if (options_.interactive) out_ << "\r" << progress << "   " << std::flush;
    absl::SleepFor(absl::Milliseconds(200));
  }
}

absl::StatusOr<DemoSample> Demo::RetrieveLayer(uint32_t step, uint32_t layer,
                                               uint64_t num_tokens,
                                               v1::RetrieveMode mode) {
  DemoSample sample;
  sample.step = step;
  sample.layer = layer;
  sample.num_tokens = num_tokens;
  sample.requested = mode;
  sample.mode = mode;
  const std::vector<float> query = kv_.Query(layer, step);

  ASSIGN_OR_RETURN(
      v1::RetrieveResponse response,
      RetrieveWithFallback(layer, query, sample.mode, sample.retrieve));
  if (response.results_size() != 1) {
    return absl::InternalError(absl::StrCat("Retrieve: expected 1 result, got ",
                                            response.results_size()));
  }
  const v1::SessionResult& result = response.results(0);
  if (result.num_tokens() != num_tokens) {
    return absl::InternalError(
        absl::StrCat("Retrieve: answer covers ", result.num_tokens(),
                     " tokens of layer ", layer, ", expected ", num_tokens));
  }

  std::vector<FetchedHead> fetched;
  std::vector<RetrievedKv> retrieved;
  absl::Time t = absl::Now();
  if (include_kv_) {
    retrieved = RetrievedKvInline(result);
  } else {
    const std::vector<v1::HeadSlots> slots = RetrievalSlots(result);
    ASSIGN_OR_RETURN(fetched,
                     client_.FetchClusters(report_.session_id, layer,
                                           result.layout_epoch(), slots));
    retrieved.assign(shape_.num_kv_heads, RetrievedKv{});
    for (const FetchedHead& head : fetched) {
      if (head.kv_head >= shape_.num_kv_heads) {
        return absl::InternalError("FetchClusters: kv_head out of range");
      }
      retrieved[head.kv_head] = RetrievedKv::Of(head.keys, head.values);
    }
  }
  sample.fetch = absl::Now() - t;

  t = absl::Now();
  const LayerKvView local = local_.View(layer, num_tokens);
  ASSIGN_OR_RETURN(std::vector<float> output,
                   RetrievedAttention(shape_, result, query, retrieved, local));
  sample.attention = absl::Now() - t;

  // Verification (not timed): coverage of the answer and the error against
  // full attention over the demo's own copy.
  if (!include_kv_) {
    ASSIGN_OR_RETURN(
        sample.retrieved_tokens,
        CheckCoverage(result, fetched, sample.mode == v1::RETRIEVE_MODE_EXACT));
  } else if (!result.heads().empty()) {
    for (const v1::SlotRange& r : result.heads(0).retrieval()) {
      sample.retrieved_tokens += r.num_slots();
    }
    for (const v1::TokenRange& r : result.steady()) {
      sample.retrieved_tokens += r.end() - r.begin();
    }
  }
  ASSIGN_OR_RETURN(std::vector<float> full,
                   LocalFullAttention(shape_, query, local));
  const Errors errors = Compare(output, full);
  sample.max_abs_error = errors.max_abs;
  sample.rel_error = errors.rel;
  if (sample.mode == v1::RETRIEVE_MODE_EXACT &&
      !(errors.rel <= options_.exact_tolerance)) {
    return absl::InternalError(absl::StrFormat(
        "EXACT attention of layer %d at step %d differs from full attention: "
        "max abs error %g, relative %g > tolerance %g",
        layer, step, errors.max_abs, errors.rel, options_.exact_tolerance));
  }
  return sample;
}

absl::Status Demo::DecodeStep(uint32_t step) {
  const uint64_t position = options_.context_tokens + step;
  std::vector<TokenKv> layers;
  for (uint32_t layer = 0; layer < options_.num_layers; ++layer) {
    kv_.Generate(layer, position, 1, local_.keys(layer, position),
                 local_.values(layer, position));
    layers.push_back(TokenKv{local_.KeyBytes(layer, position, 1),
                             local_.ValueBytes(layer, position, 1)});
  }
  const absl::Time t = absl::Now();
  RETURN_IF_ERROR(
      client_.AppendDecode(report_.session_id, position, layers).status());
  report_.decode_appends.push_back(absl::Now() - t);

  for (uint32_t layer = 0; layer < options_.num_layers; ++layer) {
    for (v1::RetrieveMode mode : options_.modes) {
      ASSIGN_OR_RETURN(DemoSample s,
                       RetrieveLayer(step, layer, position + 1, mode));
      const bool fallback = s.requested != s.mode;
      out_ << absl::StrFormat(
          "%5d %5d  %-6s %8d %9d %9s %9s %9s %9s %10s %9s\n", step, layer,
          absl::StrCat(ModeName(s.mode), fallback ? "*" : ""), s.num_tokens,
          s.retrieved_tokens, FormatLatency(s.retrieve), FormatLatency(s.fetch),
          FormatLatency(s.attention), FormatLatency(s.total()),
          FormatError(s.max_abs_error), FormatError(s.rel_error));
      report_.samples.push_back(s);
    }
  }
  return absl::OkStatus();
}

void Demo::PrintSummary() {
  out_ << "\nsummary (latencies as seen by the client; p50/p99 over decode "
          "steps; errors against full attention)\n";
  TextTable table({"LAYER", "MODE", "CALLS", "RETRIEVED", "RETRIEVE p50", "p99",
                   "FETCH p50", "p99", "TOTAL p50", "p99", "MAX ABS",
                   "MAX REL"});
  auto add_row = [&](const std::string& layer, v1::RetrieveMode mode,
                     bool all_layers, uint32_t which) {
    std::vector<absl::Duration> retrieve, fetch, total;
    double max_abs = 0, max_rel = 0;
    uint64_t retrieved = 0;
    for (const DemoSample& s : report_.samples) {
      if (s.mode != mode || (!all_layers && s.layer != which)) continue;
      retrieve.push_back(s.retrieve);
      fetch.push_back(s.fetch);
      total.push_back(s.total());
      max_abs = std::max(max_abs, s.max_abs_error);
      max_rel = std::max(max_rel, s.rel_error);
      retrieved += s.retrieved_tokens;
    }
    if (retrieve.empty()) {
      if (!all_layers) return;
      table.AddRow({layer, ModeName(mode), "0", "-", "-", "-", "-", "-", "-",
                    "-", "-", "-"});
      return;
    }
    table.AddRow({layer, ModeName(mode), absl::StrCat(retrieve.size()),
                  absl::StrCat(retrieved / retrieve.size()),
                  FormatLatency(Percentile(retrieve, 0.5)),
                  FormatLatency(Percentile(retrieve, 0.99)),
                  FormatLatency(Percentile(fetch, 0.5)),
                  FormatLatency(Percentile(fetch, 0.99)),
                  FormatLatency(Percentile(total, 0.5)),
                  FormatLatency(Percentile(total, 0.99)), FormatError(max_abs),
                  FormatError(max_rel)});
  };
  for (v1::RetrieveMode mode :
       {v1::RETRIEVE_MODE_EXACT, v1::RETRIEVE_MODE_WAVE}) {
    for (uint32_t layer = 0; layer < options_.num_layers; ++layer) {
      add_row(absl::StrCat(layer), mode, false, layer);
    }
    add_row("all", mode, true, 0);
  }
  table.Print(out_);
  const bool wave_served = std::any_of(
      report_.samples.begin(), report_.samples.end(),
      [](const DemoSample& s) { return s.mode == v1::RETRIEVE_MODE_WAVE; });
  if (!Runs(v1::RETRIEVE_MODE_WAVE)) {
    out_ << "wave: not run (pass --mode=wave or --mode=both)\n";
  } else if (report_.wave_fallbacks > 0) {
    const size_t wave_calls =
        std::count_if(report_.samples.begin(), report_.samples.end(),
                      [](const DemoSample& s) {
                        return s.requested == v1::RETRIEVE_MODE_WAVE;
                      });
    out_ << "wave: " << report_.wave_fallbacks << " of " << wave_calls
         << " calls were answered in exact (see the note above)"
         << (wave_served ? "" : "; none in wave") << "\n";
  }
  // Side by side: both modes ran on the same steps and layers.
  std::vector<absl::Duration> exact_totals, wave_totals;
  for (const DemoSample& s : report_.samples) {
    (s.mode == v1::RETRIEVE_MODE_WAVE ? wave_totals : exact_totals)
        .push_back(s.total());
  }
  if (!exact_totals.empty() && !wave_totals.empty()) {
    const absl::Duration e = Percentile(exact_totals, 0.5);
    const absl::Duration w = Percentile(wave_totals, 0.5);
    out_ << absl::StrFormat(
        "wave vs exact, total p50 per layer: %s vs %s (%.1fx)\n",
        FormatLatency(w), FormatLatency(e),
        absl::ToDoubleSeconds(e) / std::max(absl::ToDoubleSeconds(w), 1e-9));
  }
  if (!report_.decode_appends.empty()) {
    out_ << absl::StrFormat(
        "decode Append (1 token x %d layers): p50 %s, p99 %s\n",
        options_.num_layers,
        FormatLatency(Percentile(report_.decode_appends, 0.5)),
        FormatLatency(Percentile(report_.decode_appends, 0.99)));
  }
}

absl::StatusOr<DemoReport> Demo::Run() {
  out_ << absl::StrFormat(
      "wavekv demo: %d q heads, %d kv heads, head_dim %d, %s; %d layers, %d "
      "context tokens, %d decode steps, mode %s, seed %d\n",
      options_.num_q_heads, options_.num_kv_heads, options_.head_dim,
      DTypeName(options_.dtype), options_.num_layers, options_.context_tokens,
      options_.decode_steps, ModesName(options_.modes), options_.seed);
  ASSIGN_OR_RETURN(ServingStatus serving, client_.Health());
  if (serving != ServingStatus::kServing) {
    return absl::UnavailableError(absl::StrCat("server ",
                                               client_.options().target, " is ",
                                               ServingStatusName(serving)));
  }
  RETURN_IF_ERROR(CreateSession());
  absl::Status status = [&]() -> absl::Status {
    RETURN_IF_ERROR(Prefill());
    if (Runs(v1::RETRIEVE_MODE_WAVE)) RETURN_IF_ERROR(WaitForIndex());
    out_ << "decode: per step one Append of every layer, then per layer "
            "Retrieve -> fetch -> attention, checked against full attention\n";
    out_ << absl::StrFormat("%5s %5s  %-6s %8s %9s %9s %9s %9s %9s %10s %9s\n",
                            "STEP", "LAYER", "MODE", "TOKENS", "RETRIEVED",
                            "RETRIEVE", "FETCH", "ATTN", "TOTAL", "MAX ABS",
                            "REL");
    for (uint32_t step = 0; step < options_.decode_steps; ++step) {
      RETURN_IF_ERROR(DecodeStep(step));
    }
    PrintSummary();
    return absl::OkStatus();
  }();
  if (!status.ok() || !options_.keep_session) {
    absl::StatusOr<uint64_t> freed = client_.CloseSession(report_.session_id);
    if (freed.ok()) {
      out_ << "session " << report_.session_id << " closed, freed "
           << FormatBytes(*freed) << "\n";
      report_.session_id.clear();
    }
  } else {
    out_ << "session " << report_.session_id
         << " kept on the server: `wavekv show " << report_.session_id
         << "`, free it with `wavekv close " << report_.session_id << "`\n";
  }
  RETURN_IF_ERROR(status);
  return std::move(report_);
}

}  // namespace

absl::Status DemoOptions::Validate() const {
  if (num_layers == 0) {
    return absl::InvalidArgumentError("layers: must be >= 1");
  }
  if (context_tokens == 0) {
    return absl::InvalidArgumentError("context_tokens: must be >= 1");
  }
  if (modes.empty()) {
    return absl::InvalidArgumentError("modes: must name at least one mode");
  }
  for (size_t i = 0; i < modes.size(); ++i) {
    if (modes[i] != v1::RETRIEVE_MODE_EXACT &&
        modes[i] != v1::RETRIEVE_MODE_WAVE) {
      return absl::InvalidArgumentError(
          absl::StrCat("modes[", i, "]: must be EXACT or WAVE"));
    }
    if (std::count(modes.begin(), modes.end(), modes[i]) > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("modes[", i, "]: listed twice"));
    }
  }
  if (!(exact_tolerance > 0)) {
    return absl::InvalidArgumentError("exact_tolerance: must be > 0");
  }
  SyntheticKvOptions synthetic;
  synthetic.num_q_heads = num_q_heads;
  synthetic.num_kv_heads = num_kv_heads;
  synthetic.head_dim = head_dim;
  return synthetic.Validate();
}

absl::StatusOr<DemoReport> RunDemo(WaveKvClient& client,
                                   const DemoOptions& options,
                                   std::ostream& out) {
  RETURN_IF_ERROR(options.Validate());
  Demo demo(client, options, out);
  return demo.Run();
}

}  // namespace wavekv
