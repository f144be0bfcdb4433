// Server configuration files: `name = value` lines, the same names as the
// command-line flags, e.g.
//
//   # wavekv-server.conf
//   listen = 0.0.0.0:7070
//   memory_budget = 32GiB       # trailing comments follow whitespace
//   metrics_listen = ""         # quotes keep '#', spaces or an empty value
//
// Blank lines and lines starting with '#' are ignored. Every error names
// "FILE:LINE". Command-line flags override the file: apply the file first,
// then parse the command line (see server_main.cc).
//
// Thread-safe: the parsers are pure; ApplyConfigToFlags writes absl flags
// and must run before other threads read them.
#ifndef WAVEKV_TRANSPORT_CONFIG_FILE_H_
#define WAVEKV_TRANSPORT_CONFIG_FILE_H_

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace wavekv {

struct ConfigEntry {
  std::string name;
  std::string value;
  int line = 0;  // 1-based line number in the file
};

// Parses `text` (the contents of `filename`). Fails with InvalidArgument
// "FILE:LINE: ..." on a line that is not `name = value`, a name not in
// `known_names`, a name given twice, or an unterminated quote.
absl::StatusOr<std::vector<ConfigEntry>> ParseConfigText(
    absl::string_view text, absl::string_view filename,
    const absl::flat_hash_set<std::string>& known_names);

// Reads and parses `path`; NotFound / PermissionDenied etc. if unreadable.
absl::StatusOr<std::vector<ConfigEntry>> ReadConfigFile(
    const std::string& path,
    const absl::flat_hash_set<std::string>& known_names);

// Sets each entry's absl flag (by name) from its value. Fails with
// InvalidArgument "FILE:LINE: Illegal value 'V' specified for flag 'NAME';
// <why>" on a bad value, leaving
// earlier entries applied.
absl::Status ApplyConfigToFlags(const std::vector<ConfigEntry>& entries,
                                absl::string_view filename);

// The value of `--config` in argv (`--config=F`, `--config F`, one or two
// dashes), or "" if absent. Scanning stops at "--". The last one wins.
std::string FindConfigFlag(int argc, const char* const* argv);

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_CONFIG_FILE_H_
