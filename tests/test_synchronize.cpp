// CPython's _TestLock, _TestSemaphore, _TestCondition, _TestEvent, _TestBarrier: each primitive
// alone, across processes started by every method, and with a party that dies.
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

template <class T>
std::string repr(const T& x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

// Integers in memory shared with a child under every method: a memfd crossing as DupFd.
class SharedInts {
 public:
  static constexpr std::size_t kBytes = 65536;
  SharedInts() : fd_(::memfd_create("test-ints", MFD_CLOEXEC)) {
    if (fd_ < 0 || ::ftruncate(fd_, kBytes) != 0) throw std::runtime_error("memfd");
    p_ = map(fd_);
  }
  ~SharedInts() {
    ::munmap(p_, kBytes);
    ::close(fd_);
  }
  mp::reduction::DupFd handle() const { return mp::reduction::DupFd(fd_); }
  std::atomic<std::int64_t>& operator[](int i) { return p_[i]; }
  static std::atomic<std::int64_t>* map(int fd) {
    void* m = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) throw std::runtime_error("mmap");
    return static_cast<std::atomic<std::int64_t>*>(m);
  }

 private:
  int fd_;
  std::atomic<std::int64_t>* p_;
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- alone, in one process ----

TEST(Lock, AcquireReleaseAndTexts) {
  mp::Lock lock;
  EXPECT_EQ(repr(lock), "<Lock(owner=None)>");
  EXPECT_TRUE(lock.acquire());
  EXPECT_EQ(repr(lock), "<Lock(owner=MainProcess)>");
  EXPECT_FALSE(lock.acquire(false));
  EXPECT_FALSE(lock.acquire(true, 0s));
  EXPECT_FALSE(lock.acquire(true, -1s));
  lock.release();
  try {
    lock.release();
    ADD_FAILURE() << "released twice";
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(), "semaphore or lock released too many times");
  }
  {
    std::lock_guard guard(lock);
    EXPECT_FALSE(lock.try_lock());
  }
  EXPECT_TRUE(lock.try_lock());
  // Semaphore semantics: another thread may release it; and a held lock shows its thread.
  std::thread([&] { lock.release(); }).join();
  mp::Event held, checked;
  std::thread holder([&] {
    lock.acquire();
    EXPECT_EQ(repr(lock).rfind("<Lock(owner=MainProcess|Thread-", 0), 0u) << repr(lock);
    held.set();
    checked.wait(kHang);
  });
  ASSERT_TRUE(held.wait(kHang));
  EXPECT_EQ(repr(lock), "<Lock(owner=SomeOtherThread)>");
  checked.set();
  holder.join();
  lock.release();
  EXPECT_FALSE(lock.owner_died());
}

TEST(RLock, NestingAndOwnership) {
  mp::RLock lock;
  EXPECT_EQ(repr(lock), "<RLock(None, 0)>");
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.acquire());
  EXPECT_TRUE(lock.acquire(false));
  EXPECT_EQ(repr(lock), "<RLock(MainProcess, 3)>");
  std::thread([&] {
    EXPECT_FALSE(lock.acquire(false));
    EXPECT_EQ(repr(lock), "<RLock(SomeOtherThread, nonzero)>");
    try {
      lock.release();
      ADD_FAILURE() << "released by another thread";
    } catch (const std::logic_error& e) {
      EXPECT_STREQ(e.what(), "attempt to release recursive lock not owned by thread");
    }
  }).join();
  lock.release();
  lock.release();
  lock.release();
  EXPECT_THROW(lock.release(), std::logic_error);
  std::scoped_lock both(lock);
  EXPECT_TRUE(lock.is_mine());
}

TEST(Semaphore, CountsBoundsAndTexts) {
  mp::Semaphore s(2);
  EXPECT_EQ(repr(s), "<Semaphore(value=2)>");
  EXPECT_TRUE(s.acquire());
  EXPECT_EQ(s.get_value(), 1);
  EXPECT_TRUE(s.acquire());
  EXPECT_EQ(s.get_value(), 0);
  EXPECT_FALSE(s.acquire(false));
  for (int i = 1; i <= 4; ++i) {
    s.release();
    EXPECT_EQ(s.get_value(), i);  // no upper bound
  }
  EXPECT_THROW(mp::Semaphore(-1), std::invalid_argument);

  mp::BoundedSemaphore b(2);
  EXPECT_EQ(repr(b), "<BoundedSemaphore(value=2, maxvalue=2)>");
  b.acquire();
  b.acquire();
  b.release();
  b.release();
  try {
    b.release();
    ADD_FAILURE() << "released above the bound";
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(), "semaphore or lock released too many times");
  }
  EXPECT_EQ(b.get_value(), 2);
}

TEST(Semaphore, Timeouts) {
  mp::Semaphore s(0);
  auto t0 = Clock::now();
  EXPECT_FALSE(s.acquire(false));
  EXPECT_FALSE(s.acquire(false, 1s));  // not blocking: the timeout is ignored
  EXPECT_FALSE(s.acquire(true, 0s));
  EXPECT_FALSE(s.acquire(true, -5s));
  EXPECT_LT(seconds_since(t0), 0.9);  // none of those waited (a hang would show here)
  t0 = Clock::now();
  EXPECT_FALSE(s.acquire(true, 0.2s));
  EXPECT_GE(seconds_since(t0), 0.19);
}

TEST(Condition, TextsAndTimeouts) {
  mp::Condition c;
  EXPECT_EQ(repr(c), "<Condition(<RLock(None, 0)>, 0)>");
  try {
    c.wait();
    ADD_FAILURE() << "waited without the lock";
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(), "must acquire() condition before using wait()");
  }
  try {
    c.notify();
    ADD_FAILURE() << "notified without the lock";
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(), "lock is not owned");
  }
  std::lock_guard g(c);
  auto t0 = Clock::now();
  EXPECT_FALSE(c.wait(0s));
  EXPECT_FALSE(c.wait(-1s));
  EXPECT_FALSE(c.wait(0.2s));
  EXPECT_GE(seconds_since(t0), 0.19);
  EXPECT_FALSE(c.wait_for([] { return false; }, 0.1s));
  EXPECT_TRUE(c.wait_for([] { return true; }, 0s));
  EXPECT_EQ(repr(c), "<Condition(<RLock(MainProcess, 1)>, 0)>");
  c.notify();  // nobody waits: nothing happens
  c.notify_all();
}

TEST(Event, SetClearWait) {
  mp::Event e;
  EXPECT_FALSE(e.is_set());
  EXPECT_NE(repr(e).find(" unset>"), std::string::npos);
  auto t0 = Clock::now();
  EXPECT_FALSE(e.wait(0s));
  EXPECT_FALSE(e.wait(0.2s));
  EXPECT_GE(seconds_since(t0), 0.19);
  e.set();
  EXPECT_TRUE(e.is_set());
  EXPECT_TRUE(e.wait());
  EXPECT_TRUE(e.wait(0s));
  EXPECT_EQ(repr(e).rfind("<Event at 0x", 0), 0u);
  EXPECT_NE(repr(e).find(" set>"), std::string::npos);
  e.clear();
  EXPECT_FALSE(e.is_set());
}

int g_actions = 0;
void count_action() {
  ++g_actions;
}
void throwing_action() {
  throw std::runtime_error("action failed");
}

TEST(Barrier, SinglePartyAbortResetAndTexts) {
  EXPECT_THROW(mp::Barrier(0), std::invalid_argument);
  mp::Barrier one(1, count_action);
  EXPECT_EQ(one.wait(), 0);
  EXPECT_EQ(one.wait(), 0);
  EXPECT_EQ(g_actions, 2);
  EXPECT_EQ(one.parties(), 1);

  mp::Barrier b(2);
  b.abort();
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(), mp::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());
  std::thread other([&] { b.wait(); });
  EXPECT_GE(b.wait(), 0);
  other.join();

  // An action that throws: that party gets the exception, the barrier is broken.
  mp::Barrier failing(2, throwing_action);
  std::atomic<bool> other_broken{false};
  std::thread waiter([&] {
    try {
      failing.wait();
    } catch (const mp::BrokenBarrierError&) {
      other_broken = true;
    } catch (const std::runtime_error&) {
      other_broken = true;  // this thread arrived last and ran the action
    }
  });
  try {
    failing.wait();
  } catch (const mp::BrokenBarrierError&) {
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "action failed");
  }
  waiter.join();
  EXPECT_TRUE(other_broken);
  EXPECT_TRUE(failing.broken());
}

TEST(Sync, CrossingOutsideSpawningIsRefused) {
  auto [a, b] = mp::Pipe();
  try {
    a.send(mp::Lock());
    ADD_FAILURE() << "a Lock was pickled outside spawning";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(),
                 "Lock objects should only be shared between processes through inheritance");
  }
  EXPECT_THROW(a.send(mp::Event()), std::runtime_error);
  EXPECT_THROW(a.send(mp::Semaphore()), std::runtime_error);
}

// The state letter of one of our threads in /proc ('S': asleep in the kernel).
char thread_state(pid_t tid) {
  std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() ? '?' : line[close + 2];
}

TEST(Event, ASetAtOnceClearedStillEndsTheWait) {
  // The wait ends with the set(): true if the waiter saw the flag before the clear(), else false
  // (CPython's multiprocessing Event answers False then); never asleep until its timeout.
  for (int round = 0; round < 20; ++round) {
    mp::Event e;
    std::atomic<pid_t> tid{0};
    std::atomic<bool> timed_out{false};
    std::thread waiter([&] {
      tid = ::gettid();
      const auto t0 = Clock::now();
      e.wait(kHang);
      timed_out = Clock::now() - t0 >= kHang - 1s;
    });
    while (tid == 0 || thread_state(tid) != 'S') std::this_thread::yield();
    e.set();
    e.clear();
    waiter.join();
    EXPECT_FALSE(timed_out.load()) << "round " << round << " slept through the set()";
  }
}

mp::Barrier* g_asked = nullptr;
std::atomic<int> g_seen_waiting{-1};
void ask_the_barrier() {
  g_seen_waiting = g_asked->n_waiting();
  if (g_asked->broken()) g_seen_waiting = -2;
}

TEST(Barrier, TheActionMayAskTheBarrier) {
  mp::Barrier b(2, ask_the_barrier);
  g_asked = &b;
  std::thread other([&] { b.wait(kHang); });
  b.wait(kHang);
  other.join();
  EXPECT_EQ(g_seen_waiting.load(), 2);  // as CPython 3.11: every party, the one running it too
  g_asked = nullptr;
}

void hold_without_proc(mp::Lock lock) {
  // A /proc that knows no process (a container or chroot without it): the holder cannot be
  // looked up, so it must be presumed alive, never robbed.
  if (::unshare(CLONE_NEWNS) != 0) mp::exit(20);
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) mp::exit(21);
  if (::mount("none", "/proc", "tmpfs", 0, nullptr) != 0) mp::exit(22);
  mp::Event held, done;
  std::thread holder([&] {
    lock.acquire();
    held.set();
    done.wait(kHang);
    lock.release();
  });
  held.wait(kHang);
  const bool stolen = lock.acquire(false) || lock.acquire(true, 0.2s);
  done.set();
  holder.join();
  mp::exit(stolen ? 1 : 0);
}

TEST(Lock, AHolderThatCannotBeLookedUpIsPresumedAlive) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for a mount namespace";
  mp::Lock lock;
  auto p = mp::fork_context.Process(hold_without_proc, lock);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

// ---- across processes ----

class SyncAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
};

void add_under_lock(mp::Lock lock, mp::reduction::DupFd ints, int times) {
  auto* p = SharedInts::map(ints.fd());
  for (int i = 0; i < times; ++i) {
    std::lock_guard g(lock);
    // Not atomic on purpose: only the lock keeps increments from being lost.
    p[0].store(p[0].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
}

TEST_P(SyncAcross, FourProcessesCountUnderALock) {
  mp::Lock lock;
  SharedInts ints;
  std::vector<mp::Process> ps;
  for (int i = 0; i < 4; ++i)
    ps.push_back(ctx().Process(add_under_lock, lock, ints.handle(), 1000));
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(ints[0].load(), 4000);
}

void hold_until(mp::Lock lock, mp::Event held, mp::Event done) {
  lock.acquire();
  held.set();
  done.wait(kHang);
  lock.release();
}

TEST_P(SyncAcross, HeldByAChildTimesOutHere) {
  mp::Lock lock;
  mp::Event held, done;
  auto p = ctx().Process(hold_until, lock, held, done);
  p.start();
  ASSERT_TRUE(held.wait(kHang));
  EXPECT_EQ(repr(lock), "<Lock(owner=SomeOtherProcess)>");
  auto t0 = Clock::now();
  EXPECT_FALSE(lock.acquire(true, 0.1s));
  EXPECT_GE(seconds_since(t0), 0.09);
  done.set();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_TRUE(lock.acquire(true, kHang));  // the child released it
  lock.release();
}

void wait_on_condition(mp::Condition c, mp::Semaphore sleeping, mp::Semaphore woken,
                       double timeout) {
  std::lock_guard g(c);
  sleeping.release();
  c.wait(timeout < 0 ? std::nullopt : std::optional<std::chrono::duration<double>>(timeout));
  woken.release();
}

// The number of waiters the condition reports, read under its lock.
int waiting_on(mp::Condition& c) {
  std::lock_guard g(c);
  auto text = repr(c);
  return std::stoi(text.substr(text.rfind(", ") + 2));
}

TEST_P(SyncAcross, NotifyWakesExactlyOneThenTheOther) {
  mp::Condition c;
  mp::Semaphore sleeping(0), woken(0);
  auto p = ctx().Process(wait_on_condition, c, sleeping, woken, -1.0);
  p.start();
  std::thread t(wait_on_condition, c, sleeping, woken, -1.0);
  ASSERT_TRUE(sleeping.acquire(true, kHang));
  ASSERT_TRUE(sleeping.acquire(true, kHang));
  // Both are registered as waiters once they hold no lock; sleeping was released under it.
  EXPECT_EQ(waiting_on(c), 2);
  {
    std::lock_guard g(c);
    c.notify();
  }
  ASSERT_TRUE(woken.acquire(true, kHang));
  EXPECT_EQ(waiting_on(c), 1);  // exactly one woke
  EXPECT_FALSE(woken.acquire(false));
  {
    std::lock_guard g(c);
    c.notify();
  }
  ASSERT_TRUE(woken.acquire(true, kHang));
  EXPECT_EQ(waiting_on(c), 0);
  t.join();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(SyncAcross, NotifyAllAndNotifyN) {
  mp::Condition c;
  mp::Semaphore sleeping(0), woken(0);
  auto start_six = [&](double timeout) {
    std::vector<mp::Process> ps;
    std::vector<std::thread> ts;
    for (int i = 0; i < 3; ++i) {
      ps.push_back(ctx().Process(wait_on_condition, c, sleeping, woken, timeout));
      ps.back().start();
      ts.emplace_back(wait_on_condition, c, sleeping, woken, timeout);
    }
    for (int i = 0; i < 6; ++i) EXPECT_TRUE(sleeping.acquire(true, kHang));
    return std::pair(std::move(ps), std::move(ts));
  };
  auto finish = [](auto& group) {
    for (auto& t : group.second) t.join();
    for (auto& p : group.first) {
      p.join(kHang);
      EXPECT_EQ(p.exitcode(), 0);
    }
  };
  {  // six waiters with a timeout all time out and return
    auto group = start_six(0.2);
    for (int i = 0; i < 6; ++i) EXPECT_TRUE(woken.acquire(true, kHang));
    finish(group);
    EXPECT_EQ(waiting_on(c), 0);
  }
  {  // six fresh ones all wake on notify_all
    auto group = start_six(-1);
    EXPECT_EQ(waiting_on(c), 6);
    {
      std::lock_guard g(c);
      c.notify_all();
    }
    for (int i = 0; i < 6; ++i) EXPECT_TRUE(woken.acquire(true, kHang));
    finish(group);
  }
  {  // notify(2) wakes two, notify(4) the other four, notify(3) nobody
    auto group = start_six(-1);
    {
      std::lock_guard g(c);
      c.notify(2);
    }
    for (int i = 0; i < 2; ++i) EXPECT_TRUE(woken.acquire(true, kHang));
    EXPECT_EQ(waiting_on(c), 4);
    {
      std::lock_guard g(c);
      c.notify(4);
    }
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(woken.acquire(true, kHang));
    {
      std::lock_guard g(c);
      c.notify(3);
    }
    EXPECT_FALSE(woken.acquire(false));
    finish(group);
  }
}

void update_under_condition(mp::Condition c, mp::reduction::DupFd ints) {
  auto* p = SharedInts::map(ints.fd());
  for (int i = 0; i < 5; ++i) {
    std::lock_guard g(c);
    p[0].fetch_add(1);
    c.notify();
  }
}

TEST_P(SyncAcross, WaitForAPredicateAChildMakesTrue) {
  mp::Condition c;
  SharedInts ints;
  auto p = ctx().Process(update_under_condition, c, ints.handle());
  std::unique_lock g(c);
  p.start();
  EXPECT_TRUE(c.wait_for([&] { return ints[0].load() == 5; }, kHang));
  g.unlock();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

void take_rlock_while_waited_on(mp::Condition c, mp::Event taken) {
  std::lock_guard g(c);  // possible only because wait() released both levels
  taken.set();
  c.notify();
}

TEST_P(SyncAcross, WaitReleasesEveryLevelOfAnRLock) {
  mp::RLock rlock;
  mp::Condition c(rlock);
  mp::Event taken;
  rlock.acquire();
  rlock.acquire();
  auto p = ctx().Process(take_rlock_while_waited_on, c, taken);
  p.start();
  EXPECT_TRUE(c.wait_for([&] { return taken.is_set(); }, kHang));
  EXPECT_EQ(repr(rlock), "<RLock(MainProcess, 2)>");
  rlock.release();
  rlock.release();
  EXPECT_THROW(rlock.release(), std::logic_error);
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

void set_event(mp::Event e) {
  e.set();
}

TEST_P(SyncAcross, AChildSetsTheEvent) {
  mp::Event e;
  auto p = ctx().Process(set_event, e);
  p.start();
  EXPECT_TRUE(e.wait(kHang));
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

// The barrier's action runs in whichever party arrives last: it counts rounds in a file named
// after the test process, which every party (its children) can find.
std::string action_file() {
  const auto* parent = mp::parent_process();
  return "/tmp/mp-test-barrier-action-" + std::to_string(parent ? parent->pid() : ::getpid());
}
void count_round() {
  std::ofstream(action_file(), std::ios::app) << 'r';
}
long rounds_counted() {
  std::error_code ec;
  auto n = std::filesystem::file_size(action_file(), ec);
  return ec ? 0 : static_cast<long>(n);
}

void barrier_rounds(mp::Barrier b, mp::Lock lock, mp::reduction::DupFd ints, int rounds) {
  auto* p = SharedInts::map(ints.fd());
  for (int r = 0; r < rounds; ++r) {
    const int index = b.wait(kHang);
    if (rounds_counted() != r + 1) p[0] = -3;  // the action ran once, before anyone went on
    std::lock_guard g(lock);
    p[1 + index].fetch_add(1);                    // each index once per round
    p[100 + r].fetch_add(1);                      // arrivals per round
    if (p[100 + r].load() > 5) p[0] = -1;         // a round overran
    if (r > 0 && p[100 + r - 1] != 5) p[0] = -2;  // a party passed before the round before filled
  }
}

TEST_P(SyncAcross, FivePartiesInLockstep) {
  for (int rounds : {1, 10, 1000}) {
    std::filesystem::remove(action_file());
    mp::Barrier b(5, count_round);
    mp::Lock lock;
    SharedInts ints;
    std::vector<mp::Process> ps;
    for (int i = 0; i < 4; ++i)
      ps.push_back(ctx().Process(barrier_rounds, b, lock, ints.handle(), rounds));
    for (auto& p : ps) p.start();
    barrier_rounds(b, lock, ints.handle(), rounds);
    for (auto& p : ps) {
      p.join(kHang);
      EXPECT_EQ(p.exitcode(), 0);
    }
    EXPECT_EQ(ints[0].load(), 0);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(ints[1 + i].load(), rounds) << "index " << i;
    EXPECT_EQ(rounds_counted(), rounds);
    EXPECT_EQ(b.n_waiting(), 0);
    EXPECT_FALSE(b.broken());
  }
  std::filesystem::remove(action_file());
}

void wait_expect_broken(mp::Barrier b, mp::Semaphore arrived, double timeout) {
  arrived.release();
  try {
    b.wait(timeout < 0 ? std::nullopt : std::optional<std::chrono::duration<double>>(timeout));
  } catch (const mp::BrokenBarrierError&) {
    mp::exit(7);
  }
}

TEST_P(SyncAcross, AbortResetAndTimeoutBreakEveryWaiter) {
  mp::Barrier b(5);
  mp::Semaphore arrived(0);
  auto four = [&](double timeout) {
    std::vector<mp::Process> ps;
    for (int i = 0; i < 4; ++i) {
      ps.push_back(ctx().Process(wait_expect_broken, b, arrived, timeout));
      ps.back().start();
    }
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(arrived.acquire(true, kHang));
    return ps;
  };
  auto all_broken = [](std::vector<mp::Process>& ps) {
    for (auto& p : ps) {
      p.join(kHang);
      EXPECT_EQ(p.exitcode(), 7);
    }
  };
  {  // abort: the four get BrokenBarrierError
    auto ps = four(-1);
    while (b.n_waiting() < 4 && !b.broken()) std::this_thread::yield();
    b.abort();
    all_broken(ps);
    EXPECT_TRUE(b.broken());
    b.reset();
  }
  {  // reset while four wait: they get BrokenBarrierError, then all five pass again
    auto ps = four(-1);
    while (b.n_waiting() < 4) std::this_thread::yield();
    b.reset();
    all_broken(ps);
    EXPECT_FALSE(b.broken());
    std::vector<std::thread> ts;
    for (int i = 0; i < 4; ++i) ts.emplace_back([&] { b.wait(kHang); });
    b.wait(kHang);
    for (auto& t : ts) t.join();
  }
  {  // a timeout in one party breaks the round for all
    auto ps = four(0.3);
    all_broken(ps);
    EXPECT_TRUE(b.broken());
    EXPECT_THROW(b.wait(kHang), mp::BrokenBarrierError);
    b.reset();
  }
}

// Every wait under a storm of signals (EINTR at every turn) still waits its time or its event.
void waits_under_signals(mp::Lock lock, mp::Semaphore sem, mp::Event go, mp::Condition c) {
  arm_alarm_storm();
  auto t0 = Clock::now();
  if (sem.acquire(true, 0.2s)) mp::exit(2);
  if (seconds_since(t0) < 0.19) mp::exit(3);
  t0 = Clock::now();
  if (lock.acquire(true, 0.2s)) mp::exit(4);  // the parent holds it
  if (seconds_since(t0) < 0.19) mp::exit(5);
  {
    std::lock_guard g(c);
    t0 = Clock::now();
    if (c.wait(0.2s)) mp::exit(6);
    if (seconds_since(t0) < 0.19) mp::exit(7);
  }
  sem.release();  // tell the parent we are about to block for real
  if (!go.wait(kHang)) mp::exit(8);
  if (!lock.acquire(true, kHang)) mp::exit(9);
  lock.release();
  if (alarms_received() < 10) mp::exit(10);
}

TEST_P(SyncAcross, WaitsUnderASignalStorm) {
  mp::Lock lock;
  mp::Semaphore sem(0);
  mp::Event go;
  mp::Condition c;
  lock.acquire();
  auto p = ctx().Process(waits_under_signals, lock, sem, go, c);
  p.start();
  ASSERT_TRUE(sem.acquire(true, kHang));
  go.set();
  lock.release();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

// The child finds the held ones held and the others free: the same primitives.
void check_many(std::vector<mp::Lock> locks) {
  int wrong = 0;
  for (std::size_t i = 0; i < locks.size(); ++i) {
    const bool got = locks[i].try_lock();
    wrong += got == (i % 2 == 1);
    if (got) locks[i].unlock();
  }
  mp::exit(wrong);
}

TEST_P(SyncAcross, ManyPrimitivesShareAFewDescriptors) {
  const int before = open_fd_count();
  std::vector<mp::Lock> locks(2000);
  std::vector<mp::Value<int>> values(500);
  EXPECT_LT(open_fd_count() - before, 40) << "a descriptor per primitive";
  std::vector<mp::Lock> some(locks.begin(), locks.begin() + 200);
  for (std::size_t i = 1; i < some.size(); i += 2) some[i].acquire();
  auto p = ctx().Process(check_many, some);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  for (std::size_t i = 1; i < some.size(); i += 2) some[i].release();
}

// ---- a party that dies ----

void take_and_die(mp::Lock lock, mp::RLock rlock, mp::Event held) {
  lock.acquire();
  rlock.acquire();
  rlock.acquire();
  held.set();
  ::kill(::getpid(), SIGKILL);
}

TEST_P(SyncAcross, LocksOfAHolderKilledHoldingThemAreTakenOver) {
  mp::Lock lock;
  mp::RLock rlock;
  mp::Event held;
  auto p = ctx().Process(take_and_die, lock, rlock, held);
  p.start();
  ASSERT_TRUE(held.wait(kHang));
  // Not joined yet: the holder may still be a zombie, which counts as dead.
  EXPECT_TRUE(lock.acquire(true, kHang));
  EXPECT_TRUE(lock.owner_died());
  EXPECT_TRUE(rlock.acquire(true, kHang));
  EXPECT_TRUE(rlock.owner_died());
  EXPECT_EQ(repr(rlock), "<RLock(MainProcess, 1)>");  // the dead holder's depth is gone
  rlock.release();
  EXPECT_THROW(rlock.release(), std::logic_error);
  lock.release();
  EXPECT_FALSE(lock.owner_died());
  EXPECT_TRUE(lock.acquire(false));  // an ordinary lock again
  EXPECT_FALSE(lock.owner_died());
  lock.release();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

void take_condition_and_die(mp::Condition c, mp::Event held) {
  c.acquire();
  held.set();
  ::kill(::getpid(), SIGKILL);
}

TEST_P(SyncAcross, AConditionTellsItsLocksHolderDied) {
  for (bool recursive : {false, true}) {
    mp::Condition c = recursive ? mp::Condition(mp::RLock()) : mp::Condition(mp::Lock());
    mp::Event held;
    auto p = ctx().Process(take_condition_and_die, c, held);
    p.start();
    ASSERT_TRUE(held.wait(kHang));
    EXPECT_FALSE(c.owner_died()) << "not held by us yet";
    ASSERT_TRUE(c.acquire(true, kHang));
    EXPECT_TRUE(c.owner_died()) << (recursive ? "RLock" : "Lock");
    c.notify_all();  // usable as ever
    c.release();
    ASSERT_TRUE(c.acquire(false));
    EXPECT_FALSE(c.owner_died()) << "an ordinary lock again";
    c.release();
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), -SIGKILL);
  }
}

TEST_P(SyncAcross, TryAcquireAlsoTakesOverFromTheDead) {
  mp::Lock lock;
  mp::RLock rlock;
  mp::Event held;
  auto p = ctx().Process(take_and_die, lock, rlock, held);
  p.start();
  ASSERT_TRUE(held.wait(kHang));
  p.join(kHang);
  EXPECT_TRUE(lock.acquire(false));
  EXPECT_TRUE(lock.owner_died());
  lock.release();
}

void wait_on_lock_forever(mp::Lock lock, mp::Semaphore started) {
  started.release();
  lock.acquire();
  mp::exit(3);  // never: it is killed while waiting
}

void wait_on_condition_forever(mp::Condition c, mp::Semaphore started) {
  std::lock_guard g(c);
  started.release();
  c.wait();
  mp::exit(3);
}

TEST_P(SyncAcross, AWaiterKilledWhileWaitingTakesNothingWithIt) {
  mp::Lock lock;
  mp::Condition c;
  mp::Semaphore started(0), sleeping(0), woken(0);
  lock.acquire();
  auto on_lock = ctx().Process(wait_on_lock_forever, lock, started);
  auto on_cond = ctx().Process(wait_on_condition_forever, c, started);
  on_lock.start();
  on_cond.start();
  ASSERT_TRUE(started.acquire(true, kHang));
  ASSERT_TRUE(started.acquire(true, kHang));
  // A live waiter on the condition too, registered after the one that dies.
  while (waiting_on(c) < 1) std::this_thread::yield();
  std::thread live(wait_on_condition, c, sleeping, woken, -1.0);
  ASSERT_TRUE(sleeping.acquire(true, kHang));
  on_lock.kill();
  on_cond.kill();
  on_lock.join(kHang);
  on_cond.join(kHang);
  EXPECT_EQ(on_lock.exitcode(), -SIGKILL);
  EXPECT_EQ(on_cond.exitcode(), -SIGKILL);
  // The lock works on; notify() passes over the dead waiter to the live one.
  lock.release();
  EXPECT_TRUE(lock.acquire(false));
  lock.release();
  {
    std::lock_guard g(c);
    c.notify();
  }
  EXPECT_TRUE(woken.acquire(true, kHang));
  live.join();
  EXPECT_EQ(waiting_on(c), 0);
}

void arrive_and_die(mp::Barrier b, mp::Semaphore arrived) {
  arrived.release();
  ::kill(::getpid(), SIGKILL);
  b.wait();
}

TEST_P(SyncAcross, BarrierWithAPartyThatDiesBreaksWithinTheTimeout) {
  mp::Barrier b(3);
  mp::Semaphore arrived(0);
  auto dead = ctx().Process(arrive_and_die, b, arrived);
  dead.start();
  ASSERT_TRUE(arrived.acquire(true, kHang));
  dead.join(kHang);
  std::atomic<int> broken{0};
  std::thread other([&] {
    try {
      b.wait(0.3s);
    } catch (const mp::BrokenBarrierError&) {
      ++broken;
    }
  });
  try {
    b.wait(0.3s);
  } catch (const mp::BrokenBarrierError&) {
    ++broken;
  }
  other.join();
  EXPECT_EQ(broken.load(), 2);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SyncAcross, ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

}  // namespace
