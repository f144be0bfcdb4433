// WAVE retrieval planning of a Retrieve batch on the engine's GPU backend
// (EngineGpu): the (session, kv head) pairs of the batch, grouped by shape
// and zone fractions, one GPU call per group. Internal to the engine
// (retrieve.cc); the caller holds every session's layer reader lock.
//
// Thread-safe (EngineGpu serialises the device work).
#ifndef WAVEKV_KVSTORE_WAVE_GPU_H_
#define WAVEKV_KVSTORE_WAVE_GPU_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "kvstore/gpu/engine_gpu.h"
#include "kvstore/session.h"
#include "kvstore/types.h"

namespace wavekv {

// Fills results[i].heads[h] (retrieval zone and tails, as PlanWaveHead) for
// every (i, h) of `wave_heads`. Returns false if a GPU call failed (counted
// and logged by `gpu`): the caller then plans them all on the CPU, which
// overwrites whatever was filled.
bool PlanWaveHeadsOnGpu(
    EngineGpu& gpu, absl::Span<const RetrieveQuery> queries,
    absl::Span<const std::shared_ptr<Session>> sessions,
    absl::Span<const LayerView* const> views,
    absl::Span<const std::pair<size_t, uint32_t>> wave_heads,
    std::vector<SessionResult>& results);

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_WAVE_GPU_H_
