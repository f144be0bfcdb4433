// CRC-32C (Castagnoli), the checksum of every stored record (record.h).
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise;
// both give the same value.
//
// Thread-safe: pure functions.
#ifndef WAVEKV_KVSTORE_STORAGE_CRC32C_H_
#define WAVEKV_KVSTORE_STORAGE_CRC32C_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace wavekv {

// CRC-32C of `data` continued from `crc` (0 for a fresh checksum), so that
// Crc32c(Crc32c(0, a), b) == Crc32c(0, a + b).
uint32_t Crc32c(uint32_t crc, absl::string_view data);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_STORAGE_CRC32C_H_
