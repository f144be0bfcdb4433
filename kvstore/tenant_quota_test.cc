// Per-tenant quotas: TenantQuotas' accounting, and the engine enforcing it
// atomically with its own limits (a refused call changes nothing).
#include "kvstore/tenant_quota.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "kvstore/engine.h"
#include "kvstore/types.h"

namespace wavekv {
namespace {

using ::absl::StatusCode;

// --- TenantQuotas -----------------------------------------------------------

TEST(TenantQuotasTest, UnlimitedWithoutAnEntry) {
  TenantQuotas quotas;
  EXPECT_TRUE(quotas.Get("alice").unlimited());
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(quotas.AdmitSession("alice", std::to_string(i)).ok());
  }
  ASSERT_TRUE(quotas.ChargeAppend("alice", "0", {1ull << 40, 1ull << 30}).ok());
  const TenantUsage usage = quotas.Usage("alice");
  EXPECT_EQ(usage.sessions, 100u);
  EXPECT_EQ(usage.kv_bytes, 1ull << 40);
  EXPECT_EQ(usage.tokens, 1ull << 30);
}

TEST(TenantQuotasTest, MaxSessionsCountsLiveSessionsPerTenant) {
  TenantQuotas quotas;
  quotas.Set({{"alice", TenantQuota{.max_sessions = 2}}});
  ASSERT_TRUE(quotas.AdmitSession("alice", "a").ok());
  ASSERT_TRUE(quotas.AdmitSession("alice", "b").ok());
  const absl::Status refused = quotas.AdmitSession("alice", "c");
  EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(refused.message(),
                               "tenant quota max_sessions: tenant 'alice' "
                               "holds 2 sessions, its quota is 2"))
      << refused;
  EXPECT_EQ(quotas.Usage("alice").sessions, 2u);
  // Other tenants are not affected.
  EXPECT_TRUE(quotas.AdmitSession("bob", "x").ok());
  // Closing one makes room.
  quotas.ReleaseSession("alice", "a");
  EXPECT_TRUE(quotas.AdmitSession("alice", "c").ok());
}

TEST(TenantQuotasTest, BytesAddUpAndTokensAreTheLongestLayerPerSession) {
  TenantQuotas quotas;
  quotas.Set({{"t", TenantQuota{.max_bytes = 1000, .max_tokens = 100}}});
  ASSERT_TRUE(quotas.AdmitSession("t", "s1").ok());
  ASSERT_TRUE(quotas.AdmitSession("t", "s2").ok());
  // Layer 0 of s1 to 40 tokens, then layer 1 to 40: still 40 tokens.
  ASSERT_TRUE(quotas.ChargeAppend("t", "s1", {200, 40}).ok());
  ASSERT_TRUE(quotas.ChargeAppend("t", "s1", {200, 40}).ok());
  EXPECT_EQ(quotas.Usage("t").tokens, 40u);
  EXPECT_EQ(quotas.Usage("t").kv_bytes, 400u);
  // s2 to 60 tokens: 100 in all, exactly the quota.
  ASSERT_TRUE(quotas.ChargeAppend("t", "s2", {100, 60}).ok());
  EXPECT_EQ(quotas.Usage("t").tokens, 100u);

  const absl::Status tokens = quotas.ChargeAppend("t", "s2", {10, 61});
  EXPECT_EQ(tokens.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(tokens.message(),
                               "tenant quota max_tokens: 1 "
                               "more tokens would bring "
                               "tenant 't' to 101 tokens"))
      << tokens;
  const absl::Status bytes = quotas.ChargeAppend("t", "s1", {501, 40});
  EXPECT_EQ(bytes.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(bytes.message(),
                               "tenant quota max_bytes: appending 501 K/V "
                               "bytes would bring tenant 't' to 1001 bytes, "
                               "over its quota of 1000"))
      << bytes;
  // Refusals charged nothing.
  EXPECT_EQ(quotas.Usage("t").kv_bytes, 500u);
  EXPECT_EQ(quotas.Usage("t").tokens, 100u);
  // Exactly up to the byte quota is fine.
  EXPECT_TRUE(quotas.ChargeAppend("t", "s1", {500, 40}).ok());

  quotas.ReleaseSession("t", "s2");
  EXPECT_EQ(quotas.Usage("t").tokens, 40u);
  EXPECT_EQ(quotas.Usage("t").kv_bytes, 900u);
  EXPECT_EQ(quotas.Usage("t").sessions, 1u);
  quotas.ReleaseSession("t", "s1");
  quotas.ReleaseSession("t", "s1");  // twice: no-op
  const TenantUsage empty = quotas.Usage("t");
  EXPECT_EQ(empty.sessions + empty.kv_bytes + empty.tokens, 0u);
}

TEST(TenantQuotasTest, LoweredQuotaRefusesGrowthButTakesNothingAway) {
  TenantQuotas quotas;
  ASSERT_TRUE(quotas.AdmitSession("t", "s").ok());
  ASSERT_TRUE(quotas.ChargeAppend("t", "s", {800, 80}).ok());
  quotas.Set({{"t", TenantQuota{.max_bytes = 100, .max_tokens = 10}}});
  EXPECT_EQ(quotas.ChargeAppend("t", "s", {1, 80}).code(),
            StatusCode::kResourceExhausted);
  // No new bytes and no longer session: nothing to refuse.
  EXPECT_TRUE(quotas.ChargeAppend("t", "s", {0, 80}).ok());
  EXPECT_EQ(quotas.Usage("t").kv_bytes, 800u);
  // ForceCharge (restored sessions) ignores the quota.
  quotas.ForceCharge("t", "restored", {50, 5});
  EXPECT_EQ(quotas.Usage("t").sessions, 2u);
  EXPECT_EQ(quotas.Usage("t").kv_bytes, 850u);
  // Raising it again lets the tenant grow.
  quotas.Set({{"t", TenantQuota{.max_bytes = 10000}}});
  EXPECT_TRUE(quotas.ChargeAppend("t", "s", {1000, 200}).ok());
}

TEST(TenantQuotasTest, RefundGivesBackAFailedAppendsCharge) {
  TenantQuotas quotas;
  quotas.Set({{"t", TenantQuota{.max_bytes = 1000, .max_tokens = 100}}});
  ASSERT_TRUE(quotas.ChargeAppend("t", "s", {400, 40}).ok());
  absl::StatusOr<uint64_t> before =
      quotas.ChargeAppendRefundable("t", "s", {500, 90});
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(*before, 40u);
  EXPECT_EQ(quotas.Usage("t").kv_bytes, 900u);
  EXPECT_EQ(quotas.Usage("t").tokens, 90u);
  // The write failed: everything the charge took comes back.
  quotas.RefundAppend("t", "s", {500, 90}, *before);
  EXPECT_EQ(quotas.Usage("t").kv_bytes, 400u);
  EXPECT_EQ(quotas.Usage("t").tokens, 40u);
  // A refusal charges nothing and needs no refund.
  EXPECT_EQ(quotas.ChargeAppendRefundable("t", "s", {700, 50}).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(quotas.Usage("t").kv_bytes, 400u);
}

TEST(TenantQuotasTest, ConcurrentChargesNeverExceedTheQuota) {
  TenantQuotas quotas;
  constexpr uint64_t kQuota = 10000;
  quotas.Set({{"t", TenantQuota{.max_bytes = kQuota}}});
  std::vector<std::thread> threads;
  std::atomic<uint64_t> accepted{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::string id = "s" + std::to_string(t);
      for (int i = 0; i < 1000; ++i) {
        if (quotas.ChargeAppend("t", id, {7, 0}).ok()) accepted += 7;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(accepted.load(), kQuota / 7 * 7);
  EXPECT_EQ(quotas.Usage("t").kv_bytes, accepted.load());
}

// --- The engine -------------------------------------------------------------

constexpr uint32_t kLayers = 2;
constexpr uint32_t kKvHeads = 1;
constexpr uint32_t kHeadDim = 16;
constexpr size_t kTokenBytes = kKvHeads * kHeadDim * 4;  // fp32

SessionOptions Options() {
  SessionOptions o;
  o.shape = {kLayers, 2, kKvHeads, kHeadDim, DType::kFp32};
  o.index.recent_tokens = 65536;  // no index builds
  return o;
}

class EngineQuotaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EngineOptions o;
    o.memory_budget_bytes = 4ull << 20;
    o.index_threads = 0;
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
  }

  std::string Create(const TenantId& tenant) {
    absl::StatusOr<SessionInfo> info =
        engine_->CreateSession(tenant, Options());
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->session_id : "";
  }

  // Appends `n` tokens to `layer` (at its current length).
  absl::Status Append(const TenantId& tenant, const std::string& id,
                      uint32_t layer, uint32_t n) {
    absl::StatusOr<SessionInfo> info = engine_->GetSession(tenant, id);
    if (!info.ok()) return info.status();
    std::vector<uint8_t> bytes(n * kTokenBytes, static_cast<uint8_t>(layer));
    LayerAppend la;
    la.layer = layer;
    la.start_token = info->layer_tokens[layer];
    la.num_tokens = n;
    la.keys = bytes;
    la.values = bytes;
    return engine_->Append(tenant, id, {&la, 1}).status();
  }

  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineQuotaTest, SessionQuotaIsPerTenantAndFollowsUpdates) {
  engine_->SetTenantQuotas({{"alice", TenantQuota{.max_sessions = 1}}});
  const std::string a1 = Create("alice");
  absl::StatusOr<SessionInfo> refused =
      engine_->CreateSession("alice", Options());
  ASSERT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(refused.status().message(),
                               "tenant quota max_sessions:"))
      << refused.status();
  EXPECT_EQ(engine_->Stats().sessions, 1u);
  Create("bob");  // unlimited
  // Raised quota: one more fits.
  engine_->SetTenantQuotas({{"alice", TenantQuota{.max_sessions = 2}}});
  const std::string a2 = Create("alice");
  EXPECT_EQ(engine_->GetTenantUsage("alice").sessions, 2u);
  // Closing gives the session back.
  ASSERT_TRUE(engine_->CloseSession("alice", a1).ok());
  EXPECT_EQ(engine_->GetTenantUsage("alice").sessions, 1u);
  Create("alice");
}

TEST_F(EngineQuotaTest, RefusedAppendChangesNothing) {
  // 2 layers x 10 tokens of K and V: 2 * 10 * 64 * 2 = 2560 bytes.
  engine_->SetTenantQuotas({{"t", TenantQuota{.max_bytes = 3000}}});
  const std::string id = Create("t");
  ASSERT_TRUE(Append("t", id, 0, 10).ok());
  ASSERT_TRUE(Append("t", id, 1, 10).ok());
  EXPECT_EQ(engine_->GetTenantUsage("t").kv_bytes, 2 * 10 * kTokenBytes * 2);
  EXPECT_EQ(engine_->GetTenantUsage("t").tokens, 10u);

  const EngineStats before = engine_->Stats();
  const SessionInfo info_before = *engine_->GetSession("t", id);
  const absl::Status refused = Append("t", id, 0, 4);  // 512 bytes more
  ASSERT_EQ(refused.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(refused.message(), "tenant quota max_bytes:"))
      << refused;
  const EngineStats after = engine_->Stats();
  const SessionInfo info_after = *engine_->GetSession("t", id);
  EXPECT_EQ(after.memory_bytes, before.memory_bytes);
  EXPECT_EQ(after.tokens, before.tokens);
  EXPECT_EQ(info_after.layer_tokens, info_before.layer_tokens);
  EXPECT_EQ(engine_->GetTenantUsage("t").kv_bytes, 2 * 10 * kTokenBytes * 2);
  // 3 tokens (384 bytes) still fit: the refused append left no reservation.
  EXPECT_TRUE(Append("t", id, 0, 3).ok());
}

TEST_F(EngineQuotaTest, TokenQuotaCountsEachSessionsLongestLayer) {
  engine_->SetTenantQuotas({{"t", TenantQuota{.max_tokens = 30}}});
  const std::string s1 = Create("t");
  const std::string s2 = Create("t");
  ASSERT_TRUE(Append("t", s1, 0, 20).ok());
  ASSERT_TRUE(Append("t", s1, 1, 20).ok());  // same tokens, another layer
  ASSERT_TRUE(Append("t", s2, 0, 10).ok());
  EXPECT_EQ(engine_->GetTenantUsage("t").tokens, 30u);
  const absl::Status refused = Append("t", s2, 0, 1);
  ASSERT_EQ(refused.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(refused.message(), "tenant quota max_tokens:"))
      << refused;
  // Layer 1 of s2 may catch up: the session does not get longer.
  EXPECT_TRUE(Append("t", s2, 1, 10).ok());
  // Other tenants are unaffected.
  const std::string other = Create("u");
  EXPECT_TRUE(Append("u", other, 0, 100).ok());
  // Closing s1 frees its 20 tokens.
  ASSERT_TRUE(engine_->CloseSession("t", s1).ok());
  EXPECT_TRUE(Append("t", s2, 0, 20).ok());
  EXPECT_EQ(engine_->GetTenantUsage("t").tokens, 30u);
}

}  // namespace
}  // namespace wavekv
