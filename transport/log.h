// Structured logs: one JSON object per line, e.g.
//   {"ts":"2026-11-23T12:00:00.123Z","level":"info","msg":"listening",
//    "grpc":"127.0.0.1:7070"}
//
// A Logger formats a line and hands it to a LogSink, which writes it with a
// single call so concurrent lines never interleave. Loggers are passed
// explicitly; the only process-wide object is the stderr sink.
//
// Example:
//   Logger log(StderrLogSink());
//   log.Info("listening", {{"grpc", "127.0.0.1:7070"}, {"port", 7070}});
//
// Thread-safe: Logger and the provided sinks may be used from any thread.
#ifndef WAVEKV_TRANSPORT_LOG_H_
#define WAVEKV_TRANSPORT_LOG_H_

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace wavekv {

enum class LogLevel : uint8_t { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

std::string_view LogLevelName(LogLevel level);  // "debug", "info", ...

// One key/value of a log line. Strings are JSON-escaped (invalid UTF-8
// bytes become U+FFFD); non-finite doubles are written as null.
struct LogField {
  using Value = std::variant<std::string_view, int64_t, uint64_t, double, bool>;

  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, const char* v)
      : key(k), value(std::string_view(v)) {}
  LogField(std::string_view k, const std::string& v)
      : key(k), value(std::string_view(v)) {}
  LogField(std::string_view k, absl::string_view v)
      : key(k), value(std::string_view(v.data(), v.size())) {}
  LogField(std::string_view k, bool v) : key(k), value(v) {}
  LogField(std::string_view k, double v) : key(k), value(v) {}
  LogField(std::string_view k, int v) : key(k), value(int64_t{v}) {}
  LogField(std::string_view k, long v) : key(k), value(int64_t{v}) {}
  LogField(std::string_view k, long long v) : key(k), value(int64_t{v}) {}
  LogField(std::string_view k, unsigned v) : key(k), value(uint64_t{v}) {}
  LogField(std::string_view k, unsigned long v) : key(k), value(uint64_t{v}) {}
  LogField(std::string_view k, unsigned long long v)
      : key(k), value(uint64_t{v}) {}

  std::string_view key;
  Value value;
};

// Appends `s` as a JSON string literal (with quotes) to `out`.
void AppendJsonString(std::string* out, std::string_view s);

// Formats one log line (without the trailing newline). Fields keep their
// order after "ts", "level" and "msg"; the timestamp is UTC with
// milliseconds.
std::string FormatLogLine(absl::Time ts, LogLevel level, std::string_view msg,
                          std::initializer_list<LogField> fields);

// Where formatted lines go. Implementations are thread-safe and write each
// line atomically with respect to other lines.
class LogSink {
 public:
  virtual ~LogSink() = default;
  // `line` has no trailing newline; the sink adds one.
  virtual void WriteLine(std::string_view line) = 0;
};

// Writes lines to a stdio stream and flushes after each. Thread-safe.
class StreamLogSink : public LogSink {
 public:
  explicit StreamLogSink(std::FILE* stream) : stream_(stream) {}
  void WriteLine(std::string_view line) override;

 private:
  absl::Mutex mu_;
  std::FILE* const stream_ ABSL_PT_GUARDED_BY(mu_);
};

// Collects lines in memory (tests, or capture before a sink exists).
// Thread-safe.
class MemoryLogSink : public LogSink {
 public:
  void WriteLine(std::string_view line) override;
  std::vector<std::string> lines() const;

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> lines_ ABSL_GUARDED_BY(mu_);
};

// The process's stderr sink (the one global of this module).
LogSink& StderrLogSink();

class Logger {
 public:
  // `sink` must outlive the logger. Lines below `min_level` are dropped.
  explicit Logger(LogSink& sink, LogLevel min_level = LogLevel::kInfo)
      : sink_(sink), min_level_(min_level) {}

  void Log(LogLevel level, std::string_view msg,
           std::initializer_list<LogField> fields = {});
  void Debug(std::string_view msg, std::initializer_list<LogField> f = {}) {
    Log(LogLevel::kDebug, msg, f);
  }
  void Info(std::string_view msg, std::initializer_list<LogField> f = {}) {
    Log(LogLevel::kInfo, msg, f);
  }
  void Warn(std::string_view msg, std::initializer_list<LogField> f = {}) {
    Log(LogLevel::kWarn, msg, f);
  }
  void Error(std::string_view msg, std::initializer_list<LogField> f = {}) {
    Log(LogLevel::kError, msg, f);
  }

 private:
  LogSink& sink_;
  const LogLevel min_level_;
};

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_LOG_H_
