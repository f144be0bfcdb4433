// Byte sizes as people write them in flags and config files: "8GiB",
// "512MiB", "64KiB", "1GB", "4096" or "4096B".
//
// Units: B; binary KiB, MiB, GiB, TiB (powers of 1024); decimal KB/kB, MB,
// GB, TB (powers of 1000). The number is a non-negative integer; spaces
// between number and unit are allowed. Anything else, or a value that does
// not fit in 64 bits, is InvalidArgument.
//
// Thread-safe: pure functions.
#ifndef WAVEKV_TRANSPORT_BYTE_SIZE_H_
#define WAVEKV_TRANSPORT_BYTE_SIZE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace wavekv {

absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

// The shortest exact spelling: "8GiB", "1536MiB", "1000" (no unit when no
// binary unit divides it).
std::string FormatByteSize(uint64_t bytes);

// A flag type for absl flags: --memory_budget=8GiB.
struct ByteSize {
  uint64_t bytes = 0;
};

// absl flags hooks (found by ADL).
bool AbslParseFlag(absl::string_view text, ByteSize* size, std::string* error);
std::string AbslUnparseFlag(ByteSize size);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_BYTE_SIZE_H_
