#include "transport/config_file.h"

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace wavekv {
namespace {

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '_'; }

absl::Status LineError(absl::string_view filename, int line,
                       absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(filename, ":", line, ": ", what));
}

// Splits the text after '=' into the value, dropping a trailing comment and
// surrounding quotes.
absl::StatusOr<std::string> ParseValue(absl::string_view raw,
                                       absl::string_view filename, int line) {
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(raw);
  if (absl::StartsWith(rest, "\"")) {
    const size_t close = rest.find('"', 1);
    if (close == absl::string_view::npos) {
      return LineError(filename, line, "unterminated quote");
    }
    const absl::string_view after =
        absl::StripLeadingAsciiWhitespace(rest.substr(close + 1));
    if (!after.empty() && after[0] != '#') {
      return LineError(filename, line,
                       absl::StrCat("unexpected text after the quoted value: '",
                                    after, "'"));
    }
    return std::string(rest.substr(1, close - 1));
  }
  // A '#' preceded by whitespace (or at the start) begins a comment.
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == '#' && (i == 0 || absl::ascii_isspace(rest[i - 1]))) {
      rest = rest.substr(0, i);
      break;
    }
  }
  return std::string(absl::StripTrailingAsciiWhitespace(rest));
}

}  // namespace

absl::StatusOr<std::vector<ConfigEntry>> ParseConfigText(
    absl::string_view text, absl::string_view filename,
    const absl::flat_hash_set<std::string>& known_names) {
  std::vector<ConfigEntry> entries;
  absl::flat_hash_map<std::string, int> seen;  // name -> line
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    const absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (trimmed.empty() || trimmed[0] == '#') continue;
    const size_t eq = trimmed.find('=');
    if (eq == absl::string_view::npos) {
      return LineError(
          filename, line_no,
          absl::StrCat("expected 'name = value', got '", trimmed, "'"));
    }
    const absl::string_view name =
        absl::StripTrailingAsciiWhitespace(trimmed.substr(0, eq));
    if (name.empty() || !std::all_of(name.begin(), name.end(), IsNameChar)) {
      return LineError(
          filename, line_no,
          absl::StrCat("expected 'name = value', got '", trimmed, "'"));
    }
    if (!known_names.contains(name)) {
      std::vector<std::string> known(known_names.begin(), known_names.end());
      std::sort(known.begin(), known.end());
      return LineError(filename, line_no,
                       absl::StrCat("unknown setting '", name, "' (known: ",
                                    absl::StrJoin(known, ", "), ")"));
    }
    const auto [it, inserted] = seen.emplace(std::string(name), line_no);
    if (!inserted) {
      return LineError(
          filename, line_no,
          absl::StrCat("'", name, "' already set on line ", it->second));
    }
    absl::StatusOr<std::string> value =
        ParseValue(trimmed.substr(eq + 1), filename, line_no);
    if (!value.ok()) return value.status();
    entries.push_back(
        ConfigEntry{std::string(name), *std::move(value), line_no});
  }
  return entries;
}

absl::StatusOr<std::vector<ConfigEntry>> ReadConfigFile(
    const std::string& path,
    const absl::flat_hash_set<std::string>& known_names) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("config: cannot open '", path, "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(
        absl::StrCat("config: cannot read '", path, "'"));
  }
  return ParseConfigText(text.str(), path, known_names);
}

absl::Status ApplyConfigToFlags(const std::vector<ConfigEntry>& entries,
                                absl::string_view filename) {
  for (const ConfigEntry& entry : entries) {
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(entry.name);
    if (flag == nullptr) {
      return LineError(filename, entry.line,
                       absl::StrCat("no flag named '", entry.name, "'"));
    }
    std::string error;
    if (!flag->ParseFrom(entry.value, &error)) {
      // absl's message names the flag and the value.
      return LineError(filename, entry.line, error);
    }
  }
  return absl::OkStatus();
}

std::string FindConfigFlag(int argc, const char* const* argv) {
  std::string config;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--")) {
      if (!absl::ConsumePrefix(&arg, "-")) continue;
    }
    if (absl::ConsumePrefix(&arg, "config=")) {
      config = std::string(arg);
    } else if (arg == "config" && i + 1 < argc) {
      config = argv[++i];
    }
  }
  return config;
}

}  // namespace wavekv
