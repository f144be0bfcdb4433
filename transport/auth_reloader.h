// TokensFileReloader: keeps an Authenticator in step with its tokens file.
// A thread polls the file's identity (device, inode, size, mtime, ctime
// and a hash of its bytes, since a rewrite within one timestamp tick keeps
// the rest) every poll_interval; when it changed, the file is re-read and,
// if it
// parses, swapped in (Authenticator::Reload) and handed to `on_loaded`
// (the server pushes the tenants' quotas into the engine there). A file
// that does not parse or cannot be read is logged (the message names
// FILE:LINE, never a token) and the old table stays; it is tried again when
// the file changes again. A removed token stops working after the reload,
// an added one starts working.
//
// Metrics (registry optional): counter
//   wavekv_auth_reloads_total{result="ok"|"error"}
// and gauge wavekv_auth_tokens (tokens of the table in use).
//
// The thread is supervised in the sense of DESIGN.md: a failure is logged
// and counted and the loop keeps polling; it only ends in the destructor.
//
// Example:
//   TokensFileReloader reloader(*auth, [&](const TokenTable& t) {
//     engine->SetTenantQuotas(t.quotas());
//   }, registry.get(), &log);
//
// Thread-safe. `on_loaded` runs on the reloader's thread (or the caller of
// CheckNow), never concurrently with itself.
#ifndef WAVEKV_TRANSPORT_AUTH_RELOADER_H_
#define WAVEKV_TRANSPORT_AUTH_RELOADER_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "transport/auth.h"
#include "transport/log.h"

namespace wavekv {

struct TokensFileReloaderOptions {
  // How often the file's identity is checked. > 0.
  absl::Duration poll_interval = absl::Seconds(1);
  // Start the polling thread (false: only CheckNow, for tests).
  bool start_thread = true;
};

class TokensFileReloader {
 public:
  // REQUIRES: auth.enabled(). `auth`, `registry` and `log` (both may be
  // null) must outlive the reloader. The file as it is now is taken as
  // loaded (the Authenticator read it at startup).
  TokensFileReloader(Authenticator& auth,
                     std::function<void(const TokenTable&)> on_loaded,
                     prometheus::Registry* registry, Logger* log,
                     TokensFileReloaderOptions options = {});
  // Stops and joins the thread.
  ~TokensFileReloader();

  TokensFileReloader(const TokensFileReloader&) = delete;
  TokensFileReloader& operator=(const TokensFileReloader&) = delete;

  // One poll now: true if the file changed and was loaded, false if it did
  // not change (or did and failed to load before, unchanged since), the
  // error if it changed and could not be loaded.
  absl::StatusOr<bool> CheckNow();

  uint64_t reloads_ok() const;
  uint64_t reloads_failed() const;

 private:
  // What identifies one version of the file (stat of the path, following
  // symlinks, so Kubernetes' secret volume swaps are seen, and its bytes).
  struct FileIdentity {
    dev_t device = 0;
    ino_t inode = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    int64_t ctime_ns = 0;
    size_t content_hash = 0;
    bool operator==(const FileIdentity&) const = default;
  };
  // nullopt if the path cannot be stat'ed or read.
  std::optional<FileIdentity> Identify() const;
  void Loop();

  Authenticator& auth_;
  const std::function<void(const TokenTable&)> on_loaded_;
  Logger* const log_;
  const TokensFileReloaderOptions options_;
  prometheus::Counter* ok_counter_ = nullptr;
  prometheus::Counter* error_counter_ = nullptr;
  prometheus::Gauge* tokens_gauge_ = nullptr;

  // Serialises CheckNow (thread and callers).
  mutable absl::Mutex check_mu_;
  // The identity last seen (loaded or failed); nullopt = missing.
  std::optional<FileIdentity> seen_ ABSL_GUARDED_BY(check_mu_);
  uint64_t ok_ ABSL_GUARDED_BY(check_mu_) = 0;
  uint64_t failed_ ABSL_GUARDED_BY(check_mu_) = 0;

  absl::Mutex stop_mu_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread thread_;  // last: starts after everything above is set
};

}  // namespace wavekv

#endif  // WAVEKV_TRANSPORT_AUTH_RELOADER_H_
