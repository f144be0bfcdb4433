// EngineImpl::FetchSlots: validates a whole fetch request, then streams its
// slot ranges (token-order or cluster slots, types.h) in bounded chunks. Each
// chunk is copied under the layer's reader lock; the sink runs with no lock
// held.
#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "index/dtype.h"
#include "kvstore/engine_impl.h"

namespace wavekv {
namespace {

constexpr uint32_t kDefaultChunkBytes = 1u << 20;
constexpr uint32_t kMinChunkBytes = 4u << 10;
constexpr uint32_t kMaxChunkBytes = 4u << 20;

// The checks that do not depend on the layer's state.
absl::Status ValidateFetchShape(const ModelShape& shape,
                                const FetchRequest& request) {
  if (request.layer >= shape.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer: ", request.layer,
                                                   " is out of range 0..",
                                                   shape.num_layers - 1));
  }
  if (request.max_chunk_bytes != 0 &&
      (request.max_chunk_bytes < kMinChunkBytes ||
       request.max_chunk_bytes > kMaxChunkBytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_chunk_bytes: ", request.max_chunk_bytes,
                     " is outside ", kMinChunkBytes, "..", kMaxChunkBytes,
                     " (0 means ", kDefaultChunkBytes, ")"));
  }
  if (request.heads.empty()) {
    return absl::InvalidArgumentError("heads: at least one entry is required");
  }
  for (size_t i = 0; i < request.heads.size(); ++i) {
    const HeadSlots& hs = request.heads[i];
    if (hs.kv_head >= shape.num_kv_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("heads[", i, "].kv_head: ", hs.kv_head,
                       " is out of range 0..", shape.num_kv_heads - 1));
    }
    if (hs.ranges.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "heads[", i, "].ranges: at least one range is required"));
    }
    for (size_t j = 0; j < hs.ranges.size(); ++j) {
      if (hs.ranges[j].num_slots < 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "heads[", i, "].ranges[", j, "].num_slots: 0 is less than 1"));
      }
    }
  }
  return absl::OkStatus();
}

// Whether `range` can be read from `head` now: cluster slots below the
// cluster store's end, or token slots that are stored and not dropped.
bool Readable(const HeadStore& head, const SlotRange& range) {
  if (range.first_slot >= kClusterSlotBase) {
    const uint64_t first = range.first_slot - kClusterSlotBase;
    const uint64_t stored = head.clusters.num_slots();
    return first <= stored && range.num_slots <= stored - first;
  }
  return head.tokens.Holds(range.first_slot, range.num_slots);
}

// The checks against the layer as it is now. Within one layout epoch,
// cluster slots only grow and token slots are only ever dropped by index
// builds, so each chunk is checked again when it is copied.
absl::Status ValidateFetchState(const FetchRequest& request,
                                const LayerView& layer) {
  if (request.layout_epoch != 0 && request.layout_epoch != layer.layout_epoch) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layout_epoch: ", request.layout_epoch,
        " is not the current layout epoch of layer ", request.layer, " (",
        layer.layout_epoch, "); retrieve again"));
  }
  for (size_t i = 0; i < request.heads.size(); ++i) {
    const HeadSlots& hs = request.heads[i];
    const HeadStore& head = layer.heads[hs.kv_head];
    for (size_t j = 0; j < hs.ranges.size(); ++j) {
      const SlotRange& r = hs.ranges[j];
      if (Readable(head, r)) continue;
      const std::string where = absl::StrCat("heads[", i, "].ranges[", j, "]");
      if (r.first_slot >= kClusterSlotBase) {
        return absl::FailedPreconditionError(absl::StrCat(
            where, ": first_slot ", r.first_slot, " + num_slots ", r.num_slots,
            " reaches past the ", head.clusters.num_slots(),
            " cluster slots (from ", kClusterSlotBase, ") of kv head ",
            hs.kv_head, " of layer ", request.layer));
      }
      const uint64_t stored = head.tokens.num_slots();
      if (r.first_slot > stored || r.num_slots > stored - r.first_slot) {
        return absl::FailedPreconditionError(absl::StrCat(
            where, ": first_slot ", r.first_slot, " + num_slots ", r.num_slots,
            " reaches past the ", stored, " slots of kv head ", hs.kv_head,
            " of layer ", request.layer));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          where, ": slots [", r.first_slot, ", ", r.first_slot + r.num_slots,
          ") of kv head ", hs.kv_head, " of layer ", request.layer,
          " hold tokens that moved into the wave index (tokens [",
          layer.indexed.begin, ", ", layer.indexed.end,
          ") are clustered now); retrieve again"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status EngineImpl::FetchSlots(
    const TenantId& tenant, const FetchRequest& request,
    const std::function<bool(SlotChunk&&)>& sink) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> session,
                   sessions_.Find(tenant, request.session_id));
  const ModelShape& shape = session->shape();
  RETURN_IF_ERROR(ValidateFetchShape(shape, request));
  // Resident for the whole fetch (a spilled session comes back first).
  ASSIGN_OR_RETURN(Session::ResidentHold resident, spiller_.Hold(session));

  absl::Status state_status;
  uint64_t epoch = 0;
  RETURN_IF_ERROR(session->ReadLayer(
      request.layer, "session_id", [&](const LayerView& layer) {
        state_status = ValidateFetchState(request, layer);
        epoch = layer.layout_epoch;
      }));
  RETURN_IF_ERROR(state_status);

  const size_t row_bytes = size_t{shape.head_dim} * DTypeBytes(shape.dtype);
  const uint32_t chunk_bytes = request.max_chunk_bytes == 0
                                   ? kDefaultChunkBytes
                                   : request.max_chunk_bytes;
  // >= 1: a slot's K+V is at most 2 * 512 * 4 = 4 KiB = kMinChunkBytes.
  const uint64_t chunk_slots =
      std::max<uint64_t>(1, chunk_bytes / (2 * row_bytes));
  uint64_t chunks_sent = 0;
  for (const HeadSlots& hs : request.heads) {
    for (const SlotRange& range : hs.ranges) {
      for (uint64_t done = 0; done < range.num_slots;) {
        const uint64_t n =
            std::min<uint64_t>(chunk_slots, range.num_slots - done);
        SlotChunk chunk;
        chunk.kv_head = hs.kv_head;
        chunk.cluster_id = range.cluster_id;
        chunk.first_slot = range.first_slot + done;
        chunk.num_slots = static_cast<uint32_t>(n);
        bool layout_changed = false;
        bool moved = false;
        RETURN_IF_ERROR(session->ReadLayer(
            request.layer, "session_id", [&](const LayerView& layer) {
              if (layer.layout_epoch != epoch) {
                layout_changed = true;
                return;
              }
              const HeadStore& head = layer.heads[hs.kv_head];
              const SlotRange piece{range.cluster_id, chunk.first_slot,
                                    chunk.num_slots};
              if (!Readable(head, piece)) {
                moved = true;
                return;
              }
              chunk.keys.resize(n * row_bytes);
              chunk.values.resize(n * row_bytes);
              chunk.positions.resize(n);
              auto* keys = reinterpret_cast<uint8_t*>(chunk.keys.data());
              auto* values = reinterpret_cast<uint8_t*>(chunk.values.data());
              if (piece.first_slot >= kClusterSlotBase) {
                head.clusters.CopyOut(piece.first_slot - kClusterSlotBase, n,
                                      keys, values, chunk.positions.data());
              } else {
                head.tokens.CopyOut(piece.first_slot, n, keys, values,
                                    chunk.positions.data());
              }
            }));
        if (layout_changed) {
          return absl::FailedPreconditionError(absl::StrCat(
              "layout_epoch: the layout of layer ", request.layer,
              " changed during the fetch (epoch ", epoch, "); retrieve again"));
        }
        if (moved) {
          return absl::FailedPreconditionError(absl::StrCat(
              "heads: slots [", chunk.first_slot, ", ",
              chunk.first_slot + chunk.num_slots, ") of kv head ", hs.kv_head,
              " of layer ", request.layer,
              " moved into the wave index during the fetch; retrieve again"));
        }
        // No lock is held here: the sink may block on a slow stream.
        ++chunks_sent;
        if (!sink(std::move(chunk))) {
          return absl::CancelledError(absl::StrCat(
              "FetchSlots: the receiver stopped the fetch at chunk ",
              chunks_sent));
        }
        done += n;
      }
    }
  }
  session->Touch(NowUnixMs());
  return absl::OkStatus();
}

}  // namespace wavekv
