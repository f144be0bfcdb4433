#include "tests/answer_checks.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv::testing {
namespace {

absl::Status Mismatch(const std::string& where, const std::string& what) {
  return absl::InternalError(absl::StrCat(where, ": ", what));
}

// Ranges: >= 1 slot each, pairwise disjoint. Returns the slots they hold.
absl::StatusOr<uint64_t> CheckRanges(const std::string& where,
                                     const v1::KvHeadResult& head) {
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  uint64_t total = 0;
  for (const v1::SlotRange& r : head.retrieval()) {
    if (r.num_slots() == 0) return Mismatch(where, "range of 0 slots");
    spans.emplace_back(r.first_slot(), r.first_slot() + r.num_slots());
    total += r.num_slots();
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].second) {
      return Mismatch(where,
                      absl::StrCat("ranges overlap at slot ", spans[i].first));
    }
  }
  return total;
}

// Inline K/V of `slots` slots of kv head `h`: each key row must be the
// appended row of a token < n for which `allowed` holds (when non-empty),
// each token at most once, and the value row beside it must be that
// token's. Returns the data with the recovered positions.
absl::StatusOr<HeadData> RecoverPositions(const std::string& where,
                                          const v1::KvHeadResult& head,
                                          uint32_t h, uint64_t slots,
                                          const KvPattern& pattern,
                                          uint32_t layer, uint64_t n,
                                          const std::vector<bool>& allowed) {
  const uint64_t row_bytes = RowBytes(pattern.shape());
  if (head.keys().size() != slots * row_bytes ||
      head.values().size() != slots * row_bytes) {
    return Mismatch(
        where,
        absl::StrCat("inline keys/values of ", head.keys().size(), "/",
                     head.values().size(), " bytes, want ", slots * row_bytes));
  }
  absl::flat_hash_map<std::string, uint64_t> position_of;
  position_of.reserve(n);
  for (uint64_t p = 0; p < n; ++p) {
    position_of.emplace(pattern.Row(KvKind::kKeys, layer, p, h), p);
  }
  HeadData data;
  data.kv_head = h;
  data.keys = head.keys();
  data.values = head.values();
  std::vector<bool> seen(n, false);
  for (uint64_t s = 0; s < slots; ++s) {
    const std::string key = head.keys().substr(s * row_bytes, row_bytes);
    auto it = position_of.find(key);
    if (it == position_of.end()) {
      return Mismatch(
          where, absl::StrCat("slot ", s, ": key row is no appended token's"));
    }
    const uint64_t p = it->second;
    if (seen[p]) {
      return Mismatch(where, absl::StrCat("token ", p, " appears twice"));
    }
    if (!allowed.empty() && !allowed[p]) {
      return Mismatch(
          where, absl::StrCat("token ", p, " is not allowed here (steady)"));
    }
    seen[p] = true;
    if (head.values().compare(s * row_bytes, row_bytes,
                              pattern.Row(KvKind::kValues, layer, p, h)) != 0) {
      return Mismatch(where, absl::StrCat("slot ", s, " (token ", p,
                                          "): value row differs"));
    }
    data.positions.push_back(p);
  }
  return data;
}

}  // namespace

absl::StatusOr<std::vector<HeadData>> CheckExactResult(
    const v1::SessionResult& result, const KvPattern& pattern, uint32_t layer,
    bool include_kv) {
  const v1::ModelShape& shape = pattern.shape();
  const uint64_t n = result.num_tokens();
  const std::string where =
      absl::StrCat("session ", result.session_id(), " layer ", layer);
  if (result.mode() != v1::RETRIEVE_MODE_EXACT) {
    return Mismatch(where, "mode is not RETRIEVE_MODE_EXACT");
  }
  if (!result.steady().empty()) {
    return Mismatch(where, "EXACT answer has steady ranges");
  }
  if (result.heads_size() != static_cast<int>(shape.num_kv_heads())) {
    return Mismatch(where, absl::StrCat("expected ", shape.num_kv_heads(),
                                        " heads, got ", result.heads_size()));
  }
  std::vector<HeadData> out;
  for (uint32_t h = 0; h < shape.num_kv_heads(); ++h) {
    const v1::KvHeadResult& head = result.heads(h);
    const std::string hw = absl::StrCat(where, " heads[", h, "]");
    if (head.kv_head() != h) {
      return Mismatch(hw, absl::StrCat("kv_head ", head.kv_head()));
    }
    if (!head.tail().empty()) return Mismatch(hw, "EXACT answer has tails");
    for (const v1::SlotRange& r : head.retrieval()) {
      if (r.cluster_id() != 0) {
        return Mismatch(hw, "EXACT range with a cluster_id (must be 0)");
      }
    }
    auto total = CheckRanges(hw, head);
    if (!total.ok()) return total.status();
    if (*total != n) {
      return Mismatch(hw, absl::StrCat("ranges hold ", *total,
                                       " slots, num_tokens is ", n));
    }
    if (!include_kv) {
      if (!head.keys().empty() || !head.values().empty()) {
        return Mismatch(hw, "inline K/V without include_kv");
      }
      continue;
    }
    auto data = RecoverPositions(hw, head, h, n, pattern, layer, n, {});
    if (!data.ok()) return data.status();
    out.push_back(std::move(*data));
  }
  return out;
}

std::vector<bool> SteadyMask(const v1::SessionResult& result) {
  std::vector<bool> mask(result.num_tokens(), false);
  for (const v1::TokenRange& t : result.steady()) {
    for (uint64_t p = t.begin(); p < t.end() && p < mask.size(); ++p) {
      mask[p] = true;
    }
  }
  return mask;
}

namespace {

// The bounds of CheckWaveResult's header comment for one kv head's tails.
absl::Status CheckTailBounds(const std::string& where,
                             const v1::KvHeadResult& head,
                             const KvPattern& pattern, uint32_t layer,
                             const std::vector<bool>& indexed,
                             uint64_t retrieved_slots,
                             const std::string& query) {
  const v1::ModelShape& shape = pattern.shape();
  const uint32_t d = shape.head_dim();
  const uint32_t group = shape.num_q_heads() / shape.num_kv_heads();
  const uint32_t h = head.kv_head();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  uint64_t indexed_count = 0;
  std::vector<float> vmin(d, INFINITY), vmax(d, -INFINITY);
  std::vector<float> lmin(group, INFINITY), lmax(group, -INFINITY);
  float vabs = 0.0f;
  std::vector<float> q(uint64_t{group} * d);
  std::memcpy(q.data(), query.data() + uint64_t{h} * group * d * 4,
              q.size() * 4);
  for (uint64_t p = 0; p < indexed.size(); ++p) {
    if (!indexed[p]) continue;
    ++indexed_count;
    const std::vector<float> k = pattern.RowFloats(KvKind::kKeys, layer, p, h);
    const std::vector<float> v =
        pattern.RowFloats(KvKind::kValues, layer, p, h);
    for (uint32_t i = 0; i < d; ++i) {
      vmin[i] = std::min(vmin[i], v[i]);
      vmax[i] = std::max(vmax[i], v[i]);
      vabs = std::max(vabs, std::fabs(v[i]));
    }
    for (uint32_t j = 0; j < group; ++j) {
      double dot = 0.0;
      for (uint32_t i = 0; i < d; ++i) dot += double{q[j * d + i]} * k[i];
      const float logit = static_cast<float>(dot) * scale;
      lmin[j] = std::min(lmin[j], logit);
      lmax[j] = std::max(lmax[j], logit);
    }
  }
  const uint64_t estimable =
      indexed_count > retrieved_slots ? indexed_count - retrieved_slots : 0;
  for (uint32_t j = 0; j < group && j < uint32_t(head.tail_size()); ++j) {
    const v1::TailStats& t = head.tail(j);
    const std::string tw = absl::StrCat(where, " tail[", j, "]");
    if (t.denominator() == 0.0f) continue;  // empty zone, checked already
    const float ltol =
        1e-3f * (1.0f + std::max(std::fabs(lmin[j]), std::fabs(lmax[j])));
    if (t.max_logit() < lmin[j] - ltol || t.max_logit() > lmax[j] + ltol) {
      return Mismatch(tw, absl::StrCat("max_logit ", t.max_logit(),
                                       " outside the indexed tokens' logits [",
                                       lmin[j], ", ", lmax[j], "]"));
    }
    const float den = t.denominator();
    if (den < 1.0f - 1e-3f || den > estimable * (1.0f + 1e-3f)) {
      return Mismatch(tw, absl::StrCat("denominator ", den, " outside [1, ",
                                       estimable, "] (tokens estimable)"));
    }
    const float vtol = 1e-3f * (1.0f + vabs);
    for (uint32_t i = 0; i < d; ++i) {
      float num;
      std::memcpy(&num, t.numerator().data() + 4 * i, 4);
      const float mean = num / den;
      if (mean < vmin[i] - vtol || mean > vmax[i] + vtol) {
        return Mismatch(tw, absl::StrCat("numerator[", i, "]/denominator ",
                                         mean, " outside the values' range [",
                                         vmin[i], ", ", vmax[i], "]"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<HeadData>> CheckWaveResult(
    const v1::SessionResult& result, const KvPattern& pattern, uint32_t layer,
    bool include_kv, const std::string& query) {
  const v1::ModelShape& shape = pattern.shape();
  const uint64_t n = result.num_tokens();
  const std::string where =
      absl::StrCat("session ", result.session_id(), " layer ", layer, " WAVE");
  if (result.mode() != v1::RETRIEVE_MODE_WAVE) {
    return Mismatch(where, "mode is not RETRIEVE_MODE_WAVE");
  }
  if (result.indexed_tokens() > n) {
    return Mismatch(where, absl::StrCat("indexed_tokens ",
                                        result.indexed_tokens(), " > ", n));
  }
  // Steady ranges: non-empty, disjoint, inside [0, n); with the indexed
  // tokens they account for every token.
  std::vector<bool> steady(n, false);
  uint64_t steady_count = 0;
  for (const v1::TokenRange& t : result.steady()) {
    if (t.begin() >= t.end() || t.end() > n) {
      return Mismatch(where, absl::StrCat("steady range [", t.begin(), ", ",
                                          t.end(), ") outside [0, ", n, ")"));
    }
    for (uint64_t p = t.begin(); p < t.end(); ++p) {
      if (steady[p]) {
        return Mismatch(where, absl::StrCat("steady ranges overlap at ", p));
      }
      steady[p] = true;
      ++steady_count;
    }
  }
  if (steady_count + result.indexed_tokens() != n) {
    return Mismatch(
        where, absl::StrCat(steady_count, " steady + ", result.indexed_tokens(),
                            " indexed tokens != ", n));
  }
  if (result.heads_size() != static_cast<int>(shape.num_kv_heads())) {
    return Mismatch(where, absl::StrCat("expected ", shape.num_kv_heads(),
                                        " heads, got ", result.heads_size()));
  }
  const uint32_t group = shape.num_q_heads() / shape.num_kv_heads();
  std::vector<bool> indexed(n);
  for (uint64_t p = 0; p < n; ++p) indexed[p] = !steady[p];
  std::vector<HeadData> out;
  for (uint32_t h = 0; h < shape.num_kv_heads(); ++h) {
    const v1::KvHeadResult& head = result.heads(h);
    const std::string hw = absl::StrCat(where, " heads[", h, "]");
    if (head.kv_head() != h) {
      return Mismatch(hw, absl::StrCat("kv_head ", head.kv_head()));
    }
    if (head.tail_size() != static_cast<int>(group)) {
      return Mismatch(hw, absl::StrCat(head.tail_size(), " tails for ", group,
                                       " q heads of the group"));
    }
    for (int q = 0; q < head.tail_size(); ++q) {
      const v1::TailStats& t = head.tail(q);
      const std::string tw = absl::StrCat(hw, " tail[", q, "]");
      if (t.numerator().size() != uint64_t{shape.head_dim()} * 4) {
        return Mismatch(
            tw, absl::StrCat("numerator of ", t.numerator().size(), " bytes"));
      }
      if (!(t.denominator() >= 0.0f) || std::isinf(t.denominator())) {
        return Mismatch(tw, absl::StrCat("denominator ", t.denominator()));
      }
      if (t.denominator() == 0.0f &&
          !(std::isinf(t.max_logit()) && t.max_logit() < 0)) {
        return Mismatch(tw, "an empty zone must have max_logit -inf");
      }
      if (t.denominator() > 0.0f && !std::isfinite(t.max_logit())) {
        return Mismatch(tw, "a non-empty zone needs a finite max_logit");
      }
      for (uint32_t i = 0; i < shape.head_dim(); ++i) {
        float v;
        std::memcpy(&v, t.numerator().data() + 4 * i, 4);
        if (!std::isfinite(v)) {
          return Mismatch(tw, absl::StrCat("numerator[", i, "] = ", v));
        }
        if (t.denominator() == 0.0f && v != 0.0f) {
          return Mismatch(tw, "an empty zone must have a zero numerator");
        }
      }
    }
    auto total = CheckRanges(hw, head);
    if (!total.ok()) return total.status();
    if (*total > result.indexed_tokens()) {
      return Mismatch(
          hw, absl::StrCat("retrieval of ", *total, " slots > indexed_tokens ",
                           result.indexed_tokens()));
    }
    if (!query.empty()) {
      if (query.size() !=
          uint64_t{shape.num_q_heads()} * shape.head_dim() * 4) {
        return Mismatch(where, "query of the wrong size for the check");
      }
      RETURN_IF_ERROR(
          CheckTailBounds(hw, head, pattern, layer, indexed, *total, query));
    }
    if (!include_kv) {
      if (!head.keys().empty() || !head.values().empty()) {
        return Mismatch(hw, "inline K/V without include_kv");
      }
      continue;
    }
    auto data =
        RecoverPositions(hw, head, h, *total, pattern, layer, n, indexed);
    if (!data.ok()) return data.status();
    out.push_back(std::move(*data));
  }
  return out;
}

absl::StatusOr<std::vector<HeadData>> CheckFetchedChunks(
    const v1::FetchClustersRequest& request,
    const std::vector<v1::ClusterChunk>& chunks, const KvPattern& pattern,
    uint64_t position_limit, bool complete) {
  const uint64_t row_bytes = RowBytes(pattern.shape());
  const uint64_t max_chunk =
      request.max_chunk_bytes() == 0 ? (1u << 20) : request.max_chunk_bytes();
  const uint32_t layer = request.layer();
  size_t next = 0;
  std::vector<HeadData> out;
  for (int hi = 0; hi < request.heads_size(); ++hi) {
    const v1::HeadSlots& head = request.heads(hi);
    HeadData data;
    data.kv_head = head.kv_head();
    for (int ri = 0; ri < head.ranges_size(); ++ri) {
      const v1::SlotRange& range = head.ranges(ri);
      const std::string rw = absl::StrCat("heads[", hi, "].ranges[", ri, "]");
      uint64_t slot = range.first_slot();
      const uint64_t end = range.first_slot() + range.num_slots();
      while (slot < end) {
        if (next >= chunks.size()) {
          if (!complete) {
            out.push_back(std::move(data));
            return out;
          }
          return Mismatch(rw,
                          absl::StrCat("stream ended at slot ", slot, " of [",
                                       range.first_slot(), ", ", end, ")"));
        }
        const v1::ClusterChunk& c = chunks[next];
        const std::string cw = absl::StrCat(rw, " chunk ", next);
        ++next;
        if (c.kv_head() != head.kv_head() ||
            c.cluster_id() != range.cluster_id() || c.first_slot() != slot) {
          return Mismatch(
              cw, absl::StrCat("got kv_head ", c.kv_head(), " cluster ",
                               c.cluster_id(), " first_slot ", c.first_slot(),
                               ", want ", head.kv_head(), "/",
                               range.cluster_id(), "/", slot));
        }
        if (c.num_slots() == 0 || slot + c.num_slots() > end) {
          return Mismatch(
              cw, absl::StrCat("num_slots ", c.num_slots(), " from slot ", slot,
                               " overruns the range end ", end));
        }
        const uint64_t bytes = uint64_t{c.num_slots()} * row_bytes;
        if (c.keys().size() != bytes || c.values().size() != bytes) {
          return Mismatch(
              cw, absl::StrCat("keys/values ", c.keys().size(), "/",
                               c.values().size(), " bytes, want ", bytes));
        }
        if (2 * bytes > max_chunk && c.num_slots() > 1) {
          return Mismatch(
              cw, absl::StrCat("K+V of ", 2 * bytes,
                               " bytes exceeds max_chunk_bytes ", max_chunk));
        }
        if (c.positions_size() != static_cast<int>(c.num_slots())) {
          return Mismatch(cw,
                          absl::StrCat(c.positions_size(), " positions for ",
                                       c.num_slots(), " slots"));
        }
        for (uint32_t i = 0; i < c.num_slots(); ++i) {
          const uint64_t p = c.positions(i);
          if (p >= position_limit) {
            return Mismatch(
                cw, absl::StrCat("position ", p, " >= ", position_limit));
          }
          if (c.keys().compare(
                  i * row_bytes, row_bytes,
                  pattern.Row(KvKind::kKeys, layer, p, head.kv_head())) != 0) {
            return Mismatch(cw, absl::StrCat("slot ", slot + i, " (token ", p,
                                             "): key row differs"));
          }
          if (c.values().compare(i * row_bytes, row_bytes,
                                 pattern.Row(KvKind::kValues, layer, p,
                                             head.kv_head())) != 0) {
            return Mismatch(cw, absl::StrCat("slot ", slot + i, " (token ", p,
                                             "): value row differs"));
          }
          data.positions.push_back(p);
        }
        data.keys += c.keys();
        data.values += c.values();
        slot += c.num_slots();
      }
    }
    out.push_back(std::move(data));
  }
  if (next != chunks.size()) {
    return Mismatch("stream", absl::StrCat(chunks.size() - next,
                                           " chunks beyond the request"));
  }
  return out;
}

v1::FetchClustersRequest FetchRequestFor(const v1::SessionResult& result,
                                         uint32_t layer,
                                         uint32_t max_chunk_bytes) {
  v1::FetchClustersRequest request;
  request.set_session_id(result.session_id());
  request.set_layer(layer);
  request.set_layout_epoch(result.layout_epoch());
  request.set_max_chunk_bytes(max_chunk_bytes);
  for (const v1::KvHeadResult& head : result.heads()) {
    if (head.retrieval().empty()) continue;
    v1::HeadSlots* hs = request.add_heads();
    hs->set_kv_head(head.kv_head());
    *hs->mutable_ranges() = head.retrieval();
  }
  return request;
}

}  // namespace wavekv::testing
