#include "fuzz/request_script.h"

#include <algorithm>

namespace wavekv::fuzz {

std::string EncodeScript(const std::vector<ScriptStep>& steps) {
  std::string out;
  for (const ScriptStep& step : steps) {
    const size_t size = std::min<size_t>(step.message.size(), 0xffff);
    out.push_back(static_cast<char>(static_cast<uint8_t>(step.op) |
                                    (step.tenant == 0 ? 0 : 8)));
    out.push_back(static_cast<char>(size & 0xff));
    out.push_back(static_cast<char>(size >> 8));
    out.append(step.message, 0, size);
  }
  return out;
}

std::vector<ScriptStep> DecodeScript(absl::string_view bytes) {
  std::vector<ScriptStep> steps;
  size_t pos = 0;
  while (pos < bytes.size() &&
         steps.size() < static_cast<size_t>(kMaxScriptSteps)) {
    const uint8_t op = static_cast<uint8_t>(bytes[pos++]);
    size_t size = 0;
    if (pos < bytes.size()) size = static_cast<uint8_t>(bytes[pos++]);
    if (pos < bytes.size()) {
      size |= static_cast<size_t>(static_cast<uint8_t>(bytes[pos++])) << 8;
    }
    size = std::min(size, bytes.size() - pos);
    ScriptStep step;
    step.op = static_cast<RequestOp>((op & 7) % kNumRequestOps);
    step.tenant = (op >> 3) & 1;
    step.message = std::string(bytes.substr(pos, size));
    pos += size;
    steps.push_back(std::move(step));
  }
  return steps;
}

const char* TenantName(int tenant) { return tenant == 0 ? "alice" : "bob"; }

}  // namespace wavekv::fuzz
