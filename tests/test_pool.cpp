// CPython's _TestPool, _TestPoolWorkerErrors, _TestPoolWorkerLifetime and the pool items of
// SEMANTICS (146-164), under every start method, plus what ours promises beyond CPython:
// a dead worker fails only its own task, a throwing initializer breaks the pool instead of
// respawning for ever, terminate() fails every outstanding result.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "posix/posix.hpp"
#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

namespace {

int sqr(int x) {
  return x * x;
}
int mul(int a, int b) {
  return a * b;
}
int to_int(std::string s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument("invalid literal for int(): '" + s + "'");
  return std::stoi(s);
}
int raise_123(int) {
  throw std::runtime_error("123");
}
int self_pid(int) {
  return ::getpid();
}
std::string worker_name() {
  return mp::current_process().name();
}
int die_by(int sig) {
  if (sig == 0) mp::exit(7);
  if (sig == SIGSEGV) {
    volatile int* p = nullptr;
    *p = 1;  // a real segfault, not a raised signal
  }
  if (sig == SIGABRT) std::abort();
  ::raise(sig);
  return 0;
}
int sleep_forever() {
  for (;;) ::pause();
}
int pause_then(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(x));  // the work itself, not a sync
  return x;
}
void noop_child() {}
int start_a_child() {
  mp::Process p(noop_child);
  p.start();
  p.join();
  return 0;
}
void init_throws(std::string why) {
  throw std::runtime_error(why);
}
void init_dies() {
  ::raise(SIGKILL);
}
int g_initialized = 0;
void init_sets(int v) {
  g_initialized = v;
}
int read_initialized() {
  return g_initialized;
}

// A result whose serializer throws in the worker (CPython's unpicklable result).
struct Unsendable {
  template <class A>
  void save(A&) const {
    throw std::runtime_error("cannot send this");
  }
  template <class A>
  void load(A&) {}
};
Unsendable make_unsendable() {
  return {};
}

// CPython's crash matrix (test_deadlock.py): a value whose serializer fails where `mode` says.
int g_test_pid = 0;  // set in the test process; 0 in a spawned worker, another pid in a fork one
bool in_test_process() {
  return g_test_pid == ::getpid();
}
enum HostileMode : int {
  kFine,
  kKillOnLoad,         // the worker dies reading the task
  kExitOnLoad,         // mp::exit while the worker reads the task
  kThrowOnLoad,        // an error while the worker reads the task
  kKillOnSave,         // the worker dies writing the result
  kThrowOnParentLoad,  // an error while the parent reads the result
  kThrowOnParentSave,  // an error while the parent writes the task
};
struct Hostile {
  int mode = kFine;
  template <class A>
  void save(A& ar) const {
    if (mode == kThrowOnParentSave && in_test_process())
      throw std::runtime_error("cannot write this argument");
    if (mode == kKillOnSave && !in_test_process()) ::raise(SIGKILL);
    ar(mode);
  }
  template <class A>
  void load(A& ar) {
    ar(mode);
    if (in_test_process()) {
      if (mode == kThrowOnParentLoad) throw std::runtime_error("cannot read this result");
      return;
    }
    if (mode == kKillOnLoad) ::raise(SIGKILL);
    if (mode == kExitOnLoad) mp::exit(5);
    if (mode == kThrowOnLoad) throw std::runtime_error("cannot read this argument");
  }
};
int take(Hostile h) {
  return h.mode;
}
Hostile give(int mode) {
  return Hostile{mode};
}
int big_then_die(std::string big) {
  if (big.size() > 1000) ::raise(SIGKILL);
  return 0;
}

class PoolAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
  mp::PoolOptions opts(int n) const { return {.processes = n, .context = &ctx()}; }
};

TEST_P(PoolAcross, ApplyMapStarmapEqualTheSerialResults) {
  mp::Pool pool(opts(4));
  EXPECT_EQ(pool.apply(sqr, 5), 25);
  std::vector<int> in(10), expect(10);
  std::iota(in.begin(), in.end(), 0);
  std::transform(in.begin(), in.end(), expect.begin(), sqr);
  EXPECT_EQ(pool.map(sqr, in), expect);
  std::vector<int> hundred(100), expect100(100);
  std::iota(hundred.begin(), hundred.end(), 0);
  std::transform(hundred.begin(), hundred.end(), expect100.begin(), sqr);
  EXPECT_EQ(pool.map(sqr, hundred, 20), expect100);
  EXPECT_EQ(pool.map_async(sqr, hundred).get(), expect100);
  std::vector<std::tuple<int, int>> pairs;
  for (int i = 0; i < 10; ++i) pairs.emplace_back(i, i + 1);
  std::vector<int> products;
  for (auto [a, b] : pairs) products.push_back(a * b);
  EXPECT_EQ(pool.starmap(mul, pairs), products);
  EXPECT_EQ(pool.starmap_async(mul, pairs, 3).get(), products);
  std::vector<std::pair<int, int>> as_pairs;
  for (auto [a, b] : pairs) as_pairs.emplace_back(a, b);
  EXPECT_EQ(pool.starmap(mul, as_pairs), products);
  // A lambda without captures is a plain function.
  EXPECT_EQ(pool.apply([](int a, int b) { return a - b; }, 9, 4), 5);
  EXPECT_EQ(pool.apply([](const std::string& s) { return s + "!"; }, "hi"), "hi!");
}

TEST_P(PoolAcross, EmptyInputsGiveEmptyResults) {
  mp::Pool pool(opts(2));
  const std::vector<int> none;
  EXPECT_TRUE(pool.map(sqr, none).empty());
  EXPECT_TRUE(pool.map_async(sqr, none, 1).get(kHang).empty());
  EXPECT_FALSE(pool.imap(sqr, none).next(kHang));
  EXPECT_FALSE(pool.imap_unordered(sqr, none).next(kHang));
}

TEST_P(PoolAcross, ImapKeepsOrderImapUnorderedTheSameItems) {
  mp::Pool pool(opts(3));
  std::vector<int> got;
  for (int v : pool.imap(sqr, std::views::iota(0, 10))) got.push_back(v);
  std::vector<int> expect(10);
  for (int i = 0; i < 10; ++i) expect[i] = i * i;
  EXPECT_EQ(got, expect);
  auto it = pool.imap(sqr, std::views::iota(0, 1000), 100);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(it.next(kHang), i * i);
  EXPECT_FALSE(it.next(kHang));
  EXPECT_FALSE(it.next(kHang));  // and again: the end stays the end
  std::multiset<int> unordered;
  for (int v : pool.imap_unordered(sqr, std::views::iota(0, 100), 7)) unordered.insert(v);
  std::multiset<int> expect_set;
  for (int i = 0; i < 100; ++i) expect_set.insert(i * i);
  EXPECT_EQ(unordered, expect_set);
}

TEST_P(PoolAcross, ImapOverAnEndlessRangeIsLazy) {
  mp::Pool pool(opts(2));
  auto it = pool.imap(sqr, std::views::iota(0));  // never ends: read as far as needed only
  for (int i = 0; i < 200; ++i) ASSERT_EQ(it.next(kHang), i * i);
}

TEST_P(PoolAcross, TaskErrorsCarryTypeTextPidAndIndex) {
  mp::Pool pool(opts(2));
  const auto pids = pool.worker_pids();
  try {
    pool.apply(raise_123, 0);
    ADD_FAILURE() << "no error";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::runtime_error");
    EXPECT_EQ(e.message(), "123");
    EXPECT_NE(std::find(pids.begin(), pids.end(), e.pid()), pids.end());
    EXPECT_EQ(e.index(), 0u);
  }
  // map: the failing item's input position; the first (in input order) of several wins.
  std::vector<std::string> in = {"1", "2", "3", "x", "5", "y"};
  try {
    pool.map(to_int, in, 2);
    ADD_FAILURE() << "no error";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::invalid_argument");
    EXPECT_EQ(e.message(), "invalid literal for int(): 'x'");
    EXPECT_EQ(e.index(), 3u);
  }
  EXPECT_EQ(pool.apply(sqr, 3), 9);  // the pool goes on
}

TEST_P(PoolAcross, AsyncResultWaitsTimesOutAndReports) {
  mp::Pool pool(opts(2));
  auto r = pool.apply_async(pause_then, 300);
  const std::string not_ready = error_text<std::logic_error>([&] { r.successful(); });
  EXPECT_TRUE(not_ready.starts_with("<mp.AsyncResult object at 0x")) << not_ready;
  EXPECT_TRUE(not_ready.ends_with("> not ready")) << not_ready;
  EXPECT_FALSE(r.ready());
  EXPECT_THROW(r.get(0.01s), mp::TimeoutError);
  EXPECT_FALSE(r.wait(0.01s));
  EXPECT_EQ(r.get(kHang), 300);
  EXPECT_TRUE(r.ready());
  EXPECT_TRUE(r.successful());
  EXPECT_EQ(r.get(), 300);  // again
  auto bad = pool.apply_async(raise_123, 1);
  bad.wait();
  EXPECT_FALSE(bad.successful());
  EXPECT_THROW(bad.get(), mp::RemoteError);
}

TEST_P(PoolAcross, CallbacksRunInAPoolThread) {
  mp::Pool pool(opts(2));
  std::mutex m;
  std::condition_variable cv;
  std::vector<int> got;
  std::string error;
  std::thread::id where;
  auto r = pool.map_async_with(
      to_int, std::vector<std::string>{"1"}, std::nullopt,
      [&](const std::vector<int>& v) {
        std::lock_guard l(m);
        got = v;
        where = std::this_thread::get_id();
        cv.notify_all();
      },
      [&](std::exception_ptr) { ADD_FAILURE() << "error callback for a good input"; });
  EXPECT_EQ(r.get(kHang), std::vector<int>{1});
  {
    std::unique_lock l(m);
    ASSERT_TRUE(cv.wait_for(l, kHang, [&] { return !got.empty(); }));
  }
  EXPECT_EQ(got, std::vector<int>{1});
  EXPECT_NE(where, std::this_thread::get_id());
  auto bad = pool.map_async_with(
      to_int, std::vector<std::string>{"a"}, std::nullopt,
      [&](const std::vector<int>&) { ADD_FAILURE() << "callback for a failed map"; },
      [&](std::exception_ptr e) {
        std::lock_guard l(m);
        try {
          std::rethrow_exception(e);
        } catch (const mp::RemoteError& re) {
          error = re.type_name();
        }
        cv.notify_all();
      });
  EXPECT_THROW(bad.get(kHang), mp::RemoteError);
  std::unique_lock l(m);
  ASSERT_TRUE(cv.wait_for(l, kHang, [&] { return !error.empty(); }));
  EXPECT_EQ(error, "std::invalid_argument");
}

void results_nobody_waits_for_arrive(mp::PoolOptions options);

TEST_P(PoolAcross, ResultsNobodyWaitsForStillArrive) {
  // The engine's thread leaves the workers' sockets to a caller in get(), and to nobody while
  // no task is out: results polled with ready(), or delivered to a callback, must not depend
  // on a caller coming to wait. In a hot pool too (its callers spin; the engine then looks by
  // itself now and then instead of being told).
  for (const mp::Duration spin : {mp::Duration(0), mp::Duration(50e-6)})
    results_nobody_waits_for_arrive({.processes = 2, .context = &ctx(), .spin = spin});
}

void results_nobody_waits_for_arrive(mp::PoolOptions options) {
  SCOPED_TRACE(options.spin.count());
  mp::Pool pool(options);
  auto polled = pool.apply_async(sqr, 7);
  const auto until = std::chrono::steady_clock::now() + kHang;
  while (!polled.ready() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  ASSERT_TRUE(polled.ready());
  EXPECT_EQ(polled.get(), 49);
  std::mutex m;
  std::condition_variable cv;
  std::vector<int> got;
  auto note = [&](const int& v) {
    std::lock_guard l(m);
    got.push_back(v);
    cv.notify_all();
  };
  pool.apply_async_with(sqr, note, {}, 8);
  {
    std::unique_lock l(m);
    ASSERT_TRUE(cv.wait_for(l, kHang, [&] { return got.size() == 1; }));
  }
  // While a caller waits for another result (it polls the workers itself), and after it left.
  auto slow = pool.apply_async(pause_then, 50);
  pool.apply_async_with(sqr, note, {}, 9);
  auto late = pool.apply_async(pause_then, 100);
  EXPECT_EQ(slow.get(kHang), 50);
  while (!late.ready() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  EXPECT_TRUE(late.ready());
  std::unique_lock l(m);
  ASSERT_TRUE(cv.wait_for(l, kHang, [&] { return got.size() == 2; }));
  EXPECT_EQ(got, (std::vector<int>{64, 81}));
}

TEST_P(PoolAcross, AHotPoolServesAndLosesNothing) {
  // Hot: workers and waiting callers spin before they sleep; the engine's thread mostly leaves
  // the workers to them. Round trips, a death, a map, callbacks, tasks from two threads.
  mp::Pool pool({.processes = 2, .context = &ctx(), .spin = mp::Duration(50e-6)});
  for (int i = 0; i < 200; ++i) ASSERT_EQ(pool.apply(sqr, i), i * i);
  EXPECT_THROW(pool.apply(die_by, SIGKILL), mp::WorkerLost);
  std::vector<int> in(1000);
  std::iota(in.begin(), in.end(), 0);
  const auto out = pool.map(sqr, in, 7);
  for (int i : in) ASSERT_EQ(out[std::size_t(i)], i * i);
  std::atomic<int> called{0};
  std::thread other([&] {
    for (int i = 0; i < 100; ++i)
      pool.apply_async_with(
          sqr, [&](const int&) { ++called; }, {}, i);
  });
  for (int i = 0; i < 100; ++i) ASSERT_EQ(pool.apply(mul, i, 2), 2 * i);
  other.join();
  const auto until = std::chrono::steady_clock::now() + kHang;
  while (called < 100 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  EXPECT_EQ(called, 100);
  pool.close();
  pool.join();
}

TEST_P(PoolAcross, ADeadWorkerFailsOnlyItsTaskAndIsReplaced) {
  mp::Pool pool(opts(2));
  const struct {
    int how;
    int exitcode;
  } deaths[] = {
    {SIGKILL, -SIGKILL},
#if defined(__SANITIZE_ADDRESS__)
    {SIGSEGV, 1},  // AddressSanitizer catches the segfault and exits 1
#elif defined(__SANITIZE_THREAD__)
    {SIGSEGV, 66},  // ThreadSanitizer catches it and exits 66
#else
    {SIGSEGV, -SIGSEGV},
#endif
    {SIGABRT, -SIGABRT},
    {0, 7}
  };
  for (const auto& d : deaths) {
    try {
      pool.apply(die_by, d.how);
      ADD_FAILURE() << "the task's death was not reported";
    } catch (const mp::WorkerLost& e) {
      EXPECT_EQ(e.exitcode(), d.exitcode) << e.what();
      EXPECT_GT(e.pid(), 0);
      EXPECT_EQ(e.index(), 0u);
      const mp::BrokenProcessPool& as_broken = e;  // what CPython's executor would raise
      EXPECT_NE(std::string(as_broken.what()).find("died"), std::string::npos);
    }
    EXPECT_EQ(pool.apply(sqr, 4), 16);
    EXPECT_EQ(pool.worker_pids().size(), 2u);
  }
  pool.close();
  pool.join();
}

TEST_P(PoolAcross, WorkersKilledInTheirFirstTaskNeverBreakThePool) {
  // Each replacement dies in the first task it begins: not a crash at start-up.
  mp::Pool pool({.processes = 1, .context = &ctx(), .max_startup_failures = 2});
  for (int i = 0; i < 6; ++i) EXPECT_THROW(pool.apply(die_by, SIGKILL), mp::WorkerLost) << i;
  EXPECT_EQ(pool.apply(sqr, 5), 25);
}

TEST_P(PoolAcross, TasksSentToADeadWorkerAndNotBegunRunElsewhere) {
  // One worker, two tasks in its window: the first kills it, the second was sent but never
  // begun, so it runs on the replacement instead of failing.
  mp::Pool pool({.processes = 1, .context = &ctx(), .window = 2});
  auto dies = pool.apply_async(die_by, SIGKILL);
  auto lives = pool.apply_async(sqr, 6);
  auto also = pool.apply_async(sqr, 7);
  EXPECT_THROW(dies.get(kHang), mp::WorkerLost);
  EXPECT_EQ(lives.get(kHang), 36);
  EXPECT_EQ(also.get(kHang), 49);
}

TEST_P(PoolAcross, MapWithADeadWorkerFailsThatChunkOnly) {
  mp::Pool pool(opts(2));
  std::vector<int> in = {1, 2, 3, SIGKILL, 5, 6};
  auto r = pool.imap(
      [](int x) {
        if (x == SIGKILL) ::raise(SIGKILL);
        return x * 10;
      },
      in, 2);
  EXPECT_EQ(r.next(kHang), 10);
  EXPECT_EQ(r.next(kHang), 20);
  try {
    r.next(kHang);
    ADD_FAILURE() << "the lost chunk was not reported";
  } catch (const mp::WorkerLost& e) {
    EXPECT_EQ(e.index(), 2u);  // the chunk [3, SIGKILL]
  }
  EXPECT_EQ(r.next(kHang), 50);
  EXPECT_EQ(r.next(kHang), 60);
  EXPECT_FALSE(r.next(kHang));
}

TEST_P(PoolAcross, AThrowingInitializerBreaksThePoolWithItsError) {
  mp::Pool pool({.processes = 2,
                 .initializer = mp::Initializer(init_throws, std::string("no database")),
                 .context = &ctx()});
  auto r = pool.apply_async(sqr, 2);
  const std::string text = error_text<mp::BrokenProcessPool>([&] { r.get(kHang); });
  EXPECT_NE(text.find("initializer failed"), std::string::npos) << text;
  EXPECT_NE(text.find("std::runtime_error: no database"), std::string::npos) << text;
  // Later tasks: the same error, at once; no worker is started again.
  auto later = pool.apply_async(sqr, 3);
  EXPECT_TRUE(later.ready());
  EXPECT_THROW(later.get(), mp::BrokenProcessPool);
  EXPECT_TRUE(pool.worker_pids().empty());
}

TEST_P(PoolAcross, WorkersDyingAtStartUpBreakThePoolAfterTheLimit) {
  mp::Pool pool({.processes = 1,
                 .initializer = mp::Initializer(init_dies),
                 .context = &ctx(),
                 .max_startup_failures = 3});
  const std::string text = error_text<mp::BrokenProcessPool>([&] { pool.apply(sqr, 2); });
  EXPECT_NE(text.find("3 workers in a row died before finishing a task"), std::string::npos)
      << text;
  EXPECT_NE(text.find("exit code -9"), std::string::npos) << text;
}

TEST_P(PoolAcross, InitializerRunsInEachWorkerBeforeAnyTask) {
  mp::Pool pool({.processes = 3, .initializer = mp::Initializer(init_sets, 42), .context = &ctx()});
  EXPECT_EQ(pool.worker_pids().size(), 3u);
  for (int v : pool.map([](int) { return read_initialized(); }, std::vector<int>(30, 0), 1))
    EXPECT_EQ(v, 42);
}

TEST_P(PoolAcross, TerminateFailsEveryOutstandingResultPromptly) {
  mp::Pool pool(opts(2));
  std::vector<mp::AsyncResult<int>> results;
  for (int i = 0; i < 10000; ++i) results.push_back(pool.apply_async(sleep_forever));
  pool.terminate();
  for (auto& r : results) {
    ASSERT_TRUE(r.ready());
    EXPECT_EQ(error_text<mp::BrokenProcessPool>([&] { r.get(); }), "pool terminated");
  }
  pool.join();
  EXPECT_EQ(error_text<std::logic_error>([&] { pool.apply_async(sqr, 1); }), "Pool not running");
}

TEST_P(PoolAcross, MaxTasksPerChildReplacesWorkers) {
  mp::Pool pool({.processes = 2, .maxtasksperchild = 10, .context = &ctx()});
  std::vector<mp::AsyncResult<int>> rs;
  for (int i = 0; i < 100; ++i) rs.push_back(pool.apply_async(self_pid, i));
  std::set<int> pids;
  for (auto& r : rs) {
    const int pid = r.get(kHang);
    EXPECT_GT(pid, 0);
    pids.insert(pid);
  }
  EXPECT_GE(pids.size(), 10u);  // 100 tasks, at most 10 each
  mp::Pool once({.processes = 2, .maxtasksperchild = 1, .context = &ctx()});
  std::vector<mp::AsyncResult<int>> six;
  for (int i = 0; i < 6; ++i) six.push_back(once.apply_async(sqr, i));
  once.close();
  once.join();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(six[i].get(), i * i);
}

TEST_P(PoolAcross, WorkersAreNamedAndDaemonic) {
  mp::Pool pool(opts(2));
  const std::string name = pool.apply(worker_name);
  const std::string prefix = GetParam() == "fork"    ? "ForkPoolWorker-"
                             : GetParam() == "spawn" ? "SpawnPoolWorker-"
                                                     : "ForkServerPoolWorker-";
  EXPECT_TRUE(name.starts_with(prefix)) << name;
  try {
    pool.apply(start_a_child);
    ADD_FAILURE() << "a daemonic worker started a child";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::logic_error");
    EXPECT_EQ(e.message(), "daemonic processes are not allowed to have children");
  }
}

TEST_P(PoolAcross, AnUnsendableResultIsMaybeEncodingError) {
  mp::Pool pool(opts(2));
  const auto before = pool.worker_pids();
  for (int i = 0; i < 20; ++i) {
    const std::string text =
        error_text<mp::MaybeEncodingError>([&] { pool.apply(make_unsendable); });
    EXPECT_NE(text.find("Error sending result: '"), std::string::npos) << text;
    EXPECT_NE(text.find("Unsendable"), std::string::npos) << text;
    EXPECT_NE(text.find("Reason: 'std::runtime_error: cannot send this'"), std::string::npos)
        << text;
  }
  EXPECT_EQ(pool.worker_pids(), before);  // no worker lost
}

TEST_P(PoolAcross, ATaskPastItsTimeoutFailsAndItsWorkerIsReplaced) {
  mp::Pool pool({.processes = 1, .context = &ctx(), .task_timeout = 0.2s});
  const auto before = pool.worker_pids();
  auto slow = pool.apply_async(sleep_forever);
  auto next = pool.apply_async(sqr, 5);  // sent behind it, never begun: runs on the next worker
  const std::string text = error_text<mp::TimeoutError>([&] { slow.get(kHang); });
  EXPECT_NE(text.find("timeout"), std::string::npos) << text;
  EXPECT_EQ(next.get(kHang), 25);
  EXPECT_NE(pool.worker_pids(), before);
}

TEST_P(PoolAcross, KillsAtRandomMomentsLoseNoTask) {
  mp::Pool pool(opts(2));
  std::vector<mp::AsyncResult<int>> rs;
  for (int i = 0; i < 1000; ++i) rs.push_back(pool.apply_async(pause_then, i % 3));
  std::mt19937 rng(12345);
  int kills = 0;
  for (std::size_t done = 0; kills < 50 && done < rs.size();) {
    auto pids = pool.worker_pids();
    if (!pids.empty()) {
      ::kill(pids[rng() % pids.size()], SIGKILL);
      ++kills;
    }
    // Pace the kills by the pool's own progress: wait for the next result.
    rs[done].wait(kHang);
    done += 1 + rng() % 20;
  }
  int ok = 0, lost = 0;
  for (std::size_t i = 0; i < rs.size(); ++i) {
    ASSERT_TRUE(rs[i].wait(kHang)) << "task " << i << " hung";
    try {
      EXPECT_EQ(rs[i].get(), int(i % 3));
      ++ok;
    } catch (const mp::WorkerLost&) {
      ++lost;
    }
  }
  EXPECT_EQ(ok + lost, 1000);
  EXPECT_LE(lost, kills);
  EXPECT_GT(ok, 900);
  pool.close();
  pool.join();
}

// The same storm under map (50 maps of 20 items, chunksize 1) and imap (1,000 items): each map
// returns every result or fails with WorkerLost; each imap item is its result or a WorkerLost.
TEST_P(PoolAcross, KillsDuringMapAndImapLoseNoTask) {
  mp::Pool pool(opts(2));
  std::mt19937 rng(54321);
  int kills = 0;
  auto kill_one = [&] {
    auto pids = pool.worker_pids();
    if (pids.empty()) return;
    ::kill(pids[rng() % pids.size()], SIGKILL);
    ++kills;
  };
  std::vector<int> expect(20);
  for (int i = 0; i < 20; ++i) expect[i] = i % 3;
  int maps_ok = 0, maps_lost = 0;
  for (int round = 0; round < 50; ++round) {
    auto r = pool.map_async(pause_then, expect, 1);
    if (rng() % 2) kill_one();  // at once: a task running, or one sent and not yet begun
    ASSERT_TRUE(r.wait(kHang)) << "map " << round << " hung";
    try {
      EXPECT_EQ(r.get(), expect);
      ++maps_ok;
    } catch (const mp::WorkerLost& e) {
      EXPECT_LT(e.index(), 20u) << e.what();
      ++maps_lost;
    }
  }
  EXPECT_EQ(maps_ok + maps_lost, 50);
  EXPECT_LE(maps_lost, kills);
  EXPECT_GT(maps_ok, 0);
  const int map_kills = kills;

  std::vector<int> in(1000);
  for (int i = 0; i < 1000; ++i) in[i] = i % 3;
  auto it = pool.imap(pause_then, in, 1);
  int ok = 0, lost = 0;
  for (int i = 0; i < 1000; ++i) {
    if (kills - map_kills < 50 && rng() % 20 == 0) kill_one();
    try {
      auto v = it.next(kHang);
      ASSERT_TRUE(v) << "imap ended early at " << i;
      EXPECT_EQ(*v, i % 3);
      ++ok;
    } catch (const mp::WorkerLost&) {
      ++lost;
    }
  }
  EXPECT_FALSE(it.next(kHang));
  EXPECT_EQ(ok + lost, 1000);
  EXPECT_LE(lost, kills - map_kills);
  EXPECT_GT(ok, 900);
  pool.close();
  pool.join();
}

TEST_P(PoolAcross, CrashMatrixResolvesWithoutAHang) {
  g_test_pid = ::getpid();
  mp::Pool pool(opts(2));
  auto lost = [&](auto&& call, int exitcode) {
    try {
      call();
      ADD_FAILURE() << "no WorkerLost";
    } catch (const mp::WorkerLost& e) {
      EXPECT_EQ(e.exitcode(), exitcode) << e.what();
    }
    EXPECT_EQ(pool.apply(sqr, 3), 9);  // usable after each
  };
  lost([&] { pool.apply(take, Hostile{kKillOnLoad}); }, -SIGKILL);
  lost([&] { pool.apply(take, Hostile{kExitOnLoad}); }, 5);
  lost([&] { pool.apply(give, int(kKillOnSave)); }, -SIGKILL);
  lost([&] { pool.apply(big_then_die, std::string(16 << 20, 'x')); }, -SIGKILL);  // gh-94777
  try {
    pool.apply(take, Hostile{kThrowOnLoad});
    ADD_FAILURE() << "no error";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.message(), "cannot read this argument");
  }
  // Errors on the parent's side: the error itself, on that result only.
  EXPECT_EQ(error_text<std::runtime_error>([&] { pool.apply(give, int(kThrowOnParentLoad)); }),
            "cannot read this result");
  auto unsent = pool.apply_async(take, Hostile{kThrowOnParentSave});
  EXPECT_EQ(error_text<std::runtime_error>([&] { unsent.get(kHang); }),
            "cannot write this argument");
  EXPECT_EQ(error_text<std::runtime_error>([&] {
              pool.map(take, std::vector<Hostile>{{kFine}, {kThrowOnParentSave}});
            }),
            "cannot write this argument");
  EXPECT_EQ(pool.map(take, std::vector<Hostile>{{kFine}, {kFine}}), (std::vector<int>{0, 0}));
  mp::ProcessPoolExecutor ex({.max_workers = 1, .mp_context = &ctx()});
  auto f = ex.submit(take, Hostile{kThrowOnParentSave});
  EXPECT_EQ(error_text<std::runtime_error>([&] { f.result(kHang); }), "cannot write this argument");
  EXPECT_EQ(ex.submit(sqr, 4).result(kHang), 16);
}

int pool_in_a_child(int n) {
  mp::Pool pool(2);
  return pool.apply(sqr, n);
}
void run_pool_in_child(std::string path) {
  Channel::send(path, std::to_string(pool_in_a_child(9)));
}
// Results several times the size of a worker's result ring (256 KiB), each with its own bytes.
std::string blob(int i) {
  std::string s(std::size_t(3) << 20, '\0');
  for (std::size_t k = 0; k < s.size(); ++k)
    s[k] = static_cast<char>('a' + (k * 7 + std::size_t(i)) % 26);
  return s;
}
// Says which worker runs it, then returns more than its ring holds: with its parent stopped,
// the worker waits for room.
std::string pid_then_64mib(std::string path) {
  Channel::send(path, std::to_string(::getpid()));
  return std::string(std::size_t(64) << 20, 'x');
}
void own_a_pool_waiting_for_64mib(std::string path) {
  // The second worker is started by the pool's thread, so no parent-death signal ends it
  // with us (that follows the thread that started it): it has to notice by itself.
  mp::Pool pool(mp::PoolOptions{.processes = 1, .maxtasksperchild = 1});
  pool.apply(sqr, 2);
  pool.apply(pid_then_64mib, path);
  Channel::send(path, "read it all");  // not expected: the test kills us first
}

TEST_P(PoolAcross, ResultsLargerThanTheResultRingArriveWhole) {
  mp::Pool pool(opts(2));
  const std::vector<int> in{0, 1, 2, 3, 4, 5};
  const auto out = pool.map(blob, in, 1);
  ASSERT_EQ(out.size(), in.size());
  for (int i : in) EXPECT_TRUE(out[std::size_t(i)] == blob(i)) << "result " << i;
  // Big and tiny results interleaved on the same workers keep their order and their bytes.
  std::vector<mp::AsyncResult<std::string>> big;
  std::vector<mp::AsyncResult<int>> small;
  for (int i = 0; i < 8; ++i) {
    big.push_back(pool.apply_async(blob, i));
    small.push_back(pool.apply_async(sqr, i));
  }
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(big[std::size_t(i)].get(kHang) == blob(i)) << "big " << i;
    EXPECT_EQ(small[std::size_t(i)].get(kHang), i * i);
  }
}

TEST_P(PoolAcross, AWorkerWaitingForRoomLeavesWhenItsParentDies) {
  Channel ch;
  auto owner = ctx().Process(own_a_pool_waiting_for_64mib, ch.path());
  owner.start();
  const auto line = ch.recv();
  ASSERT_TRUE(line) << "the task did not start";
  const int worker = std::stoi(*line);
  auto worker_fd = mp::posix::open_pidfd(worker);  // readable once it has ended
  ASSERT_TRUE(worker_fd) << "pidfd_open(" << worker << ")";
  // The parent stops reading: the worker fills its ring and waits; then the parent dies.
  ASSERT_EQ(::kill(*owner.pid(), SIGSTOP), 0);
  ASSERT_EQ(::kill(*owner.pid(), SIGKILL), 0);
  owner.join(kHang);
  EXPECT_EQ(owner.exitcode(), -SIGKILL);
  EXPECT_TRUE(wait_readable(worker_fd.get(), kHang))
      << "worker " << worker << " outlived its parent";
}

TEST_P(PoolAcross, APoolInsideAChildWorks) {
  Channel ch;
  auto p = ctx().Process(run_pool_in_child, ch.path());
  p.start();
  EXPECT_EQ(ch.recv(), "81");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, PoolAcross, ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

// ---- argument checks and misuse (one method is enough) ----

TEST(Pool, ConstructorChecksUseCPythonsTexts) {
  EXPECT_EQ(error_text<std::invalid_argument>([] { mp::Pool p(0); }),
            "Number of processes must be at least 1");
  EXPECT_EQ(error_text<std::invalid_argument>([] { mp::Pool p(-1); }),
            "Number of processes must be at least 1");
  for (int bad : {0, -1})
    EXPECT_EQ(error_text<std::invalid_argument>(
                  [&] { mp::Pool p({.processes = 1, .maxtasksperchild = bad}); }),
              "maxtasksperchild must be a positive int or None");
}

TEST(Pool, ChunksizeZeroIsAnErrorEverywhere) {
  mp::Pool pool(1);
  const std::vector<int> in = {1, 2};
  const std::vector<std::tuple<int, int>> pairs = {{1, 2}};
  const std::string text = "Chunksize must be 1+, not 0";
  EXPECT_EQ(error_text<std::invalid_argument>([&] { pool.map(sqr, in, 0); }), text);
  EXPECT_EQ(error_text<std::invalid_argument>([&] { pool.map_async(sqr, in, 0); }), text);
  EXPECT_EQ(error_text<std::invalid_argument>([&] { pool.starmap(mul, pairs, 0); }), text);
  EXPECT_EQ(error_text<std::invalid_argument>([&] { pool.imap(sqr, in, 0); }), text);
  EXPECT_EQ(error_text<std::invalid_argument>([&] { pool.imap_unordered(sqr, in, 0); }), text);
}

TEST(Pool, CloseJoinAndStateErrors) {
  mp::Pool pool(2);
  EXPECT_EQ(pool.repr(), "<mp.Pool state=RUN pool_size=2>");
  EXPECT_EQ(error_text<std::logic_error>([&] { pool.join(); }), "Pool is still running");
  auto r = pool.apply_async(sqr, 8);
  pool.close();
  EXPECT_EQ(pool.repr(), "<mp.Pool state=CLOSE pool_size=2>");
  EXPECT_EQ(error_text<std::logic_error>([&] { pool.apply_async(sqr, 1); }), "Pool not running");
  EXPECT_EQ(error_text<std::logic_error>([&] { pool.map(sqr, std::vector<int>{1}); }),
            "Pool not running");
  pool.join();  // the queued task finishes first
  EXPECT_EQ(r.get(), 64);
  EXPECT_TRUE(pool.worker_pids().empty());
}

struct InputFails {  // an input that throws at item 7
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    int i = 0;
    int operator*() const {
      if (i == 7) throw std::out_of_range("input failed at 7");
      return i;
    }
    iterator& operator++() {
      ++i;
      return *this;
    }
    void operator++(int) { ++i; }
    bool operator==(const iterator& o) const { return i == o.i; }
  };
  iterator begin() const { return {0}; }
  iterator end() const { return {20}; }
};

TEST(Pool, AnInputThatThrowsWhileReadBehavesAsCPython) {
  mp::Pool pool(2);
  EXPECT_EQ(error_text<std::out_of_range>([&] { pool.map(sqr, InputFails{}); }),
            "input failed at 7");
  EXPECT_EQ(pool.apply(sqr, 2), 4);  // still usable
  for (auto [chunksize, expect] : {std::pair{2, 6}, std::pair{4, 4}, std::pair{1, 7}}) {
    auto it = pool.imap(sqr, InputFails{}, std::size_t(chunksize));
    int got = 0;
    try {
      while (it.next(kHang)) ++got;
      ADD_FAILURE() << "the input's exception was not thrown";
    } catch (const std::out_of_range& e) {
      EXPECT_STREQ(e.what(), "input failed at 7");
    }
    EXPECT_EQ(got, expect) << "chunksize " << chunksize;
  }
}

// Tasks submitted by other threads while the engine's thread holds its lock wait in an intake
// of their own (a submitter never blocks on that lock): none may be lost when the pool closes
// or terminates meanwhile, and none may slip in after.
TEST(Pool, ThreadsSubmittingAsThePoolClosesOrTerminatesLoseNoTask) {
  for (const bool terminate : {false, true}) {
    SCOPED_TRACE(terminate ? "terminate" : "close");
    mp::Pool pool(2);
    constexpr int kThreads = 4, kEach = 5000;
    std::vector<std::vector<std::pair<int, mp::AsyncResult<int>>>> accepted(kThreads);
    std::vector<int> refused(kThreads, 0);
    std::atomic<int> under_way{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < kEach; ++i) {
          try {
            accepted[t].emplace_back(i, pool.apply_async(sqr, i));
          } catch (const std::logic_error& e) {
            EXPECT_STREQ(e.what(), "Pool not running");
            ++refused[t];
          }
          if (i == 500) ++under_way;
        }
      });
    while (under_way.load() < kThreads) std::this_thread::yield();  // every thread submitting
    terminate ? pool.terminate() : pool.close();
    for (auto& th : threads) th.join();
    pool.join();
    std::size_t done = 0, failed = 0;
    for (int t = 0; t < kThreads; ++t) {
      EXPECT_EQ(accepted[t].size() + std::size_t(refused[t]), std::size_t(kEach));
      for (auto& [i, r] : accepted[t]) {
        ASSERT_TRUE(r.wait(kHang)) << "task " << i << " of thread " << t << " never settled";
        if (r.successful()) {
          EXPECT_EQ(r.get(), i * i);
          ++done;
          continue;
        }
        // Refused (it passed the pool's check as close() began), or failed by terminate().
        try {
          r.get();
        } catch (const mp::BrokenProcessPool& e) {
          EXPECT_TRUE(terminate);  // closing runs every accepted task
          EXPECT_STREQ(e.what(), "pool terminated");
          ++failed;
        } catch (const std::logic_error& e) {
          EXPECT_STREQ(e.what(), "Pool not running");
        }
      }
    }
    EXPECT_GT(done + failed, std::size_t(kThreads) * 500);
    if (!terminate) {
      EXPECT_EQ(failed, 0u);
    }
  }
}

TEST(Pool, NoFailFastMapWaitsForEveryChunk) {
  mp::Pool pool(2);
  std::vector<int> in = {300, -1, 300, 300};
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(pool.map(
                   [](int ms) {
                     if (ms < 0) throw std::runtime_error("bad");
                     return pause_then(ms);
                   },
                   in, 1),
               mp::RemoteError);
  // The error is thrown once the chunks behind it have finished too (#23992).
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 290ms);
  pool.close();
  pool.join();
}

TEST(Pool, TwoHundredWorkers) {
  mp::Pool pool(200);
  std::vector<int> in(1000);
  std::iota(in.begin(), in.end(), 0);
  const auto squares = pool.map(sqr, in);
  EXPECT_EQ(std::accumulate(squares.begin(), squares.end(), 0LL), 332833500LL);
}

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, std::size_t(n));
  return out;
}

TEST(Pool, LeftUnclosedAtExitTheProgramExitsCleanly) {
  for (const char* mode : {"leak", "static"}) {
    int out[2], err[2];
    ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
    ASSERT_EQ(::pipe2(err, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    const std::string exe = helper_path("pool_unclosed");
    const char* argv[] = {exe.c_str(), mode, nullptr};
    int pid = -1;
    ASSERT_EQ(::posix_spawn(&pid, exe.c_str(), &fa, nullptr, const_cast<char**>(argv), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    ::close(err[1]);
    const std::string pids = read_all(out[0]);
    const std::string errors = read_all(err[0]);
    ::close(out[0]);
    ::close(err[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << mode << ": " << status;
    EXPECT_EQ(errors, "") << mode;
    std::istringstream in(pids);
    int worker = 0, n = 0;
    while (in >> worker) {
      ++n;
      EXPECT_NE(::kill(worker, 0), 0) << mode << ": worker " << worker << " outlived the program";
    }
    EXPECT_EQ(n, 2) << mode << ": " << pids;
  }
}

}  // namespace
