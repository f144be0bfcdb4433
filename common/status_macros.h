// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status and absl::StatusOr
// (Debian's Abseil 20220623 does not ship them).
#ifndef WAVEKV_COMMON_STATUS_MACROS_H_
#define WAVEKV_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define WAVEKV_CONCAT_INNER_(a, b) a##b
#define WAVEKV_CONCAT_(a, b) WAVEKV_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the caller if not OK.
#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    ::absl::Status wavekv_status_ = (expr);         \
    if (!wavekv_status_.ok()) return wavekv_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>);
// returns its status if not OK, otherwise moves the value into `lhs`, which
// may be a declaration (`auto x`).
#define ASSIGN_OR_RETURN(lhs, expr) \
  WAVEKV_ASSIGN_OR_RETURN_IMPL_(WAVEKV_CONCAT_(wavekv_or_, __LINE__), lhs, expr)

#define WAVEKV_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();      \
  lhs = std::move(tmp).value()

#endif  // WAVEKV_COMMON_STATUS_MACROS_H_
