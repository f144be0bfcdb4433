// Test support: a private mount namespace, so that a tmpfs a test mounts
// never shows outside the process and disappears with it, even after
// kill -9 (a leaked mount in a Bazel sandbox breaks later builds).
//
// The namespace belongs to the calling thread and the threads and processes
// it starts afterwards: call it before the threads that must see the mount
// exist (e.g. before main, or before forking a server).
#ifndef WAVEKV_KVSTORE_PRIVATE_MOUNTS_H_
#define WAVEKV_KVSTORE_PRIVATE_MOUNTS_H_

#include <string>

namespace wavekv {

// Unshares the mount namespace and makes every mount in it private. Returns
// "" or why that is not possible here (not root, no CAP_SYS_ADMIN, ...).
std::string EnterPrivateMountNamespace();

}  // namespace wavekv

#endif  // WAVEKV_KVSTORE_PRIVATE_MOUNTS_H_
