// wavekv-load: load generator for wavekv-server on loopback (DESIGN.md,
// issue 4 deliverable 6). Starts a server (or targets one with --target),
// runs --sessions sessions x --threads client threads for --duration_s
// seconds of mixed appends and retrievals, prints progress on stderr and a
// summary (throughput, p50/p99 latency, errors by code, server RSS over
// time) on stdout.
//
//   bazel run //bench:wavekv-load -- --sessions=16 --threads=4 --duration_s=20
//   # memory held within a budget smaller than the working set:
//   bazel run //bench:wavekv-load -- --memory_budget=64MiB --sessions=24
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/load_driver.h"
#include "tests/kv_pattern.h"
#include "transport/byte_size.h"

ABSL_FLAG(std::string, target, "",
          "existing server 127.0.0.1:PORT; empty = start one");
ABSL_FLAG(int, server_pid, 0, "--target's pid, for RSS sampling");
ABSL_FLAG(int, metrics_port, 0, "--target's metrics port");
ABSL_FLAG(std::string, server, "",
          "wavekv-server binary to start; default: the one in this tool's "
          "runfiles");
ABSL_FLAG(std::string, server_args, "",
          "extra flags of the started server, comma-separated");
ABSL_FLAG(std::string, memory_budget, "",
          "started server's --memory_budget (e.g. 64MiB); empty = default");
ABSL_FLAG(uint32_t, sessions, 8, "sessions");
ABSL_FLAG(uint32_t, threads, 4, "client threads");
ABSL_FLAG(double, duration_s, 10, "timed phase, seconds (1..3600)");
ABSL_FLAG(uint64_t, max_ops, 0, "stop after this many timed ops (0 = none)");
ABSL_FLAG(uint64_t, prefill_tokens, 2048, "tokens per layer prefilled");
ABSL_FLAG(uint32_t, chunk_tokens, 256, "tokens per layer per prefill Append");
ABSL_FLAG(double, retrieve_fraction, 0.5, "share of retrievals in the mix");
ABSL_FLAG(double, wave_fraction, 0.7, "share of WAVE among retrievals");
ABSL_FLAG(double, prefill_fraction, 0.05,
          "share of prefill chunks among timed appends");
ABSL_FLAG(uint32_t, batch, 4, "sessions per Retrieve call");
ABSL_FLAG(bool, include_kv, true, "Retrieve returns the K/V inline");
ABSL_FLAG(uint64_t, max_session_tokens, 32768, "per-session token cap");
ABSL_FLAG(std::string, durability, "none", "none | async | sync");
ABSL_FLAG(std::string, shape, "4,8,2,128,fp16",
          "layers,q_heads,kv_heads,head_dim,dtype (fp16|bf16|fp32)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the op mix and the K/V");
ABSL_FLAG(bool, markdown, false, "print the summary as Markdown tables");

namespace {

bool ParseShape(const std::string& text, wavekv::v1::ModelShape* shape) {
  std::vector<std::string> f = absl::StrSplit(text, ',');
  uint32_t n[4];
  if (f.size() != 5) return false;
  for (int i = 0; i < 4; ++i) {
    if (!absl::SimpleAtoi(f[i], &n[i])) return false;
  }
  wavekv::v1::DType dtype;
  if (f[4] == "fp16") {
    dtype = wavekv::v1::DTYPE_FP16;
  } else if (f[4] == "bf16") {
    dtype = wavekv::v1::DTYPE_BF16;
  } else if (f[4] == "fp32") {
    dtype = wavekv::v1::DTYPE_FP32;
  } else {
    return false;
  }
  *shape = wavekv::testing::MakeShape(n[0], n[1], n[2], n[3], dtype);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "load generator for wavekv-server on loopback: wavekv-load "
      "[--sessions=N --threads=M --duration_s=T --memory_budget=SIZE]");
  const std::vector<std::string> all_args(argv, argv + argc);
  absl::ParseCommandLine(argc, argv);

  wavekv::bench::LoadOptions o;
  o.target = absl::GetFlag(FLAGS_target);
  o.server_pid = absl::GetFlag(FLAGS_server_pid);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  for (absl::string_view a : absl::StrSplit(absl::GetFlag(FLAGS_server_args),
                                            ',', absl::SkipEmpty())) {
    o.server_args.emplace_back(a);
  }
  if (const std::string budget = absl::GetFlag(FLAGS_memory_budget);
      !budget.empty()) {
    auto bytes = wavekv::ParseByteSize(budget);
    if (!bytes.ok()) {
      std::cerr << "wavekv-load: --memory_budget: " << bytes.status() << "\n";
      return 2;
    }
    o.memory_budget_bytes = *bytes;
  }
  o.sessions = absl::GetFlag(FLAGS_sessions);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.duration = absl::Seconds(absl::GetFlag(FLAGS_duration_s));
  o.max_ops = absl::GetFlag(FLAGS_max_ops);
  o.prefill_tokens = absl::GetFlag(FLAGS_prefill_tokens);
  o.chunk_tokens = absl::GetFlag(FLAGS_chunk_tokens);
  o.retrieve_fraction = absl::GetFlag(FLAGS_retrieve_fraction);
  o.wave_fraction = absl::GetFlag(FLAGS_wave_fraction);
  o.prefill_fraction = absl::GetFlag(FLAGS_prefill_fraction);
  o.batch_sessions = absl::GetFlag(FLAGS_batch);
  o.include_kv = absl::GetFlag(FLAGS_include_kv);
  o.max_session_tokens = absl::GetFlag(FLAGS_max_session_tokens);
  o.seed = absl::GetFlag(FLAGS_seed);
  const std::string durability = absl::GetFlag(FLAGS_durability);
  if (durability == "none") {
    o.durability = wavekv::v1::DURABILITY_NONE;
  } else if (durability == "async") {
    o.durability = wavekv::v1::DURABILITY_ASYNC;
  } else if (durability == "sync") {
    o.durability = wavekv::v1::DURABILITY_SYNC;
  } else {
    std::cerr << "wavekv-load: --durability: '" << durability
              << "' (want none, async or sync)\n";
    return 2;
  }
  if (!ParseShape(absl::GetFlag(FLAGS_shape), &o.shape)) {
    std::cerr << "wavekv-load: --shape: '" << absl::GetFlag(FLAGS_shape)
              << "' (want layers,q_heads,kv_heads,head_dim,fp16|bf16|fp32)\n";
    return 2;
  }
  o.progress = [](const std::string& line) {
    std::cerr << "wavekv-load: " << line << std::endl;
  };
  if (o.target.empty()) {
    std::string server = absl::GetFlag(FLAGS_server);
    if (server.empty() && std::getenv("WAVEKV_SERVER") == nullptr) {
      server =
          absl::StrCat(argv[0], ".runfiles/wavekv/transport/wavekv-server");
    }
    if (!server.empty()) ::setenv("WAVEKV_SERVER", server.c_str(), 1);
  }

  auto report = wavekv::bench::RunLoad(o);
  if (!report.ok()) {
    std::cerr << "wavekv-load: " << report.status() << "\n";
    return 1;
  }
  report->command_line = absl::StrJoin(all_args, " ");
  std::cout << "wavekv-load: " << report->command_line << "\n";
  std::cout << "server " << report->target << " (pid " << report->server_pid
            << ")\n";
  wavekv::bench::PrintLoadReport(*report, absl::GetFlag(FLAGS_markdown), 12,
                                 std::cout);
  return 0;
}
