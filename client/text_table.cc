#include "client/text_table.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace wavekv {

TextTable::TextTable(std::vector<std::string> header)
    : header_(std::move(header)) {}

void TextTable::AddRow(std::vector<std::string> cells) {
  cells.resize(header_.size());
  rows_.push_back(std::move(cells));
}

void TextTable::Print(std::ostream& out) const {
  const size_t n = header_.size();
  std::vector<size_t> width(n);
  std::vector<bool> numeric(n, true);
  for (size_t c = 0; c < n; ++c) {
    width[c] = header_[c].size();
    for (const auto& row : rows_) {
      width[c] = std::max(width[c], row[c].size());
      const std::string& cell = row[c];
      if (cell.empty() ||
          !(absl::ascii_isdigit(cell[0]) || cell[0] == '-' || cell[0] == '+')) {
        numeric[c] = false;
      }
    }
    if (rows_.empty()) numeric[c] = false;
  }
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < n; ++c) {
      const std::string& cell = row[c];
      const std::string pad(width[c] - cell.size(), ' ');
      if (c > 0) line += "  ";
      line += numeric[c] ? pad + cell : cell + (c + 1 < n ? pad : "");
    }
    out << line << '\n';
  };
  print_row(header_);
  for (const auto& row : rows_) print_row(row);
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrFormat("%d B", bytes);
  const double kib = bytes / 1024.0;
  if (kib < 1024) return absl::StrFormat("%.1f KiB", kib);
  const double mib = kib / 1024.0;
  if (mib < 1024) return absl::StrFormat("%.1f MiB", mib);
  return absl::StrFormat("%.2f GiB", mib / 1024.0);
}

std::string FormatLatency(absl::Duration d) {
  const double us = absl::ToDoubleMicroseconds(d);
  if (us < 1000) return absl::StrFormat("%.0f us", us);
  if (us < 1e6) return absl::StrFormat("%.1f ms", us / 1000);
  return absl::StrFormat("%.2f s", us / 1e6);
}

std::string FormatError(double value) { return absl::StrFormat("%.1e", value); }

std::string FormatUnixMs(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(unix_ms),
                          absl::LocalTimeZone());
}

}  // namespace wavekv
