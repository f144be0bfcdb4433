#include "tests/crash_driver.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "tests/answer_checks.h"
#include "tests/crash_state.h"
#include "tests/kv_pattern.h"
#include "tests/server_process.h"
#include "tests/wire_client.h"

namespace wavekv::testing {
namespace {

constexpr absl::Duration kCallTimeout = absl::Seconds(30);

// SplitMix64: decorrelates seeds derived from (seed, ordinal) pairs.
uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9e3779b97f4a7c15ull + b + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

const char* DurabilityName(v1::Durability d) {
  switch (d) {
    case v1::DURABILITY_SYNC:
      return "SYNC";
    case v1::DURABILITY_ASYNC:
      return "ASYNC";
    case v1::DURABILITY_NONE:
      return "NONE";
    default:
      return "UNSPECIFIED";
  }
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// What a writer thread has in flight, read by the killer.
enum InFlight : int { kIdle = 0, kPrefill = 1, kDecode = 2 };

class Driver {
 public:
  explicit Driver(const CrashDriverOptions& options)
      : options_(options),
        state_path_(options.state_file.empty()
                        ? options.data_dir + ".crash-state"
                        : options.state_file) {}

  absl::StatusOr<CrashReport> Run();

 private:
  // Where the run is, for messages.
  std::string Where(const SessionRecord& r) const {
    return absl::StrCat("round ", round_, ": session ", r.session_id, " (",
                        DurabilityName(r.durability), ")");
  }
  KvPattern PatternOf(const SessionRecord& r) const {
    return KvPattern(r.pattern_seed, shape_);
  }
  uint64_t PrefillTarget(const SessionRecord& r) const {
    const uint64_t span =
        options_.prefill_max_tokens - options_.prefill_min_tokens + 1;
    return options_.prefill_min_tokens + Mix(r.pattern_seed, 7) % span;
  }

  absl::Status StartServer(const std::string& name);
  absl::Status SaveState();
  // Verifies every recorded session against the live server. `graceful`:
  // the last stop was SIGTERM (nothing in flight, drain persisted).
  // `wave_all`: WAVE-check every eligible session (else one per round).
  // `check_sent`: the recorded sent_tokens is exact (not a resumed file).
  absl::Status VerifyAll(bool graceful, bool wave_all, bool check_sent);
  absl::Status VerifySession(SessionRecord& r, bool graceful, bool check_sent,
                             bool* gone);
  absl::Status VerifyWave(const SessionRecord& r);
  // Closes full sessions and creates new ones up to options_.sessions.
  absl::Status Refill();
  // Runs the writers and kills the server after a random delay, at a moment
  // an Append of the wanted kind (prefill chunk or decode step) is in
  // flight when one comes within a second.
  absl::Status WriteAndKill(bool want_prefill);
  void WriterLoop(uint32_t thread, std::atomic<bool>* stop,
                  std::atomic<int>* in_flight, absl::Status* error);

  const CrashDriverOptions options_;
  const std::string state_path_;
  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WaveKv::Stub> stub_;
  // Fixed once Run() has loaded or created the state.
  uint64_t seed_ = 0;
  v1::ModelShape shape_;
  uint32_t round_ = 0;
  uint64_t wave_cursor_ = 0;
  CrashReport report_;
  absl::flat_hash_set<std::string> closed_ids_;

  // Writers update their sessions' records while the saver thread copies
  // the state; the vector itself only changes while no writer runs.
  absl::Mutex mu_;
  ExpectedState state_ ABSL_GUARDED_BY(mu_);
  bool dirty_ ABSL_GUARDED_BY(mu_) = false;
};

absl::Status Driver::StartServer(const std::string& name) {
  stub_.reset();
  channel_.reset();
  ServerProcessOptions so;
  so.name = name;
  so.data_dir = options_.data_dir;
  so.args = options_.server_args;
  so.ready_timeout = absl::Seconds(60);
  const absl::Time start = absl::Now();
  auto server = ServerProcess::Start(so);
  if (!server.ok()) {
    return absl::InternalError(absl::StrCat(
        "round ", round_, ": restart: ", server.status().message()));
  }
  const absl::Duration took = absl::Now() - start;
  report_.restart_time += took;
  report_.max_restart_time = std::max(report_.max_restart_time, took);
  server_ = std::move(*server);
  channel_ = Connect(server_->grpc_address());
  stub_ = v1::WaveKv::NewStub(channel_);
  return absl::OkStatus();
}

absl::Status Driver::SaveState() {
  ExpectedState copy;
  {
    absl::MutexLock lock(&mu_);
    copy = state_;
    dirty_ = false;
  }
  return SaveExpectedState(state_path_, copy);
}

absl::Status Driver::VerifySession(SessionRecord& r, bool graceful,
                                   bool check_sent, bool* gone) {
  *gone = false;
  auto info = CallGetSession(*stub_, "", r.session_id);
  if (info.status.error_code() == grpc::StatusCode::NOT_FOUND) {
    if (r.durable_tokens > 0 ||
        (graceful && r.durability != v1::DURABILITY_NONE)) {
      return absl::DataLossError(absl::StrCat(
          Where(r), ": NOT_FOUND after restart, ", r.durable_tokens,
          " tokens were acknowledged durable: ", StatusText(info.status)));
    }
    report_.lost_volatile_tokens += r.acked_tokens;
    *gone = true;
    return absl::OkStatus();
  }
  if (!info.ok()) {
    return absl::DataLossError(
        absl::StrCat(Where(r), ": GetSession: ", StatusText(info.status),
                     "\nserver stderr tail:\n", server_->StderrTail(2048)));
  }
  const v1::SessionInfo& s = info.response;
  const uint64_t n = s.num_tokens();
  const uint32_t layers = shape_.num_layers();
  if (static_cast<uint32_t>(s.layer_tokens_size()) != layers) {
    return absl::DataLossError(
        absl::StrCat(Where(r), ": ", s.layer_tokens_size(),
                     " layer_tokens, expected ", layers));
  }
  for (uint32_t l = 0; l < layers; ++l) {
    if (s.layer_tokens(l) != n) {
      return absl::DataLossError(
          absl::StrCat(Where(r), ": layers disagree after restart (layer ", l,
                       " holds ", s.layer_tokens(l), " tokens, num_tokens ", n,
                       "): a multi-layer Append was applied in part"));
    }
  }
  if (n < r.durable_tokens) {
    return absl::DataLossError(
        absl::StrCat(Where(r), ": holds ", n, " tokens after restart, but ",
                     r.durable_tokens, " were acknowledged durable"));
  }
  if (check_sent && n > r.sent_tokens) {
    return absl::DataLossError(absl::StrCat(Where(r), ": holds ", n,
                                            " tokens, only ", r.sent_tokens,
                                            " were ever sent"));
  }
  if (s.durable_tokens() > n) {
    return absl::DataLossError(absl::StrCat(Where(r), ": durable_tokens ",
                                            s.durable_tokens(),
                                            " > num_tokens ", n));
  }
  if (s.durable_tokens() < r.durable_tokens) {
    return absl::DataLossError(
        absl::StrCat(Where(r), ": durable watermark went back from ",
                     r.durable_tokens, " to ", s.durable_tokens()));
  }
  if (graceful && r.durability != v1::DURABILITY_NONE &&
      (n != r.acked_tokens || s.durable_tokens() != n)) {
    return absl::DataLossError(absl::StrCat(
        Where(r), ": after SIGTERM and restart holds ", n, " tokens (",
        s.durable_tokens(), " durable); ", r.acked_tokens,
        " were acknowledged and the drain must persist them all"));
  }
  if (n > r.acked_tokens) report_.unacked_tokens_found += n - r.acked_tokens;
  if (n < r.acked_tokens) report_.lost_volatile_tokens += r.acked_tokens - n;

  // Every stored row, byte for byte, through EXACT Retrieve with inline K/V.
  if (n > 0) {
    const KvPattern pattern = PatternOf(r);
    for (uint32_t l = 0; l < layers; ++l) {
      v1::RetrieveRequest request =
          RetrieveRequestFor(l, v1::RETRIEVE_MODE_EXACT, /*include_kv=*/true);
      AddQuery(request, r.session_id, pattern.Query(l, round_));
      auto answer = CallRetrieve(*stub_, "", request);
      if (!answer.ok()) {
        return absl::DataLossError(absl::StrCat(
            Where(r), ": EXACT layer ", l, ": ", StatusText(answer.status)));
      }
      if (answer.response.results_size() != 1 ||
          answer.response.results(0).num_tokens() != n) {
        return absl::DataLossError(
            absl::StrCat(Where(r), ": EXACT layer ", l, " covers ",
                         answer.response.results_size() == 1
                             ? answer.response.results(0).num_tokens()
                             : 0,
                         " tokens, GetSession said ", n));
      }
      auto checked = CheckExactResult(answer.response.results(0), pattern, l,
                                      /*include_kv=*/true);
      if (!checked.ok()) {
        return absl::DataLossError(absl::StrCat(
            Where(r), ": layer ", l,
            ": wrong bytes after restart: ", checked.status().message()));
      }
      report_.tokens_verified += n;
    }
  }
  ++report_.sessions_verified;
  r.sent_tokens = n;
  r.acked_tokens = n;
  r.durable_tokens = s.durable_tokens();
  return absl::OkStatus();
}

absl::Status Driver::VerifyWave(const SessionRecord& r) {
  const KvPattern pattern = PatternOf(r);
  const absl::Time deadline = absl::Now() + options_.index_ready_timeout;
  for (uint32_t l = 0; l < shape_.num_layers(); ++l) {
    while (true) {
      const std::string query = pattern.Query(l, 1000 + round_);
      v1::RetrieveRequest request =
          RetrieveRequestFor(l, v1::RETRIEVE_MODE_WAVE, /*include_kv=*/true);
      AddQuery(request, r.session_id, query);
      auto answer = CallRetrieve(*stub_, "", request);
      if (answer.status.error_code() == grpc::StatusCode::UNAVAILABLE &&
          absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(50));  // index not rebuilt yet
        continue;
      }
      if (!answer.ok()) {
        auto info = CallGetSession(*stub_, "", r.session_id);
        return absl::InternalError(absl::StrCat(
            Where(r), ": WAVE layer ", l,
            " after restart: ", StatusText(answer.status), " (index_state ",
            v1::IndexState_Name(info.response.index_state()), " ",
            info.response.index_error(), ")"));
      }
      auto checked = CheckWaveResult(answer.response.results(0), pattern, l,
                                     /*include_kv=*/true, query);
      if (!checked.ok()) {
        return absl::DataLossError(
            absl::StrCat(Where(r), ": WAVE layer ", l,
                         " after restart: ", checked.status().message()));
      }
      ++report_.wave_checks;
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status Driver::VerifyAll(bool graceful, bool wave_all, bool check_sent) {
  // No writer runs now: the state is only touched by this thread.
  absl::MutexLock lock(&mu_);
  std::vector<SessionRecord> kept;
  for (SessionRecord& r : state_.sessions) {
    bool gone = false;
    if (absl::Status s = VerifySession(r, graceful, check_sent, &gone);
        !s.ok()) {
      return s;
    }
    if (!gone) kept.push_back(r);
  }
  state_.sessions = std::move(kept);
  dirty_ = true;

  // Nothing else exists: no closed session came back, nobody else's.
  auto listed = ListAllSessions(*stub_, "");
  if (!listed.ok()) {
    return absl::InternalError(absl::StrCat(
        "round ", round_, ": ListSessions: ", StatusText(listed.status)));
  }
  absl::flat_hash_set<std::string> known;
  for (const SessionRecord& r : state_.sessions) known.insert(r.session_id);
  for (const v1::SessionInfo& info : listed.response) {
    if (known.contains(info.session_id())) continue;
    return absl::DataLossError(
        absl::StrCat("round ", round_, ": unexpected session ",
                     info.session_id(), " listed after restart",
                     closed_ids_.contains(info.session_id())
                         ? " (it was closed and the close was acknowledged)"
                         : " (never created by this run)"));
  }

  // WAVE retrieval over the recovered index.
  std::vector<const SessionRecord*> eligible;
  for (const SessionRecord& r : state_.sessions) {
    if (r.acked_tokens >= options_.wave_min_tokens) eligible.push_back(&r);
  }
  if (!eligible.empty()) {
    if (wave_all) {
      for (const SessionRecord* r : eligible) {
        if (absl::Status s = VerifyWave(*r); !s.ok()) return s;
      }
    } else {
      const SessionRecord* r = eligible[wave_cursor_++ % eligible.size()];
      if (absl::Status s = VerifyWave(*r); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Driver::Refill() {
  absl::MutexLock lock(&mu_);
  std::vector<SessionRecord> kept;
  for (size_t i = 0; i < state_.sessions.size(); ++i) {
    SessionRecord& r = state_.sessions[i];
    if (r.acked_tokens < options_.max_session_tokens) {
      kept.push_back(r);
      continue;
    }
    auto closed = CallCloseSession(*stub_, "", r.session_id);
    if (!closed.ok()) {
      return absl::InternalError(absl::StrCat(
          Where(r), ": CloseSession: ", StatusText(closed.status)));
    }
    closed_ids_.insert(r.session_id);
  }
  state_.sessions = std::move(kept);
  while (state_.sessions.size() < options_.sessions) {
    const uint64_t ordinal = state_.next_ordinal++;
    v1::Durability durability = v1::DURABILITY_SYNC;
    if (options_.async_every > 0 &&
        ordinal % options_.async_every == options_.async_every - 1) {
      durability = v1::DURABILITY_ASYNC;
    }
    if (options_.none_every > 0 &&
        ordinal % options_.none_every == options_.none_every - 1) {
      durability = v1::DURABILITY_NONE;
    }
    v1::CreateSessionRequest request =
        SessionRequest(shape_, absl::StrCat("crash-", ordinal));
    request.set_durability(durability);
    request.set_max_tokens(options_.max_session_tokens);
    request.mutable_index_options()->set_segment_tokens(1024);
    request.mutable_index_options()->set_update_tokens(128);
    auto created = CallCreateSession(*stub_, "", request);
    if (!created.ok()) {
      return absl::InternalError(absl::StrCat(
          "round ", round_, ": CreateSession (", DurabilityName(durability),
          "): ", StatusText(created.status)));
    }
    SessionRecord r;
    r.session_id = created.response.session().session_id();
    r.pattern_seed = Mix(seed_, ordinal);
    r.durability = durability;
    state_.sessions.push_back(std::move(r));
    ++report_.sessions_created;
  }
  dirty_ = true;
  return absl::OkStatus();
}

void Driver::WriterLoop(uint32_t thread, std::atomic<bool>* stop,
                        std::atomic<int>* in_flight, absl::Status* error) {
  std::mt19937_64 rng(Mix(Mix(seed_, round_), thread + 1));
  std::vector<size_t> owned;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = thread; i < state_.sessions.size();
         i += options_.writer_threads) {
      owned.push_back(i);
    }
  }
  if (owned.empty()) return;
  uint64_t ops = 0;
  while (!stop->load()) {
    const size_t i = owned[rng() % owned.size()];
    SessionRecord r;
    {
      absl::MutexLock lock(&mu_);
      r = state_.sessions[i];
    }
    const uint64_t start = r.acked_tokens;
    if (start >= options_.max_session_tokens) {
      bool all_full = true;
      absl::MutexLock lock(&mu_);
      for (size_t j : owned) {
        all_full &=
            state_.sessions[j].acked_tokens >= options_.max_session_tokens;
      }
      if (all_full) return;  // refilled next round
      continue;
    }
    // The first prompt up to the session's prefill target in chunks, then
    // decode steps, with a new prompt chunk (the next turn of a chat) one
    // time in `kNextTurnOdds`.
    constexpr uint64_t kNextTurnOdds = 16;
    const uint64_t target = PrefillTarget(r);
    const bool prefill = start < target || rng() % kNextTurnOdds == 0;
    uint64_t n = 1;
    if (prefill) {
      n = options_.min_chunk_tokens +
          rng() % (options_.max_chunk_tokens - options_.min_chunk_tokens + 1);
      if (start < target) n = std::min(n, target - start);
    }
    n = std::max<uint64_t>(1, std::min(n, options_.max_session_tokens - start));
    const KvPattern pattern = PatternOf(r);
    v1::AppendRequest request;
    request.set_session_id(r.session_id);
    for (uint32_t l = 0; l < shape_.num_layers(); ++l) {
      *request.add_layers() = pattern.Layer(l, start, static_cast<uint32_t>(n));
    }
    {
      absl::MutexLock lock(&mu_);
      SessionRecord& live = state_.sessions[i];
      live.sent_tokens = std::max(live.sent_tokens, start + n);
      dirty_ = true;
    }
    in_flight->store(prefill ? kPrefill : kDecode);
    auto answer = CallAppend(*stub_, "", request);
    in_flight->store(kIdle);
    if (!answer.ok()) {
      if (stop->load()) return;  // the server was killed under us
      if (answer.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        // Over a small --memory_budget with nothing spillable: refused
        // whole (the retry at the same start_token proves nothing of it
        // was applied).
        absl::MutexLock lock(&mu_);
        ++report_.appends_refused;
        continue;
      }
      *error = absl::InternalError(
          absl::StrCat(Where(r), ": Append [", start, ", ", start + n,
                       ") before the kill: ", StatusText(answer.status)));
      stop->store(true);
      return;
    }
    const v1::AppendResponse& reply = answer.response;
    std::string bad;
    if (reply.num_tokens() != start + n) {
      bad = absl::StrCat("num_tokens ", reply.num_tokens(), ", expected ",
                         start + n);
    } else if (reply.durable_tokens() > reply.num_tokens()) {
      bad = absl::StrCat("durable_tokens ", reply.durable_tokens(),
                         " > num_tokens ", reply.num_tokens());
    } else if (reply.durable_tokens() < r.durable_tokens) {
      bad = absl::StrCat("durable_tokens went back from ", r.durable_tokens,
                         " to ", reply.durable_tokens());
    } else if (r.durability == v1::DURABILITY_SYNC &&
               reply.durable_tokens() != reply.num_tokens()) {
      bad = absl::StrCat("SYNC reply with durable_tokens ",
                         reply.durable_tokens(), " != num_tokens ",
                         reply.num_tokens());
    }
    for (int l = 0; bad.empty() && l < reply.layer_tokens_size(); ++l) {
      if (reply.layer_tokens(l) != start + n) {
        bad = absl::StrCat("layer_tokens[", l, "] ", reply.layer_tokens(l),
                           ", expected ", start + n);
      }
    }
    if (!bad.empty()) {
      *error = absl::InternalError(absl::StrCat(
          Where(r), ": Append [", start, ", ", start + n, ") reply: ", bad));
      stop->store(true);
      return;
    }
    uint64_t durable = reply.durable_tokens();
    // ASYNC: the watermark also moves between appends; GetSession reads it.
    if (r.durability == v1::DURABILITY_ASYNC && ++ops % 8 == 0) {
      auto info = CallGetSession(*stub_, "", r.session_id);
      if (info.ok() && info.response.durable_tokens() <= start + n) {
        durable = std::max<uint64_t>(durable, info.response.durable_tokens());
      }
    }
    absl::MutexLock lock(&mu_);
    SessionRecord& live = state_.sessions[i];
    live.acked_tokens = start + n;
    live.durable_tokens = std::max(live.durable_tokens, durable);
    dirty_ = true;
    ++report_.appends_acked;
    ++(prefill ? report_.prefill_appends : report_.decode_appends);
  }
}

absl::Status Driver::WriteAndKill(bool want_prefill) {
  std::atomic<bool> stop{false};
  std::vector<std::atomic<int>> in_flight(options_.writer_threads);
  std::vector<absl::Status> errors(options_.writer_threads);
  std::vector<std::thread> writers;
  for (uint32_t t = 0; t < options_.writer_threads; ++t) {
    writers.emplace_back(&Driver::WriterLoop, this, t, &stop, &in_flight[t],
                         &errors[t]);
  }
  // The saver keeps the state file current while the writers run.
  std::atomic<bool> saver_stop{false};
  absl::Status saver_error;
  std::thread saver([&] {
    while (!saver_stop.load()) {
      bool dirty;
      {
        absl::MutexLock lock(&mu_);
        dirty = dirty_;
      }
      if (dirty) {
        if (absl::Status s = SaveState(); !s.ok()) saver_error = s;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });

  std::mt19937_64 rng(Mix(seed_, 1000 + round_));
  const int64_t lo = absl::ToInt64Microseconds(options_.min_kill_delay);
  const int64_t hi = absl::ToInt64Microseconds(options_.max_kill_delay);
  const absl::Duration delay =
      absl::Microseconds(lo + static_cast<int64_t>(rng() % (hi - lo + 1)));
  const absl::Time kill_at = absl::Now() + delay;
  while (absl::Now() < kill_at && !stop.load()) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(1);
  bool prefill = false, decode = false;
  while (!stop.load()) {
    prefill = decode = false;
    for (auto& f : in_flight) {
      const int v = f.load();
      prefill |= v == kPrefill;
      decode |= v == kDecode;
    }
    if ((want_prefill ? prefill : decode) || absl::Now() > give_up) break;
    absl::SleepFor(absl::Microseconds(50));
  }
  const bool writer_failed = stop.exchange(true);
  server_->Kill();
  report_.kills_during_prefill += prefill;
  report_.kills_during_decode += decode;
  for (std::thread& w : writers) w.join();
  saver_stop.store(true);
  saver.join();
  if (!saver_error.ok()) return saver_error;
  if (writer_failed) {
    for (const absl::Status& e : errors) {
      if (!e.ok()) return e;
    }
  }
  return SaveState();
}

absl::StatusOr<CrashReport> Driver::Run() {
  const absl::Time start = absl::Now();
  bool resumed = false;
  {
    absl::MutexLock lock(&mu_);
    if (FileExists(state_path_)) {
      auto loaded = LoadExpectedState(state_path_);
      if (!loaded.ok()) return loaded.status();
      state_ = std::move(*loaded);
      resumed = true;
    } else {
      state_.seed = options_.seed;
      state_.shape = options_.shape;
    }
    round_ = state_.rounds_done;
    seed_ = state_.seed;
    shape_ = state_.shape;
  }
  if (absl::Status s = StartServer("crash-start"); !s.ok()) return s;
  if (resumed) {
    if (absl::Status s = VerifyAll(false, false, /*check_sent=*/false);
        !s.ok()) {
      return s;
    }
  }
  while (round_ < options_.rounds) {
    // Odd rounds aim the kill at a prefill chunk, even ones at a decode step.
    const bool want_prefill = round_ % 2 == 1;
    if (absl::Status s = Refill(); !s.ok()) return s;
    if (absl::Status s = SaveState(); !s.ok()) return s;
    const uint64_t appends_before = report_.appends_acked;
    if (absl::Status s = WriteAndKill(want_prefill); !s.ok()) return s;
    const absl::Time restart = absl::Now();
    if (absl::Status s = StartServer(absl::StrCat("crash-r", round_));
        !s.ok()) {
      return s;
    }
    const absl::Duration restart_took = absl::Now() - restart;
    if (absl::Status s = VerifyAll(false, round_ + 1 == options_.rounds, true);
        !s.ok()) {
      return s;
    }
    ++round_;
    ++report_.rounds;
    {
      absl::MutexLock lock(&mu_);
      state_.rounds_done = round_;
      dirty_ = true;
    }
    if (absl::Status s = SaveState(); !s.ok()) return s;
    if (options_.progress) {
      options_.progress(absl::StrFormat(
          "round %d/%d: %d appends acked, restart %s, %d tokens verified so "
          "far",
          round_, options_.rounds, report_.appends_acked - appends_before,
          absl::FormatDuration(
              absl::Trunc(restart_took, absl::Milliseconds(1))),
          report_.tokens_verified));
    }
  }
  // Graceful stop: the drain persists what every level promised.
  auto stopped = server_->Terminate(absl::Seconds(60));
  if (!stopped.ok()) return stopped.status();
  if (!stopped->ok()) {
    return absl::InternalError(absl::StrCat("SIGTERM: server ended with ",
                                            stopped->ToString(), "\n",
                                            server_->StderrTail(2048)));
  }
  if (absl::Status s = StartServer("crash-final"); !s.ok()) return s;
  if (absl::Status s = VerifyAll(/*graceful=*/true, false, true); !s.ok()) {
    return s;
  }
  if (absl::Status s = SaveState(); !s.ok()) return s;
  auto final_stop = server_->Terminate(absl::Seconds(60));
  if (!final_stop.ok()) return final_stop.status();
  report_.total_time = absl::Now() - start;
  return report_;
}

}  // namespace

v1::ModelShape DefaultCrashShape() {
  return MakeShape(/*num_layers=*/2, /*num_q_heads=*/4, /*num_kv_heads=*/2,
                   /*head_dim=*/64, v1::DTYPE_FP16);
}

absl::Status CrashDriverOptions::Validate() const {
  auto bad = [](absl::string_view field, auto value, absl::string_view want) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " (", want, ")"));
  };
  if (rounds < 1) return bad("rounds", rounds, "want >= 1");
  if (sessions < 1 || sessions > 256) {
    return bad("sessions", sessions, "want 1..256");
  }
  if (writer_threads < 1) return bad("writer_threads", writer_threads, ">= 1");
  if (data_dir.empty()) return bad("data_dir", "\"\"", "required");
  if (min_kill_delay < absl::ZeroDuration() ||
      max_kill_delay < min_kill_delay) {
    return bad("max_kill_delay", absl::FormatDuration(max_kill_delay),
               "want >= min_kill_delay >= 0");
  }
  if (min_chunk_tokens < 1 || max_chunk_tokens < min_chunk_tokens) {
    return bad("max_chunk_tokens", max_chunk_tokens,
               "want >= min_chunk_tokens >= 1");
  }
  if (prefill_max_tokens < prefill_min_tokens) {
    return bad("prefill_max_tokens", prefill_max_tokens,
               "want >= prefill_min_tokens");
  }
  if (max_session_tokens < 1) {
    return bad("max_session_tokens", max_session_tokens, "want >= 1");
  }
  if (shape.num_layers() == 0 || ElementBytes(shape.dtype()) == 0) {
    return bad("shape", shape.ShortDebugString(), "want a complete shape");
  }
  return absl::OkStatus();
}

std::string CrashReport::ToString() const {
  return absl::StrFormat(
      "%d rounds (kill -9 with a prefill Append in flight: %d, decode: %d), "
      "%d appends acked (%d prefill, %d decode, %d refused over budget), "
      "%d sessions created, "
      "%d session checks, %d token rows verified, %d unacknowledged tokens "
      "found intact, %d volatile tokens lost (allowed), %d WAVE checks, "
      "restart mean %s max %s, total %s",
      rounds, kills_during_prefill, kills_during_decode, appends_acked,
      prefill_appends, decode_appends, appends_refused, sessions_created,
      sessions_verified, tokens_verified, unacked_tokens_found,
      lost_volatile_tokens, wave_checks,
      absl::FormatDuration(absl::Trunc(
          rounds ? restart_time / (rounds + 2) : absl::ZeroDuration(),
          absl::Milliseconds(1))),
      absl::FormatDuration(
          absl::Trunc(max_restart_time, absl::Milliseconds(1))),
      absl::FormatDuration(absl::Trunc(total_time, absl::Milliseconds(1))));
}

absl::StatusOr<CrashReport> RunCrashRounds(const CrashDriverOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  Driver driver(options);
  return driver.Run();
}

}  // namespace wavekv::testing
