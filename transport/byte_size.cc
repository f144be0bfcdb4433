#include "transport/byte_size.h"

#include <array>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace wavekv {
namespace {

struct Unit {
  absl::string_view suffix;
  uint64_t multiplier;
};

constexpr uint64_t kKiB = 1024;
constexpr std::array<Unit, 10> kUnits = {{
    {"B", 1},
    {"KiB", kKiB},
    {"MiB", kKiB* kKiB},
    {"GiB", kKiB* kKiB* kKiB},
    {"TiB", kKiB* kKiB* kKiB* kKiB},
    {"KB", 1000},
    {"kB", 1000},
    {"MB", 1000 * 1000},
    {"GB", 1000ull * 1000 * 1000},
    {"TB", 1000ull * 1000 * 1000 * 1000},
}};

absl::Status BadSize(absl::string_view text) {
  return absl::InvalidArgumentError(absl::StrCat(
      "expected a byte size such as 8GiB, 512MiB or 4096 (units B, KiB, MiB, "
      "GiB, TiB, KB, MB, GB, TB), got '",
      text, "'"));
}

}  // namespace

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text) {
  const absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  size_t digits = 0;
  while (digits < trimmed.size() && absl::ascii_isdigit(trimmed[digits])) {
    ++digits;
  }
  if (digits == 0) return BadSize(text);
  uint64_t number = 0;
  for (size_t i = 0; i < digits; ++i) {
    const uint64_t d = static_cast<uint64_t>(trimmed[i] - '0');
    if (number > (std::numeric_limits<uint64_t>::max() - d) / 10) {
      return absl::InvalidArgumentError(
          absl::StrCat("byte size '", text, "' does not fit in 64 bits"));
    }
    number = number * 10 + d;
  }
  const absl::string_view suffix =
      absl::StripLeadingAsciiWhitespace(trimmed.substr(digits));
  uint64_t multiplier = 0;
  if (suffix.empty()) {
    multiplier = 1;
  } else {
    for (const Unit& unit : kUnits) {
      if (suffix == unit.suffix) multiplier = unit.multiplier;
    }
  }
  if (multiplier == 0) return BadSize(text);
  if (number > std::numeric_limits<uint64_t>::max() / multiplier) {
    return absl::InvalidArgumentError(
        absl::StrCat("byte size '", text, "' does not fit in 64 bits"));
  }
  return number * multiplier;
}

std::string FormatByteSize(uint64_t bytes) {
  if (bytes == 0) return "0";
  for (int i = 4; i >= 1; --i) {
    const Unit& unit = kUnits[i];
    if (bytes % unit.multiplier == 0) {
      return absl::StrCat(bytes / unit.multiplier, unit.suffix);
    }
  }
  return absl::StrCat(bytes);
}

bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error) {
  absl::StatusOr<uint64_t> bytes = ParseByteSize(text);
  if (!bytes.ok()) {
    *error = std::string(bytes.status().message());
    return false;
  }
  size->bytes = *bytes;
  return true;
}

std::string AbslUnparseFlag(ByteSize size) {
  return FormatByteSize(size.bytes);
}

}  // namespace wavekv
