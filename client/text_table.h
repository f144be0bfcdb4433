// Plain-text tables and human units for the `wavekv` command-line tool.
//
//   TextTable t({"SESSION", "TOKENS"});
//   t.AddRow({"s-1", "32768"});
//   t.Print(std::cout);
//   // SESSION  TOKENS
//   // s-1       32768
//
// Not thread-safe (a value type).
#ifndef WAVEKV_CLIENT_TEXT_TABLE_H_
#define WAVEKV_CLIENT_TEXT_TABLE_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace wavekv {

class TextTable {
 public:
  explicit TextTable(std::vector<std::string> header);

  // REQUIRES: cells.size() == the header's size.
  void AddRow(std::vector<std::string> cells);
  size_t num_rows() const { return rows_.size(); }

  // Columns padded to their widest cell, two spaces apart; a column whose
  // body cells all read as numbers ("32768", "40.5 MiB", "1.2e-07", "-")
  // is right-aligned.
  void Print(std::ostream& out) const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// "512 B", "1.5 KiB", "128.0 MiB", "8.00 GiB".
std::string FormatBytes(uint64_t bytes);
// "850 us", "12.3 ms", "4.21 s".
std::string FormatLatency(absl::Duration d);
// "3.2e-07" style for errors.
std::string FormatError(double value);
// Local time "2026-11-23 12:00:01" of a Unix time in ms (0 = "-").
std::string FormatUnixMs(int64_t unix_ms);

}  // namespace wavekv

#endif  // WAVEKV_CLIENT_TEXT_TABLE_H_
