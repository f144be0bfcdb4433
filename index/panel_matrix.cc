#include "index/panel_matrix.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "index/simd.h"

namespace wavekv {
namespace {

using simd::F16;
using simd::I16;
static_assert(PanelMatrix::kPanelRows == simd::kVecLanes);
constexpr size_t kLanes = PanelMatrix::kPanelRows;
// Query rows per register tile: 4 rows x 16 lanes of accumulators fit the
// register file of every clone (AVX-512: 4 zmm, AVX2: 8 ymm).
constexpr size_t kTileRows = 4;

// acc[r] = Σ_j x[r][j] * panel[j][0..16) for R query rows.
template <size_t R>
WAVEKV_INLINE void PanelTile(const float* __restrict x, size_t dim,
                             const float* __restrict panel, F16* acc) {
  for (size_t r = 0; r < R; ++r) acc[r] = F16{};
  for (size_t j = 0; j < dim; ++j) {
    const F16 c = simd::LoadF16(panel + j * kLanes);
    for (size_t r = 0; r < R; ++r) acc[r] += x[r * dim + j] * c;
  }
}

// -inf on lanes >= valid, 0 elsewhere (masks the padding of the last panel).
WAVEKV_INLINE F16 LaneMask(size_t valid) {
  F16 mask;
  for (size_t u = 0; u < kLanes; ++u) {
    mask[u] = u < valid ? 0.0f : -std::numeric_limits<float>::infinity();
  }
  return mask;
}

template <size_t R>
WAVEKV_INLINE void ArgmaxTile(const float* x, const PanelMatrix& m,
                              uint32_t* best_row, float* best_score) {
  const size_t dim = m.dim();
  const size_t panels = m.num_panels();
  const F16 last_mask = LaneMask(m.rows() - (panels - 1) * kLanes);
  F16 best[R];
  I16 best_panel[R];
  for (size_t r = 0; r < R; ++r) {
    best[r] = F16{} - std::numeric_limits<float>::infinity();
    best_panel[r] = I16{};
  }
  F16 acc[R];
  for (size_t p = 0; p < panels; ++p) {
    PanelTile<R>(x, dim, m.panel(p), acc);
    if (p + 1 == panels) {
      for (size_t r = 0; r < R; ++r) acc[r] += last_mask;
    }
    const I16 pv = I16{} + static_cast<int32_t>(p);
    for (size_t r = 0; r < R; ++r) {
      // Strictly greater: per lane, the earliest panel wins ties.
      const I16 gt = acc[r] > best[r];
      best[r] = gt ? acc[r] : best[r];
      best_panel[r] = gt ? pv : best_panel[r];
    }
  }
  for (size_t r = 0; r < R; ++r) {
    float score = -std::numeric_limits<float>::infinity();
    uint32_t row = 0;
    bool found = false;
    for (size_t u = 0; u < kLanes; ++u) {
      const uint32_t c = static_cast<uint32_t>(best_panel[r][u]) * kLanes + u;
      if (c >= m.rows()) continue;
      if (!found || best[r][u] > score || (best[r][u] == score && c < row)) {
        score = best[r][u];
        row = c;
        found = true;
      }
    }
    best_row[r] = row;
    if (best_score != nullptr) best_score[r] = score;
  }
}

template <size_t R>
WAVEKV_INLINE void ProductsTile(const float* x, const PanelMatrix& m,
                                float scale, float* out) {
  const size_t dim = m.dim();
  const size_t rows = m.rows();
  const size_t panels = m.num_panels();
  F16 acc[R];
  for (size_t p = 0; p < panels; ++p) {
    PanelTile<R>(x, dim, m.panel(p), acc);
    const size_t valid = std::min(kLanes, rows - p * kLanes);
    for (size_t r = 0; r < R; ++r) {
      const F16 v = acc[r] * scale;
      float* dst = out + r * rows + p * kLanes;
      if (valid == kLanes) {
        simd::StoreF16(dst, v);
      } else {
        for (size_t u = 0; u < valid; ++u) dst[u] = v[u];
      }
    }
  }
}

}  // namespace

void PanelMatrix::Reserve(size_t rows) {
  data_.reserve((rows + kLanes - 1) / kLanes * kLanes * dim_);
}

void PanelMatrix::Clear() {
  rows_ = 0;
  data_.clear();
}

void PanelMatrix::AppendRow(const float* row) {
  if (rows_ % kLanes == 0) data_.resize(data_.size() + dim_ * kLanes, 0.0f);
  ++rows_;
  SetRow(rows_ - 1, row);
}

void PanelMatrix::SetRow(size_t r, const float* row) {
  float* panel = data_.data() + (r / kLanes) * dim_ * kLanes;
  const size_t lane = r % kLanes;
  for (size_t j = 0; j < dim_; ++j) panel[j * kLanes + lane] = row[j];
}

void PanelMatrix::CopyRow(size_t r, float* out) const {
  const float* p = panel(r / kLanes);
  const size_t lane = r % kLanes;
  for (size_t j = 0; j < dim_; ++j) out[j] = p[j * kLanes + lane];
}

WAVEKV_MULTIVERSION
void ArgmaxInnerProduct(const float* x, size_t n, const PanelMatrix& m,
                        uint32_t* best_row, float* best_score) {
  const size_t dim = m.dim();
  size_t i = 0;
  for (; i + kTileRows <= n; i += kTileRows) {
    ArgmaxTile<kTileRows>(x + i * dim, m, best_row + i,
                          best_score ? best_score + i : nullptr);
  }
  float* score = best_score ? best_score + i : nullptr;
  switch (n - i) {
    case 3:
      ArgmaxTile<3>(x + i * dim, m, best_row + i, score);
      break;
    case 2:
      ArgmaxTile<2>(x + i * dim, m, best_row + i, score);
      break;
    case 1:
      ArgmaxTile<1>(x + i * dim, m, best_row + i, score);
      break;
  }
}

WAVEKV_MULTIVERSION
void InnerProducts(const float* x, size_t n, const PanelMatrix& m, float scale,
                   float* out) {
  const size_t dim = m.dim();
  const size_t rows = m.rows();
  if (rows == 0) return;
  size_t i = 0;
  for (; i + kTileRows <= n; i += kTileRows) {
    ProductsTile<kTileRows>(x + i * dim, m, scale, out + i * rows);
  }
  switch (n - i) {
    case 3:
      ProductsTile<3>(x + i * dim, m, scale, out + i * rows);
      break;
    case 2:
      ProductsTile<2>(x + i * dim, m, scale, out + i * rows);
      break;
    case 1:
      ProductsTile<1>(x + i * dim, m, scale, out + i * rows);
      break;
  }
}

}  // namespace wavekv
