#include "transport/server_options.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST(ServerOptionsTest, DefaultsFollowTheContract) {
  const ServerOptions o;
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  EXPECT_EQ(o.listen, "127.0.0.1:7070");
  EXPECT_EQ(o.metrics_listen, "127.0.0.1:9464");
  EXPECT_EQ(o.data_dir, "./wavekv-data");
  EXPECT_EQ(o.memory_budget_bytes, 8ull << 30);
  EXPECT_EQ(o.max_sessions, 4096u);
  EXPECT_EQ(o.max_sessions_per_tenant, 1024u);
  EXPECT_EQ(o.max_tokens_per_session, 4194304u);
  EXPECT_EQ(o.max_message_bytes, 64u << 20);
  EXPECT_EQ(o.max_inline_kv_bytes, 16u << 20);
  EXPECT_EQ(o.max_batch_sessions, 256u);
  EXPECT_EQ(o.drain_timeout_ms, 10000);
  const EngineOptions e = o.ToEngineOptions();
  EXPECT_EQ(e.memory_budget_bytes, o.memory_budget_bytes);
  EXPECT_EQ(e.max_sessions, o.max_sessions);
  EXPECT_EQ(e.max_sessions_per_tenant, o.max_sessions_per_tenant);
  EXPECT_EQ(e.max_tokens_per_session, o.max_tokens_per_session);
  EXPECT_EQ(e.max_inline_kv_bytes, o.max_inline_kv_bytes);
  EXPECT_EQ(e.max_batch_sessions, o.max_batch_sessions);
}

TEST(ServerOptionsTest, HostPort) {
  for (const char* ok : {"127.0.0.1:0", "0.0.0.0:7070", "localhost:65535",
                         "[::1]:9464", "[::]:0"}) {
    EXPECT_TRUE(ValidateHostPort("listen", ok).ok()) << ok;
  }
  for (const char* bad : {"", "7070", ":7070", "127.0.0.1:", "h:65536", "h:-1",
                          "h:7o", "::1:80", "[::1:80", "a b:1"}) {
    const absl::Status s = ValidateHostPort("listen", bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(Msg(s), HasSubstr("listen: expected HOST:PORT")) << bad;
  }
}

TEST(ServerOptionsTest, RejectsBadValuesNamingTheFlag) {
  struct Case {
    void (*mutate)(ServerOptions&);
    const char* want;
  } cases[] = {
      {[](ServerOptions& o) { o.listen = "nope"; }, "listen: "},
      {[](ServerOptions& o) { o.metrics_listen = "x:y"; }, "metrics_listen: "},
      {[](ServerOptions& o) { o.data_dir = ""; }, "data_dir: "},
      {[](ServerOptions& o) { o.memory_budget_bytes = 1000; },
       "memory_budget: 1000 bytes is less than the minimum"},
      {[](ServerOptions& o) { o.max_message_bytes = 1000; },
       "max_message_bytes: 1000 is out of range"},
      {[](ServerOptions& o) { o.max_message_bytes = 4ull << 30; },
       "max_message_bytes: "},
      {[](ServerOptions& o) { o.max_inline_kv_bytes = 128ull << 20; },
       "max_inline_kv_bytes: 134217728 exceeds max_message_bytes"},
      {[](ServerOptions& o) { o.drain_timeout_ms = -1; },
       "drain_timeout_ms: -1 is out of range"},
      {[](ServerOptions& o) { o.max_sessions = 0; }, "max_sessions: "},
      {[](ServerOptions& o) { o.max_batch_sessions = 0; },
       "max_batch_sessions: "},
  };
  for (const Case& c : cases) {
    ServerOptions o;
    c.mutate(o);
    const absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.want;
    EXPECT_THAT(Msg(s), HasSubstr(c.want));
  }
  ServerOptions o;
  o.metrics_listen = "";  // disabled is fine
  EXPECT_TRUE(o.Validate().ok());
}

}  // namespace
}  // namespace wavekv
