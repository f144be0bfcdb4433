// Byte encoding of a WaveIndex, so a store can persist an index and restore
// it after a restart instead of re-clustering (which costs seconds per
// (layer, kv head) at 128K tokens on CPU).
//
// Format (little-endian): magic "WKVIDX", u16 version (1), u16 reserved,
// u32 head_dim, u64 begin_token, u64 end_token, u64 num_clusters,
// u64 num_slots, then f32 centroids [k][d], f32 value sums [k][d], u32 sizes
// [k], u64 slot tokens [num_slots]. Integrity checks beyond structure
// (checksums) are the store's job.
//
// Thread-safe: pure functions.
#ifndef WAVEKV_INDEX_WAVE_INDEX_CODEC_H_
#define WAVEKV_INDEX_WAVE_INDEX_CODEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "index/wave_index.h"

namespace wavekv {

std::string EncodeWaveIndex(const WaveIndex& index);

// DataLoss if the bytes are truncated, have trailing data, a wrong magic or
// version, or describe an inconsistent index (see WaveIndex::FromParts).
absl::StatusOr<WaveIndex> DecodeWaveIndex(absl::string_view bytes);

}  // namespace wavekv

#endif  // WAVEKV_INDEX_WAVE_INDEX_CODEC_H_
