// Smoke test of the real wavekv-server binary: starts it as a child process
// on 127.0.0.1 with ports it picks, speaks wavekv.v1 over real gRPC once per
// RPC, checks health, scrapes /metrics over a raw socket (and runs
// `promtool check metrics` on it when promtool is installed), then sends
// SIGTERM and expects exit 0. The thorough suites are in tests/.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/wavekv/v1/wavekv.grpc.pb.h"
#include "transport/grpc_probes.h"

namespace wavekv {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

std::string TmpDir() { return std::getenv("TEST_TMPDIR"); }

std::string ServerBinary() {
  return absl::StrCat(std::getenv("TEST_SRCDIR"), "/",
                      std::getenv("TEST_WORKSPACE"),
                      "/transport/wavekv-server");
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The server as a child process; SIGKILLed and reaped if still running.
class ServerChild {
 public:
  // Starts the binary with `args`; stderr goes to <dir>/stderr.log.
  ServerChild(const std::string& dir, const std::vector<std::string>& args)
      : dir_(dir) {
    mkdir(dir.c_str(), 0755);
    std::vector<std::string> argv = {ServerBinary()};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      FILE* err = std::freopen(stderr_path().c_str(), "w", stderr);
      (void)err;
      std::vector<char*> cargv;
      for (std::string& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
  }
  ~ServerChild() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  std::string stderr_path() const { return dir_ + "/stderr.log"; }
  std::string log() const { return ReadFile(stderr_path()); }

  // Waits for `ready_file`; false if the child exits or time runs out.
  bool WaitReady(const std::string& ready_file, int* grpc_port,
                 int* metrics_port) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      const std::string text = ReadFile(ready_file);
      std::smatch m;
      static const std::regex kReady(
          R"(^\{"grpc_port":(\d+),"metrics_port":(\d+),"pid":(\d+)\}\n$)");
      if (std::regex_match(text, m, kReady)) {
        *grpc_port = std::stoi(m[1]);
        *metrics_port = std::stoi(m[2]);
        EXPECT_EQ(std::stoi(m[3]), pid_);
        return true;
      }
      if (!text.empty()) ADD_FAILURE() << "bad ready file: " << text;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        exit_status_ = status;
        return false;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  // Waits up to `timeout` for the exit; returns the wait status or -1.
  int WaitExit(absl::Duration timeout) {
    if (exited_) return exit_status_;
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        exit_status_ = status;
        return status;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return -1;
  }

  void Signal(int signo) { kill(pid_, signo); }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_status_ = 0;
};

// HTTP/1.0 GET over a raw socket; returns the body ("" on failure).
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.1 200") ||
      body == std::string::npos) {
    ADD_FAILURE() << "bad HTTP response: " << response.substr(0, 200);
    return "";
  }
  return response.substr(body + 4);
}

std::string Floats(size_t n, float base) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = base + 0.001f * static_cast<float>(i);
  return std::string(reinterpret_cast<const char*>(v.data()),
                     v.size() * sizeof(float));
}

class ServerSmokeTest : public ::testing::Test {
 protected:
  void StartServer(const std::string& name, std::vector<std::string> extra) {
    dir_ = TmpDir() + "/" + name;
    ready_ = dir_ + "/ready.json";
    std::vector<std::string> args = {
        "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
        "--data_dir=" + dir_ + "/data", "--ready_file=" + ready_};
    args.insert(args.end(), extra.begin(), extra.end());
    child_ = std::make_unique<ServerChild>(dir_, args);
    ASSERT_TRUE(child_->WaitReady(ready_, &grpc_port_, &metrics_port_))
        << child_->log();
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port_),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::WaveKv::NewStub(channel_);
  }

  // SIGTERM and the contract's exit 0.
  void StopServer() {
    child_->Signal(SIGTERM);
    const int status = child_->WaitExit(absl::Seconds(30));
    ASSERT_TRUE(WIFEXITED(status)) << status << "\n" << child_->log();
    EXPECT_EQ(WEXITSTATUS(status), 0) << child_->log();
  }

  std::string dir_, ready_;
  int grpc_port_ = 0, metrics_port_ = 0;
  std::unique_ptr<ServerChild> child_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WaveKv::Stub> stub_;
};

TEST_F(ServerSmokeTest, EveryRpcOnceThenMetricsThenSigterm) {
  StartServer("smoke", {});
  EXPECT_GT(grpc_port_, 0);
  EXPECT_GT(metrics_port_, 0);
  EXPECT_EQ(*CheckHealth(channel_, ""), HealthStatus::kServing);
  EXPECT_EQ(*CheckHealth(channel_, "wavekv.v1.WaveKv"), HealthStatus::kServing);
  const absl::StatusOr<std::vector<std::string>> services =
      ListServicesByReflection(channel_);
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, Contains("wavekv.v1.WaveKv"));
  EXPECT_THAT(*services, Contains("grpc.health.v1.Health"));

  constexpr uint32_t kLayers = 2, kQHeads = 4, kKvHeads = 2, kHeadDim = 32;
  constexpr uint32_t kTokens = 40;
  v1::CreateSessionRequest create;
  create.mutable_shape()->set_num_layers(kLayers);
  create.mutable_shape()->set_num_q_heads(kQHeads);
  create.mutable_shape()->set_num_kv_heads(kKvHeads);
  create.mutable_shape()->set_head_dim(kHeadDim);
  create.mutable_shape()->set_dtype(v1::DTYPE_FP32);
  v1::CreateSessionResponse created;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub_->CreateSession(&c1, create, &created).ok());
  const std::string id = created.session().session_id();
  ASSERT_FALSE(id.empty());

  v1::AppendRequest append;
  append.set_session_id(id);
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    v1::LayerKV* l = append.add_layers();
    l->set_layer(layer);
    l->set_num_tokens(kTokens);
    l->set_keys(Floats(kTokens * kKvHeads * kHeadDim, 1.0f + layer));
    l->set_values(Floats(kTokens * kKvHeads * kHeadDim, -1.0f - layer));
  }
  v1::AppendResponse appended;
  grpc::ClientContext c2;
  grpc::Status s = stub_->Append(&c2, append, &appended);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(appended.num_tokens(), kTokens);

  v1::RetrieveRequest retrieve;
  retrieve.set_layer(1);
  retrieve.set_mode(v1::RETRIEVE_MODE_EXACT);
  v1::SessionQuery* q = retrieve.add_queries();
  q->set_session_id(id);
  q->set_query(Floats(kQHeads * kHeadDim, 0.5f));
  v1::RetrieveResponse retrieved;
  grpc::ClientContext c3;
  s = stub_->Retrieve(&c3, retrieve, &retrieved);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(retrieved.results_size(), 1);
  EXPECT_EQ(retrieved.results(0).num_tokens(), kTokens);
  ASSERT_EQ(retrieved.results(0).heads_size(), static_cast<int>(kKvHeads));

  v1::GetSessionRequest get;
  get.set_session_id(id);
  v1::SessionInfo info;
  grpc::ClientContext c4;
  ASSERT_TRUE(stub_->GetSession(&c4, get, &info).ok());
  EXPECT_EQ(info.num_tokens(), kTokens);

  v1::ListSessionsResponse list;
  grpc::ClientContext c5;
  ASSERT_TRUE(stub_->ListSessions(&c5, v1::ListSessionsRequest(), &list).ok());
  ASSERT_EQ(list.sessions_size(), 1);

  v1::FetchClustersRequest fetch;
  fetch.set_session_id(id);
  fetch.set_layer(1);
  fetch.set_layout_epoch(retrieved.results(0).layout_epoch());
  v1::HeadSlots* hs = fetch.add_heads();
  hs->set_kv_head(1);
  *hs->mutable_ranges() = retrieved.results(0).heads(1).retrieval();
  grpc::ClientContext c6;
  auto reader = stub_->FetchClusters(&c6, fetch);
  v1::ClusterChunk chunk;
  std::string keys;
  while (reader->Read(&chunk)) keys += chunk.keys();
  s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  // Head 1 of every token of layer 1, in token order.
  const std::string all = Floats(kTokens * kKvHeads * kHeadDim, 2.0f);
  std::string want;
  for (uint32_t t = 0; t < kTokens; ++t) {
    want += all.substr((t * kKvHeads + 1) * kHeadDim * 4, kHeadDim * 4);
  }
  EXPECT_EQ(keys, want);

  v1::GetTransportInfoResponse transport;
  grpc::ClientContext c7;
  ASSERT_TRUE(
      stub_->GetTransportInfo(&c7, v1::GetTransportInfoRequest(), &transport)
          .ok());
  EXPECT_EQ(transport.max_receive_message_bytes(), 64u << 20);

  // Metrics while the session is open.
  const std::string metrics = HttpGet(metrics_port_, "/metrics");
  const std::vector<std::string> lines = absl::StrSplit(metrics, '\n');
  for (const char* method :
       {"CreateSession", "Append", "Retrieve", "GetSession", "ListSessions",
        "FetchClusters", "GetTransportInfo"}) {
    EXPECT_THAT(lines, Contains(absl::StrCat(
                           "wavekv_rpc_requests_total{code=\"OK\",method=\"",
                           method, "\"} 1")));
  }
  EXPECT_THAT(lines, Contains("wavekv_sessions 1"));
  EXPECT_THAT(lines,
              Contains(absl::StrCat("wavekv_tokens ", kTokens * kLayers)));
  EXPECT_THAT(lines, Contains("wavekv_memory_budget_bytes 8589934592"));
  EXPECT_THAT(lines, Contains("wavekv_up 1"));
  EXPECT_THAT(metrics, HasSubstr("wavekv_memory_bytes "));
  EXPECT_THAT(metrics, HasSubstr("wavekv_rpc_latency_seconds_bucket{method="
                                 "\"Append\",le=\"5e-05\"}"));
  EXPECT_THAT(metrics, HasSubstr("wavekv_rpc_received_bytes_total{method="
                                 "\"Append\"} "));
  EXPECT_THAT(metrics, ::testing::Not(HasSubstr(id)));

  v1::CloseSessionRequest close;
  close.set_session_id(id);
  v1::CloseSessionResponse closed;
  grpc::ClientContext c8;
  ASSERT_TRUE(stub_->CloseSession(&c8, close, &closed).ok());
  EXPECT_GT(closed.freed_bytes(), 0u);
  EXPECT_THAT(absl::StrSplit(HttpGet(metrics_port_, "/metrics"), '\n'),
              Contains("wavekv_sessions 0"));

  StopServer();
  // Every log line is one JSON object; the drain is summarised.
  const std::string log = child_->log();
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(line, "{\"ts\":\"") &&
                absl::EndsWith(line, "}"))
        << line;
  }
  EXPECT_THAT(log, HasSubstr("\"msg\":\"config\""));
  EXPECT_THAT(log, HasSubstr("\"msg\":\"listening\""));
  EXPECT_THAT(log, HasSubstr("\"msg\":\"draining\",\"signal\":\"SIGTERM\""));
  EXPECT_THAT(log, HasSubstr("\"msg\":\"stopped\""));
}

TEST_F(ServerSmokeTest, ScrapedMetricsPassPromtool) {
  if (access("/usr/bin/promtool", X_OK) != 0) {
    GTEST_SKIP() << "promtool not installed";
  }
  StartServer("promtool", {});
  // One failing RPC so that a non-OK code series exists too.
  v1::GetSessionRequest get;
  get.set_session_id("missing");
  v1::SessionInfo info;
  grpc::ClientContext ctx;
  EXPECT_EQ(stub_->GetSession(&ctx, get, &info).error_code(),
            grpc::StatusCode::NOT_FOUND);
  const std::string metrics = HttpGet(metrics_port_, "/metrics");
  ASSERT_THAT(metrics, HasSubstr("code=\"NOT_FOUND\""));
  const std::string file = dir_ + "/metrics.txt";
  std::ofstream(file) << metrics;
  const std::string out_file = dir_ + "/promtool.out";
  const int rc = std::system(absl::StrCat("/usr/bin/promtool check metrics < ",
                                          file, " > ", out_file, " 2>&1")
                                 .c_str());
  EXPECT_EQ(rc, 0) << ReadFile(out_file);
  EXPECT_EQ(ReadFile(out_file), "") << "promtool lint findings";
  StopServer();
}

TEST_F(ServerSmokeTest, ConfigFileIsOverriddenByFlags) {
  const std::string conf = TmpDir() + "/smoke.conf";
  std::ofstream(conf) << "# test config\n"
                         "max_inline_kv_bytes = 1MiB\n"
                         "max_message_bytes = 8MiB   # both directions\n"
                         "listen = 127.0.0.1:1\n";  // the flag wins
  StartServer("config", {"--config=" + conf, "--max_message_bytes=4MiB"});
  v1::GetTransportInfoResponse transport;
  grpc::ClientContext ctx;
  ASSERT_TRUE(
      stub_->GetTransportInfo(&ctx, v1::GetTransportInfoRequest(), &transport)
          .ok());
  EXPECT_EQ(transport.max_inline_kv_bytes(), 1u << 20);
  EXPECT_EQ(transport.max_receive_message_bytes(), 4u << 20);
  EXPECT_EQ(transport.max_send_message_bytes(), 4u << 20);
  StopServer();
}

TEST_F(ServerSmokeTest, BadConfigAndASecondServerOnTheDataDirFail) {
  StartServer("locked", {});
  // Same data dir: refused clearly, exit 1, before listening.
  ServerChild second(dir_ + "/second",
                     {"--listen=127.0.0.1:0",
                      "--metrics_listen=", "--data_dir=" + dir_ + "/data"});
  int status = second.WaitExit(absl::Seconds(30));
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_THAT(second.log(), HasSubstr("is in use by another wavekv-server"));

  const std::string conf = TmpDir() + "/bad.conf";
  std::ofstream(conf) << "listen = 127.0.0.1:0\n\nbogus_setting = 3\n";
  ServerChild bad(dir_ + "/bad", {"--config=" + conf, "--metrics_listen=",
                                  "--data_dir=" + dir_ + "/bad-data"});
  status = bad.WaitExit(absl::Seconds(30));
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_THAT(bad.log(), HasSubstr(conf + ":3: unknown setting "
                                          "'bogus_setting'"));
  StopServer();
}

TEST_F(ServerSmokeTest, DrainRefusesNewCallsThenCancelsAStuckStream) {
  StartServer("drain", {"--drain_timeout_ms=1500"});
  // 8 kv heads x 128 fp32 x 2000 tokens: 8 MiB each of K and V, far more
  // than a stream's flow-control window, so an unread stream blocks.
  constexpr uint32_t kKvHeads = 8, kHeadDim = 128, kTokens = 2000;
  v1::CreateSessionRequest create;
  create.mutable_shape()->set_num_layers(1);
  create.mutable_shape()->set_num_q_heads(kKvHeads);
  create.mutable_shape()->set_num_kv_heads(kKvHeads);
  create.mutable_shape()->set_head_dim(kHeadDim);
  create.mutable_shape()->set_dtype(v1::DTYPE_FP32);
  // Keep every token in the steady zone, so no index build moves slots.
  create.mutable_index_options()->set_recent_tokens(65536);
  v1::CreateSessionResponse created;
  grpc::ClientContext c1;
  ASSERT_TRUE(stub_->CreateSession(&c1, create, &created).ok());
  v1::AppendRequest append;
  append.set_session_id(created.session().session_id());
  v1::LayerKV* l = append.add_layers();
  l->set_num_tokens(kTokens);
  l->set_keys(Floats(kTokens * kKvHeads * kHeadDim, 1.0f));
  l->set_values(Floats(kTokens * kKvHeads * kHeadDim, 2.0f));
  v1::AppendResponse appended;
  grpc::ClientContext c2;
  ASSERT_TRUE(stub_->Append(&c2, append, &appended).ok());

  v1::FetchClustersRequest fetch;
  fetch.set_session_id(created.session().session_id());
  for (uint32_t h = 0; h < kKvHeads; ++h) {
    v1::HeadSlots* hs = fetch.add_heads();
    hs->set_kv_head(h);
    hs->add_ranges()->set_num_slots(kTokens);
  }
  grpc::ClientContext c3;
  auto reader = stub_->FetchClusters(&c3, fetch);
  v1::ClusterChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));  // streaming has begun; now stall
  absl::SleepFor(absl::Milliseconds(200));

  const absl::Time start = absl::Now();
  child_->Signal(SIGTERM);
  // While draining: health says NOT_SERVING, new calls get UNAVAILABLE, the
  // stuck stream is still in flight.
  absl::StatusOr<HealthStatus> health;
  for (int i = 0; i < 500; ++i) {
    health = CheckHealth(channel_, "");
    if (!health.ok() || *health != HealthStatus::kServing) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_EQ(*health, HealthStatus::kNotServing);
  EXPECT_EQ(*CheckHealth(channel_, "wavekv.v1.WaveKv"),
            HealthStatus::kNotServing);
  v1::GetSessionRequest get;
  get.set_session_id(created.session().session_id());
  v1::SessionInfo info;
  grpc::ClientContext c4;
  const grpc::Status refused = stub_->GetSession(&c4, get, &info);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(refused.error_message(), "server: shutting down; retry elsewhere");
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));  // still draining

  const int status = child_->WaitExit(absl::Seconds(30));
  ASSERT_TRUE(WIFEXITED(status)) << status << "\n" << child_->log();
  EXPECT_EQ(WEXITSTATUS(status), 0) << child_->log();
  // Usually ~3 s (1.5 s drain + the metrics server's stop). Now and then
  // gRPC 1.51 completes the cancelled, flow-blocked Write only when the
  // client's connection next polls (its 5 s backup poller): allow for that.
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(1500));
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  const std::string log = child_->log();
  EXPECT_THAT(log, HasSubstr("\"in_flight_at_signal\":1"));
  EXPECT_THAT(log, HasSubstr("\"cancelled_in_flight\":true"));
  while (reader->Read(&chunk)) {
  }
  EXPECT_FALSE(reader->Finish().ok());
}

}  // namespace
}  // namespace wavekv
