// ThreadSanitizer support for Debian's (uninstrumented) Abseil: absl::Mutex
// and absl::CondVar live in libabsl_synchronization.so, built without
// -fsanitize=thread, and synchronise through their own atomics and futex
// calls, which TSan cannot see. Without help every access guarded by an
// absl::Mutex would be reported as a race.
//
// Linked into every binary of the tsan config (--custom_malloc, see
// .bazelrc), this file interposes the lock entry points: each definition
// below wins over the shared library's (also for calls from inside the
// library, e.g. absl::Notification), calls the real function through
// dlsym(RTLD_NEXT) and tells TSan about the happens-before edge:
// __tsan_release(mu) before the mutex is given up, __tsan_acquire(mu) after
// it is taken. Readers are treated like writers (reader-reader edges can only
// hide races between two reads, which are not races).
//
// Conditions (Await, LockWhen) are evaluated by the library with the mutex
// held, in the waiting thread or in the thread that unlocks: each is wrapped
// in a condition that does __tsan_acquire(mu) before and __tsan_release(mu)
// after evaluating it, so its reads of guarded state are ordered with every
// other critical section of the mutex.
//
// Abseil's own deadlock detection (on in Debian's build) keeps its lock graph
// with uninstrumented code that TSan sees only through its memmove calls, as
// races; TSan builds turn it off at start-up (absl::OnDeadlockCycle::kIgnore).

//
// In builds without TSan this file is empty.
#if defined(__SANITIZE_THREAD__)
#define WAVEKV_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define WAVEKV_TSAN 1
#endif
#endif

#ifdef WAVEKV_TSAN

#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace {

#define WAVEKV_STR2(x) #x
#define WAVEKV_STR(x) WAVEKV_STR2(x)

// Itanium-mangled "absl::<inline ns>::<cls>::<rest>".
std::string Mangled(const char* cls, const char* rest) {
  std::string ns;
#if ABSL_OPTION_USE_INLINE_NAMESPACE
  const std::string name = WAVEKV_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  ns = std::to_string(name.size()) + name;
#endif
  const std::string c(cls);
  return "_ZN4absl" + ns + std::to_string(c.size()) + c + rest;
}

void* Real(const char* cls, const char* rest) {
  const std::string name = Mangled(cls, rest);
  void* fn = dlsym(RTLD_NEXT, name.c_str());
  if (fn == nullptr) {
    std::fprintf(stderr, "tsan_absl_mutex: %s not found\n", name.c_str());
    std::abort();
  }
  return fn;
}

// A Condition that tells TSan the mutex is held before evaluating `cond`.
struct AnnotatedCondition {
  const absl::Condition* cond;
  absl::Mutex* mu;

  // May run in another thread (the unlocker), which reads this struct from
  // the waiter's stack: published by the release in condition().
  static bool Eval(void* arg) {
    __tsan_acquire(arg);
    auto* self = static_cast<AnnotatedCondition*>(arg);
    // The evaluation is a small critical section of its own: after every
    // earlier holder, before every later one (a false condition gives the
    // mutex up inside the library, with no Unlock call to annotate).
    __tsan_acquire(self->mu);
    const bool result = self->cond->Eval();
    __tsan_release(self->mu);
    return result;
  }
  absl::Condition condition() {
    __tsan_release(this);
    return absl::Condition(&Eval, this);
  }
};

// Resolves the real function once (thread-safe static init).
#define REAL(type, cls, rest) \
  static const auto real = reinterpret_cast<type>(Real(cls, rest))

// Runs before main(): see the comment at the top.
const bool deadlock_detection_off = [] {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return true;
}();

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  REAL(void (*)(Mutex*), "Mutex", "4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderLock() {
  REAL(void (*)(Mutex*), "Mutex", "10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

bool Mutex::TryLock() {
  REAL(bool (*)(Mutex*), "Mutex", "7TryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

bool Mutex::ReaderTryLock() {
  REAL(bool (*)(Mutex*), "Mutex", "13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::Unlock() {
  REAL(void (*)(Mutex*), "Mutex", "6UnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::ReaderUnlock() {
  REAL(void (*)(Mutex*), "Mutex", "12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::LockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "Mutex",
       "8LockWhenERKNS0_9ConditionE");
  AnnotatedCondition annotated{&cond, this};
  real(this, annotated.condition());
  __tsan_acquire(this);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "Mutex",
       "14ReaderLockWhenERKNS0_9ConditionE");
  AnnotatedCondition annotated{&cond, this};
  real(this, annotated.condition());
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration), "Mutex",
       "19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AnnotatedCondition annotated{&cond, this};
  const bool result = real(this, annotated.condition(), timeout);
  __tsan_acquire(this);  // held whatever the result
  return result;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time), "Mutex",
       "20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AnnotatedCondition annotated{&cond, this};
  const bool result = real(this, annotated.condition(), deadline);
  __tsan_acquire(this);
  return result;
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration), "Mutex",
       "25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AnnotatedCondition annotated{&cond, this};
  const bool result = real(this, annotated.condition(), timeout);
  __tsan_acquire(this);
  return result;
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time), "Mutex",
       "26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AnnotatedCondition annotated{&cond, this};
  const bool result = real(this, annotated.condition(), deadline);
  __tsan_acquire(this);
  return result;
}

void Mutex::Await(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "Mutex", "5AwaitERKNS0_9ConditionE");
  __tsan_release(this);
  AnnotatedCondition annotated{&cond, this};
  real(this, annotated.condition());
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration), "Mutex",
       "16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  __tsan_release(this);
  AnnotatedCondition annotated{&cond, this};
  const bool result = real(this, annotated.condition(), timeout);
  __tsan_acquire(this);
  return result;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time), "Mutex",
       "17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_release(this);
  AnnotatedCondition annotated{&cond, this};
  const bool result = real(this, annotated.condition(), deadline);
  __tsan_acquire(this);
  return result;
}

void CondVar::Wait(Mutex* mu) {
  REAL(void (*)(CondVar*, Mutex*), "CondVar", "4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  REAL(bool (*)(CondVar*, Mutex*, Duration), "CondVar",
       "15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  const bool result = real(this, mu, timeout);
  __tsan_acquire(mu);
  return result;
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  REAL(bool (*)(CondVar*, Mutex*, Time), "CondVar",
       "16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool result = real(this, mu, deadline);
  __tsan_acquire(mu);
  return result;
}

ABSL_NAMESPACE_END
}  // namespace absl

#endif  // WAVEKV_TSAN
