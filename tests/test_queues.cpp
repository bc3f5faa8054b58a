// CPython's _TestQueue, TestSimpleQueue and test_task_done (SEMANTICS 88-108), across processes
// started by every method, and with producers and consumers killed in the middle of a step.
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "queue_faults.hpp"
#include "queue_record.hpp"
#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

#if defined(__SANITIZE_ADDRESS__)
constexpr double kAtOnce = 0.5;
#else
constexpr double kAtOnce = 0.1;
#endif

struct Point {  // trivially copyable: crosses by memcpy
  int x;
  double y;
};

struct Tagged {  // crosses through cereal
  std::string tag;
  std::vector<int> values;
  template <class A>
  void serialize(A& ar) {
    ar(tag, values);
  }
};

std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed) >> 3);
  return s;
}

// ---- one process ----

TEST(Queue, PutFillsAndFullRefusesAtOnce) {
  mp::Queue<int> q(6);
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.full());
  q.put(1);
  q.put(2, true);
  q.put(3, true, std::nullopt);
  q.put(4, false);
  q.put(5, false, std::nullopt);
  q.put_nowait(6);
  EXPECT_FALSE(q.empty());  // at once: no feeder delay
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.qsize(), 6);
  for (auto put : {+[](mp::Queue<int>& q) { q.put(7, false); },
                   +[](mp::Queue<int>& q) { q.put(7, false, std::nullopt); },
                   +[](mp::Queue<int>& q) { q.put_nowait(7); },
                   +[](mp::Queue<int>& q) { q.put(7, false, 5s); },
                   +[](mp::Queue<int>& q) { q.put(7, true, -1s); }}) {
    auto t0 = Clock::now();
    EXPECT_THROW(put(q), mp::Full);
    EXPECT_LT(seconds_since(t0), kAtOnce);
  }
  auto t0 = Clock::now();
  EXPECT_THROW(q.put(7, 0.3s), mp::Full);
  EXPECT_GE(seconds_since(t0), 0.2);
  EXPECT_LE(seconds_since(t0), 1.3);
  for (int i = 1; i <= 6; ++i) EXPECT_EQ(q.get(), i);
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.full());
}

TEST(Queue, GetIsFifoAndEmptyRefusesAtOnce) {
  mp::Queue<int> q;
  for (int i = 0; i < 4; ++i) q.put(i);
  EXPECT_EQ(q.get(true, std::nullopt), 0);
  EXPECT_EQ(q.get(true), 1);
  EXPECT_EQ(q.get(1s), 2);
  EXPECT_EQ(q.get_nowait(), 3);
  for (auto get :
       {+[](mp::Queue<int>& q) { q.get(false); },
        +[](mp::Queue<int>& q) { q.get(false, std::nullopt); },
        +[](mp::Queue<int>& q) { q.get_nowait(); }, +[](mp::Queue<int>& q) { q.get(false, 5s); },
        +[](mp::Queue<int>& q) { q.get(true, -1s); }}) {
    auto t0 = Clock::now();
    EXPECT_THROW(get(q), mp::Empty);
    EXPECT_LT(seconds_since(t0), kAtOnce);
  }
  auto t0 = Clock::now();
  EXPECT_THROW(q.get(0.3s), mp::Empty);
  EXPECT_GE(seconds_since(t0), 0.2);
  EXPECT_LE(seconds_since(t0), 1.3);
}

TEST(Queue, QsizeCountsAtOnce) {
  mp::Queue<int> q;
  EXPECT_EQ(q.qsize(), 0);
  q.put(1);
  EXPECT_EQ(q.qsize(), 1);
  q.put(2);
  EXPECT_EQ(q.qsize(), 2);
  q.get();
  EXPECT_EQ(q.qsize(), 1);
  q.get();
  EXPECT_EQ(q.qsize(), 0);
}

TEST(Queue, ItemsOfEveryKindRoundTrip) {
  mp::Queue<Point> points;
  points.put({3, 2.5});
  auto p = points.get();
  EXPECT_EQ(p.x, 3);
  EXPECT_EQ(p.y, 2.5);
  mp::Queue<std::string> strings;
  strings.put("");
  strings.put(std::string(100, 'x'));
  EXPECT_EQ(strings.get(), "");
  EXPECT_EQ(strings.get(), std::string(100, 'x'));
  mp::Queue<Tagged> tagged;
  tagged.put({"a", {1, 2, 3}});
  auto t = tagged.get();
  EXPECT_EQ(t.tag, "a");
  EXPECT_EQ(t.values, (std::vector<int>{1, 2, 3}));
}

TEST(Queue, LargeItemsArriveWholeAndTheirPagesGoBack) {
  mp::Queue<std::string> q;
  const auto one = pattern(1 << 20, 1), big = pattern(64 << 20, 2);
  q.put(one);
  q.put("small between");
  q.put(big);
  EXPECT_EQ(q.qsize(), 3);
  EXPECT_EQ(q.get(), one);
  EXPECT_EQ(q.get(), "small between");
  EXPECT_EQ(q.get(), big);
  // Again and again: the pages are reused, the queue does not grow without bound.
  for (int i = 0; i < 20; ++i) {
    q.put(one);
    EXPECT_EQ(q.get(), one);
  }
  EXPECT_EQ(q.lost(), 0u);
}

TEST(Queue, CloseRefusesPutAndGet) {
  mp::Queue<int> q;
  q.put(1);
  q.close();
  q.close();  // idempotent
  try {
    q.put(2);
    ADD_FAILURE() << "put after close";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("is closed"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("mp-queue-"), std::string::npos) << e.what();
  }
  EXPECT_THROW(q.get(), std::logic_error);
  q.join_thread();  // closed: at once
  mp::Queue<int> open;
  try {
    open.join_thread();
    ADD_FAILURE() << "join_thread before close";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find(" not closed"), std::string::npos) << e.what();
  }
  open.cancel_join_thread();
  EXPECT_TRUE(open.empty());
}

TEST(Queue, TaskDoneTooOftenAndJoinOnAFreshQueue) {
  mp::JoinableQueue<int> q;
  q.join();  // nothing put: at once
  q.put(1);
  q.get();
  q.task_done();
  q.join();
  try {
    q.task_done();
    ADD_FAILURE() << "task_done more than put";
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(), "task_done() called too many times");
  }
}

TEST(Queue, SimpleQueueIsFifoAndClosesWhole) {
  mp::SimpleQueue<int> q;
  EXPECT_TRUE(q.empty());
  q.put(1);
  q.put(2);
  EXPECT_FALSE(q.empty());
  EXPECT_EQ(q.get(), 1);
  EXPECT_EQ(q.get(), 2);
  q.close();
  q.close();
  for (auto f :
       {+[](mp::SimpleQueue<int>& q) { q.empty(); }, +[](mp::SimpleQueue<int>& q) { q.get(); },
        +[](mp::SimpleQueue<int>& q) { q.put(1); }}) {
    try {
      f(q);
      ADD_FAILURE() << "used after close";
    } catch (const std::logic_error& e) {
      EXPECT_STREQ(e.what(), "handle is closed");
    }
  }
  mp::SimpleQueue<int> unused;
  unused.close();
  EXPECT_THROW(unused.empty(), std::logic_error);
}

TEST(Queue, RefusedThroughAConnection) {
  auto [a, b] = mp::Pipe();
  auto refused = [&](auto queue, const char* kind) {
    try {
      a.send(queue);
      ADD_FAILURE() << kind << " was pickled outside spawning";
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()),
                std::string(kind) +
                    " objects should only be shared between processes through inheritance");
    }
  };
  refused(mp::Queue<int>(), "Queue");
  refused(mp::JoinableQueue<int>(), "JoinableQueue");
  refused(mp::SimpleQueue<int>(), "SimpleQueue");
}

TEST(Queue, ACorruptedSharedStateIsAClearError) {
  using mp::detail::pack;
  using mp::detail::Unit;
  mp::Queue<int> q;
  q.put(1);
  std::byte* seg = mp::detail::QueueAccess::segment(q);
  auto* stamp0 =
      reinterpret_cast<std::atomic<std::uint64_t>*>(seg + mp::detail::kQueueStampsOffset);
  const std::uint64_t saved = stamp0->load();
  auto expect_corrupted = [&](auto&& f, const char* what) {
    try {
      f();
      ADD_FAILURE() << what << ": no error";
    } catch (const mp::ProcessError& e) {
      EXPECT_NE(std::string(e.what()).find("mp-queue-"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("corrupted"), std::string::npos) << e.what();
    }
  };
  // A stamp saying the record is longer than any inline record: no giant allocation, no crash.
  stamp0->store(pack({Unit::ready, false, 0, 60000, 0}));
  expect_corrupted([&] { q.get_nowait(); }, "an inline record of 60000 bytes");
  // A large record whose pages are not the queue's.
  stamp0->store(pack({Unit::ready, true, 0, 16, 0}));
  expect_corrupted([&] { q.get_nowait(); }, "a large record outside the pages");
  stamp0->store(saved);
  EXPECT_EQ(q.get_nowait(), 1);
  // A tail (a producers' hint) and a head (the consumers') far from the stamps they point at.
  auto* tail = reinterpret_cast<std::atomic<std::uint64_t>*>(seg + mp::detail::kQueueTailOffset);
  auto* head = reinterpret_cast<std::atomic<std::uint64_t>*>(seg + mp::detail::kQueueHeadOffset);
  const auto t = tail->load(), h = head->load();
  tail->store(t + (std::uint64_t{1} << 30));
  expect_corrupted([&] { q.put(2); }, "a tail a thousand laps on");
  tail->store(t);
  head->store(h + (std::uint64_t{1} << 30) + 1);
  q.put(2);
  expect_corrupted([&] { q.get_nowait(); }, "a head a thousand laps on");
  head->store(h);
  EXPECT_EQ(q.get_nowait(), 2);
  q.put(3);
  EXPECT_EQ(q.get(), 3);
}

TEST(Queue, AnIdleWaiterUsesNoCpu) {
  mp::Queue<int> q;
  double cpu = -1;
  std::thread waiter([&] {
    EXPECT_THROW(q.get(1s), mp::Empty);
    rusage ru{};
    ::getrusage(RUSAGE_THREAD, &ru);
    cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
          static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  });
  waiter.join();
  EXPECT_GE(cpu, 0);
  EXPECT_LT(cpu, 0.02);
}

TEST(Queue, ThreadsProduceAndConsumeExactlyOnce) {
  mp::Queue<int> q(100);
  constexpr int kEach = 20000;
  std::vector<std::atomic<int>> seen(4 * kEach);
  std::vector<std::thread> ts;
  for (int p = 0; p < 4; ++p)
    ts.emplace_back([&, p] {
      for (int i = 0; i < kEach; ++i) q.put(p * kEach + i);
    });
  std::atomic<bool> order_ok{true};
  for (int c = 0; c < 4; ++c)
    ts.emplace_back([&] {
      int last[4] = {-1, -1, -1, -1};
      for (int n = 0; n < kEach; ++n) {
        const int v = q.get(kHang);
        ++seen[static_cast<std::size_t>(v)];
        if (v % kEach <= last[v / kEach]) order_ok = false;
        last[v / kEach] = v % kEach;
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_TRUE(order_ok);
  EXPECT_EQ(std::count_if(seen.begin(), seen.end(), [](auto& s) { return s.load() == 1; }),
            4 * kEach);
}

TEST(Queue, AnUnboundedQueueIsCappedByItsRingAndPutBlocks) {
  // maxsize 0: no count limit, but the ring holds 1 MiB: put blocks while it is full (a put
  // with a timeout then raises Full on time), never fails otherwise, and goes on once a get
  // makes room.
  mp::Queue<std::string> q;
  const auto item = pattern(20000, 4);
  int n = 0;
  for (;; ++n) {
    try {
      q.put_nowait(item);
    } catch (const mp::Full&) {
      break;
    }
    ASSERT_LT(n, 1000) << "the ring never filled";
  }
  EXPECT_GT(n, 40);
  EXPECT_EQ(q.qsize(), n);
  EXPECT_FALSE(q.full());  // full() is about maxsize
  auto t0 = Clock::now();
  EXPECT_THROW(q.put(item, 0.3s), mp::Full);
  EXPECT_GE(seconds_since(t0), 0.25);
  EXPECT_LE(seconds_since(t0), 1.5);
  std::atomic<bool> put_done{false};
  std::thread producer([&] {
    q.put("the blocked one");
    put_done = true;
  });
  EXPECT_EQ(q.get(kHang), item);  // makes room: the blocked put goes in
  producer.join();
  EXPECT_TRUE(put_done);
  for (int i = 1; i < n; ++i) ASSERT_EQ(q.get(kHang), item);
  EXPECT_EQ(q.get(kHang), "the blocked one");
  EXPECT_EQ(q.lost(), 0u);
}

TEST(Queue, AQueueInAQueueIsRefused) {
  mp::Queue<mp::Queue<int>> outer;
  try {
    outer.put(mp::Queue<int>());
    ADD_FAILURE() << "a Queue was put in a Queue";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(),
                 "Queue objects should only be shared between processes through inheritance");
  }
  EXPECT_TRUE(outer.empty());
}

void no_op_handler(int) {}

// Signals `target` every ~100 us until stopped, with a handler installed without SA_RESTART:
// every blocking call it interrupts returns EINTR.
class SignalStorm {
 public:
  explicit SignalStorm(pthread_t target) : target_(target) {
    struct sigaction sa {};
    sa.sa_handler = no_op_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ::sigaction(SIGUSR1, &sa, &old_);
    thread_ = std::thread([this] {
      while (!stop_) {
        ::pthread_kill(target_, SIGUSR1);
        ++sent_;
        std::this_thread::sleep_for(100us);  // the storm's pace, not a synchronisation
      }
    });
  }
  ~SignalStorm() {
    stop_ = true;
    thread_.join();
    ::sigaction(SIGUSR1, &old_, nullptr);
  }
  int sent() const { return sent_; }

 private:
  pthread_t target_;
  struct sigaction old_ {};
  std::atomic<bool> stop_{false};
  std::atomic<int> sent_{0};
  std::thread thread_;
};

TEST(Queue, AnEintrStormNeverSurfaces) {
  mp::Queue<int> q(1);
  {
    SignalStorm storm(::pthread_self());
    // Empty: the timeout is honoured, whatever the signals.
    auto t0 = Clock::now();
    EXPECT_THROW(q.get(0.5s), mp::Empty);
    EXPECT_GE(seconds_since(t0), 0.45);
    EXPECT_LE(seconds_since(t0), 1.5);
    // Full (maxsize 1): the same for put.
    q.put(1);
    t0 = Clock::now();
    EXPECT_THROW(q.put(2, 0.5s), mp::Full);
    EXPECT_GE(seconds_since(t0), 0.45);
    EXPECT_LE(seconds_since(t0), 1.5);
    EXPECT_EQ(q.get(), 1);
    // A blocked get gets what another thread puts, interrupted all along.
    std::thread producer([&] {
      for (int i = 0; i < 200; ++i) q.put(i);
    });
    for (int i = 0; i < 200; ++i) ASSERT_EQ(q.get(kHang), i);
    producer.join();
    EXPECT_GT(storm.sent(), 100);
  }
  EXPECT_TRUE(q.empty());
}

TEST(Queue, OnePutWakesOneGetter) {
  mp::Queue<int> q;
  constexpr int kGetters = 4;
  std::atomic<int> returned{0};
  std::vector<std::thread> getters;
  for (int i = 0; i < kGetters; ++i)
    getters.emplace_back([&] {
      q.get(kHang);
      ++returned;
    });
  // Until all four sleep (a condition polled, not a delay).
  while (mp::detail::QueueAccess::sleepers(q) < kGetters) std::this_thread::yield();
  const auto wakes = mp::detail::g_queue_wakes.load();
  q.put(1);
  while (returned < 1) std::this_thread::yield();
  // One futex wake for the one item; the woken getter has nothing to pass on.
  EXPECT_EQ(mp::detail::g_queue_wakes.load() - wakes, 1u);
  EXPECT_EQ(returned.load(), 1);
  while (mp::detail::QueueAccess::sleepers(q) < kGetters - 1) std::this_thread::yield();
  EXPECT_EQ(returned.load(), 1);
  for (int i = 0; i < kGetters - 1; ++i) q.put(i);
  for (auto& t : getters) t.join();
  EXPECT_EQ(returned.load(), kGetters);
  // A burst: each put wakes at most one sleeper, and each woken getter that still sees an item
  // passes at most one wake-up on (it may be one a getter woken by a later put takes first).
  EXPECT_LE(mp::detail::g_queue_wakes.load() - wakes, 1u + 2u * (kGetters - 1));
}

TEST(Queue, AWakeUpThatReachedNobodyDoesNotSilenceTheNext) {
  mp::Queue<int> q;
  // A wake-up sent to a sleeper that had left already (its timeout ran out, or it found an item
  // on its own): nobody received it, so its bit is still set.
  auto* seq = reinterpret_cast<std::atomic<std::uint32_t>*>(mp::detail::QueueAccess::segment(q) +
                                                            mp::detail::kQueueItemSeqOffset);
  seq->fetch_or(1);
  std::thread getter([&] { EXPECT_EQ(q.get(kHang), 1); });
  // Until the getter is registered and has cleared the bit (a condition polled, not a delay).
  while (mp::detail::QueueAccess::sleepers(q) < 1 || (seq->load() & 1) != 0)
    std::this_thread::yield();
  const auto wakes = mp::detail::g_queue_wakes.load();
  q.put(1);
  getter.join();
  // Woken by the put (a stale bit would have made it skip the wake-up: the getter would have
  // lain until its periodic look).
  EXPECT_EQ(mp::detail::g_queue_wakes.load() - wakes, 1u);
}

// ---- across processes ----

class QueueAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
};

void drain(mp::Queue<int> q, int n) {
  for (int i = 0; i < n; ++i) q.get(kHang);
}

TEST_P(QueueAcross, AChildDrainsTheQueue) {
  mp::Queue<int> q(6);
  for (int i = 0; i < 6; ++i) q.put(i);
  EXPECT_TRUE(q.full());
  auto p = ctx().Process(drain, q, 6);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_TRUE(q.empty());
  EXPECT_FALSE(q.full());
}

void put_range(mp::Queue<int> q, int from, int to) {
  for (int i = from; i < to; ++i) q.put(i);
}

TEST_P(QueueAcross, AChildsItemsOutliveItAndItExitsAtOnce) {
  mp::Queue<int> q;
  put_range(q, 0, 10);
  // 20000 items, far more than a pipe holds: the child still exits before anyone reads.
  auto p = ctx().Process(put_range, q, 10, 20010);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  for (int i = 0; i < 20010; ++i) ASSERT_EQ(q.get_nowait(), i);
  EXPECT_THROW(q.get_nowait(), mp::Empty);
}

void produce(mp::Queue<int> q, int id, int n) {
  for (int i = 0; i < n; ++i) q.put(id * 1000000 + i);
}

void consume(mp::Queue<int> q, mp::Queue<std::vector<int>> out) {
  std::vector<int> got;
  int last[4] = {-1, -1, -1, -1};
  for (;;) {
    const int v = q.get(kHang);
    if (v < 0) break;
    if (v % 1000000 <= last[v / 1000000]) mp::exit(2);  // out of order for its producer
    last[v / 1000000] = v % 1000000;
    got.push_back(v);
  }
  out.put(got);  // ~100 KiB: the large-item path
}

TEST_P(QueueAcross, FourProducersFourConsumersExactlyOnce) {
  constexpr int kEach = 25000;  // 1e5 in all
  mp::Queue<int> q(1000);
  mp::Queue<std::vector<int>> out;
  std::vector<mp::Process> ps;
  for (int i = 0; i < 4; ++i) ps.push_back(ctx().Process(produce, q, i, kEach));
  for (int i = 0; i < 4; ++i) ps.push_back(ctx().Process(consume, q, out));
  for (auto& p : ps) p.start();
  for (int i = 0; i < 4; ++i) {
    ps[static_cast<std::size_t>(i)].join(kHang);
    EXPECT_EQ(ps[static_cast<std::size_t>(i)].exitcode(), 0);
  }
  for (int i = 0; i < 4; ++i) q.put(-1);
  std::vector<int> all;
  for (int i = 0; i < 4; ++i) {
    auto part = out.get(kHang);
    all.insert(all.end(), part.begin(), part.end());
  }
  for (int i = 4; i < 8; ++i) {
    ps[static_cast<std::size_t>(i)].join(kHang);
    EXPECT_EQ(ps[static_cast<std::size_t>(i)].exitcode(), 0);
  }
  std::sort(all.begin(), all.end());
  std::vector<int> want;
  for (int p = 0; p < 4; ++p)
    for (int i = 0; i < kEach; ++i) want.push_back(p * 1000000 + i);
  EXPECT_EQ(all.size(), want.size());
  EXPECT_TRUE(all == want);
  EXPECT_EQ(q.lost(), 0u);
}

void put_big(mp::Queue<std::string> q, unsigned seed, int n) {
  for (int i = 0; i < n; ++i) q.put(pattern(1 << 20, seed));
}

TEST_P(QueueAcross, LargeItemsFromTwoProducersNeverInterleave) {
  mp::Queue<std::string> q(4);
  auto a = ctx().Process(put_big, q, 1u, 8);
  auto b = ctx().Process(put_big, q, 2u, 8);
  a.start();
  b.start();
  const auto one = pattern(1 << 20, 1), two = pattern(1 << 20, 2);
  for (int i = 0; i < 16; ++i) {
    const auto item = q.get(kHang);
    EXPECT_TRUE(item == one || item == two) << "item " << i << " corrupted";
  }
  a.join(kHang);
  b.join(kHang);
  EXPECT_EQ(a.exitcode(), 0);
  EXPECT_EQ(b.exitcode(), 0);
}

void grandchild_puts(mp::Queue<std::string> q) {
  q.put("from the grandchild");
}

void child_passes_on(mp::Queue<std::string> q, std::string method) {
  auto p = mp::get_context(method).Process(grandchild_puts, q);
  p.start();
  p.join(kHang);
  if (p.exitcode() != 0) mp::exit(3);
}

TEST_P(QueueAcross, PassedOnToAGrandchild) {
  mp::Queue<std::string> q;
  auto p = ctx().Process(child_passes_on, q, GetParam());
  p.start();
  EXPECT_EQ(q.get(kHang), "from the grandchild");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

void worker(mp::JoinableQueue<int> q, mp::Queue<int> results) {
  for (;;) {
    const int v = q.get(kHang);
    if (v < 0) {
      q.task_done();
      return;
    }
    results.put(v * v);
    q.task_done();
  }
}

TEST_P(QueueAcross, JoinWaitsForEveryTaskDone) {
  mp::JoinableQueue<int> q;
  mp::Queue<int> results;
  std::vector<mp::Process> ps;
  for (int i = 0; i < 4; ++i) ps.push_back(ctx().Process(worker, q, results));
  for (auto& p : ps) p.start();
  for (int i = 0; i < 10; ++i) q.put(i);
  q.join();
  EXPECT_EQ(results.qsize(), 10);  // each result was put before its task_done
  for (int i = 0; i < 4; ++i) q.put(-1);
  q.join();
  for (auto& p : ps) {
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
  }
}

void put_emptiness(mp::SimpleQueue<bool> q) {
  q.put(q.empty());
  q.put(q.empty());
}

TEST_P(QueueAcross, SimpleQueuePutsAreSynchronous) {
  mp::SimpleQueue<bool> q;
  auto p = ctx().Process(put_emptiness, q);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_TRUE(q.get());
  EXPECT_FALSE(q.get());
  EXPECT_TRUE(q.empty());
}

// ---- a peer killed mid-step ----

mp::detail::QueueStep g_die_at;
void die_at_step(mp::detail::QueueStep step) {
  if (step == g_die_at) ::kill(::getpid(), SIGKILL);
}

void put_and_die(mp::Queue<std::string> q, int step, std::size_t size) {
  g_die_at = static_cast<mp::detail::QueueStep>(step);
  mp::detail::g_queue_fault = die_at_step;
  q.put(pattern(size, 9));
  mp::exit(3);  // never: killed inside the put
}

void get_and_die(mp::Queue<std::string> q, int step) {
  g_die_at = static_cast<mp::detail::QueueStep>(step);
  mp::detail::g_queue_fault = die_at_step;
  q.get(kHang);
  mp::exit(3);
}

using mp::detail::QueueStep;

struct KillCase {
  QueueStep step;
  std::size_t size;
  bool getter;
  bool survives;  // the item being moved is still in the queue afterwards
};

// Every kill point of put and get: where it is, how large an item reaches it, and whether the
// item survives its mover.
const KillCase kKillCases[] = {
    {QueueStep::put_claimed, 1000, false, false},
    {QueueStep::put_half_written, 1000, false, false},
    {QueueStep::put_published, 1000, false, true},
    {QueueStep::put_large_copying, 2 << 20, false, false},
    {QueueStep::put_large_handed_over, 2 << 20, false, false},
    {QueueStep::put_published, 2 << 20, false, true},
    {QueueStep::get_taken, 1000, true, false},
    {QueueStep::get_copied, 1000, true, false},
    {QueueStep::get_taken, 2 << 20, true, false},
    {QueueStep::get_large_copying, 2 << 20, true, false},
};

void check_kill(const mp::Context& ctx, KillCase k, long maxsize) {
  mp::Queue<std::string> q(maxsize);
  const auto before = pattern(100, 1);
  if (k.getter) q.put(pattern(k.size, 9));
  q.put(before);
  auto p = k.getter ? ctx.Process(get_and_die, q, static_cast<int>(k.step))
                    : ctx.Process(put_and_die, q, static_cast<int>(k.step), k.size);
  p.start();
  p.join(kHang);
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  // The others go on at once (a dead holder of the ring's lock is taken over within ~50 ms).
  auto t0 = Clock::now();
  q.put("after");
  EXPECT_LT(seconds_since(t0), 1.0);
  std::vector<std::string> got;
  while (got.size() < 3) {
    auto item = q.get(kHang);
    got.push_back(std::move(item));
    if (got.back() == "after") break;
  }
  EXPECT_LT(seconds_since(t0), 1.5);
  // FIFO per producer: ours in order, the dead one's (when it survives) whole, wherever.
  std::vector<std::string> ours;
  int theirs = 0;
  for (auto& g : got) {
    if (g == pattern(k.size, 9))
      ++theirs;
    else
      ours.push_back(g);
  }
  EXPECT_EQ(ours, (std::vector<std::string>{before, "after"}));
  EXPECT_EQ(theirs, k.survives ? 1 : 0);
  EXPECT_THROW(q.get_nowait(), mp::Empty);  // a half-written record never shows
  // At most the one item the dead process was moving, and counted.
  EXPECT_EQ(q.lost(), k.survives ? 0u : 1u);
  EXPECT_EQ(q.qsize(), 0);
  // And the queue stays whole, large items included, a full lap of the ring and more.
  const auto big = pattern(3 << 20, 5);
  q.put(big);
  q.put("last");
  EXPECT_EQ(q.get(kHang), big);
  EXPECT_EQ(q.get(kHang), "last");
  const auto mid = pattern(20000, 3);
  for (int i = 0; i < 200; ++i) {
    q.put(mid);
    ASSERT_EQ(q.get(kHang), mid);
  }
}

TEST_P(QueueAcross, AProcessKilledAtEveryStepOfPutAndGet) {
  for (long maxsize : {0L, 10L})
    for (const auto& k : kKillCases) {
      SCOPED_TRACE("step " + std::to_string(static_cast<int>(k.step)) + ", " +
                   std::to_string(k.size) + " bytes, maxsize " + std::to_string(maxsize));
      check_kill(ctx(), k, maxsize);
    }
}

void block_on_get(mp::Queue<int> q, mp::Event started) {
  started.set();
  q.get();
  mp::exit(3);
}

TEST_P(QueueAcross, AConsumerKilledWhileBlockedTakesNothing) {
  mp::Queue<int> q;
  mp::Event started;
  auto p = ctx().Process(block_on_get, q, started);
  p.start();
  ASSERT_TRUE(started.wait(kHang));
  p.kill();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  std::thread live([&] { EXPECT_EQ(q.get(kHang), 7); });
  auto t0 = Clock::now();
  q.put(7);
  live.join();
  EXPECT_LT(seconds_since(t0), 1.0);
  EXPECT_EQ(q.lost(), 0u);
}

TEST_P(QueueAcross, GetStillTimesOutWhenEveryProducerDied) {
  mp::Queue<std::string> q;
  auto p = ctx().Process(put_and_die, q, static_cast<int>(QueueStep::put_half_written),
                         std::size_t{100});
  p.start();
  p.join(kHang);
  auto t0 = Clock::now();
  EXPECT_THROW(q.get(0.5s), mp::Empty);
  EXPECT_GE(seconds_since(t0), 0.4);
  EXPECT_LE(seconds_since(t0), 1.5);
}

void put_giant(mp::Queue<std::string> q) {
  std::string big(std::size_t{1} << 30, '\0');
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>(i >> 12);
  big.back() = 'z';
  q.put(big);
}

TEST(QueueProcesses, AGibibyteItemArrivesWhole) {
  // One item of 1 GiB from a fork child: the child's copy is gone before the parent's is made.
  mp::Queue<std::string> q;
  auto p = mp::get_context("fork").Process(put_giant, q);
  p.start();
  const std::string got = q.get(kHang);
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  ASSERT_EQ(got.size(), std::size_t{1} << 30);
  bool whole = got.back() == 'z';
  for (std::size_t i = 0; i < got.size() - 1 && whole; i += 4096)
    whole = got[i] == static_cast<char>(i >> 12);
  EXPECT_TRUE(whole);
  EXPECT_EQ(q.lost(), 0u);
}

void put_beyond_the_file_limit(mp::Queue<std::string> q) {
  // The memfd may not grow past its first 4 MiB: a large item finds no room.
  ::signal(SIGXFSZ, SIG_IGN);
  rlimit lim{};
  lim.rlim_cur = lim.rlim_max = 4 << 20;
  if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) mp::exit(4);
  try {
    q.put(pattern(8 << 20, 7));
  } catch (const mp::ProcessError& e) {
    const std::string what = e.what();
    if (what.find("no room") != std::string::npos && what.find("mp-queue-") != std::string::npos)
      mp::exit(0);
    std::fprintf(stderr, "%s\n", e.what());
    mp::exit(5);
  }
  mp::exit(6);  // put without room
}

TEST(QueueProcesses, OutOfMemfdSpaceIsAClearErrorAtPutAndLosesNothing) {
  mp::Queue<std::string> q;
  q.put("queued before");
  q.put(pattern(100000, 1));
  auto p = mp::get_context("fork").Process(put_beyond_the_file_limit, q);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(q.qsize(), 2);
  EXPECT_EQ(q.get_nowait(), "queued before");
  EXPECT_EQ(q.get_nowait(), pattern(100000, 1));
  EXPECT_EQ(q.lost(), 0u);
  const auto big = pattern(8 << 20, 7);  // this process has no limit: it fits
  q.put(big);
  EXPECT_EQ(q.get(kHang), big);
}

// A storm: producers and consumers SIGKILLed at random moments, restarted, then the queue
// drained. Every item attempted is delivered at most once; those missing are at most one per
// kill: counted in lost(), or in the hand of a consumer killed after its get returned.
constexpr int kStormIds = 256;                 // producer incarnations
constexpr std::uint32_t kStormSeqs = 1 << 16;  // items each

void storm_producer(mp::Queue<std::uint32_t> q, mp::RawArray<std::uint32_t> attempted, int id) {
  for (std::uint32_t seq = 0; seq < kStormSeqs; ++seq) {
    std::atomic_ref<std::uint32_t>(attempted[static_cast<std::size_t>(id)]).store(seq + 1);
    q.put(static_cast<std::uint32_t>(id) * kStormSeqs + seq);
  }
}

void storm_consumer(mp::Queue<std::uint32_t> q, mp::RawArray<std::uint32_t> delivered) {
  for (;;) {
    const std::uint32_t v = q.get(kHang);
    std::atomic_ref<std::uint32_t>(delivered[v]).fetch_add(1);
  }
}

TEST(QueueProcesses, ProducersAndConsumersKilledAtRandomInAStorm) {
  const auto& fork = mp::get_context("fork");
  mp::Queue<std::uint32_t> q(64);  // bounded: puts under the lock too
  mp::RawArray<std::uint32_t> attempted(kStormIds);
  mp::RawArray<std::uint32_t> delivered(std::size_t{kStormIds} * kStormSeqs);
  int next_id = 0;
  std::vector<mp::Process> producers, consumers;
  auto start_producer = [&] {
    producers.push_back(fork.Process(storm_producer, q, attempted, next_id++));
    producers.back().start();
  };
  auto start_consumer = [&] {
    consumers.push_back(fork.Process(storm_consumer, q, delivered));
    consumers.back().start();
  };
  start_producer(), start_producer(), start_consumer(), start_consumer();
  std::mt19937 rng(12345);
  int kills = 0, consumer_kills = 0;
  const auto t0 = Clock::now();
  while (seconds_since(t0) < 3 && next_id < kStormIds - 2) {
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));  // a random instant
    const bool producer = rng() % 2 == 0;
    auto& group = producer ? producers : consumers;
    std::size_t live = 0;
    for (; live < group.size() && !group[live].is_alive(); ++live) {
    }
    if (live == group.size()) continue;
    group[live].kill();
    group[live].join(kHang);
    ++kills;
    if (!producer) ++consumer_kills;
    producer ? start_producer() : start_consumer();
  }
  for (auto& p : producers)
    if (p.is_alive()) p.kill();
  for (auto& p : producers) p.join(kHang);
  for (auto& c : consumers)
    if (c.is_alive()) c.kill();
  for (auto& c : consumers) c.join(kHang);
  // What is left is still whole and readable.
  const auto t1 = Clock::now();
  for (;;) {
    std::uint32_t v;
    try {
      v = q.get_nowait();
    } catch (const mp::Empty&) {
      break;
    }
    std::atomic_ref<std::uint32_t>(delivered[v]).fetch_add(1);
  }
  EXPECT_LT(seconds_since(t1), 2.0);
  std::uint64_t missing = 0, twice = 0, unattempted = 0, total = 0;
  for (int id = 0; id < next_id; ++id) {
    const std::uint32_t n = attempted[static_cast<std::size_t>(id)];
    for (std::uint32_t seq = 0; seq < kStormSeqs; ++seq) {
      const std::uint32_t d = delivered[static_cast<std::size_t>(id) * kStormSeqs + seq];
      total += d;
      if (d > 1) ++twice;
      if (seq < n && d == 0) ++missing;
      if (seq >= n && d != 0) ++unattempted;
    }
  }
  const std::uint64_t lost = q.lost();
  EXPECT_EQ(twice, 0u);
  EXPECT_EQ(unattempted, 0u);
  EXPECT_GT(total, 1000u);
  EXPECT_GT(kills, 10);
  // Two more kills at the end (every producer and consumer then live).
  const auto bound = static_cast<std::uint64_t>(kills) + producers.size() + consumers.size();
  EXPECT_LE(lost, bound);
  // Missing: lost in the queue, in a killed consumer's hand, or never entered (a producer killed
  // before its put claimed anything): each one kill's.
  EXPECT_LE(missing, bound);
  EXPECT_GE(missing, lost);  // a lost item is never delivered
  q.put(7);
  EXPECT_EQ(q.get(kHang), 7);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, QueueAcross,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

}  // namespace
