#include "tests/crash_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace wavekv::testing {
namespace {

constexpr absl::string_view kMagic = "wavekv-crash-state 1";

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Parses `fields[first..]` as `count` unsigned integers.
absl::Status ParseNumbers(const std::vector<absl::string_view>& fields,
                          size_t first, size_t count, uint64_t* out,
                          int line_no) {
  if (fields.size() != first + count) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", line_no, ": expected ", first + count,
                     " fields, got ", fields.size()));
  }
  for (size_t i = 0; i < count; ++i) {
    if (!absl::SimpleAtoi(fields[first + i], &out[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": field ", first + i + 1, " '",
                       fields[first + i], "' is not an unsigned integer"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> SerializeExpectedState(const ExpectedState& state) {
  std::string out = absl::StrCat(kMagic, "\n");
  absl::StrAppend(&out, "seed ", state.seed, "\n");
  absl::StrAppend(&out, "round ", state.rounds_done, "\n");
  absl::StrAppend(&out, "next_ordinal ", state.next_ordinal, "\n");
  const v1::ModelShape& s = state.shape;
  absl::StrAppend(&out, "shape ", s.num_layers(), " ", s.num_q_heads(), " ",
                  s.num_kv_heads(), " ", s.head_dim(), " ",
                  static_cast<int>(s.dtype()), "\n");
  for (size_t i = 0; i < state.sessions.size(); ++i) {
    const SessionRecord& r = state.sessions[i];
    if (r.session_id.empty() ||
        std::any_of(r.session_id.begin(), r.session_id.end(),
                    [](char c) { return absl::ascii_isspace(c); })) {
      return absl::InvalidArgumentError(
          absl::StrCat("sessions[", i, "].session_id: '", r.session_id,
                       "' is empty or holds whitespace"));
    }
    absl::StrAppend(&out, "session ", r.session_id, " ", r.pattern_seed, " ",
                    static_cast<int>(r.durability), " ", r.sent_tokens, " ",
                    r.acked_tokens, " ", r.durable_tokens, "\n");
  }
  return out;
}

absl::StatusOr<ExpectedState> ParseExpectedState(absl::string_view text) {
  ExpectedState state;
  std::vector<absl::string_view> lines =
      absl::StrSplit(text, '\n', absl::SkipEmpty());
  if (lines.empty() || lines[0] != kMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("line 1: expected '", kMagic, "'"));
  }
  bool have_seed = false, have_round = false, have_shape = false,
       have_ordinal = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    const int line_no = static_cast<int>(i + 1);
    std::vector<absl::string_view> f =
        absl::StrSplit(lines[i], ' ', absl::SkipEmpty());
    if (f.empty()) continue;
    uint64_t n[5] = {0, 0, 0, 0, 0};
    if (f[0] == "seed") {
      if (auto s = ParseNumbers(f, 1, 1, n, line_no); !s.ok()) return s;
      state.seed = n[0];
      have_seed = true;
    } else if (f[0] == "round") {
      if (auto s = ParseNumbers(f, 1, 1, n, line_no); !s.ok()) return s;
      state.rounds_done = static_cast<uint32_t>(n[0]);
      have_round = true;
    } else if (f[0] == "next_ordinal") {
      if (auto s = ParseNumbers(f, 1, 1, n, line_no); !s.ok()) return s;
      state.next_ordinal = n[0];
      have_ordinal = true;
    } else if (f[0] == "shape") {
      if (auto s = ParseNumbers(f, 1, 5, n, line_no); !s.ok()) return s;
      state.shape.set_num_layers(static_cast<uint32_t>(n[0]));
      state.shape.set_num_q_heads(static_cast<uint32_t>(n[1]));
      state.shape.set_num_kv_heads(static_cast<uint32_t>(n[2]));
      state.shape.set_head_dim(static_cast<uint32_t>(n[3]));
      if (!v1::DType_IsValid(static_cast<int>(n[4]))) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_no, ": unknown dtype ", n[4]));
      }
      state.shape.set_dtype(static_cast<v1::DType>(n[4]));
      have_shape = true;
    } else if (f[0] == "session") {
      if (f.size() != 7) {
        return absl::InvalidArgumentError(absl::StrCat(
            "line ", line_no, ": expected 7 fields, got ", f.size()));
      }
      if (auto s = ParseNumbers(f, 2, 5, n, line_no); !s.ok()) return s;
      SessionRecord r;
      r.session_id = std::string(f[1]);
      r.pattern_seed = n[0];
      if (!v1::Durability_IsValid(static_cast<int>(n[1])) || n[1] == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_no, ": unknown durability ", n[1]));
      }
      r.durability = static_cast<v1::Durability>(n[1]);
      r.sent_tokens = n[2];
      r.acked_tokens = n[3];
      r.durable_tokens = n[4];
      if (r.durable_tokens > r.acked_tokens || r.acked_tokens > r.sent_tokens) {
        return absl::InvalidArgumentError(absl::StrCat(
            "line ", line_no, ": expected durable <= acked <= sent, got ",
            r.durable_tokens, " / ", r.acked_tokens, " / ", r.sent_tokens));
      }
      state.sessions.push_back(std::move(r));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_no, ": unknown record '", f[0], "'"));
    }
  }
  if (!have_seed || !have_round || !have_shape || !have_ordinal) {
    return absl::InvalidArgumentError(
        "missing one of the seed, round, next_ordinal, shape lines");
  }
  return state;
}

absl::Status SaveExpectedState(const std::string& path,
                               const ExpectedState& state) {
  auto text = SerializeExpectedState(state);
  if (!text.ok()) return text.status();
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("open", tmp);
  size_t done = 0;
  while (done < text->size()) {
    ssize_t n = ::write(fd, text->data() + done, text->size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = Errno("write", tmp);
      ::close(fd);
      return s;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    absl::Status s = Errno("fsync", tmp);
    ::close(fd);
    return s;
  }
  if (::close(fd) != 0) return Errno("close", tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Errno("rename", tmp);
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos
                              ? std::string(".")
                              : (slash == 0 ? "/" : path.substr(0, slash));
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return Errno("open", dir);
  const int rc = ::fsync(dir_fd);
  ::close(dir_fd);
  if (rc != 0) return Errno("fsync", dir);
  return absl::OkStatus();
}

absl::StatusOr<ExpectedState> LoadExpectedState(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  auto state = ParseExpectedState(text.str());
  if (!state.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", state.status().message()));
  }
  return state;
}

}  // namespace wavekv::testing
