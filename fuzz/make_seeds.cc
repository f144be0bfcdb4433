// Writes the seed corpora of the fuzz targets from valid messages:
//   make_seeds OUT_DIR   ->  OUT_DIR/{request,wave_index,record}/*
// The committed corpora under fuzz/corpus/ are its output
// (`bazel run //fuzz:make_seeds -- $PWD/fuzz/corpus`). Deterministic: the
// same bytes on every run.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "fuzz/request_script.h"
#include "index/dtype.h"
#include "index/wave_index.h"
#include "index/wave_index_codec.h"
#include "kvstore/storage/record.h"
#include "kvstore/storage/session_records.h"
#include "proto/wavekv/v1/wavekv.pb.h"

namespace wavekv::fuzz {
namespace {

constexpr uint64_t kClusterSlotBase = uint64_t{1} << 48;

// Deterministic values in [-1, 1).
class Values {
 public:
  explicit Values(uint64_t seed) : state_(seed * 0x9e3779b97f4a7c15ull + 1) {}
  float Next() {
    state_ = state_ * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>((state_ >> 40) & 0xffff) / 32768.0f - 1.0f;
  }

 private:
  uint64_t state_;
};

std::string DTypeBytesOf(v1::DType dtype, const std::vector<float>& floats) {
  const DType d = dtype == v1::DTYPE_FP16   ? DType::kFp16
                  : dtype == v1::DTYPE_BF16 ? DType::kBf16
                                            : DType::kFp32;
  std::string out(floats.size() * DTypeBytes(d), '\0');
  EncodeFromFloat(d, floats.data(), floats.size(),
                  reinterpret_cast<uint8_t*>(out.data()));
  return out;
}

struct Shape {
  uint32_t layers, q_heads, kv_heads, head_dim;
  v1::DType dtype;
};

std::string Serialize(const google::protobuf::Message& m) {
  std::string out;
  m.SerializeToString(&out);
  return out;
}

ScriptStep Step(RequestOp op, const google::protobuf::Message& m,
                int tenant = 0) {
  return ScriptStep{op, tenant, Serialize(m)};
}

ScriptStep Create(const Shape& s, bool small_index, int tenant = 0) {
  v1::CreateSessionRequest r;
  r.mutable_shape()->set_num_layers(s.layers);
  r.mutable_shape()->set_num_q_heads(s.q_heads);
  r.mutable_shape()->set_num_kv_heads(s.kv_heads);
  r.mutable_shape()->set_head_dim(s.head_dim);
  r.mutable_shape()->set_dtype(s.dtype);
  if (small_index) {
    v1::IndexOptions* o = r.mutable_index_options();
    o->set_sink_tokens(4);
    o->set_recent_tokens(8);
    o->set_segment_tokens(64);
    o->set_cluster_size(4);
    o->set_kmeans_iterations(2);
    o->set_update_tokens(16);
    o->set_retrieval_fraction(0.25f);
    o->set_estimation_fraction(0.5f);
  }
  r.set_label("fuzz seed");
  return Step(RequestOp::kCreateSession, r, tenant);
}

// Tokens [start, start + n) of every layer in `layers`.
ScriptStep Append(const Shape& s, const std::string& id,
                  std::vector<uint32_t> layers, uint64_t start, uint32_t n,
                  uint64_t seed, int tenant = 0) {
  v1::AppendRequest r;
  r.set_session_id(id);
  Values values(seed);
  for (uint32_t layer : layers) {
    v1::LayerKV* kv = r.add_layers();
    kv->set_layer(layer);
    kv->set_start_token(start);
    kv->set_num_tokens(n);
    std::vector<float> k(static_cast<size_t>(n) * s.kv_heads * s.head_dim);
    std::vector<float> v(k.size());
    for (float& x : k) x = values.Next();
    for (float& x : v) x = values.Next();
    kv->set_keys(DTypeBytesOf(s.dtype, k));
    kv->set_values(DTypeBytesOf(s.dtype, v));
  }
  return Step(RequestOp::kAppend, r, tenant);
}

ScriptStep Retrieve(const Shape& s, std::vector<std::string> ids,
                    uint32_t layer, v1::RetrieveMode mode, bool include_kv,
                    int tenant = 0) {
  v1::RetrieveRequest r;
  r.set_layer(layer);
  r.set_mode(mode);
  r.set_include_kv(include_kv);
  r.set_exact_if_not_ready(true);
  Values values(layer + 7);
  for (const std::string& id : ids) {
    v1::SessionQuery* q = r.add_queries();
    q->set_session_id(id);
    std::vector<float> query(static_cast<size_t>(s.q_heads) * s.head_dim);
    for (float& x : query) x = values.Next();
    q->set_query(DTypeBytesOf(v1::DTYPE_FP32, query));
  }
  return Step(RequestOp::kRetrieve, r, tenant);
}

ScriptStep Fetch(const std::string& id, uint32_t layer, uint64_t first_slot,
                 uint32_t num_slots, uint32_t kv_heads, int tenant = 0) {
  v1::FetchClustersRequest r;
  r.set_session_id(id);
  r.set_layer(layer);
  for (uint32_t h = 0; h < kv_heads; ++h) {
    v1::HeadSlots* head = r.add_heads();
    head->set_kv_head(h);
    v1::SlotRange* range = head->add_ranges();
    range->set_first_slot(first_slot);
    range->set_num_slots(num_slots);
  }
  r.set_max_chunk_bytes(4096);
  return Step(RequestOp::kFetchClusters, r, tenant);
}

template <typename Request>
ScriptStep ById(RequestOp op, const std::string& id, int tenant = 0) {
  Request r;
  r.set_session_id(id);
  return Step(op, r, tenant);
}

ScriptStep List(uint32_t page_size, const std::string& token, int tenant) {
  v1::ListSessionsRequest r;
  r.set_page_size(page_size);
  r.set_page_token(token);
  return Step(RequestOp::kListSessions, r, tenant);
}

std::vector<std::pair<std::string, std::vector<ScriptStep>>> RequestSeeds() {
  const Shape fp32{2, 2, 1, 16, v1::DTYPE_FP32};
  const Shape fp16{1, 4, 2, 64, v1::DTYPE_FP16};
  const Shape bf16{1, 2, 2, 32, v1::DTYPE_BF16};
  std::vector<std::pair<std::string, std::vector<ScriptStep>>> seeds;

  // A whole session life: prefill both layers (an index gets built), decode
  // steps, EXACT and WAVE retrieval, fetches of token and cluster slots.
  seeds.push_back(
      {"lifecycle_fp32",
       {Create(fp32, true), Append(fp32, "#0", {0, 1}, 0, 48, 1),
        Append(fp32, "#0", {0, 1}, 48, 1, 2),
        Retrieve(fp32, {"#0"}, 0, v1::RETRIEVE_MODE_EXACT, true),
        Retrieve(fp32, {"#0"}, 1, v1::RETRIEVE_MODE_WAVE, false),
        Fetch("#0", 0, 0, 4, 1), Fetch("#0", 1, kClusterSlotBase, 8, 1),
        ById<v1::GetSessionRequest>(RequestOp::kGetSession, "#0"),
        List(0, "", 0),
        ById<v1::CloseSessionRequest>(RequestOp::kCloseSession, "#0")}});

  // GQA with 2-byte dtypes, and a batch of two sessions.
  seeds.push_back(
      {"gqa_fp16_bf16_batch",
       {Create(fp16, true), Create(bf16, true),
        Append(fp16, "#0", {0}, 0, 40, 3), Append(bf16, "#1", {0}, 0, 40, 4),
        Retrieve(fp16, {"#0"}, 0, v1::RETRIEVE_MODE_WAVE, true),
        Retrieve(bf16, {"#1"}, 0, v1::RETRIEVE_MODE_EXACT, false),
        Fetch("#0", 0, kClusterSlotBase, 4, 2), List(1, "", 0),
        ById<v1::CloseSessionRequest>(RequestOp::kCloseSession, "#1"),
        ById<v1::GetSessionRequest>(RequestOp::kGetSession, "#1")}});

  // Another tenant tries every RPC on alice's session.
  seeds.push_back(
      {"foreign_tenant",
       {Create(fp32, false), Append(fp32, "#0", {0}, 0, 8, 5),
        Append(fp32, "#0", {1}, 0, 8, 6, 1),
        Retrieve(fp32, {"#0"}, 0, v1::RETRIEVE_MODE_EXACT, true, 1),
        Fetch("#0", 0, 0, 8, 1, 1),
        ById<v1::GetSessionRequest>(RequestOp::kGetSession, "#0", 1),
        List(0, "", 1),
        ById<v1::CloseSessionRequest>(RequestOp::kCloseSession, "#0", 1),
        ById<v1::GetSessionRequest>(RequestOp::kGetSession, "#0", 0)}});

  // Requests that must fail: out-of-order append, bad layer, unknown id.
  {
    std::vector<ScriptStep> bad = {
        Create(fp32, false), Append(fp32, "#0", {0}, 5, 4, 7),
        Append(fp32, "#0", {2}, 0, 4, 8), Append(fp32, "#0", {0, 0}, 0, 4, 9),
        Append(fp32, "no-such-id", {0}, 0, 4, 10)};
    bad.push_back(Retrieve(fp32, {"#0"}, 3, v1::RETRIEVE_MODE_WAVE, false));
    bad.push_back(
        Retrieve(fp32, {"#0", "#0"}, 0, v1::RETRIEVE_MODE_EXACT, false));
    bad.push_back(Fetch("#0", 0, 100, 4, 1));
    bad.push_back(List(5000, "bogus-token", 0));
    seeds.push_back({"rejected_requests", bad});
  }
  return seeds;
}

std::vector<std::pair<std::string, std::string>> WaveIndexSeeds() {
  std::vector<std::pair<std::string, std::string>> seeds;
  seeds.push_back({"empty_d16", EncodeWaveIndex(WaveIndex(16))});
  for (const auto& [name, d, tokens, cluster] :
       std::vector<std::tuple<std::string, size_t, size_t, uint32_t>>{
           {"d16_t64", 16, 64, 4}, {"d8_t40", 8, 40, 8}}) {
    WaveIndexParams params;
    params.segment_tokens = 64;
    params.cluster_size = cluster;
    params.update_tokens = 16;
    Values values(d + tokens);
    std::vector<float> k(d * tokens), v(d * tokens);
    for (float& x : k) x = values.Next();
    for (float& x : v) x = values.Next();
    KvRows rows{DType::kFp32,
                d,
                tokens,
                reinterpret_cast<const uint8_t*>(k.data()),
                reinterpret_cast<const uint8_t*>(v.data()),
                0};
    WaveIndex index(d);
    auto layout = index.AddBlock(params, 4, rows);
    if (!layout.ok()) {
      std::fprintf(stderr, "make_seeds: %s\n",
                   layout.status().ToString().c_str());
      std::exit(1);
    }
    seeds.push_back({name, EncodeWaveIndex(index)});
  }
  return seeds;
}

// record_fuzzer inputs: mode byte 0 + a whole record, or mode 1..3 + three
// parameter bytes + a payload (see record_fuzzer.cc).
std::vector<std::pair<std::string, std::string>> RecordSeeds() {
  std::vector<std::pair<std::string, std::string>> seeds;
  SessionMeta meta;
  meta.session_id = "0123456789abcdef0123456789abcdef";
  meta.tenant = "alice";
  meta.options.shape = ModelShape{2, 4, 2, 16, DType::kFp16};
  meta.options.label = "fuzz seed";
  meta.max_tokens = 4096;
  meta.created_unix_ms = 1700000000000;
  const std::string meta_payload = EncodeSessionMeta(meta);

  // Two tokens of a layer with token_bytes = 2 kv heads * 16 * 2 bytes.
  const uint64_t token_bytes = 64;
  std::string keys(2 * token_bytes, '\x11'), values(2 * token_bytes, '\x22');
  const std::string chunk_payload =
      EncodeKvChunk(KvChunkView{1, 40, 2, keys, values});

  WaveIndexParams params;
  params.segment_tokens = 64;
  params.cluster_size = 4;
  params.update_tokens = 16;
  Values v(3);
  std::vector<float> k(16 * 24), val(16 * 24);
  for (float& x : k) x = v.Next();
  for (float& x : val) x = v.Next();
  KvRows rows{DType::kFp32,
              16,
              24,
              reinterpret_cast<const uint8_t*>(k.data()),
              reinterpret_cast<const uint8_t*>(val.data()),
              0};
  WaveIndex head0(16), head1(16);
  if (!head0.AddBlock(params, 4, rows).ok()) std::exit(1);
  const std::string index_payload = EncodeLayerIndex(2, {&head0, &head1});

  const std::string p0("\0", 1);
  seeds.push_back({"raw_named_value",
                   p0 + EncodeRecord(RecordKind::kNamedValue, "server")});
  seeds.push_back({"raw_session_meta",
                   p0 + EncodeRecord(RecordKind::kSessionMeta, meta_payload)});
  seeds.push_back(
      {"raw_kv_chunk", p0 + EncodeRecord(RecordKind::kKvChunk, chunk_payload)});
  seeds.push_back(
      {"payload_session_meta", std::string("\x01\0\0\0", 4) + meta_payload});
  // token_bytes = 1 + 63.
  seeds.push_back(
      {"payload_kv_chunk", std::string("\x02\x3f\0\0", 4) + chunk_payload});
  // layer 2, 2 kv heads, head_dim 8 << 1.
  seeds.push_back({"payload_layer_index",
                   std::string("\x03\x02\x01\x01", 4) + index_payload});
  return seeds;
}

void Write(const std::filesystem::path& path, const std::string& bytes) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "make_seeds: cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

}  // namespace
}  // namespace wavekv::fuzz

int main(int argc, char** argv) {
  using namespace wavekv::fuzz;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out(argv[1]);
  int files = 0;
  for (const auto& [name, steps] : RequestSeeds()) {
    Write(out / "request" / name, EncodeScript(steps));
    ++files;
  }
  for (const auto& [name, bytes] : WaveIndexSeeds()) {
    Write(out / "wave_index" / name, bytes);
    ++files;
  }
  for (const auto& [name, bytes] : RecordSeeds()) {
    Write(out / "record" / name, bytes);
    ++files;
  }
  std::printf("make_seeds: wrote %d files under %s\n", files, argv[1]);
  return 0;
}
