#include "transport/server_options.h"

#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace wavekv {
namespace {

constexpr uint64_t kMinMessageBytes = 64u << 10;
constexpr uint64_t kMaxMessageBytes = std::numeric_limits<int32_t>::max();
constexpr uint64_t kMinMemoryBudgetBytes = 1u << 20;
constexpr int64_t kMaxDrainTimeoutMs = 3600 * 1000;

absl::Status BadAddress(absl::string_view field, absl::string_view address,
                        absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": expected HOST:PORT, got '", address, "' (", why, ")"));
}

}  // namespace

absl::Status ValidateHostPort(absl::string_view field,
                              absl::string_view address) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) {
    return BadAddress(field, address, "no port");
  }
  const absl::string_view host = address.substr(0, colon);
  const absl::string_view port = address.substr(colon + 1);
  if (host.empty()) return BadAddress(field, address, "no host");
  if (host.front() == '[' ? host.back() != ']'
                          : host.find(':') != absl::string_view::npos) {
    return BadAddress(field, address, "IPv6 hosts need brackets");
  }
  for (char c : host) {
    if (absl::ascii_isspace(c)) return BadAddress(field, address, "space");
  }
  uint32_t port_number = 0;
  if (port.empty() ||
      !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &port_number) || port_number > 65535) {
    return BadAddress(field, address, "port must be 0..65535");
  }
  return absl::OkStatus();
}

int32_t GpuDeviceOption(absl::string_view gpu) {
  if (gpu == "off") return kGpuOff;
  if (gpu == "auto") return kGpuAuto;
  int32_t device = 0;
  if (!absl::SimpleAtoi(gpu, &device) || device < 0) return -3;
  return device;
}

absl::Status ServerOptions::Validate() const {
  RETURN_IF_ERROR(ValidateHostPort("listen", listen));
  if (!metrics_listen.empty()) {
    RETURN_IF_ERROR(ValidateHostPort("metrics_listen", metrics_listen));
  }
  if (data_dir.empty()) {
    return absl::InvalidArgumentError("data_dir: must not be empty");
  }
  // The engine checks this too, under its own field name.
  if (memory_budget_bytes < kMinMemoryBudgetBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory_budget: ", memory_budget_bytes,
                     " bytes is less than the minimum of 1MiB"));
  }
  if (max_message_bytes < kMinMessageBytes ||
      max_message_bytes > kMaxMessageBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_message_bytes: ", max_message_bytes, " is out of range ",
        kMinMessageBytes, "..", kMaxMessageBytes));
  }
  if (max_inline_kv_bytes > max_message_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_inline_kv_bytes: ", max_inline_kv_bytes,
                     " exceeds max_message_bytes ", max_message_bytes,
                     " (inline K/V could never be sent)"));
  }
  if (drain_timeout_ms < 0 || drain_timeout_ms > kMaxDrainTimeoutMs) {
    return absl::InvalidArgumentError(
        absl::StrCat("drain_timeout_ms: ", drain_timeout_ms,
                     " is out of range 0..", kMaxDrainTimeoutMs));
  }
  RETURN_IF_ERROR(ToTlsFiles().Validate());
  if (GpuDeviceOption(gpu) < kGpuAuto) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpu: \"", gpu, "\" is not off, auto or a device number"));
  }
  return ToEngineOptions().Validate();
}

ServerTlsFiles ServerOptions::ToTlsFiles() const {
  ServerTlsFiles files;
  files.cert_file = tls_cert;
  files.key_file = tls_key;
  files.client_ca_file = tls_client_ca;
  return files;
}

EngineOptions ServerOptions::ToEngineOptions() const {
  EngineOptions options;
  options.memory_budget_bytes = memory_budget_bytes;
  options.max_sessions = max_sessions;
  options.max_sessions_per_tenant = max_sessions_per_tenant;
  options.max_tokens_per_session = max_tokens_per_session;
  options.max_inline_kv_bytes = max_inline_kv_bytes;
  options.max_batch_sessions = max_batch_sessions;
  options.gpu_device = GpuDeviceOption(gpu);
  return options;
}

}  // namespace wavekv
