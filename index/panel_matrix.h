// A row matrix (e.g. the centroids of one kv head) packed for fast inner
// products with many query rows: rows are grouped into panels of 16, and a
// panel stores its 16 rows transposed ([dim][16]), so one vector FMA
// multiplies one query element into 16 rows at once. Padding lanes of the
// last panel are zero and never reported.
//
// Internal to index/. PanelMatrix: not thread-safe for writes; const methods
// may run concurrently. The kernels are pure.
#ifndef WAVEKV_INDEX_PANEL_MATRIX_H_
#define WAVEKV_INDEX_PANEL_MATRIX_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace wavekv {

class PanelMatrix {
 public:
  static constexpr size_t kPanelRows = 16;

  explicit PanelMatrix(size_t dim = 0) : dim_(dim) {}

  size_t dim() const { return dim_; }
  size_t rows() const { return rows_; }
  size_t num_panels() const { return (rows_ + kPanelRows - 1) / kPanelRows; }
  // Panel p: dim x 16 floats, element (j, lane) at [j * 16 + lane].
  const float* panel(size_t p) const {
    return data_.data() + p * dim_ * kPanelRows;
  }
  size_t memory_bytes() const { return data_.capacity() * sizeof(float); }

  void Reserve(size_t rows);
  void Clear();
  // Appends one row of dim() floats.
  void AppendRow(const float* row);
  // REQUIRES: r < rows().
  void SetRow(size_t r, const float* row);
  void CopyRow(size_t r, float* out) const;

 private:
  size_t dim_ = 0;
  size_t rows_ = 0;
  std::vector<float> data_;  // num_panels() * dim_ * 16
};

// best_row[i] = argmax over rows c of x_i · m_c, ties to the lowest c, for
// the n query rows x ([n][m.dim()], contiguous). best_score may be null.
// REQUIRES: m.rows() > 0.
void ArgmaxInnerProduct(const float* x, size_t n, const PanelMatrix& m,
                        uint32_t* best_row, float* best_score);

// out[i * m.rows() + c] = scale * (x_i · m_c) for the n query rows x.
void InnerProducts(const float* x, size_t n, const PanelMatrix& m, float scale,
                   float* out);

}  // namespace wavekv

#endif  // WAVEKV_INDEX_PANEL_MATRIX_H_
