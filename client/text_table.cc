#include "client/text_table.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace wavekv {

namespace {

// "32768", "-", "40.5 MiB", "32/8", "1.2e-07", "90.0k tokens": the first
// word is a number (or a lone dash), possibly with a k/M suffix. Hex ids
// such as "1a71b3c2" are not.
bool LooksNumeric(const std::string& cell) {
  std::string word = cell.substr(0, cell.find(' '));
  if (word == "-") return true;
  if (word.empty() ||
      !(absl::ascii_isdigit(word[0]) || word[0] == '-' || word[0] == '+')) {
    return false;
  }
  if (word.back() == 'k' || word.back() == 'M') word.pop_back();
  return word.find_first_not_of("0123456789.+-e/") == std::string::npos;
}

}  // namespace

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
      if (!LooksNumeric(row[c])) numeric[c] = false;
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
