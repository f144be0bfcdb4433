#include "kvstore/wave_test_kv.h"

#include <cmath>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "index/attention.h"
#include "index/dtype.h"

namespace wavekv {
namespace {

constexpr size_t kTopics = 64;
constexpr uint64_t kRunTokens = 50;

std::vector<float> Normal(size_t n, float sigma, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> out(n);
  for (float& x : out) x = normal(rng);
  return out;
}

// Rows of one kv head, decoded, gathered into [n][d] for PartialAttention.
struct Rows {
  std::vector<float> keys, values;
  size_t n = 0;

  void Add(const float* k, const float* v, size_t d) {
    keys.insert(keys.end(), k, k + d);
    values.insert(values.end(), v, v + d);
    ++n;
  }
  KvView View(size_t d) const {
    return KvView{DType::kFp32, d, n,
                  reinterpret_cast<const uint8_t*>(keys.data()),
                  reinterpret_cast<const uint8_t*>(values.data())};
  }
};

std::vector<float> FinalizeAll(const std::vector<AttentionPartial>& parts) {
  std::vector<float> out;
  for (const AttentionPartial& p : parts) {
    const std::vector<float> o = Finalize(p);
    out.insert(out.end(), o.begin(), o.end());
  }
  return out;
}

}  // namespace

TestKv::TestKv(const ModelShape& shape, uint64_t num_tokens, uint64_t seed,
               int64_t needle)
    : shape_(shape), num_tokens_(num_tokens), needle_(needle) {
  const size_t d = shape.head_dim;
  const size_t hk = shape.num_kv_heads;
  const size_t elems = num_tokens * hk * d;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    const auto dirs = Normal(hk * kTopics * d, 1.0f, rng);
    const auto vmeans = Normal(hk * kTopics * d, 1.0f, rng);
    std::vector<float> k(elems), v(elems);
    std::vector<size_t> topic(hk, 0);
    for (uint64_t t = 0; t < num_tokens; ++t) {
      for (size_t h = 0; h < hk; ++h) {
        if (t % kRunTokens == 0) topic[h] = rng() % kTopics;
        const size_t base = (t * hk + h) * d;
        const size_t tb = (h * kTopics + topic[h]) * d;
        for (size_t j = 0; j < d; ++j) {
          k[base + j] = dirs[tb + j] + 0.5f * normal(rng);
          v[base + j] = vmeans[tb + j] + 0.5f * normal(rng);
        }
      }
    }
    needle_dirs_.push_back(Normal(hk * d, 1.0f, rng));
    if (needle >= 0 && static_cast<uint64_t>(needle) < num_tokens) {
      for (size_t h = 0; h < hk; ++h) {
        for (size_t j = 0; j < d; ++j) {
          k[(needle * hk + h) * d + j] = 3.0f * needle_dirs_[l][h * d + j];
        }
      }
    }
    const size_t eb = DTypeBytes(shape.dtype);
    std::vector<uint8_t> kb(elems * eb), vb(elems * eb);
    EncodeFromFloat(shape.dtype, k.data(), elems, kb.data());
    EncodeFromFloat(shape.dtype, v.data(), elems, vb.data());
    DecodeToFloat(shape.dtype, kb.data(), elems, k.data());
    DecodeToFloat(shape.dtype, vb.data(), elems, v.data());
    keys_.push_back(std::move(kb));
    values_.push_back(std::move(vb));
    keys_f_.push_back(std::move(k));
    values_f_.push_back(std::move(v));
  }
}

size_t TestKv::Offset(uint64_t t, uint32_t h) const {
  return (t * shape_.num_kv_heads + h) * shape_.head_dim;
}

absl::Span<const uint8_t> TestKv::KeyBytes(uint32_t layer, uint64_t t,
                                           uint32_t h) const {
  const size_t eb = DTypeBytes(shape_.dtype);
  return {keys_[layer].data() + Offset(t, h) * eb, shape_.head_dim * eb};
}

absl::Span<const uint8_t> TestKv::ValueBytes(uint32_t layer, uint64_t t,
                                             uint32_t h) const {
  const size_t eb = DTypeBytes(shape_.dtype);
  return {values_[layer].data() + Offset(t, h) * eb, shape_.head_dim * eb};
}

const float* TestKv::Key(uint32_t layer, uint64_t t, uint32_t h) const {
  return keys_f_[layer].data() + Offset(t, h);
}

const float* TestKv::Value(uint32_t layer, uint64_t t, uint32_t h) const {
  return values_f_[layer].data() + Offset(t, h);
}

absl::StatusOr<AppendResult> TestKv::Append(
    Engine& engine, const TenantId& tenant, const std::string& session_id,
    uint64_t begin, uint64_t end, std::vector<uint32_t> layers) const {
  if (begin > end || end > num_tokens_) {
    return absl::OutOfRangeError(absl::StrCat("TestKv holds ", num_tokens_,
                                              " tokens, not [", begin, ", ",
                                              end, ")"));
  }
  if (layers.empty()) {
    for (uint32_t l = 0; l < shape_.num_layers; ++l) layers.push_back(l);
  }
  const size_t token_bytes =
      size_t{shape_.num_kv_heads} * shape_.head_dim * DTypeBytes(shape_.dtype);
  std::vector<LayerAppend> appends;
  for (uint32_t l : layers) {
    LayerAppend a;
    a.layer = l;
    a.start_token = begin;
    a.num_tokens = static_cast<uint32_t>(end - begin);
    a.keys = absl::MakeConstSpan(keys_[l].data() + begin * token_bytes,
                                 (end - begin) * token_bytes);
    a.values = absl::MakeConstSpan(values_[l].data() + begin * token_bytes,
                                   (end - begin) * token_bytes);
    appends.push_back(a);
  }
  return engine.Append(tenant, session_id, appends);
}

std::vector<float> TestKv::Query(uint32_t layer, uint64_t seed,
                                 float strength) const {
  const size_t d = shape_.head_dim;
  const uint32_t g = shape_.group_size();
  std::mt19937_64 rng(seed);
  std::vector<float> q(size_t{shape_.num_q_heads} * d, 0.0f);
  for (uint32_t qh = 0; qh < shape_.num_q_heads; ++qh) {
    const uint32_t h = qh / g;
    float* out = q.data() + qh * d;
    if (needle_ >= 0 && qh % g == 0) {
      for (size_t j = 0; j < d; ++j) {
        out[j] = 2.0f * needle_dirs_[layer][h * d + j];
      }
      continue;
    }
    for (int m = 0; m < 3; ++m) {
      const float* k = Key(layer, rng() % num_tokens_, h);
      for (size_t j = 0; j < d; ++j) out[j] += strength * k[j] / 3;
    }
  }
  return q;
}

std::vector<float> FullAttentionOutput(const TestKv& kv, uint32_t layer,
                                       uint64_t num_tokens,
                                       absl::Span<const float> query) {
  const ModelShape& shape = kv.shape();
  const size_t d = shape.head_dim;
  const uint32_t g = shape.group_size();
  std::vector<AttentionPartial> parts;
  for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
    Rows rows;
    for (uint64_t t = 0; t < num_tokens; ++t) {
      rows.Add(kv.Key(layer, t, h), kv.Value(layer, t, h), d);
    }
    for (uint32_t i = 0; i < g; ++i) {
      parts.push_back(PartialAttention(query.subspan((h * g + i) * d, d),
                                       rows.View(d), DefaultScale(d)));
    }
  }
  return FinalizeAll(parts);
}

absl::StatusOr<std::vector<float>> ClientOutput(
    Engine& engine, const TenantId& tenant, uint32_t layer, const TestKv& kv,
    const SessionResult& result, absl::Span<const float> query, bool use_tail) {
  const ModelShape& shape = kv.shape();
  const size_t d = shape.head_dim;
  const uint32_t g = shape.group_size();
  const size_t row_bytes = d * DTypeBytes(shape.dtype);
  const uint64_t n = result.num_tokens;
  std::vector<bool> steady(n, false);
  for (const TokenRange& r : result.steady) {
    if (r.begin >= r.end || r.end > n) {
      return absl::FailedPreconditionError(
          absl::StrCat("steady range [", r.begin, ", ", r.end, ") of ", n));
    }
    for (uint64_t t = r.begin; t < r.end; ++t) {
      if (steady[t]) {
        return absl::FailedPreconditionError(
            absl::StrCat("steady token ", t, " twice"));
      }
      steady[t] = true;
    }
  }
  if (result.heads.size() != shape.num_kv_heads) {
    return absl::FailedPreconditionError("heads: wrong count");
  }
  std::vector<AttentionPartial> parts;
  for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
    const KvHeadResult& head = result.heads[h];
    Rows rows;
    std::vector<bool> seen(n, false);
    if (!head.retrieval.empty()) {
      FetchRequest fetch;
      fetch.session_id = result.session_id;
      fetch.layer = layer;
      fetch.layout_epoch = result.layout_epoch;
      fetch.heads.push_back(HeadSlots{h, head.retrieval});
      absl::Status bad;
      absl::Status s = engine.FetchSlots(tenant, fetch, [&](SlotChunk&& c) {
        for (uint32_t i = 0; i < c.num_slots && bad.ok(); ++i) {
          const uint64_t t = c.positions[i];
          if (t >= n || steady[t] || seen[t]) {
            bad = absl::FailedPreconditionError(
                absl::StrCat("kv head ", h, ": fetched token ", t,
                             " is out of range, steady, or fetched twice"));
            break;
          }
          seen[t] = true;
          if (std::memcmp(c.keys.data() + i * row_bytes,
                          kv.KeyBytes(layer, t, h).data(), row_bytes) != 0 ||
              std::memcmp(c.values.data() + i * row_bytes,
                          kv.ValueBytes(layer, t, h).data(), row_bytes) != 0) {
            bad = absl::FailedPreconditionError(absl::StrCat(
                "kv head ", h, ": fetched K/V of token ", t, " differ"));
            break;
          }
          rows.Add(kv.Key(layer, t, h), kv.Value(layer, t, h), d);
        }
        return bad.ok();
      });
      if (!bad.ok()) return bad;
      if (!s.ok()) return s;
    }
    for (uint64_t t = 0; t < n; ++t) {
      if (steady[t]) rows.Add(kv.Key(layer, t, h), kv.Value(layer, t, h), d);
    }
    const size_t tails = use_tail ? head.tail.size() : 0;
    if (tails != 0 && tails != g) {
      return absl::FailedPreconditionError("tail: wrong count");
    }
    for (uint32_t i = 0; i < g; ++i) {
      AttentionPartial p = PartialAttention(query.subspan((h * g + i) * d, d),
                                            rows.View(d), DefaultScale(d));
      if (tails != 0) {
        const TailStats& tail = head.tail[i];
        AttentionPartial t = AttentionPartial::Empty(d);
        if (tail.denominator > 0.0f) {
          t.max_logit = tail.max_logit;
          t.denominator = tail.denominator;
          t.numerator = tail.numerator;
        }
        MergeInto(p, t);
      }
      parts.push_back(std::move(p));
    }
  }
  return FinalizeAll(parts);
}

double RelativeL2(absl::Span<const float> a, absl::Span<const float> b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    norm += double{b[i]} * b[i];
  }
  return std::sqrt(diff / norm);
}

}  // namespace wavekv
