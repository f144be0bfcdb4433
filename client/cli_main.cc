// `wavekv`: the command-line tool of a wavekv-server.
//
//   wavekv [--server=HOST:PORT] [--token=T | --token_file=F]
//          [--tls_ca=F [--tls_cert=F --tls_key=F]] <command>
//
// Commands: health, list, show <session>, close <session>, demo, and eval
// (the accuracy harness; no server). Output is human-readable; errors go to
// stderr with a non-zero exit status (1: the server or a check failed, 2: bad
// usage).
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/demo.h"
#include "client/text_table.h"
#include "client/wavekv_client.h"
#include "common/status_macros.h"
#include "index/eval/eval_cli.h"

ABSL_FLAG(std::string, server, "127.0.0.1:7070",
          "wavekv-server gRPC address, HOST:PORT");
ABSL_FLAG(std::string, token, "",
          "bearer token (when the server has a --tokens_file)");
ABSL_FLAG(std::string, token_file, "",
          "file whose first line is the bearer token (instead of --token)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(60), "deadline of each RPC");
ABSL_FLAG(bool, tls, false,
          "connect with TLS (implied by --tls_ca/--tls_cert); without "
          "--tls_ca the server is verified against the system roots");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle to verify the server");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM client certificate chain for mTLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(uint32_t, fetch_chunk_bytes, 0,
          "FetchClusters chunk size in bytes (0 = the server's default, "
          "1 MiB; else 4096..4194304)");
ABSL_FLAG(uint32_t, layers, 4, "demo: model layers");
ABSL_FLAG(uint64_t, context_tokens, 32768, "demo: prefill tokens per layer");
ABSL_FLAG(uint32_t, decode_steps, 16, "demo: decode steps after the prefill");
ABSL_FLAG(uint64_t, seed, 1, "demo: seed of the synthetic K/V and queries");
ABSL_FLAG(std::string, mode, "exact",
          "demo: retrieval mode, exact, wave or both (wave falls back to "
          "exact where the server cannot serve it; both compares them)");
ABSL_FLAG(bool, include_kv, false,
          "demo: ask Retrieve for the K/V inline instead of FetchClusters");
ABSL_FLAG(bool, keep_session, true,
          "demo: leave the session on the server after a successful run");

namespace wavekv {
namespace {

constexpr char kUsage[] =
    R"(wavekv: command-line tool of a wavekv KV-cache vector store.

usage: wavekv [flags] <command> [args]

commands:
  health             server health, limits and transports
  list               the sessions of your tenant
  show <session>     one session in detail
  close <session>    close a session and free its memory
  demo               a synthetic long-context session end to end: prefill,
                     decode steps, Retrieve + fetch + attention checked
                     against full attention (Llama-3-8B attention shape)
  eval [eval flags]  accuracy harness of the wave index on synthetic
                     contexts (no server; `wavekv eval --help` for flags)

flags:
  --server=HOST:PORT           server address (default 127.0.0.1:7070)
  --token=T | --token_file=F   bearer token, when the server requires one
  --tls_ca=F [--tls_cert=F --tls_key=F]
                               TLS: verify the server with CA bundle F;
                               client certificate and key for mTLS
                               (--tls alone: TLS with the system roots)
  --timeout=60s                deadline of each RPC
  --fetch_chunk_bytes=N        FetchClusters chunk size (0 = server default)
demo flags:
  --layers=4 --context_tokens=32768 --decode_steps=16 --seed=1
  --mode=exact|wave|both --include_kv --keep_session=true|false
)";

// Bad usage: the message, then the full usage text (`full`) or a pointer
// to it.
int UsageError(const std::string& message, bool full = false) {
  std::cerr << "wavekv: " << message << "\n";
  if (full) {
    std::cerr << "\n" << kUsage;
  } else {
    std::cerr << "run `wavekv --help` for usage\n";
  }
  return 2;
}

// Prints "wavekv: <command>: <status>" with a hint for the usual causes.
int Fail(const std::string& command, const absl::Status& status) {
  std::cerr << "wavekv: " << command << ": " << status << "\n";
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
      std::cerr << "hint: is a wavekv-server listening at "
                << absl::GetFlag(FLAGS_server)
                << "? (scripts/demo starts one) Does it use TLS "
                   "(--tls_ca, --tls_cert/--tls_key for mTLS)?\n";
      break;
    case absl::StatusCode::kUnauthenticated:
      std::cerr << "hint: the server requires a token: pass --token or "
                   "--token_file\n";
      break;
    default:
      break;
  }
  return 1;
}

absl::StatusOr<std::string> BearerToken() {
  const std::string token = absl::GetFlag(FLAGS_token);
  const std::string file = absl::GetFlag(FLAGS_token_file);
  if (!token.empty() && !file.empty()) {
    return absl::InvalidArgumentError(
        "--token and --token_file: give at most one");
  }
  if (file.empty()) return token;
  std::ifstream in(file);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("--token_file: cannot read ", file));
  }
  std::string line;
  std::getline(in, line);
  line = std::string(absl::StripAsciiWhitespace(line));
  if (line.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--token_file: ", file, " has an empty first line"));
  }
  return line;
}

const char* DurabilityName(v1::Durability d) {
  switch (d) {
    case v1::DURABILITY_NONE:
      return "none";
    case v1::DURABILITY_ASYNC:
      return "async";
    case v1::DURABILITY_SYNC:
      return "sync";
    default:
      return "unspecified";
  }
}

const char* DTypeProtoName(v1::DType d) {
  switch (d) {
    case v1::DTYPE_FP16:
      return "fp16";
    case v1::DTYPE_BF16:
      return "bf16";
    case v1::DTYPE_FP32:
      return "fp32";
    default:
      return "unspecified";
  }
}

const char* IndexStateName(v1::IndexState state) {
  switch (state) {
    case v1::INDEX_STATE_EMPTY:
      return "empty";
    case v1::INDEX_STATE_BUILDING:
      return "building";
    case v1::INDEX_STATE_READY:
      return "ready";
    case v1::INDEX_STATE_FAILED:
      return "FAILED";
    default:
      return "-";
  }
}

// "0-3: 32768, 4: 100": per-layer counts compressed to runs of equal values.
template <typename Counts>
std::string LayerRuns(const Counts& counts) {
  std::vector<std::string> runs;
  const int n = counts.size();
  for (int i = 0; i < n;) {
    int j = i;
    while (j + 1 < n && counts[j + 1] == counts[i]) ++j;
    runs.push_back(i == j ? absl::StrCat(i, ": ", counts[i])
                          : absl::StrCat(i, "-", j, ": ", counts[i]));
    i = j + 1;
  }
  return runs.empty() ? "-" : absl::StrJoin(runs, ", ");
}

int Health(WaveKvClient& client) {
  absl::StatusOr<ServingStatus> overall = client.Health();
  if (!overall.ok()) return Fail("health", overall.status());
  // Timed on the second call: the first one also sets up the connection.
  const absl::Time t0 = absl::Now();
  absl::StatusOr<ServingStatus> service = client.Health("wavekv.v1.WaveKv");
  const absl::Duration rtt = absl::Now() - t0;
  if (!service.ok()) return Fail("health", service.status());
  absl::StatusOr<v1::GetTransportInfoResponse> info = client.GetTransportInfo();
  if (!info.ok()) return Fail("health", info.status());
  absl::StatusOr<std::vector<v1::SessionInfo>> sessions = client.ListSessions();
  if (!sessions.ok()) return Fail("health", sessions.status());
  uint64_t memory = 0;
  for (const v1::SessionInfo& s : *sessions) memory += s.memory_bytes();

  TextTable table({"SERVER", client.options().target});
  table.AddRow({"health", absl::StrCat(ServingStatusName(*overall),
                                       " (wavekv.v1.WaveKv: ",
                                       ServingStatusName(*service), ")")});
  table.AddRow({"round trip", FormatLatency(rtt) + " (health check)"});
  table.AddRow({"transports", absl::StrJoin(info->transports(), ", ")});
  table.AddRow(
      {"max message",
       absl::StrCat(FormatBytes(info->max_receive_message_bytes()),
                    " receive, ", FormatBytes(info->max_send_message_bytes()),
                    " send")});
  table.AddRow({"max inline K/V", FormatBytes(info->max_inline_kv_bytes())});
  table.AddRow(
      {"ucx", info->ucx_worker_address().empty()
                  ? "not offered"
                  : absl::StrCat("worker address of ",
                                 info->ucx_worker_address().size(), " bytes")});
  table.AddRow({"sessions", absl::StrCat(sessions->size(), " of this tenant, ",
                                         FormatBytes(memory))});
  table.Print(std::cout);
  return *overall == ServingStatus::kServing ? 0 : 1;
}

int List(WaveKvClient& client) {
  absl::StatusOr<std::vector<v1::SessionInfo>> sessions = client.ListSessions();
  if (!sessions.ok()) return Fail("list", sessions.status());
  if (sessions->empty()) {
    std::cout << "no sessions\n";
    return 0;
  }
  TextTable table({"SESSION", "LABEL", "LAYERS", "HEADS q/kv", "DIM", "DTYPE",
                   "TOKENS", "MEMORY", "INDEX", "DURABILITY", "LAST ACCESS"});
  uint64_t memory = 0;
  for (const v1::SessionInfo& s : *sessions) {
    memory += s.memory_bytes();
    table.AddRow(
        {s.session_id(), s.label().empty() ? "-" : s.label(),
         absl::StrCat(s.shape().num_layers()),
         absl::StrCat(s.shape().num_q_heads(), "/", s.shape().num_kv_heads()),
         absl::StrCat(s.shape().head_dim()), DTypeProtoName(s.shape().dtype()),
         absl::StrCat(s.num_tokens()), FormatBytes(s.memory_bytes()),
         IndexStateName(s.index_state()), DurabilityName(s.durability()),
         FormatUnixMs(s.last_access_unix_ms())});
  }
  table.Print(std::cout);
  std::cout << sessions->size()
            << (sessions->size() == 1 ? " session, " : " sessions, ")
            << FormatBytes(memory) << "\n";
  return 0;
}

int Show(WaveKvClient& client, const std::string& id) {
  absl::StatusOr<v1::SessionInfo> s = client.GetSession(id);
  if (!s.ok()) return Fail("show", s.status());
  const v1::ModelShape& shape = s->shape();
  const v1::IndexOptions& index = s->index_options();
  TextTable table({"SESSION", s->session_id()});
  table.AddRow({"label", s->label().empty() ? "-" : s->label()});
  table.AddRow(
      {"shape",
       absl::StrCat(shape.num_layers(), " layers, ", shape.num_q_heads(),
                    " q heads / ", shape.num_kv_heads(), " kv heads, head_dim ",
                    shape.head_dim(), ", ", DTypeProtoName(shape.dtype()))});
  table.AddRow({"tokens", absl::StrCat(s->num_tokens(), " in every layer (",
                                       s->durable_tokens(), " durable), max ",
                                       s->max_tokens(), " per layer")});
  table.AddRow({"layer tokens", LayerRuns(s->layer_tokens())});
  table.AddRow({"index", absl::StrCat(IndexStateName(s->index_state()),
                                      s->index_error().empty() ? "" : ": ",
                                      s->index_error())});
  table.AddRow({"indexed tokens", LayerRuns(s->layer_indexed_tokens())});
  table.AddRow({"memory", FormatBytes(s->memory_bytes())});
  table.AddRow({"durability", DurabilityName(s->durability())});
  table.AddRow(
      {"index options",
       absl::StrCat("sinks ", index.sink_tokens(), ", recent ",
                    index.recent_tokens(), ", segment ", index.segment_tokens(),
                    ", cluster ", index.cluster_size(), ", k-means ",
                    index.kmeans_iterations(), " it, update every ",
                    index.update_tokens(), ", retrieval ",
                    index.retrieval_fraction(), ", estimation ",
                    index.estimation_fraction())});
  table.AddRow({"created", FormatUnixMs(s->created_unix_ms())});
  table.AddRow({"last access", FormatUnixMs(s->last_access_unix_ms())});
  table.Print(std::cout);
  return 0;
}

int Close(WaveKvClient& client, const std::string& id) {
  absl::StatusOr<uint64_t> freed = client.CloseSession(id);
  if (!freed.ok()) return Fail("close", freed.status());
  std::cout << "closed " << id << ", freed " << FormatBytes(*freed) << "\n";
  return 0;
}

int Demo(WaveKvClient& client) {
  DemoOptions options;
  options.num_layers = absl::GetFlag(FLAGS_layers);
  options.context_tokens = absl::GetFlag(FLAGS_context_tokens);
  options.decode_steps = absl::GetFlag(FLAGS_decode_steps);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.include_kv = absl::GetFlag(FLAGS_include_kv);
  options.keep_session = absl::GetFlag(FLAGS_keep_session);
  options.interactive = isatty(STDOUT_FILENO);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "exact") {
    options.modes = {v1::RETRIEVE_MODE_EXACT};
  } else if (mode == "wave") {
    options.modes = {v1::RETRIEVE_MODE_WAVE};
  } else if (mode == "both") {
    options.modes = {v1::RETRIEVE_MODE_EXACT, v1::RETRIEVE_MODE_WAVE};
  } else {
    return UsageError(absl::StrCat(
        "--mode: expected exact, wave or both, got \"", mode, "\""));
  }
  if (absl::Status s = options.Validate(); !s.ok()) {
    return UsageError(absl::StrCat("demo: ", s.message()));
  }
  absl::StatusOr<DemoReport> report = RunDemo(client, options, std::cout);
  if (!report.ok()) return Fail("demo", report.status());
  return 0;
}

int Main(int argc, char** argv) {
  // `wavekv eval ...`: the accuracy harness (index/eval), which needs no
  // server and parses its own flags.
  if (argc >= 2 && std::string(argv[1]) == "eval") {
    return eval::RunEvalCommand(std::vector<std::string>(argv + 2, argv + argc),
                                std::cout, std::cerr);
  }
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return UsageError("missing command", true);
  const std::string command = args[1];
  const size_t want_args = (command == "show" || command == "close") ? 3 : 2;
  if (command != "health" && command != "list" && command != "show" &&
      command != "close" && command != "demo") {
    return UsageError(absl::StrCat("unknown command \"", command, "\""), true);
  }
  if (args.size() != want_args) {
    return UsageError(want_args == 3
                          ? absl::StrCat(command, ": expects one <session>")
                          : absl::StrCat(command, ": takes no arguments"));
  }

  absl::StatusOr<std::string> token = BearerToken();
  if (!token.ok()) return UsageError(std::string(token.status().message()));
  ClientOptions options;
  options.target = absl::GetFlag(FLAGS_server);
  options.bearer_token = *token;
  options.call_timeout = absl::GetFlag(FLAGS_timeout);
  options.fetch_chunk_bytes = absl::GetFlag(FLAGS_fetch_chunk_bytes);
  options.tls.ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls.use_tls =
      absl::GetFlag(FLAGS_tls) || !options.tls.ca_file.empty() ||
      !options.tls.cert_file.empty() || !options.tls.key_file.empty();
  absl::StatusOr<std::unique_ptr<WaveKvClient>> client =
      WaveKvClient::Connect(options);
  if (!client.ok()) return UsageError(std::string(client.status().message()));

  if (command == "health") return Health(**client);
  if (command == "list") return List(**client);
  if (command == "show") return Show(**client, args[2]);
  if (command == "close") return Close(**client, args[2]);
  return Demo(**client);
}

}  // namespace
}  // namespace wavekv

int main(int argc, char** argv) { return wavekv::Main(argc, argv); }
