#include "bench/load_driver.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <ostream>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/load_stats.h"
#include "client/text_table.h"
#include "tests/kv_pattern.h"
#include "tests/prometheus_text.h"
#include "tests/server_process.h"
#include "tests/wire_client.h"

namespace wavekv::bench {
namespace {

using testing::CodeName;
using testing::KvKind;
using testing::KvPattern;

// K/V rows per layer generated once and sliced for every Append: keys
// repeat every kPoolTokens positions (the server does not care; generating
// fresh rows would make the client, not the server, the bottleneck).
constexpr uint64_t kPoolTokens = 4096;

enum Op { kSetupPrefill, kPrefill, kDecode, kWave, kExact, kNumOps };
const char* const kOpNames[kNumOps] = {"setup.prefill", "append.prefill",
                                       "append.decode", "retrieve.wave",
                                       "retrieve.exact"};

bool IsLoopback(const std::string& target) {
  return absl::StartsWith(target, "127.") ||
         absl::StartsWith(target, "localhost:") ||
         absl::StartsWith(target, "[::1]:");
}

struct Session {
  std::string id;
  std::atomic<uint64_t> tokens{0};  // per layer, acknowledged
};

class LoadRun {
 public:
  explicit LoadRun(const LoadOptions& options) : o_(options) {}
  absl::StatusOr<LoadReport> Run();

 private:
  absl::Status StartOrConnect();
  absl::Status CreateSessions();
  // Appends `n` tokens to session `s` (all layers) and records it.
  void Append(Session& s, uint32_t n, OpStats& stats);
  void Retrieve(std::mt19937_64& rng, bool wave, OpStats& stats);
  void Worker(uint32_t thread, absl::Time deadline,
              std::vector<OpStats>* stats);
  void SampleMemory(absl::Time start);
  std::vector<testing::MetricSample> Metrics();

  const LoadOptions o_;
  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WaveKv::Stub> stub_;
  std::string target_;
  pid_t pid_ = 0;
  int metrics_port_ = 0;
  std::vector<std::unique_ptr<Session>> sessions_;
  std::vector<std::string> key_pool_, value_pool_;  // per layer
  std::vector<std::string> queries_;                // per layer
  uint64_t token_bytes_ = 0;  // K+V bytes of one token over all layers
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> timed_ops_{0}, timed_errors_{0};
  std::atomic<uint64_t> wave_served_exact_{0};

  absl::Mutex mu_;
  std::vector<MemorySample> memory_ ABSL_GUARDED_BY(mu_);
};

absl::Status LoadRun::StartOrConnect() {
  if (o_.target.empty()) {
    testing::ServerProcessOptions so;
    so.name = "wavekv-load";
    so.args = o_.server_args;
    if (o_.memory_budget_bytes > 0) {
      so.args.push_back(
          absl::StrCat("--memory_budget=", o_.memory_budget_bytes));
    }
    auto server = testing::ServerProcess::Start(so);
    if (!server.ok()) return server.status();
    server_ = std::move(*server);
    target_ = server_->grpc_address();
    pid_ = server_->pid();
    metrics_port_ = server_->metrics_port();
  } else {
    target_ = o_.target;
    pid_ = o_.server_pid;
    metrics_port_ = o_.metrics_port;
  }
  channel_ = testing::Connect(target_);
  stub_ = v1::WaveKv::NewStub(channel_);
  return absl::OkStatus();
}

std::vector<testing::MetricSample> LoadRun::Metrics() {
  if (metrics_port_ <= 0) return {};
  auto text = testing::HttpGet(metrics_port_, "/metrics");
  if (!text.ok()) return {};
  auto samples = testing::ParsePrometheusText(*text);
  return samples.ok() ? *samples : std::vector<testing::MetricSample>{};
}

absl::Status LoadRun::CreateSessions() {
  const v1::ModelShape& shape = o_.shape;
  const KvPattern pattern(o_.seed, shape);
  for (uint32_t l = 0; l < shape.num_layers(); ++l) {
    key_pool_.push_back(pattern.Tokens(KvKind::kKeys, l, 0, kPoolTokens));
    value_pool_.push_back(pattern.Tokens(KvKind::kValues, l, 0, kPoolTokens));
    queries_.push_back(pattern.Query(l, 0));
  }
  token_bytes_ = 2 * testing::TokenLayerBytes(shape) * shape.num_layers();
  for (uint32_t i = 0; i < o_.sessions; ++i) {
    v1::CreateSessionRequest request =
        testing::SessionRequest(shape, absl::StrCat("load-", i));
    request.set_durability(o_.durability);
    request.set_max_tokens(o_.max_session_tokens);
    auto created = testing::CallCreateSession(*stub_, "", request);
    if (!created.ok()) {
      return absl::Status(
          static_cast<absl::StatusCode>(created.status.error_code()),
          absl::StrCat("CreateSession ", i, ": ",
                       testing::StatusText(created.status)));
    }
    auto s = std::make_unique<Session>();
    s->id = created.response.session().session_id();
    sessions_.push_back(std::move(s));
  }
  return absl::OkStatus();
}

void LoadRun::Append(Session& s, uint32_t n, OpStats& stats) {
  const uint64_t start = s.tokens.load();
  const uint64_t row = testing::TokenLayerBytes(o_.shape);
  const uint64_t offset = (start % (kPoolTokens - n)) * row;
  v1::AppendRequest request;
  request.set_session_id(s.id);
  for (uint32_t l = 0; l < o_.shape.num_layers(); ++l) {
    v1::LayerKV* kv = request.add_layers();
    kv->set_layer(l);
    kv->set_start_token(start);
    kv->set_num_tokens(n);
    kv->set_keys(key_pool_[l].substr(offset, n * row));
    kv->set_values(value_pool_[l].substr(offset, n * row));
  }
  const absl::Time begin = absl::Now();
  auto answer = testing::CallAppend(*stub_, "", request);
  const absl::Duration took = absl::Now() - begin;
  if (!answer.ok()) {
    stats.RecordError(CodeName(answer.status.error_code()),
                      answer.status.error_message());
    if (answer.status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      // Resynchronise with the server's length (should not happen).
      auto info = testing::CallGetSession(*stub_, "", s.id);
      if (info.ok()) s.tokens.store(info.response.num_tokens());
    }
    return;
  }
  s.tokens.store(answer.response.num_tokens());
  stats.RecordOk(took, n * token_bytes_);
}

void LoadRun::Retrieve(std::mt19937_64& rng, bool wave, OpStats& stats) {
  const uint32_t layer = rng() % o_.shape.num_layers();
  v1::RetrieveRequest request = testing::RetrieveRequestFor(
      layer, wave ? v1::RETRIEVE_MODE_WAVE : v1::RETRIEVE_MODE_EXACT,
      o_.include_kv);
  request.set_exact_if_not_ready(true);
  const uint32_t batch =
      std::min<uint32_t>(o_.batch_sessions, sessions_.size());
  const size_t first = rng() % sessions_.size();
  for (uint32_t b = 0; b < batch; ++b) {
    testing::AddQuery(request, sessions_[(first + b) % sessions_.size()]->id,
                      queries_[layer]);
  }
  const absl::Time begin = absl::Now();
  auto answer = testing::CallRetrieve(*stub_, "", request);
  const absl::Duration took = absl::Now() - begin;
  if (!answer.ok()) {
    stats.RecordError(CodeName(answer.status.error_code()),
                      answer.status.error_message());
    return;
  }
  uint64_t bytes = 0;
  for (const v1::SessionResult& r : answer.response.results()) {
    if (wave && r.mode() != v1::RETRIEVE_MODE_WAVE) ++wave_served_exact_;
    for (const v1::KvHeadResult& h : r.heads()) {
      bytes += h.keys().size() + h.values().size();
    }
  }
  stats.RecordOk(took, bytes);
}

void LoadRun::Worker(uint32_t thread, absl::Time deadline,
                     std::vector<OpStats>* stats) {
  std::mt19937_64 rng(o_.seed * 7919 + thread);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<Session*> owned;
  for (size_t i = thread; i < sessions_.size(); i += o_.threads) {
    owned.push_back(sessions_[i].get());
  }
  while (!stop_.load() && absl::Now() < deadline) {
    if (o_.max_ops > 0 && timed_ops_.load() >= o_.max_ops) break;
    timed_ops_.fetch_add(1);
    const uint64_t errors_before =
        (*stats)[kWave].errors() + (*stats)[kExact].errors() +
        (*stats)[kPrefill].errors() + (*stats)[kDecode].errors();
    if (owned.empty() || unit(rng) < o_.retrieve_fraction) {
      const bool wave = unit(rng) < o_.wave_fraction;
      Retrieve(rng, wave, (*stats)[wave ? kWave : kExact]);
    } else {
      Session& s = *owned[rng() % owned.size()];
      const uint64_t room = o_.max_session_tokens - s.tokens.load();
      if (room == 0) {
        Retrieve(rng, true, (*stats)[kWave]);  // full: read instead
      } else if (unit(rng) < o_.prefill_fraction) {
        Append(s,
               static_cast<uint32_t>(std::min<uint64_t>(o_.chunk_tokens, room)),
               (*stats)[kPrefill]);
      } else {
        Append(s, 1, (*stats)[kDecode]);
      }
    }
    const uint64_t errors_after =
        (*stats)[kWave].errors() + (*stats)[kExact].errors() +
        (*stats)[kPrefill].errors() + (*stats)[kDecode].errors();
    timed_errors_ += errors_after - errors_before;
  }
}

void LoadRun::SampleMemory(absl::Time start) {
  MemorySample sample;
  sample.at = absl::Now() - start;
  if (pid_ > 0) {
    auto memory = ReadProcMemory(pid_);
    if (memory.ok()) sample.rss_bytes = memory->rss_bytes;
  }
  const auto metrics = Metrics();
  sample.kv_bytes = static_cast<uint64_t>(
      testing::SumSamples(metrics, "wavekv_memory_bytes"));
  uint64_t tokens = 0;
  for (const auto& s : sessions_) tokens += s->tokens.load();
  sample.stored_bytes = tokens * token_bytes_;
  absl::MutexLock lock(&mu_);
  memory_.push_back(sample);
}

absl::StatusOr<LoadReport> LoadRun::Run() {
  if (absl::Status s = StartOrConnect(); !s.ok()) return s;
  LoadReport report;
  report.target = target_;
  report.server_pid = pid_;
  report.sessions = o_.sessions;
  report.threads = o_.threads;
  const absl::Time start = absl::Now();
  SampleMemory(start);
  {
    absl::MutexLock lock(&mu_);
    report.idle_rss_bytes = memory_.back().rss_bytes;
  }
  const auto metrics_before = Metrics();

  // The sampler runs through setup and the timed phase.
  std::atomic<bool> sampler_stop{false};
  std::thread sampler([&] {
    absl::Time next_progress = absl::Now() + o_.progress_interval;
    while (!sampler_stop.load()) {
      absl::SleepFor(o_.sample_interval);
      SampleMemory(start);
      if (o_.progress && absl::Now() >= next_progress) {
        next_progress += o_.progress_interval;
        MemorySample last;
        {
          absl::MutexLock lock(&mu_);
          last = memory_.back();
        }
        o_.progress(absl::StrFormat(
            "t=%5.1fs ops=%d errors=%d stored=%s rss=%s kv=%s",
            absl::ToDoubleSeconds(last.at), timed_ops_.load(),
            timed_errors_.load(), FormatBytes(last.stored_bytes),
            FormatBytes(last.rss_bytes), FormatBytes(last.kv_bytes)));
      }
    }
  });
  auto join_sampler = [&] {
    sampler_stop.store(true);
    if (sampler.joinable()) sampler.join();
  };

  if (absl::Status s = CreateSessions(); !s.ok()) {
    join_sampler();
    return s;
  }
  // Setup: every owner thread prefills its sessions.
  std::vector<std::vector<OpStats>> stats(o_.threads,
                                          std::vector<OpStats>(kNumOps));
  {
    std::vector<std::thread> threads;
    for (uint32_t t = 0; t < o_.threads; ++t) {
      threads.emplace_back([&, t] {
        for (size_t i = t; i < sessions_.size(); i += o_.threads) {
          Session& s = *sessions_[i];
          const uint64_t goal =
              std::min(o_.prefill_tokens, o_.max_session_tokens);
          int failures = 0;
          while (s.tokens.load() < goal && failures < 3) {
            const uint64_t before = stats[t][kSetupPrefill].errors();
            Append(s,
                   static_cast<uint32_t>(std::min<uint64_t>(
                       o_.chunk_tokens, goal - s.tokens.load())),
                   stats[t][kSetupPrefill]);
            failures += stats[t][kSetupPrefill].errors() > before;
          }
        }
      });
    }
    for (std::thread& t : threads) t.join();
  }
  report.setup_time = absl::Now() - start;
  if (o_.progress) {
    o_.progress(absl::StrCat("setup done in ", FormatLatency(report.setup_time),
                             ": ", o_.sessions, " sessions prefilled"));
  }

  const absl::Time timed_start = absl::Now();
  const absl::Time deadline = timed_start + o_.duration;
  {
    std::vector<std::thread> threads;
    for (uint32_t t = 0; t < o_.threads; ++t) {
      threads.emplace_back(&LoadRun::Worker, this, t, deadline, &stats[t]);
    }
    for (std::thread& t : threads) t.join();
  }
  report.timed = absl::Now() - timed_start;
  join_sampler();
  SampleMemory(start);

  for (int op = 0; op < kNumOps; ++op) {
    OpStats merged;
    for (const auto& per_thread : stats) merged.Merge(per_thread[op]);
    if (merged.ok() + merged.errors() == 0) continue;
    OpRow row;
    row.op = kOpNames[op];
    row.ok = merged.ok();
    row.errors = merged.errors();
    row.errors_by_code = merged.errors_by_code();
    row.first_messages = merged.first_messages();
    const double seconds = absl::ToDoubleSeconds(
        op == kSetupPrefill ? report.setup_time : report.timed);
    row.ops_per_s = seconds > 0 ? merged.ok() / seconds : 0;
    row.mib_per_s = seconds > 0 ? merged.bytes() / seconds / (1 << 20) : 0;
    row.p50 = merged.Percentile(50);
    row.p99 = merged.Percentile(99);
    row.max = merged.Percentile(100);
    row.mean = merged.Mean();
    report.rows.push_back(std::move(row));
  }
  report.wave_served_exact = wave_served_exact_.load();
  {
    absl::MutexLock lock(&mu_);
    report.memory = memory_;
  }
  for (const MemorySample& m : report.memory) {
    report.max_rss_bytes = std::max(report.max_rss_bytes, m.rss_bytes);
    report.max_kv_bytes = std::max(report.max_kv_bytes, m.kv_bytes);
  }
  report.stored_bytes = report.memory.back().stored_bytes;
  const auto metrics_after = Metrics();
  report.memory_budget_bytes = static_cast<uint64_t>(
      testing::SumSamples(metrics_after, "wavekv_memory_budget_bytes"));
  auto delta = [&](const std::string& name) {
    if (testing::CountSamples(metrics_after, name) == 0) return -1.0;
    return testing::SumSamples(metrics_after, name) -
           testing::SumSamples(metrics_before, name);
  };
  report.spills = delta("wavekv_spills_total");
  report.restores = delta("wavekv_restores_total");
  if (server_ != nullptr) {
    auto stopped = server_->Terminate(absl::Seconds(30));
    if (!stopped.ok()) return stopped.status();
    if (!stopped->ok()) {
      return absl::InternalError(
          absl::StrCat("server ended with ", stopped->ToString(),
                       " after the run: ", server_->StderrTail(2048)));
    }
  }
  return report;
}

// Prints `header` + `rows` as a padded text table or as Markdown.
void PrintTable(const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows,
                bool markdown, std::ostream& out) {
  if (!markdown) {
    TextTable table(header);
    for (const auto& r : rows) table.AddRow(r);
    table.Print(out);
    return;
  }
  out << "| " << absl::StrJoin(header, " | ") << " |\n|";
  for (size_t i = 0; i < header.size(); ++i) out << (i == 0 ? "---|" : "---:|");
  out << "\n";
  for (const auto& r : rows) out << "| " << absl::StrJoin(r, " | ") << " |\n";
}

}  // namespace

LoadOptions::LoadOptions()
    : shape(testing::MakeShape(4, 8, 2, 128, v1::DTYPE_FP16)) {}

absl::Status LoadOptions::Validate() const {
  auto bad = [](absl::string_view field, auto value, absl::string_view want) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " (", want, ")"));
  };
  if (!target.empty() && !IsLoopback(target)) {
    return bad("target", target, "loopback only: 127.x, localhost or [::1]");
  }
  if (sessions < 1 || sessions > 4096)
    return bad("sessions", sessions, "1..4096");
  if (threads < 1 || threads > 256) return bad("threads", threads, "1..256");
  if (duration < absl::Seconds(1) || duration > absl::Hours(1)) {
    return bad("duration", absl::FormatDuration(duration), "1s..1h");
  }
  if (chunk_tokens < 1 || chunk_tokens > kPoolTokens / 2) {
    return bad("chunk_tokens", chunk_tokens,
               absl::StrCat("1..", kPoolTokens / 2));
  }
  for (auto [name, v] :
       {std::pair<const char*, double>{"retrieve_fraction", retrieve_fraction},
        {"wave_fraction", wave_fraction},
        {"prefill_fraction", prefill_fraction}}) {
    if (!(v >= 0 && v <= 1)) return bad(name, v, "0..1");
  }
  if (batch_sessions < 1) return bad("batch_sessions", batch_sessions, ">= 1");
  if (max_session_tokens < 1) {
    return bad("max_session_tokens", max_session_tokens, ">= 1");
  }
  if (testing::ElementBytes(shape.dtype()) == 0 || shape.num_layers() == 0) {
    return bad("shape", shape.ShortDebugString(), "a complete shape");
  }
  if (sample_interval <= absl::ZeroDuration() ||
      progress_interval <= absl::ZeroDuration()) {
    return bad("sample_interval", absl::FormatDuration(sample_interval), "> 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadReport> RunLoad(const LoadOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  LoadRun run(options);
  return run.Run();
}

void PrintLoadReport(LoadReport& report, bool markdown, int max_memory_rows,
                     std::ostream& out) {
  std::vector<std::vector<std::string>> rows;
  for (const OpRow& r : report.rows) {
    std::vector<std::string> codes;
    for (const auto& [code, n] : r.errors_by_code) {
      codes.push_back(absl::StrCat(code, "=", n));
    }
    rows.push_back({r.op, absl::StrCat(r.ok),
                    absl::StrFormat("%.1f", r.ops_per_s),
                    absl::StrFormat("%.1f", r.mib_per_s), FormatLatency(r.p50),
                    FormatLatency(r.p99), FormatLatency(r.max),
                    codes.empty() ? "-" : absl::StrJoin(codes, " ")});
  }
  out << (markdown ? "\n" : "") << "operations (" << report.sessions
      << " sessions x " << report.threads << " threads, timed phase "
      << FormatLatency(report.timed) << ", setup "
      << FormatLatency(report.setup_time) << "):\n";
  if (markdown) out << "\n";
  PrintTable({"op", "ok", "ops/s", "MiB/s", "p50", "p99", "max", "errors"},
             rows, markdown, out);
  for (const OpRow& r : report.rows) {
    for (const auto& [code, message] : r.first_messages) {
      out << "first " << code << " of " << r.op << ": " << message << "\n";
    }
  }
  if (report.wave_served_exact > 0) {
    out << "(" << report.wave_served_exact
        << " WAVE results served as EXACT: index not ready)\n";
  }

  out << (markdown ? "\n" : "\n") << "memory:\n" << (markdown ? "\n" : "");
  std::vector<std::vector<std::string>> mem = {
      {"server RSS idle (before sessions)", FormatBytes(report.idle_rss_bytes)},
      {"server RSS max", FormatBytes(report.max_rss_bytes)},
      {"RSS growth (max - idle)",
       FormatBytes(report.max_rss_bytes > report.idle_rss_bytes
                       ? report.max_rss_bytes - report.idle_rss_bytes
                       : 0)},
      {"K/V stored (all sessions, end)", FormatBytes(report.stored_bytes)},
      {"memory budget (server)", report.memory_budget_bytes
                                     ? FormatBytes(report.memory_budget_bytes)
                                     : "-"},
      {"K/V in host memory max (wavekv_memory_bytes)",
       FormatBytes(report.max_kv_bytes)},
      {"spills / restores during the run",
       report.spills < 0 || report.restores < 0
           ? std::string("- (not exported)")
           : absl::StrFormat("%.0f / %.0f", report.spills, report.restores)},
  };
  PrintTable({"quantity", "value"}, mem, markdown, out);

  out << "\nRSS over time:\n" << (markdown ? "\n" : "");
  std::vector<std::vector<std::string>> timeline;
  const size_t n = report.memory.size();
  const size_t step = std::max<size_t>(
      1, (n + max_memory_rows - 1) / std::max(1, max_memory_rows));
  for (size_t i = 0; i < n; i += step) {
    const MemorySample& m = report.memory[i];
    timeline.push_back({absl::StrFormat("%.1f s", absl::ToDoubleSeconds(m.at)),
                        FormatBytes(m.rss_bytes), FormatBytes(m.kv_bytes),
                        FormatBytes(m.stored_bytes)});
  }
  if (n > 0 && (n - 1) % step != 0) {
    const MemorySample& m = report.memory.back();
    timeline.push_back({absl::StrFormat("%.1f s", absl::ToDoubleSeconds(m.at)),
                        FormatBytes(m.rss_bytes), FormatBytes(m.kv_bytes),
                        FormatBytes(m.stored_bytes)});
  }
  PrintTable({"t", "RSS", "K/V in memory", "K/V stored"}, timeline, markdown,
             out);
}

}  // namespace wavekv::bench
