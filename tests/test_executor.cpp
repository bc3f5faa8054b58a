// CPython's concurrent.futures ProcessPoolExecutor tests (SEMANTICS 165-174), under every start
// method, and what ours does beyond them: a dead worker fails only its own future.
#include <signal.h>
#include <unistd.h>

#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

namespace {

int pow_(int a, int b) {
  int r = 1;
  while (b-- > 0) r *= a;
  return r;
}
int square(int x) {
  return x * x;
}
int divide_into(int x) {
  if (x == 0) throw std::domain_error("division by zero");
  return 100 / x;
}
int pause_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));  // the work, not a sync
  return ms;
}
int own_pid(int) {
  return ::getpid();
}
int die(int sig) {
  if (sig == 0) mp::exit(3);
  ::raise(sig);
  return 0;
}
void failing_init() {
  throw std::runtime_error("init failed here");
}

class ExecutorAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
  mp::ExecutorOptions opts(int n) const { return {.max_workers = n, .mp_context = &ctx()}; }
};

TEST_P(ExecutorAcross, SubmitAndMapEqualTheSerialResults) {
  mp::ProcessPoolExecutor ex(opts(2));
  EXPECT_EQ(ex.submit(pow_, 2, 8).result(kHang), 256);
  std::vector<int> in(50);
  std::iota(in.begin(), in.end(), -10);
  std::vector<int> expect;
  for (int x : in) expect.push_back(x * x);
  for (std::size_t chunksize : {1, 3, 6, 40, 50}) {
    std::vector<int> got;
    for (int v : ex.map(square, in, kHang, chunksize)) got.push_back(v);
    EXPECT_EQ(got, expect) << "chunksize " << chunksize;
  }
  EXPECT_EQ(error_text<std::invalid_argument>([&] { ex.map(square, in, std::nullopt, 0); }),
            "chunksize must be >= 1.");
  EXPECT_EQ(error_text<std::invalid_argument>([&] { ex.map(square, in, std::nullopt, 1, 0); }),
            "buffersize must be None or > 0");
}

TEST_P(ExecutorAcross, MapRethrowsAtItsPositionAndHonoursItsTimeout) {
  mp::ProcessPoolExecutor ex(opts(2));
  auto results = ex.map(divide_into, std::vector<int>{1, 2, 0, 4});
  EXPECT_EQ(results.next(), 100);
  EXPECT_EQ(results.next(), 50);
  try {
    results.next();
    ADD_FAILURE() << "no error";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::domain_error");
    EXPECT_EQ(e.index(), 2u);
  }
  auto slow = ex.map(pause_ms, std::vector<int>{0, 0, 60000}, 1s);
  EXPECT_EQ(slow.next(), 0);
  EXPECT_EQ(slow.next(), 0);
  EXPECT_THROW(slow.next(), mp::TimeoutError);
  ex.kill_workers();  // the 60 s task is not waited for
}

TEST_P(ExecutorAcross, MapWithABufferReadsTheInputLazily) {
  mp::ProcessPoolExecutor ex(opts(2));
  auto endless = ex.map(square, std::views::iota(0), std::nullopt, 1, 4);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(endless.next(), i * i);
}

TEST_P(ExecutorAcross, FutureStatesCancelAndCallbacks) {
  mp::ProcessPoolExecutor ex(opts(1));
  auto first = ex.submit(pause_ms, 300);
  std::vector<mp::Future<int>> queued;
  for (int i = 0; i < 20; ++i) queued.push_back(ex.submit(square, i));
  // The last ones are still in the queue, never sent: they can be cancelled.
  ASSERT_TRUE(queued.back().cancel());
  EXPECT_TRUE(queued.back().cancelled());
  EXPECT_TRUE(queued.back().done());
  EXPECT_THROW(queued.back().result(), mp::CancelledError);
  EXPECT_THROW(queued.back().exception(), mp::CancelledError);
  EXPECT_EQ(first.result(kHang), 300);
  EXPECT_FALSE(first.cancel());  // finished: too late
  EXPECT_TRUE(first.done());
  EXPECT_FALSE(first.running());
  EXPECT_EQ(first.exception(), nullptr);
  std::mutex m;
  std::condition_variable cv;
  int called = 0;
  auto f = ex.submit(square, 9);
  f.add_done_callback([&](const mp::Future<int>& done) {
    EXPECT_EQ(done.result(), 81);
    std::lock_guard l(m);
    ++called;
    cv.notify_all();
  });
  f.result(kHang);
  {
    std::unique_lock l(m);
    ASSERT_TRUE(cv.wait_for(l, kHang, [&] { return called == 1; }));
  }
  f.add_done_callback([&](const mp::Future<int>&) { ++called; });  // done already: at once
  EXPECT_EQ(called, 2);
  // Nobody calls result(): the callback still runs (the engine's thread reads the result).
  auto unwatched = ex.submit(square, 5);
  unwatched.add_done_callback([&](const mp::Future<int>& done) {
    std::lock_guard l(m);
    called += done.result();
    cv.notify_all();
  });
  {
    std::unique_lock l(m);
    ASSERT_TRUE(cv.wait_for(l, kHang, [&] { return called == 27; }));
  }
  for (std::size_t i = 0; i + 1 < queued.size(); ++i)
    EXPECT_EQ(queued[i].result(kHang), int(i * i));
  auto slow = ex.submit(pause_ms, 400);
  EXPECT_THROW(slow.result(0.01s), mp::TimeoutError);
}

TEST_P(ExecutorAcross, ADeadWorkerFailsOnlyItsFuture) {
  mp::ProcessPoolExecutor ex(opts(2));
  for (int how : {SIGKILL, SIGSEGV, 0}) {
    auto lost = ex.submit(die, how);
    const auto e = lost.exception(kHang);
    try {
      std::rethrow_exception(e);
    } catch (const mp::WorkerLost& w) {
      int expect = how == 0 ? 3 : -how;
#if defined(__SANITIZE_ADDRESS__)
      if (how == SIGSEGV) expect = 1;  // AddressSanitizer catches the segfault and exits 1
#elif defined(__SANITIZE_THREAD__)
      if (how == SIGSEGV) expect = 66;  // ThreadSanitizer catches it and exits 66
#endif
      EXPECT_EQ(w.exitcode(), expect) << w.what();
    } catch (const std::exception& other) {
      ADD_FAILURE() << other.what();
    }
    EXPECT_EQ(ex.submit(square, 5).result(kHang), 25);  // the executor goes on
  }
}

// 1,000 submits, 50 SIGKILLs paced by progress: every future is its result or a WorkerLost.
TEST_P(ExecutorAcross, KillsDuringASubmitStormLoseNoFuture) {
  mp::ProcessPoolExecutor ex(opts(2));
  std::vector<mp::Future<int>> fs;
  for (int i = 0; i < 1000; ++i) fs.push_back(ex.submit(pause_ms, i % 3));
  std::mt19937 rng(777);
  int kills = 0;
  for (std::size_t next = 0; kills < 50 && next < fs.size();) {
    auto pids = ex.worker_pids();
    if (!pids.empty()) {
      ::kill(pids[rng() % pids.size()], SIGKILL);
      ++kills;
    }
    fs[next].exception(kHang);  // paced by the executor's progress
    next += 1 + rng() % 20;
  }
  int ok = 0, lost = 0;
  for (std::size_t i = 0; i < fs.size(); ++i) {
    try {
      EXPECT_EQ(fs[i].result(kHang), int(i % 3));
      ++ok;
    } catch (const mp::WorkerLost&) {
      ++lost;
    }
  }
  EXPECT_EQ(ok + lost, 1000);
  EXPECT_LE(lost, kills);
  EXPECT_GT(ok, 900);
  ex.shutdown();
}

TEST_P(ExecutorAcross, AFailingInitializerBreaksTheExecutor) {
  mp::ProcessPoolExecutor ex(
      {.max_workers = 2, .mp_context = &ctx(), .initializer = mp::Initializer(failing_init)});
  auto f = ex.submit(square, 2);
  const std::string text = error_text<mp::BrokenProcessPool>([&] { f.result(kHang); });
  EXPECT_NE(text.find("std::runtime_error: init failed here"), std::string::npos) << text;
  EXPECT_THROW(ex.submit(square, 3), mp::BrokenProcessPool);
}

TEST_P(ExecutorAcross, WorkersStartOnDemandAndAreReused) {
  mp::ProcessPoolExecutor ex(opts(4));
  EXPECT_TRUE(ex.worker_pids().empty());
  std::set<int> pids;
  for (int i = 0; i < 10; ++i) pids.insert(ex.submit(own_pid, i).result(kHang));
  EXPECT_EQ(pids.size(), 1u);  // one at a time: one worker
  std::vector<mp::Future<int>> many;
  for (int i = 0; i < 60; ++i) many.push_back(ex.submit(pause_ms, 20));
  for (auto& f : many) f.result(kHang);
  EXPECT_LE(ex.worker_pids().size(), 4u);
}

TEST_P(ExecutorAcross, ShutdownRefusesCancelsAndWaits) {
  mp::ProcessPoolExecutor ex(opts(1));
  std::vector<mp::Future<int>> fs;
  for (int i = 0; i < 50; ++i) fs.push_back(ex.submit(pause_ms, 20));
  ex.shutdown(true, true);
  int cancelled = 0;
  for (auto& f : fs) {
    ASSERT_TRUE(f.done());
    if (f.cancelled())
      ++cancelled;
    else
      EXPECT_EQ(f.result(), 20);
  }
  EXPECT_GT(cancelled, 20);
  ex.shutdown();  // idempotent
  EXPECT_EQ(error_text<std::runtime_error>([&] { ex.submit(square, 1); }),
            "cannot schedule new futures after shutdown");
  mp::ProcessPoolExecutor nowait(opts(1));
  auto f = nowait.submit(pause_ms, 100);
  nowait.shutdown(false);
  EXPECT_EQ(f.result(kHang), 100);  // queued work still completes
}

TEST_P(ExecutorAcross, MaxTasksPerChildReplacesTheWorker) {
  if (GetParam() == "fork") GTEST_SKIP() << "refused under fork (tested below)";
  mp::ProcessPoolExecutor ex({.max_workers = 1, .mp_context = &ctx(), .max_tasks_per_child = 3});
  std::vector<int> pids;
  for (int i = 0; i < 4; ++i) pids.push_back(ex.submit(own_pid, i).result(kHang));
  EXPECT_EQ(pids[0], pids[1]);
  EXPECT_EQ(pids[1], pids[2]);
  EXPECT_NE(pids[2], pids[3]);
  EXPECT_LE(ex.worker_pids().size(), 1u);
}

TEST_P(ExecutorAcross, WaitAndAsCompleted) {
  mp::ProcessPoolExecutor ex(opts(4));  // the slow tasks never hold up the quick ones
  std::vector<mp::Future<int>> fs = {ex.submit(pause_ms, 0), ex.submit(pause_ms, 3000)};
  auto first = mp::wait(fs, kHang, mp::FIRST_COMPLETED);
  EXPECT_EQ(first.done.size(), 1u);
  EXPECT_EQ(first.not_done.size(), 1u);
  auto timed = mp::wait(fs, 0.05s);
  EXPECT_EQ(timed.not_done.size(), 1u);
  std::vector<mp::Future<int>> errs = {ex.submit(divide_into, 0), ex.submit(pause_ms, 3000)};
  auto exc = mp::wait(errs, kHang, mp::FIRST_EXCEPTION);
  EXPECT_EQ(exc.done.size(), 1u);
  EXPECT_NE(exc.done[0].exception(), nullptr);
  std::vector<mp::Future<int>> quick;
  for (int i = 0; i < 8; ++i) quick.push_back(ex.submit(square, i));
  std::set<int> got;
  for (const auto& f : mp::as_completed(quick, kHang)) got.insert(f.result());
  EXPECT_EQ(got, (std::set<int>{0, 1, 4, 9, 16, 25, 36, 49}));
  std::vector<mp::Future<int>> slow = {ex.submit(pause_ms, 3000), ex.submit(square, 2)};
  auto it = mp::as_completed(slow, 0.5s);
  int n = 0;
  const std::string text = error_text<mp::TimeoutError>([&] {
    while (it.next()) ++n;
  });
  EXPECT_EQ(text, "1 (of 2) futures unfinished");
  EXPECT_EQ(n, 1);
  ex.kill_workers();
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ExecutorAcross,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

TEST(Executor, ConstructorChecksUseCPythonsTexts) {
  EXPECT_EQ(
      error_text<std::invalid_argument>([] { mp::ProcessPoolExecutor e({.max_workers = 0}); }),
      "max_workers must be greater than 0");
  EXPECT_EQ(error_text<std::invalid_argument>(
                [] { mp::ProcessPoolExecutor e({.max_workers = 1, .max_tasks_per_child = 0}); }),
            "max_tasks_per_child must be >= 1");
  EXPECT_EQ(
      error_text<std::invalid_argument>([] {
        mp::ProcessPoolExecutor e(
            {.max_workers = 1, .mp_context = &mp::get_context("fork"), .max_tasks_per_child = 2});
      }),
      "max_tasks_per_child is incompatible with the 'fork' multiprocessing start method; "
      "supply a different mp_context.");
}

TEST(Executor, ThreadsSubmittingAsItShutsDownLoseNoFuture) {
  mp::ProcessPoolExecutor ex({.max_workers = 2});
  constexpr int kThreads = 4, kEach = 5000;
  std::vector<std::vector<std::pair<int, mp::Future<int>>>> accepted(kThreads);
  std::vector<int> refused(kThreads, 0);
  std::atomic<int> under_way{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        try {
          accepted[t].emplace_back(i, ex.submit(square, i));
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "cannot schedule new futures after shutdown");
          ++refused[t];
        }
        if (i == 500) ++under_way;
      }
    });
  while (under_way.load() < kThreads) std::this_thread::yield();  // every thread submitting
  ex.shutdown(false);
  for (auto& th : threads) th.join();
  std::size_t done = 0;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(accepted[t].size() + std::size_t(refused[t]), std::size_t(kEach));
    for (auto& [i, f] : accepted[t]) {
      EXPECT_EQ(f.result(kHang), i * i);  // accepted before the shutdown: it runs
      ++done;
    }
  }
  EXPECT_GT(done, std::size_t(kThreads) * 500);
  ex.shutdown(true);
}

TEST(Executor, TerminateWorkersFailsWhatWasOutstanding) {
  mp::ProcessPoolExecutor ex({.max_workers = 2});
  std::vector<mp::Future<int>> fs;
  for (int i = 0; i < 10; ++i) fs.push_back(ex.submit(pause_ms, 60000));
  ex.terminate_workers();
  for (auto& f : fs) {
    ASSERT_TRUE(f.done());
    EXPECT_EQ(error_text<mp::BrokenProcessPool>([&] { f.result(); }), "pool terminated");
  }
  EXPECT_TRUE(ex.worker_pids().empty());
}

}  // namespace
