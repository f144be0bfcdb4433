#include "transport/auth_reloader.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"

namespace wavekv {
namespace {

int64_t Nanos(const struct timespec& ts) {
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

}  // namespace

TokensFileReloader::TokensFileReloader(
    Authenticator& auth, std::function<void(const TokenTable&)> on_loaded,
    prometheus::Registry* registry, Logger* log,
    TokensFileReloaderOptions options)
    : auth_(auth),
      on_loaded_(std::move(on_loaded)),
      log_(log),
      options_(options) {
  if (registry != nullptr) {
    auto& reloads = prometheus::BuildCounter()
                        .Name("wavekv_auth_reloads_total")
                        .Help(
                            "Reloads of the tokens file after it changed, "
                            "by result (ok, or error: the old tokens stay)")
                        .Register(*registry);
    ok_counter_ = &reloads.Add({{"result", "ok"}});
    error_counter_ = &reloads.Add({{"result", "error"}});
    tokens_gauge_ = &prometheus::BuildGauge()
                         .Name("wavekv_auth_tokens")
                         .Help("Bearer tokens in the tokens file in use")
                         .Register(*registry)
                         .Add({});
    tokens_gauge_->Set(static_cast<double>(auth_.num_tokens()));
  }
  {
    absl::MutexLock lock(&check_mu_);
    seen_ = Identify();
  }
  if (options_.start_thread) thread_ = std::thread([this] { Loop(); });
}

TokensFileReloader::~TokensFileReloader() {
  {
    absl::MutexLock lock(&stop_mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

std::optional<TokensFileReloader::FileIdentity> TokensFileReloader::Identify()
    const {
  struct stat st;
  if (::stat(auth_.tokens_path().c_str(), &st) != 0) return std::nullopt;
  FileIdentity id;
  id.device = st.st_dev;
  id.inode = st.st_ino;
  id.size = st.st_size;
  id.mtime_ns = Nanos(st.st_mtim);
  id.ctime_ns = Nanos(st.st_ctim);
  std::ifstream in(auth_.tokens_path(), std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  id.content_hash = absl::HashOf(text.str());
  return id;
}

absl::StatusOr<bool> TokensFileReloader::CheckNow() {
  absl::MutexLock lock(&check_mu_);
  const std::optional<FileIdentity> now = Identify();
  if (now == seen_) return false;
  seen_ = now;
  absl::Status status;
  if (!now.has_value()) {
    status = absl::NotFoundError(
        absl::StrCat("tokens_file: cannot read '", auth_.tokens_path(), "'"));
  } else {
    status = auth_.Reload();
  }
  if (!status.ok()) {
    ++failed_;
    if (error_counter_ != nullptr) error_counter_->Increment();
    if (log_ != nullptr) {
      log_->Error("tokens file reload failed; keeping the previous tokens",
                  {{"tokens_file", auth_.tokens_path()},
                   {"code", absl::StatusCodeToString(status.code())},
                   {"error", status.message()}});
    }
    return status;
  }
  ++ok_;
  const std::shared_ptr<const TokenTable> table = auth_.table();
  if (on_loaded_) on_loaded_(*table);
  if (ok_counter_ != nullptr) ok_counter_->Increment();
  if (tokens_gauge_ != nullptr) {
    tokens_gauge_->Set(static_cast<double>(table->size()));
  }
  if (log_ != nullptr) {
    log_->Info("tokens file reloaded",
               {{"tokens_file", auth_.tokens_path()},
                {"tokens", table->size()},
                {"tenants_with_quotas", table->quotas().size()}});
  }
  return true;
}

void TokensFileReloader::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&stop_mu_);
      if (stop_mu_.AwaitWithTimeout(absl::Condition(&stop_),
                                    options_.poll_interval)) {
        return;
      }
    }
    // Errors are logged and counted inside; the loop keeps polling.
    (void)CheckNow();
  }
}

uint64_t TokensFileReloader::reloads_ok() const {
  absl::MutexLock lock(&check_mu_);
  return ok_;
}

uint64_t TokensFileReloader::reloads_failed() const {
  absl::MutexLock lock(&check_mu_);
  return failed_;
}

}  // namespace wavekv
