// NaN and infinity in appended K/V: they would poison a layer's index for
// good (centroids, value sums, tail statistics), so Append refuses them by
// default (EngineOptions::check_finite_kv) with an error naming where.
// Thread-safe (pure functions).
#ifndef WAVEKV_KVSTORE_FINITE_CHECK_H_
#define WAVEKV_KVSTORE_FINITE_CHECK_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvstore/types.h"

namespace wavekv {

// Index of the first element of `bytes` (elements of `dtype`) whose
// exponent bits are all ones (NaN or infinity), or -1.
int64_t FirstNonFinite(absl::Span<const uint8_t> bytes, DType dtype);

// InvalidArgument "layers[i].keys: non-finite value (NaN or infinity) at
// token T, kv head H, element E" for the first one found; OK otherwise.
// REQUIRES: `layers` passed Session::ValidateAppend (sizes match `shape`).
absl::Status CheckFiniteKv(absl::Span<const LayerAppend> layers,
                           const ModelShape& shape);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_FINITE_CHECK_H_
