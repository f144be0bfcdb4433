// The input format of request_fuzzer: a script of wavekv.v1 requests run in
// order against one fresh in-memory engine. Shared by the fuzzer and the
// seed generator (make_seeds).
//
// Script bytes: a sequence of steps, each
//   u8 op      bits 0..2: the RPC (RequestOp; 7 wraps to 0), bit 3: the
//              tenant (0 = "alice", 1 = "bob"), other bits ignored
//   u16 size   little-endian length of the message (cut to what is left)
//   bytes      the serialized request message of that RPC
// Steps past kMaxScriptSteps are ignored. Session ids of the form "#k"
// (k = 0..9) name the k-th session the script created (modulo their number),
// so scripts can address sessions whose ids the engine picks at run time.
//
// Thread-safe: pure functions.
#ifndef WAVEKV_FUZZ_REQUEST_SCRIPT_H_
#define WAVEKV_FUZZ_REQUEST_SCRIPT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace wavekv::fuzz {

enum class RequestOp : uint8_t {
  kCreateSession = 0,
  kAppend = 1,
  kRetrieve = 2,
  kFetchClusters = 3,
  kGetSession = 4,
  kListSessions = 5,
  kCloseSession = 6,
};
inline constexpr int kNumRequestOps = 7;
inline constexpr int kMaxScriptSteps = 32;

struct ScriptStep {
  RequestOp op = RequestOp::kCreateSession;
  int tenant = 0;       // 0 or 1
  std::string message;  // serialized request
};

std::string EncodeScript(const std::vector<ScriptStep>& steps);
// Never fails: every byte string is some script (possibly empty).
std::vector<ScriptStep> DecodeScript(absl::string_view bytes);

const char* TenantName(int tenant);

}  // namespace wavekv::fuzz

#endif  // WAVEKV_FUZZ_REQUEST_SCRIPT_H_
