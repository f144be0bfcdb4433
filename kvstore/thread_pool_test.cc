#include "kvstore/thread_pool.h"

#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace wavekv {
namespace {

TEST(ThreadPoolTest, ScheduleRunsEveryTask) {
  std::atomic<int> ran{0};
  {
    ThreadPool pool(3);
    absl::Notification all;
    for (int i = 0; i < 100; ++i) {
      pool.Schedule([&] {
        if (ran.fetch_add(1) + 1 == 100) all.Notify();
      });
    }
    all.WaitForNotification();
  }
  EXPECT_EQ(ran.load(), 100);
}

TEST(ThreadPoolTest, WithoutThreadsScheduleRunsInline) {
  ThreadPool pool(0);
  int ran = 0;
  pool.Schedule([&] { ++ran; });
  EXPECT_EQ(ran, 1);
  std::vector<int> seen(10, 0);
  pool.ParallelFor(10, [&](size_t i) { ++seen[i]; });
  EXPECT_EQ(seen, std::vector<int>(10, 1));
}

TEST(ThreadPoolTest, ParallelForRunsEachIndexOnce) {
  ThreadPool pool(4);
  for (size_t n : {0u, 1u, 2u, 5u, 1000u}) {
    std::vector<std::atomic<int>> seen(n);
    pool.ParallelFor(n, [&](size_t i) { seen[i].fetch_add(1); });
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << n;
  }
  // Nested: an outer task runs an inner loop on the same pool.
  std::atomic<int> inner{0};
  pool.ParallelFor(8, [&](size_t) {
    pool.ParallelFor(16, [&](size_t) { inner.fetch_add(1); });
  });
  EXPECT_EQ(inner.load(), 8 * 16);
}

TEST(ThreadPoolTest, ParallelForCompletesWhileWorkersAreBusy) {
  ThreadPool pool(2);
  absl::Notification release;
  for (int i = 0; i < 2; ++i) {
    pool.Schedule([&] { release.WaitForNotification(); });
  }
  std::atomic<int> count{0};
  pool.ParallelFor(50, [&](size_t) { count.fetch_add(1); });
  EXPECT_EQ(count.load(), 50) << "the caller did the work alone";
  release.Notify();
}

TEST(ThreadPoolTest, DestructorDropsQueuedTasks) {
  auto token = std::make_shared<int>(0);
  std::atomic<int> ran{0};
  absl::Notification started, release;
  {
    ThreadPool pool(1);
    pool.Schedule([&] {
      started.Notify();
      release.WaitForNotification();
    });
    started.WaitForNotification();
    for (int i = 0; i < 10; ++i) {
      pool.Schedule([&, token] { ran.fetch_add(1); });
    }
    EXPECT_EQ(pool.queued(), 10u);
    EXPECT_EQ(token.use_count(), 11);
    release.Notify();
    // Destruction races the worker: some queued tasks may run, the rest
    // are dropped (and destroyed).
  }
  EXPECT_LE(ran.load(), 10);
  EXPECT_EQ(token.use_count(), 1) << "dropped tasks were destroyed";
}

}  // namespace
}  // namespace wavekv
