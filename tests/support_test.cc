// Tests of the test harness itself: the K/V pattern, the answer checks (they
// must reject corrupted answers, or the process tests prove nothing), the
// metrics parser and ServerProcess's failure reporting.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <set>

#include "gtest/gtest.h"
#include "tests/answer_checks.h"
#include "tests/kv_pattern.h"
#include "tests/prometheus_text.h"
#include "tests/server_process.h"

namespace wavekv::testing {
namespace {

TEST(KvPatternTest, DeterministicAndLaidOutTokenHeadDim) {
  const v1::ModelShape shape = MakeShape(2, 4, 2, 16, v1::DTYPE_FP16);
  KvPattern a(7, shape), b(7, shape), other(8, shape);
  const std::string keys = a.Tokens(KvKind::kKeys, 1, 10, 3);
  ASSERT_EQ(keys.size(), 3u * 2 * 16 * 2);
  EXPECT_EQ(keys, b.Tokens(KvKind::kKeys, 1, 10, 3));
  EXPECT_NE(keys, other.Tokens(KvKind::kKeys, 1, 10, 3));
  EXPECT_NE(keys, a.Tokens(KvKind::kValues, 1, 10, 3));
  EXPECT_NE(keys, a.Tokens(KvKind::kKeys, 0, 10, 3));
  // [num_tokens][num_kv_heads][head_dim]
  EXPECT_EQ(keys.substr(0, 32), a.Row(KvKind::kKeys, 1, 10, 0));
  EXPECT_EQ(keys.substr(32, 32), a.Row(KvKind::kKeys, 1, 10, 1));
  EXPECT_EQ(keys.substr(64, 32), a.Row(KvKind::kKeys, 1, 11, 0));
  const v1::LayerKV kv = a.Layer(1, 10, 3);
  EXPECT_EQ(kv.keys(), keys);
  EXPECT_EQ(kv.values(), a.Tokens(KvKind::kValues, 1, 10, 3));
  EXPECT_EQ(a.Query(0, 5).size(), 4u * 16 * 4);
}

TEST(KvPatternTest, ElementsAreFiniteNormalNumbers) {
  for (v1::DType dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16, v1::DTYPE_FP32}) {
    KvPattern p(1, MakeShape(1, 1, 1, 64, dtype));
    std::set<std::string> rows;
    for (uint64_t t = 0; t < 200; ++t) {
      const std::string row = p.Row(KvKind::kKeys, 0, t, 0);
      rows.insert(row);
      for (size_t i = 0; i < 64; ++i) {
        if (dtype == v1::DTYPE_FP32) {
          float f;
          std::memcpy(&f, row.data() + 4 * i, 4);
          ASSERT_TRUE(std::isfinite(f));
          ASSERT_LE(std::fabs(f), 1.0f);
        } else {
          const uint16_t bits =
              static_cast<uint8_t>(row[2 * i]) |
              static_cast<uint16_t>(static_cast<uint8_t>(row[2 * i + 1])) << 8;
          const uint16_t exp = dtype == v1::DTYPE_FP16 ? (bits >> 10) & 0x1f
                                                       : (bits >> 7) & 0xff;
          const uint16_t exp_max = dtype == v1::DTYPE_FP16 ? 0x1f : 0xff;
          ASSERT_NE(exp, 0) << "denormal or zero";
          ASSERT_NE(exp, exp_max) << "inf or NaN";
        }
      }
    }
    EXPECT_EQ(rows.size(), 200u) << "rows must identify tokens";
  }
}

// An EXACT answer built by hand, in a permuted slot order (as a store whose
// slots are cluster-major would return it).
v1::SessionResult ExactAnswer(const KvPattern& p, uint32_t layer, uint64_t n) {
  v1::SessionResult r;
  r.set_session_id("s");
  r.set_num_tokens(n);
  r.set_layout_epoch(3);
  r.set_mode(v1::RETRIEVE_MODE_EXACT);
  for (uint32_t h = 0; h < p.shape().num_kv_heads(); ++h) {
    v1::KvHeadResult* head = r.add_heads();
    head->set_kv_head(h);
    v1::SlotRange* range = head->add_retrieval();
    range->set_first_slot(0);
    range->set_num_slots(static_cast<uint32_t>(n));
    for (uint64_t s = 0; s < n; ++s) {
      const uint64_t pos = (s * 7) % n;  // a permutation for n = 10
      *head->mutable_keys() += p.Row(KvKind::kKeys, layer, pos, h);
      *head->mutable_values() += p.Row(KvKind::kValues, layer, pos, h);
    }
  }
  return r;
}

TEST(AnswerChecksTest, ExactAcceptsPermutedSlotsAndRejectsCorruption) {
  KvPattern p(3, MakeShape(2, 4, 2, 16, v1::DTYPE_BF16));
  v1::SessionResult r = ExactAnswer(p, 1, 10);
  auto ok = CheckExactResult(r, p, 1, /*include_kv=*/true);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ((*ok)[0].positions[1], 7u);

  v1::SessionResult flipped = r;
  (*flipped.mutable_heads(1)->mutable_values())[40] ^= 1;
  EXPECT_FALSE(CheckExactResult(flipped, p, 1, true).ok());

  v1::SessionResult wrong_layer = r;
  EXPECT_FALSE(CheckExactResult(wrong_layer, p, 0, true).ok());

  v1::SessionResult short_range = r;
  short_range.mutable_heads(0)->mutable_retrieval(0)->set_num_slots(9);
  EXPECT_FALSE(CheckExactResult(short_range, p, 1, true).ok());

  v1::SessionResult dup = r;  // token 0 twice, token 7 missing
  dup.mutable_heads(0)->mutable_keys()->replace(32, 32,
                                                p.Row(KvKind::kKeys, 1, 0, 0));
  EXPECT_FALSE(CheckExactResult(dup, p, 1, true).ok());

  v1::SessionResult no_kv = r;
  EXPECT_FALSE(CheckExactResult(no_kv, p, 1, /*include_kv=*/false).ok());
  for (auto& h : *no_kv.mutable_heads()) {
    h.clear_keys();
    h.clear_values();
  }
  EXPECT_TRUE(CheckExactResult(no_kv, p, 1, false).ok());
}

// A WAVE answer built by hand: 40 tokens, steady [0, 4) and [30, 40), one
// retrieved cluster of tokens 10..14 per head, two q heads per kv head.
v1::SessionResult WaveAnswer(const KvPattern& p, uint32_t layer) {
  v1::SessionResult r;
  r.set_session_id("w");
  r.set_mode(v1::RETRIEVE_MODE_WAVE);
  r.set_num_tokens(40);
  r.set_indexed_tokens(26);
  v1::TokenRange* sinks = r.add_steady();
  sinks->set_begin(0);
  sinks->set_end(4);
  v1::TokenRange* recent = r.add_steady();
  recent->set_begin(30);
  recent->set_end(40);
  const float inf = std::numeric_limits<float>::infinity();
  for (uint32_t h = 0; h < p.shape().num_kv_heads(); ++h) {
    v1::KvHeadResult* head = r.add_heads();
    head->set_kv_head(h);
    v1::SlotRange* range = head->add_retrieval();
    range->set_cluster_id(7);
    range->set_first_slot(100);
    range->set_num_slots(5);
    for (uint64_t pos = 10; pos < 15; ++pos) {
      *head->mutable_keys() += p.Row(KvKind::kKeys, layer, pos, h);
      *head->mutable_values() += p.Row(KvKind::kValues, layer, pos, h);
    }
    for (int q = 0; q < 2; ++q) {
      v1::TailStats* t = head->add_tail();
      t->set_max_logit(q == 0 ? 1.5f : -inf);
      t->set_denominator(q == 0 ? 3.0f : 0.0f);
      std::string num(p.shape().head_dim() * 4, '\0');
      if (q == 0) {
        const float one = 1.0f;
        std::memcpy(num.data(), &one, 4);
      }
      t->set_numerator(num);
    }
  }
  return r;
}

TEST(AnswerChecksTest, WaveAcceptsAConsistentAnswerAndRejectsBrokenOnes) {
  KvPattern p(9, MakeShape(1, 4, 2, 16, v1::DTYPE_FP16));
  const v1::SessionResult r = WaveAnswer(p, 0);
  auto ok = CheckWaveResult(r, p, 0, /*include_kv=*/true);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)[1].positions, (std::vector<uint64_t>{10, 11, 12, 13, 14}));
  EXPECT_FALSE(CheckExactResult(r, p, 0, true).ok()) << "mode is WAVE";
  EXPECT_EQ(SteadyMask(r)[3], true);
  EXPECT_EQ(SteadyMask(r)[4], false);

  // Tail bounds against the query: a zero query makes every logit 0.
  const std::string zero_query(4 * 16 * 4, '\0');
  v1::SessionResult bounded = r;
  for (auto& head : *bounded.mutable_heads()) {
    head.mutable_tail(0)->set_max_logit(0.0f);
  }
  auto in_bounds = CheckWaveResult(bounded, p, 0, true, zero_query);
  EXPECT_TRUE(in_bounds.ok()) << in_bounds.status();
  EXPECT_FALSE(CheckWaveResult(r, p, 0, true, zero_query).ok())
      << "max_logit 1.5 > every logit";
  v1::SessionResult big_den = bounded;
  big_den.mutable_heads(0)->mutable_tail(0)->set_denominator(22.0f);
  EXPECT_FALSE(CheckWaveResult(big_den, p, 0, true, zero_query).ok())
      << "only 26 - 5 tokens can be estimated";
  v1::SessionResult far_mean = bounded;
  {
    const float far = 100.0f;
    std::memcpy(
        far_mean.mutable_heads(1)->mutable_tail(0)->mutable_numerator()->data(),
        &far, 4);
  }
  EXPECT_FALSE(CheckWaveResult(far_mean, p, 0, true, zero_query).ok())
      << "a mean value outside every value";

  auto broken = [&](const std::function<void(v1::SessionResult&)>& f) {
    v1::SessionResult b = r;
    f(b);
    return !CheckWaveResult(b, p, 0, true).ok();
  };
  EXPECT_TRUE(broken([](auto& b) { b.set_mode(v1::RETRIEVE_MODE_EXACT); }));
  EXPECT_TRUE(broken([](auto& b) { b.set_indexed_tokens(25); }));
  EXPECT_TRUE(broken([](auto& b) { b.mutable_steady(1)->set_begin(3); }));
  EXPECT_TRUE(broken([](auto& b) { b.mutable_steady(1)->set_end(41); }));
  EXPECT_TRUE(broken(
      [](auto& b) { b.mutable_heads(0)->mutable_tail()->RemoveLast(); }));
  EXPECT_TRUE(broken([](auto& b) {
    b.mutable_heads(0)->mutable_tail(1)->set_max_logit(0.5f);  // den 0
  }));
  EXPECT_TRUE(broken([](auto& b) {
    b.mutable_heads(1)->mutable_tail(0)->set_denominator(-1.0f);
  }));
  EXPECT_TRUE(broken([](auto& b) {
    b.mutable_heads(1)->mutable_tail(0)->mutable_numerator()->resize(8);
  }));
  EXPECT_TRUE(broken([&](auto& b) {  // a steady token in a cluster
    b.mutable_heads(0)->mutable_keys()->replace(0, 32,
                                                p.Row(KvKind::kKeys, 0, 2, 0));
    b.mutable_heads(0)->mutable_values()->replace(
        0, 32, p.Row(KvKind::kValues, 0, 2, 0));
  }));
  EXPECT_TRUE(broken([](auto& b) {
    b.mutable_heads(0)->mutable_retrieval(0)->set_num_slots(30);  // > indexed
  }));
}

std::vector<v1::ClusterChunk> Chunks(const KvPattern& p, uint32_t layer,
                                     uint32_t kv_head, uint64_t first_slot,
                                     uint32_t num_slots, uint32_t per_chunk) {
  std::vector<v1::ClusterChunk> out;
  for (uint32_t done = 0; done < num_slots;) {
    const uint32_t n = std::min(per_chunk, num_slots - done);
    v1::ClusterChunk c;
    c.set_kv_head(kv_head);
    c.set_cluster_id(5);
    c.set_first_slot(first_slot + done);
    c.set_num_slots(n);
    for (uint32_t i = 0; i < n; ++i) {
      const uint64_t pos = 100 + first_slot + done + i;
      c.add_positions(pos);
      *c.mutable_keys() += p.Row(KvKind::kKeys, layer, pos, kv_head);
      *c.mutable_values() += p.Row(KvKind::kValues, layer, pos, kv_head);
    }
    out.push_back(std::move(c));
    done += n;
  }
  return out;
}

TEST(AnswerChecksTest, FetchReassemblesAndRejectsBadStreams) {
  KvPattern p(4, MakeShape(1, 2, 2, 64, v1::DTYPE_FP32));  // 256 B rows
  v1::FetchClustersRequest req;
  req.set_layer(0);
  req.set_max_chunk_bytes(4096);  // 8 slots of K+V
  v1::HeadSlots* hs = req.add_heads();
  hs->set_kv_head(1);
  v1::SlotRange* range = hs->add_ranges();
  range->set_cluster_id(5);
  range->set_first_slot(3);
  range->set_num_slots(20);
  auto chunks = Chunks(p, 0, 1, 3, 20, 8);
  ASSERT_EQ(chunks.size(), 3u);
  auto ok = CheckFetchedChunks(req, chunks, p, 1000);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)[0].positions.size(), 20u);
  EXPECT_EQ((*ok)[0].keys.size(), 20u * 256);

  EXPECT_FALSE(CheckFetchedChunks(req, chunks, p, 110).ok());  // positions
  EXPECT_FALSE(CheckFetchedChunks(req, Chunks(p, 0, 1, 3, 20, 9), p).ok());
  auto missing = chunks;
  missing.pop_back();
  EXPECT_FALSE(CheckFetchedChunks(req, missing, p).ok());
  EXPECT_TRUE(
      CheckFetchedChunks(req, missing, p, 1000, /*complete=*/false).ok())
      << "a prefix of a failed stream";
  auto corrupt_prefix = missing;
  (*corrupt_prefix[0].mutable_values())[3] ^= 1;
  EXPECT_FALSE(
      CheckFetchedChunks(req, corrupt_prefix, p, 1000, /*complete=*/false)
          .ok());
  auto extra = chunks;
  extra.push_back(chunks[0]);
  EXPECT_FALSE(CheckFetchedChunks(req, extra, p).ok());
  auto corrupt = chunks;
  (*corrupt[1].mutable_keys())[7] ^= 0x10;
  EXPECT_FALSE(CheckFetchedChunks(req, corrupt, p).ok());
  auto wrong_head = chunks;
  wrong_head[2].set_kv_head(0);
  EXPECT_FALSE(CheckFetchedChunks(req, wrong_head, p).ok());
}

TEST(PrometheusTextTest, ParsesLabelsAndSums) {
  auto samples = ParsePrometheusText(
      "# HELP wavekv_rpc_requests_total Requests.\n"
      "# TYPE wavekv_rpc_requests_total counter\n"
      "wavekv_rpc_requests_total{method=\"Append\",code=\"OK\"} 3\n"
      "wavekv_rpc_requests_total{code=\"NOT_FOUND\",method=\"Append\"} 2\n"
      "wavekv_rpc_requests_total{method=\"Retrieve\",code=\"OK\"} 1e1\n"
      "wavekv_up 1\n"
      "h_bucket{le=\"+Inf\"} 4 1700000000\n");
  ASSERT_TRUE(samples.ok()) << samples.status();
  EXPECT_EQ(samples->size(), 5u);
  EXPECT_EQ(SumSamples(*samples, "wavekv_rpc_requests_total"), 15);
  EXPECT_EQ(
      SumSamples(*samples, "wavekv_rpc_requests_total", {{"method", "Append"}}),
      5);
  EXPECT_EQ(SumSamples(*samples, "wavekv_rpc_requests_total",
                       {{"method", "Append"}, {"code", "OK"}}),
            3);
  EXPECT_EQ(SumSamples(*samples, "h_bucket", {{"le", "+Inf"}}), 4);
  EXPECT_EQ(CountSamples(*samples, "wavekv_up"), 1);
  EXPECT_FALSE(ParsePrometheusText("x{a=\"1\" 2\n").ok());
  EXPECT_FALSE(ParsePrometheusText("x two\n").ok());
}

TEST(ServerProcessTest, ReportsAServerThatExitsBeforeReady) {
  ::setenv("WAVEKV_SERVER", "/bin/false", 1);
  auto server = ServerProcess::Start({.name = "false"});
  ::unsetenv("WAVEKV_SERVER");
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(server.status().message().find("exit 1"), std::string::npos)
      << server.status();
}

TEST(ServerProcessTest, MissingBinaryIsNotFound) {
  ::setenv("WAVEKV_SERVER", "/nonexistent/wavekv-server", 1);
  auto server = ServerProcess::Start({.name = "missing"});
  ::unsetenv("WAVEKV_SERVER");
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
}

TEST(HttpGetTest, RefusedPortIsUnavailable) {
  // Port 1 on loopback: nothing listens there in a test sandbox.
  auto body = HttpGet(1, "/metrics", absl::Seconds(1));
  EXPECT_FALSE(body.ok());
}

}  // namespace
}  // namespace wavekv::testing
