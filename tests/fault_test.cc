// Process-level disk faults against the real server (DESIGN.md: "Stored
// blocks carry checksums; corruption is detected and reported, never
// served"; issue 4: "a full or failing disk gives clear errors while the
// server stays up and serves what it has"):
//  - bytes flipped in the middle of the largest .sst/.blob file of a
//    stopped server: after restart every session either answers DATA_LOSS
//    (naming the session) or serves exactly the bytes it was sent; at least
//    one is detected; the others and the server keep working;
//  - a full disk (the data directory on a small tmpfs in a private mount
//    namespace; skipped where mounting is not permitted): SYNC appends fail
//    with RESOURCE_EXHAUSTED or UNAVAILABLE and a message saying so, apply
//    nothing, the server keeps serving what it has, and appends work again
//    once space is freed; everything acknowledged survives a restart.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kvstore/private_mounts.h"
#include "tests/answer_checks.h"
#include "tests/kv_pattern.h"
#include "tests/server_process.h"
#include "tests/wire_client.h"

namespace wavekv::testing {
namespace {

namespace fs = std::filesystem;

v1::ModelShape Shape() { return MakeShape(2, 4, 2, 64, v1::DTYPE_FP16); }

struct TestSession {
  std::string id;
  KvPattern pattern;
  uint64_t tokens = 0;  // acknowledged
};

// The largest regular file under `dir` whose name ends in one of `exts`.
std::string LargestFile(const std::string& dir,
                        const std::vector<std::string>& exts) {
  std::string best;
  uintmax_t best_size = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    const std::string name = it->path().filename().string();
    bool match = false;
    for (const std::string& e : exts) match |= absl::EndsWith(name, e);
    if (match && it->file_size() > best_size) {
      best_size = it->file_size();
      best = it->path().string();
    }
  }
  return best;
}

std::string ListDir(const std::string& dir) {
  std::string out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file()) {
      absl::StrAppend(&out, it->path().string(), " (", it->file_size(),
                      " bytes)\n");
    }
  }
  return out;
}

// XORs `count` bytes at `offset` of `path` with 0x5a.
void FlipBytes(const std::string& path, uint64_t offset, size_t count) {
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::string buf(count, '\0');
  ASSERT_EQ(::pread(fd, buf.data(), count, offset),
            static_cast<ssize_t>(count));
  for (char& c : buf) c = static_cast<char>(c ^ 0x5a);
  ASSERT_EQ(::pwrite(fd, buf.data(), count, offset),
            static_cast<ssize_t>(count));
  ::fsync(fd);
  ::close(fd);
}

TestSession CreateSyncSession(v1::WaveKv::Stub& stub, uint64_t seed) {
  v1::CreateSessionRequest request = SessionRequest(Shape(), "fault");
  request.set_durability(v1::DURABILITY_SYNC);
  auto created = CallCreateSession(stub, "", request);
  EXPECT_TRUE(created.ok()) << StatusText(created.status);
  return TestSession{created.response.session().session_id(),
                     KvPattern(seed, Shape()), 0};
}

// Checks a session's stored tokens byte for byte through EXACT Retrieve.
// Returns the first non-OK status of the calls (a DATA_LOSS is the
// caller's to judge) or OK when every layer matched `s.tokens` tokens.
grpc::Status CheckSession(v1::WaveKv::Stub& stub, const TestSession& s,
                          std::string* mismatch) {
  for (uint32_t l = 0; l < Shape().num_layers(); ++l) {
    v1::RetrieveRequest request =
        RetrieveRequestFor(l, v1::RETRIEVE_MODE_EXACT, /*include_kv=*/true);
    AddQuery(request, s.id, s.pattern.Query(l, 0));
    auto answer = CallRetrieve(stub, "", request);
    if (!answer.ok()) return answer.status;
    const v1::SessionResult& result = answer.response.results(0);
    if (result.num_tokens() != s.tokens) {
      *mismatch = absl::StrCat("layer ", l, ": ", result.num_tokens(),
                               " tokens, expected ", s.tokens);
      return grpc::Status::OK;
    }
    auto checked = CheckExactResult(result, s.pattern, l, true);
    if (!checked.ok()) {
      *mismatch = absl::StrCat("layer ", l, ": ", checked.status().message());
      return grpc::Status::OK;
    }
  }
  return grpc::Status::OK;
}

TEST(FaultTest, CorruptedFileIsDetectedAndNeverServed) {
  auto dir = MakeTempDir("corrupt");
  ASSERT_TRUE(dir.ok());
  const std::string data_dir = *dir + "/data";
  constexpr int kSessions = 6;
  constexpr uint64_t kTokens = 768;
  std::vector<TestSession> sessions;
  {
    auto server =
        ServerProcess::Start({.name = "corrupt-1", .data_dir = data_dir});
    ASSERT_TRUE(server.ok()) << server.status();
    auto stub = v1::WaveKv::NewStub(Connect((*server)->grpc_address()));
    for (int i = 0; i < kSessions; ++i) {
      sessions.push_back(CreateSyncSession(*stub, 100 + i));
      ASSERT_FALSE(sessions.back().id.empty());
      grpc::Status st = AppendTokens(*stub, "", sessions.back().id,
                                     sessions.back().pattern, 0, kTokens, 128);
      ASSERT_TRUE(st.ok()) << StatusText(st);
      sessions.back().tokens = kTokens;
    }
    auto stopped = (*server)->Terminate();
    ASSERT_TRUE(stopped.ok()) << stopped.status();
    ASSERT_TRUE(stopped->ok())
        << stopped->ToString() << (*server)->StderrTail();
  }
  const std::string victim = LargestFile(data_dir + "/db", {".blob", ".sst"});
  ASSERT_FALSE(victim.empty())
      << "no .sst/.blob file under " << data_dir
      << "/db after SIGTERM (does the drain flush the memtables?):\n"
      << ListDir(data_dir);
  const uint64_t size = fs::file_size(victim);
  FlipBytes(victim, size / 2, 64);

  auto server =
      ServerProcess::Start({.name = "corrupt-2", .data_dir = data_dir});
  ASSERT_TRUE(server.ok()) << "the server must start despite a corrupted "
                           << victim << ": " << server.status();
  auto stub = v1::WaveKv::NewStub(Connect((*server)->grpc_address()));
  int detected = 0, intact = 0;
  for (const TestSession& s : sessions) {
    auto info = CallGetSession(*stub, "", s.id);
    grpc::Status st = info.status;
    std::string mismatch;
    if (st.ok()) st = CheckSession(*stub, s, &mismatch);
    EXPECT_TRUE(mismatch.empty())
        << "session " << s.id << " served wrong bytes after corruption of "
        << victim << ": " << mismatch;
    if (st.ok()) {
      ++intact;
      continue;
    }
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS)
        << s.id << ": " << StatusText(st);
    EXPECT_TRUE(absl::StrContains(st.error_message(), s.id))
        << "the DATA_LOSS message must name the session: " << StatusText(st);
    ++detected;
  }
  EXPECT_GE(detected, 1) << "64 bytes flipped in the middle of " << victim
                         << " (" << size << " bytes) went unnoticed";
  std::cerr << "corrupted " << victim << " at " << size / 2 << ": " << detected
            << " sessions DATA_LOSS, " << intact << " intact\n";

  // The damaged sessions stay listed; the server keeps serving.
  auto listed = ListAllSessions(*stub, "");
  ASSERT_TRUE(listed.ok()) << StatusText(listed.status);
  EXPECT_EQ(listed.response.size(), sessions.size());
  TestSession fresh = CreateSyncSession(*stub, 999);
  grpc::Status st =
      AppendTokens(*stub, "", fresh.id, fresh.pattern, 0, 300, 100);
  ASSERT_TRUE(st.ok()) << StatusText(st);
  fresh.tokens = 300;
  std::string mismatch;
  st = CheckSession(*stub, fresh, &mismatch);
  EXPECT_TRUE(st.ok() && mismatch.empty()) << StatusText(st) << mismatch;
  EXPECT_TRUE((*server)->Running()) << (*server)->StderrTail();
  auto stopped = (*server)->Terminate();
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_TRUE(stopped->ok()) << stopped->ToString();
}

// Mounts a tmpfs of `size_bytes` on `dir` in a private mount namespace of
// the calling thread (inherited by the servers it forks). Returns "" or why
// it is not possible here.
std::string MountSmallTmpfs(const std::string& dir, uint64_t size_bytes) {
  if (std::string why = EnterPrivateMountNamespace(); !why.empty()) {
    return why;
  }
  const std::string opts = absl::StrCat("size=", size_bytes);
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) != 0) {
    return absl::StrCat("mount tmpfs on ", dir, ": ", std::strerror(errno));
  }
  return "";
}

uint64_t FreeBytes(const std::string& dir) {
  struct statvfs st;
  if (::statvfs(dir.c_str(), &st) != 0) return 0;
  return uint64_t{st.f_bavail} * st.f_frsize;
}

// Fills `path` with up to `bytes` bytes (stops at ENOSPC). Returns bytes
// written.
uint64_t WriteFiller(const std::string& path, uint64_t bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return 0;
  std::string block(1 << 16, 'f');
  uint64_t done = 0;
  while (done < bytes) {
    const size_t n = std::min<uint64_t>(block.size(), bytes - done);
    const ssize_t w = ::write(fd, block.data(), n);
    if (w <= 0) break;
    done += static_cast<uint64_t>(w);
  }
  ::fsync(fd);
  ::close(fd);
  return done;
}

TEST(FaultTest, FullDiskFailsAppendsClearlyAndRecoversWhenSpaceIsFreed) {
  auto dir = MakeTempDir("fulldisk");
  ASSERT_TRUE(dir.ok());
  const std::string mount_dir = *dir + "/mnt";
  ASSERT_EQ(::mkdir(mount_dir.c_str(), 0755), 0);
  // RocksDB resumes writing after a full disk only once the free space
  // exceeds the buffer each DB reserves (its write buffer, 64 MiB by
  // default), polling every few seconds: the tmpfs must be larger than that
  // for "space freed" to mean anything.
  if (std::string why = MountSmallTmpfs(mount_dir, 160ull << 20);
      !why.empty()) {
    GTEST_SKIP() << "full-disk test needs a private tmpfs: " << why;
  }
  struct Unmount {
    std::string dir;
    ~Unmount() { ::umount2(dir.c_str(), MNT_DETACH); }
  } unmount{mount_dir};
  const std::string data_dir = mount_dir + "/data";
  const std::string filler = mount_dir + "/filler";

  // The disk may take tens of MiB before it is full (RocksDB preallocates
  // its WAL): let EXACT answers carry the whole session inline.
  const std::vector<std::string> args = {"--max_inline_kv_bytes=60MiB"};
  auto server = ServerProcess::Start(
      {.name = "full-1", .args = args, .data_dir = data_dir});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = v1::WaveKv::NewStub(Connect((*server)->grpc_address()));
  TestSession s = CreateSyncSession(*stub, 4242);
  ASSERT_FALSE(s.id.empty());
  grpc::Status st = AppendTokens(*stub, "", s.id, s.pattern, 0, 256, 128);
  ASSERT_TRUE(st.ok()) << StatusText(st);
  s.tokens = 256;

  // Leave about 1 MiB free, then append until the disk is full.
  const uint64_t free_bytes = FreeBytes(mount_dir);
  ASSERT_GT(free_bytes, 2u << 20) << ListDir(mount_dir);
  WriteFiller(filler, free_bytes - (1u << 20));
  grpc::Status failure;
  constexpr uint32_t kChunk = 128;  // 64 KiB of K+V per layer
  for (int i = 0; i < 2000; ++i) {
    v1::AppendRequest request;
    request.set_session_id(s.id);
    for (uint32_t l = 0; l < Shape().num_layers(); ++l) {
      *request.add_layers() = s.pattern.Layer(l, s.tokens, kChunk);
    }
    auto answer = CallAppend(*stub, "", request);
    if (!answer.ok()) {
      failure = answer.status;
      break;
    }
    s.tokens += kChunk;
  }
  ASSERT_FALSE(failure.ok()) << "2000 appends fit a full disk? "
                             << FreeBytes(mount_dir) << " bytes free";
  EXPECT_TRUE(failure.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
              failure.error_code() == grpc::StatusCode::UNAVAILABLE)
      << StatusText(failure);
  if (failure.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
    EXPECT_TRUE(absl::StrContains(failure.error_message(), "space"))
        << StatusText(failure);
  }
  std::cerr << "full disk: " << StatusText(failure) << " after " << s.tokens
            << " tokens\n";

  // Nothing half applied; the server serves what it has.
  auto info = CallGetSession(*stub, "", s.id);
  ASSERT_TRUE(info.ok()) << StatusText(info.status);
  EXPECT_EQ(info.response.num_tokens(), s.tokens);
  for (uint64_t t : info.response.layer_tokens()) EXPECT_EQ(t, s.tokens);
  std::string mismatch;
  st = CheckSession(*stub, s, &mismatch);
  EXPECT_TRUE(st.ok() && mismatch.empty()) << StatusText(st) << mismatch;
  EXPECT_TRUE((*server)->Running()) << (*server)->StderrTail();

  // Free the space: appends work again (the storage resumes).
  ASSERT_EQ(::unlink(filler.c_str()), 0);
  grpc::Status again;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  do {
    v1::AppendRequest request;
    request.set_session_id(s.id);
    for (uint32_t l = 0; l < Shape().num_layers(); ++l) {
      *request.add_layers() = s.pattern.Layer(l, s.tokens, kChunk);
    }
    auto answer = CallAppend(*stub, "", request);
    again = answer.status;
    if (again.ok()) {
      s.tokens += kChunk;
      EXPECT_EQ(answer.response.durable_tokens(), s.tokens);
      break;
    }
    absl::SleepFor(absl::Milliseconds(200));
  } while (absl::Now() < deadline);
  ASSERT_TRUE(again.ok()) << "appends still fail 30 s after space was freed: "
                          << StatusText(again)
                          << "\nserver running: " << (*server)->Running()
                          << ", stderr:\n"
                          << (*server)->StderrTail();
  st = AppendTokens(*stub, "", s.id, s.pattern, s.tokens, s.tokens + 256, 128);
  ASSERT_TRUE(st.ok()) << StatusText(st);
  s.tokens += 256;

  // Everything acknowledged survives a restart on the same disk.
  auto stopped = (*server)->Terminate();
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_TRUE(stopped->ok()) << stopped->ToString();
  auto restarted = ServerProcess::Start(
      {.name = "full-2", .args = args, .data_dir = data_dir});
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  stub = v1::WaveKv::NewStub(Connect((*restarted)->grpc_address()));
  st = CheckSession(*stub, s, &mismatch);
  EXPECT_TRUE(st.ok() && mismatch.empty()) << StatusText(st) << mismatch;
  auto final_stop = (*restarted)->Terminate();
  ASSERT_TRUE(final_stop.ok()) << final_stop.status();
}

}  // namespace
}  // namespace wavekv::testing
