#include "kvstore/private_mounts.h"

#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace wavekv {

std::string EnterPrivateMountNamespace() {
  if (::geteuid() != 0) return "not root (mounting a tmpfs needs root)";
  if (::unshare(CLONE_NEWNS) != 0) {
    return absl::StrCat("unshare(CLONE_NEWNS): ", std::strerror(errno));
  }
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return absl::StrCat("mount --make-rprivate /: ", std::strerror(errno));
  }
  return "";
}

}  // namespace wavekv
