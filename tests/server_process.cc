#include "tests/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"

namespace wavekv::testing {
namespace {

std::string ErrnoText(int err) { return std::strerror(err); }

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Value of the integer field `"key":N` in a one-line JSON object.
absl::StatusOr<int64_t> JsonInt(absl::string_view json, absl::string_view key) {
  const std::string needle = absl::StrCat("\"", key, "\"");
  size_t at = json.find(needle);
  if (at == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("no ", key, " in ", json));
  }
  at = json.find(':', at + needle.size());
  if (at == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("no ':' after ", key));
  }
  size_t begin = at + 1;
  while (begin < json.size() && json[begin] == ' ') ++begin;
  size_t end = begin;
  while (end < json.size() &&
         (json[end] == '-' || (json[end] >= '0' && json[end] <= '9'))) {
    ++end;
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(json.substr(begin, end - begin), &value)) {
    return absl::InvalidArgumentError(absl::StrCat("bad ", key, " in ", json));
  }
  return value;
}

ExitStatus FromWaitStatus(int wstatus) {
  ExitStatus st;
  if (WIFEXITED(wstatus)) {
    st.exited = true;
    st.code = WEXITSTATUS(wstatus);
  } else if (WIFSIGNALED(wstatus)) {
    st.signal = WTERMSIG(wstatus);
  }
  return st;
}

}  // namespace

std::string ExitStatus::ToString() const {
  return exited ? absl::StrCat("exit ", code) : absl::StrCat("signal ", signal);
}

std::string ServerBinaryPath() {
  if (const char* env = std::getenv("WAVEKV_SERVER"); env && *env) return env;
  const char* srcdir = std::getenv("TEST_SRCDIR");
  if (srcdir == nullptr) srcdir = std::getenv("RUNFILES_DIR");
  std::string base = srcdir ? srcdir : ".";
  return absl::StrCat(base, "/wavekv/transport/wavekv-server");
}

absl::StatusOr<std::string> MakeTempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string base = (tmp && *tmp) ? tmp : "/tmp";
  for (int attempt = 0; attempt < 1000; ++attempt) {
    std::string dir = absl::StrCat(base, "/", name, "-", ::getpid(), "-",
                                   counter.fetch_add(1));
    if (::mkdir(dir.c_str(), 0755) == 0) return dir;
    if (errno != EEXIST) {
      return absl::InternalError(
          absl::StrCat("mkdir ", dir, ": ", ErrnoText(errno)));
    }
  }
  return absl::InternalError("no free temp dir name for " + name);
}

absl::Status WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  if (!out) return absl::InternalError("cannot write " + path);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const ServerProcessOptions& options) {
  std::unique_ptr<ServerProcess> server(new ServerProcess());
  auto dir = MakeTempDir(options.name);
  if (!dir.ok()) return dir.status();
  server->dir_ = *dir;
  server->data_dir_ =
      options.data_dir.empty() ? server->dir_ + "/data" : options.data_dir;
  server->ready_path_ = server->dir_ + "/ready.json";
  server->stderr_path_ = server->dir_ + "/stderr.log";

  const std::string binary = ServerBinaryPath();
  if (::access(binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(
        absl::StrCat("server binary ", binary, ": ", ErrnoText(errno)));
  }
  std::vector<std::string> args = {
      binary,
      "--listen=127.0.0.1:0",
      "--data_dir=" + server->data_dir_,
      "--ready_file=" + server->ready_path_,
  };
  if (options.metrics) args.push_back("--metrics_listen=127.0.0.1:0");
  args.insert(args.end(), options.args.begin(), options.args.end());
  // Everything the child needs is prepared before fork(): between fork and
  // exec only async-signal-safe calls are allowed.
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const char* log_path = server->stderr_path_.c_str();
  const pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork: " + ErrnoText(errno));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    int log_fd = ::open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (log_fd < 0 || null_fd < 0) ::_exit(125);
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::close_range(3, ~0U, 0);
    ::execv(argv[0], argv.data());
    static const char kMsg[] = "wavekv test: execv of the server failed\n";
    (void)!::write(2, kMsg, sizeof(kMsg) - 1);
    ::_exit(127);
  }
  server->pid_ = pid;
  absl::Status ready = server->WaitReady(options.ready_timeout);
  if (!ready.ok()) {
    server->Kill();
    return ready;
  }
  return server;
}

absl::Status ServerProcess::WaitReady(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (FileExists(ready_path_)) {
      auto json = ReadFile(ready_path_);
      if (!json.ok()) return json.status();
      auto grpc_port = JsonInt(*json, "grpc_port");
      auto metrics_port = JsonInt(*json, "metrics_port");
      auto pid = JsonInt(*json, "pid");
      if (!grpc_port.ok() || !metrics_port.ok() || !pid.ok()) {
        return absl::InternalError(
            absl::StrCat("malformed ready file ", ready_path_, ": ", *json));
      }
      if (*pid != pid_) {
        return absl::InternalError(absl::StrCat("ready file pid ", *pid,
                                                " is not the child's ", pid_));
      }
      grpc_port_ = static_cast<int>(*grpc_port);
      metrics_port_ = static_cast<int>(*metrics_port);
      if (grpc_port_ <= 0) {
        return absl::InternalError("ready file without a gRPC port: " + *json);
      }
      return absl::OkStatus();
    }
    if (!Running()) {
      return absl::InternalError(absl::StrCat(
          "server exited before it was ready (", exit_status_.ToString(),
          "); stderr tail:\n", StderrTail()));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("server not ready after ", absl::FormatDuration(timeout),
                       "; stderr tail:\n", StderrTail()));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && !reaped_) Kill();
}

std::string ServerProcess::grpc_address() const {
  return absl::StrCat("127.0.0.1:", grpc_port_);
}

std::string ServerProcess::StderrTail(size_t max_bytes) const {
  auto text = ReadFile(stderr_path_);
  if (!text.ok()) return "(no stderr)";
  if (text->size() <= max_bytes) return *text;
  return text->substr(text->size() - max_bytes);
}

bool ServerProcess::Running() {
  if (pid_ <= 0 || reaped_) return false;
  int wstatus = 0;
  pid_t r = ::waitpid(pid_, &wstatus, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    exit_status_ = FromWaitStatus(wstatus);
    return false;
  }
  return true;
}

absl::Status ServerProcess::Signal(int signal) {
  if (!Running()) {
    return absl::FailedPreconditionError(
        absl::StrCat("server already ended: ", exit_status_.ToString()));
  }
  if (::kill(pid_, signal) != 0) {
    return absl::InternalError("kill: " + ErrnoText(errno));
  }
  return absl::OkStatus();
}

absl::StatusOr<ExitStatus> ServerProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (Running()) {
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "server still running after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return exit_status_;
}

absl::StatusOr<ExitStatus> ServerProcess::Terminate(absl::Duration timeout) {
  if (Running()) {
    absl::Status s = Signal(SIGTERM);
    if (!s.ok() && Running()) return s;
  }
  auto st = Wait(timeout);
  if (!st.ok()) {
    Kill();
    return absl::DeadlineExceededError(absl::StrCat(
        st.status().message(), " after SIGTERM; stderr tail:\n", StderrTail()));
  }
  return st;
}

ExitStatus ServerProcess::Kill() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    int wstatus = 0;
    pid_t r;
    do {
      r = ::waitpid(pid_, &wstatus, 0);
    } while (r < 0 && errno == EINTR);
    reaped_ = true;
    exit_status_ = FromWaitStatus(wstatus);
  }
  return exit_status_;
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path,
                                    absl::Duration timeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket: " + ErrnoText(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct timeval tv = absl::ToTimeval(timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("connect 127.0.0.1:", port, ": ", ErrnoText(errno)));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1:", port,
                   "\r\nConnection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n =
        ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return absl::UnavailableError("send: " + ErrnoText(errno));
    }
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[16384];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::DeadlineExceededError("recv: " + ErrnoText(errno));
    }
    response.append(buf, static_cast<size_t>(n));
  }
  const size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::DataLossError("incomplete HTTP answer: " + response);
  }
  const std::string status_line = response.substr(0, response.find("\r\n"));
  std::vector<std::string> parts = absl::StrSplit(status_line, ' ');
  if (parts.size() < 2 || parts[1] != "200") {
    return absl::UnavailableError("HTTP answer: " + status_line);
  }
  return response.substr(header_end + 4);
}

}  // namespace wavekv::testing
