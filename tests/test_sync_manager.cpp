// The SyncManager's standard objects (CPython's _TestDict/_TestList/_TestNamespace, the manager
// variants of _TestLock, _TestCondition, _TestEvent, _TestBarrier, _TestQueue), proxies crossing
// to children and through connections, and what CPython gets wrong: a dead client's Lock and
// its blocked get.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <mp/managers.hpp>
#include <set>
#include <thread>

#include "frames.hpp"
#include "helpers/served_counter.hpp"
#include "posix/posix.hpp"
#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

namespace {

int add_one(int n) {
  return n + 1;
}

class SyncManagerAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
};

TEST_P(SyncManagerAcross, DictListValueArrayNamespace) {
  auto m = mp::Manager({.context = &ctx()});
  auto d = m.dict<std::string, int>();
  d.set("a", 1);
  d.set("b", 2);
  EXPECT_EQ(d.get("a"), 1);
  EXPECT_TRUE(d.contains("b"));
  EXPECT_FALSE(d.contains("c"));
  EXPECT_EQ(d.get_or("c", 7), 7);
  EXPECT_EQ(error_text<mp::KeyError>([&] { d.get("c"); }), "KeyError: the key is not in the dict");
  EXPECT_THROW(d.erase("c"), mp::KeyError);
  d.update({{"c", 3}, {"a", 10}});
  EXPECT_EQ(d.size(), 3u);
  EXPECT_EQ(d.keys(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(d.values(), (std::vector<int>{10, 2, 3}));
  EXPECT_EQ(d.pop("b"), 2);
  EXPECT_EQ(d.items(), (std::vector<std::pair<std::string, int>>{{"a", 10}, {"c", 3}}));
  EXPECT_EQ(d.update_with("n", add_one), 1) << "a missing key starts from V{}";
  EXPECT_EQ(d.update_with("n", [](int n) { return n * 10; }), 10);
  d.clear();
  EXPECT_EQ(d.size(), 0u);

  auto l = m.list<std::string>({"x"});
  l.append("y");
  l.extend({"z", "w"});
  EXPECT_EQ(l.get(-1), "w");
  l.set(0, "X");
  l.insert(1, "i");
  EXPECT_EQ(l.items(), (std::vector<std::string>{"X", "i", "y", "z", "w"}));
  EXPECT_EQ(l.pop(), "w");
  EXPECT_EQ(l.pop(0), "X");
  EXPECT_EQ(l.size(), 3u);
  try {
    l.get(3);
    ADD_FAILURE() << "no error";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::out_of_range");
    EXPECT_EQ(e.message(), "list index out of range");
  }

  auto v = m.Value<double>(1.5);
  EXPECT_EQ(v.get(), 1.5);
  v.set(2.5);
  EXPECT_EQ(v.update_with([](double x) { return x * 2; }), 5.0);
  auto a = m.Array<int>(3);
  a.set(2, 9);
  EXPECT_EQ(a.items(), (std::vector<int>{0, 0, 9}));
  EXPECT_EQ(a.size(), 3u);
  EXPECT_THROW(a.get(3), mp::RemoteError);

  auto ns = m.Namespace();
  ns.set("name", std::string("alpha"));
  ns.set("count", 3);
  EXPECT_EQ(ns.get<std::string>("name"), "alpha");
  EXPECT_EQ(ns.get<int>("count"), 3);
  EXPECT_EQ(ns.names(), (std::vector<std::string>{"count", "name"}));
  EXPECT_EQ(logic_text([&] { ns.get<double>("count"); }),
            "Namespace: 'count' holds a int, not a double");
  EXPECT_EQ(error_text<mp::KeyError>([&] { ns.get<int>("nothing"); }),
            "'Namespace' object has no attribute 'nothing'");
  ns.erase("name");
  EXPECT_FALSE(ns.contains("name"));
  EXPECT_EQ(m.number_of_objects(), 5u);
}

TEST_P(SyncManagerAcross, QueueEventSemaphore) {
  auto m = mp::Manager({.context = &ctx()});
  auto q = m.Queue<std::string>(2);
  EXPECT_TRUE(q.empty());
  q.put("one");
  q.put_nowait("two");
  EXPECT_TRUE(q.full());
  EXPECT_THROW(q.put_nowait("three"), mp::Full);
  EXPECT_THROW(q.put("three", 10ms), mp::Full);
  EXPECT_EQ(q.qsize(), 2u);
  EXPECT_EQ(q.get(), "one");
  EXPECT_EQ(q.get_nowait(), "two");
  EXPECT_THROW(q.get_nowait(), mp::Empty);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(q.get(50ms), mp::Empty);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 45ms) << "the timeout is honoured";

  auto jq = m.JoinableQueue<int>();
  jq.put(1);
  EXPECT_FALSE(jq.join(10ms));
  EXPECT_EQ(jq.get(), 1);
  jq.task_done();
  EXPECT_TRUE(jq.join());
  EXPECT_EQ(logic_text([&] {
              try {
                jq.task_done();
              } catch (const mp::RemoteError& e) {
                throw std::logic_error(e.message());
              }
            }),
            "task_done() called too many times");

  auto e = m.Event();
  EXPECT_FALSE(e.is_set());
  EXPECT_FALSE(e.wait(10ms));
  e.set();
  EXPECT_TRUE(e.wait());
  e.clear();
  EXPECT_FALSE(e.is_set());

  auto s = m.BoundedSemaphore(1);
  EXPECT_TRUE(s.acquire());
  EXPECT_FALSE(s.acquire(false));
  EXPECT_FALSE(s.acquire(true, 10ms));
  s.release();
  EXPECT_EQ(s.get_value(), 1);
  try {
    s.release();
    ADD_FAILURE() << "no error";
  } catch (const mp::RemoteError& err) {
    EXPECT_EQ(err.message(), "semaphore or lock released too many times");
  }
  auto plain = m.Semaphore(0);
  plain.release();
  plain.release();
  EXPECT_EQ(plain.get_value(), 2);
}

// A child that takes proxies as its arguments: counts on the dict, reports on the queue.
void count_in_child(mp::DictProxy<std::string, int> d, mp::QueueProxy<int> q, mp::ValueProxy<int> v,
                    int times) {
  for (int i = 0; i < times; ++i) {
    d.update_with("hits", add_one);
    v.update_with(add_one);
  }
  q.put(::getpid());
}

TEST_P(SyncManagerAcross, ProxiesAreProcessArgumentsAndUpdateWithIsExact) {
  auto m = mp::Manager({.context = &ctx()});
  auto d = m.dict<std::string, int>();
  auto q = m.Queue<int>();
  auto v = m.Value<int>(0);
  constexpr int kTimes = 10000;
  auto a = ctx().Process(count_in_child, d, q, v, kTimes);
  auto b = ctx().Process(count_in_child, d, q, v, kTimes);
  a.start();
  b.start();
  std::set<int> pids{q.get(kHang), q.get(kHang)};
  a.join(kHang);
  b.join(kHang);
  EXPECT_EQ(a.exitcode(), 0);
  EXPECT_EQ(b.exitcode(), 0);
  EXPECT_EQ(pids, (std::set<int>{*a.pid(), *b.pid()}));
  EXPECT_EQ(d.get("hits"), 2 * kTimes) << "two racing clients, no update lost";
  EXPECT_EQ(v.get(), 2 * kTimes);
  // The children's references went with them: only ours are left.
  const auto deadline = std::chrono::steady_clock::now() + kHang;
  while (m.number_of_objects() != 3u && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  EXPECT_EQ(m.number_of_objects(), 3u);
}

void hold_lock_until_killed(mp::LockProxy lock, mp::QueueProxy<int> said) {
  lock.acquire();
  said.put(1);
  for (;;) ::pause();
}

// Whether `pid` is asleep (in the kernel, waiting), from /proc/<pid>/stat.
bool asleep(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(stat)), {});
  auto close = all.rfind(')');
  return close != std::string::npos && close + 2 < all.size() && all[close + 2] == 'S';
}

TEST_P(SyncManagerAcross, AClientKilledHoldingALockReleasesIt) {
  auto m = mp::Manager({.context = &ctx()});
  auto lock = m.Lock();
  auto said = m.Queue<int>();
  auto p = ctx().Process(hold_lock_until_killed, lock, said);
  p.start();
  EXPECT_EQ(said.get(kHang), 1);
  EXPECT_TRUE(lock.locked());
  EXPECT_FALSE(lock.acquire(false));
  p.kill();
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(lock.acquire(true, kHang)) << "the dead holder's lock is released";
  RecordProperty("release_ms", std::to_string((std::chrono::steady_clock::now() - t0) / 1ms));
  EXPECT_TRUE(lock.owner_died()) << "the next holder is told";
  lock.release();
  EXPECT_TRUE(lock.acquire());
  EXPECT_FALSE(lock.owner_died()) << "only the holding that took it over";
  lock.release();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

void get_once(mp::QueueProxy<std::string> q, mp::QueueProxy<int> said) {
  said.put(::getpid());
  (void)q.get();
  said.put(-1);  // never: killed while blocked
}

TEST_P(SyncManagerAcross, AClientKilledWhileBlockedInGetTakesNoItem) {
  auto m = mp::Manager({.context = &ctx()});
  auto q = m.Queue<std::string>();
  auto said = m.Queue<int>();
  auto p = ctx().Process(get_once, q, said);
  p.start();
  const int pid = said.get(kHang);
  const auto deadline = std::chrono::steady_clock::now() + kHang;
  while (!asleep(pid) && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  p.kill();
  p.join(kHang);
  q.put("kept");
  EXPECT_EQ(q.get(kHang), "kept") << "the dead getter took nothing";
  EXPECT_THROW(said.get_nowait(), mp::Empty);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SyncManagerAcross,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

TEST(SyncManager, RLockConditionBarrierAcrossThreads) {
  auto m = mp::Manager();
  auto r = m.RLock();
  EXPECT_TRUE(r.acquire());
  EXPECT_TRUE(r.acquire()) << "recursive";
  std::thread([&] {
    EXPECT_FALSE(r.acquire(true, 10ms)) << "another thread of the same client waits";
    try {
      r.release();
      ADD_FAILURE() << "no error";
    } catch (const mp::RemoteError& e) {
      EXPECT_EQ(e.message(), "attempt to release recursive lock not owned by thread");
    }
  }).join();
  r.release();
  r.release();
  std::thread([&] {
    EXPECT_TRUE(r.acquire(false));
    r.release();
  }).join();

  auto c = m.Condition();
  try {
    c.wait(10ms);
    ADD_FAILURE() << "no error";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.message(), "must acquire() condition before using wait()");
  }
  auto flag = m.Value<int>(0);
  c.acquire();
  std::thread notifier([&] {
    c.acquire();  // free once wait() released it
    flag.set(1);
    c.notify();
    c.release();
  });
  EXPECT_TRUE(c.wait(kHang));
  EXPECT_EQ(flag.get(), 1);
  EXPECT_FALSE(c.wait(10ms)) << "no notify: a timeout, and the lock is back";
  c.release();
  notifier.join();

  auto b = m.Barrier(3);
  std::vector<std::size_t> index(3);
  std::vector<std::thread> parties;
  for (int i = 0; i < 3; ++i) parties.emplace_back([&, i] { index[i] = b.wait(kHang); });
  for (auto& t : parties) t.join();
  EXPECT_EQ(std::set<std::size_t>(index.begin(), index.end()), (std::set<std::size_t>{0, 1, 2}));
  EXPECT_THROW(b.wait(10ms), mp::BrokenBarrierError) << "a timeout breaks the round";
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(), mp::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());
  EXPECT_EQ(b.parties(), 3u);
  EXPECT_EQ(b.n_waiting(), 0u);
}

TEST(SyncManager, AProxyThroughAConnectionOutlivesItsSender) {
  auto m = mp::Manager();
  auto [r, w] = mp::Pipe();
  {
    auto d = m.dict<int, int>();
    d.set(1, 2);
    w.send(d);
  }  // the sender's proxy is gone before the receiver loads it: the transit reference holds
  EXPECT_EQ(m.number_of_objects(), 1u);
  auto got = r.recv<mp::DictProxy<int, int>>();
  EXPECT_EQ(got.get(1), 2);
  w.send(got);
  EXPECT_THROW((void)r.recv<mp::ValueProxy<int>>(), mp::PicklingError)
      << "a proxy of another type is refused";
  EXPECT_EQ(got.get(1), 2);
}

TEST(SyncManager, OneConnectionPerClientProcess) {
  auto m = mp::Manager();
  auto first = m.dict<int, int>();
  const int fds = open_fd_count();
  std::vector<mp::LockProxy> locks;
  for (int i = 0; i < 100; ++i) locks.push_back(m.Lock());
  auto q = m.Queue<int>();
  EXPECT_EQ(open_fd_count(), fds) << "proxies share the process's one connection";
  locks.clear();
  EXPECT_EQ(m.number_of_objects(), 2u);
}

TEST(SyncManager, AFunctionFromAnotherBuildIsRefused) {
  std::string bytes;
  {
    mp::reduction::OutArchive ar(bytes);
    ar(std::string("0123456789abcdef"), std::string("a module"), std::uint64_t{16});
  }
  mp::FunctionRef<int(int)> f;
  mp::reduction::InArchive in(bytes);
  const std::string text = error_text<mp::PicklingError>([&] { in(f); });
  EXPECT_NE(text.find("crosses only within the same build"), std::string::npos) << text;
}

void block_in_get(mp::QueueProxy<int> q, std::string* error) {
  try {
    q.get();
  } catch (const mp::ManagerError& e) {
    *error = e.what();
  }
}

// Async calls wait to be written in a burst; never behind a read: nobody waits in result() here,
// and the get (blocked in the server, the session reading for it) needs the put made after it.
TEST(SyncManager, AnAsyncPutReachesTheAsyncGetWaitingForIt) {
  using Q = mp::managed::Queue<int>;
  auto m = mp::Manager();
  auto q = m.Queue<int>();
  for (int round = 0; round < 20; ++round) {
    std::promise<int> got;
    auto get = q.async_call<&Q::get>(true, -1.0);
    get.add_done_callback([&got](const mp::Future<int>& f) { got.set_value(f.result()); });
    auto put = q.async_call<&Q::put>(round, true, -1.0);
    auto seen = got.get_future();
    ASSERT_EQ(seen.wait_for(kHang), std::future_status::ready) << "round " << round;
    EXPECT_EQ(seen.get(), round);
    put.result(kHang);
  }
}

// A proxy dropped right after its async call: the call still runs (its release goes after it).
TEST(SyncManager, AnAsyncCallOutlivesItsProxy) {
  using D = mp::managed::Dict<std::string, int>;
  auto m = mp::Manager();
  const std::size_t before = m.number_of_objects();
  std::vector<mp::Future<void>> sets;
  {
    auto d = m.dict<std::string, int>();
    for (int i = 0; i < 10; ++i) sets.push_back(d.async_call<&D::set>(std::to_string(i), i));
  }
  for (auto& f : sets) EXPECT_NO_THROW(f.result(kHang));
  EXPECT_EQ(m.number_of_objects(), before) << "the dict went with its proxy";
}

TEST(SyncManager, ADeadServerFailsAPendingCall) {
  auto m = mp::Manager();
  auto q = m.Queue<int>();
  auto pid = m.Value<int>(0);
  std::string error;
  std::thread waiter(block_in_get, q, &error);
  // The server's pid, from a served object's point of view: the manager's child.
  auto children = mp::active_children();
  ASSERT_EQ(children.size(), 1u);
  ASSERT_EQ(::kill(*children[0]->pid(), SIGKILL), 0);
  waiter.join();
  EXPECT_NE(error.find("is gone"), std::string::npos) << error;
  EXPECT_THROW(pid.get(), mp::ManagerError);
}

// Two programs with no common parent in mp (the server's is started by a shell), meeting over
// TCP with a key each was given, as across machines.
TEST(SyncManager, TwoUnrelatedProgramsOverTcp) {
  const std::string key = "a key both were given";
  FILE* server = ::popen((helper_path("manager_tcp") + " '" + key + "'").c_str(), "r");
  ASSERT_NE(server, nullptr);
  int port = 0, server_pid = 0;
  ASSERT_EQ(std::fscanf(server, "%d %d", &port, &server_pid), 2);
  const mp::Address address(std::pair<std::string, int>("127.0.0.1", port));

  mp::SyncManager wrong({.address = address, .authkey = mp::AuthenticationString("not it")});
  EXPECT_THROW(wrong.connect(), mp::AuthenticationError);

  {
    mp::SyncManager m({.address = address, .authkey = mp::AuthenticationString(key)});
    m.register_type<mp_test_served::Counter>("Counter");
    m.connect();
    auto c = m.create<mp_test_served::Counter>(40);
    EXPECT_EQ(c.increment(2), 42);
    const int pid = c.server_pid();
    EXPECT_NE(pid, ::getpid());
    try {
      c.fail();
      ADD_FAILURE() << "no error";
    } catch (const mp::RemoteError& e) {
      EXPECT_EQ(e.message(), "failed on purpose");
      EXPECT_EQ(e.pid(), pid) << "the server's pid, though this client did not start it";
    }
    auto d = m.dict<std::string, int>();
    d.set("x", 1);
    EXPECT_EQ(d.get("x"), 1);
    try {
      d.update_with("x", add_one);
      ADD_FAILURE() << "a function reference crossed to another program";
    } catch (const mp::RemoteError& e) {
      EXPECT_NE(e.message().find("crosses only within the same build"), std::string::npos)
          << e.message();
    }
    EXPECT_EQ(d.get("x"), 1);
    EXPECT_EQ(error_text<mp::ManagerError>([&] { (void)m.Value<int>(1); }),
              "no type is registered as 'mp::managed::Value<int>'")
        << "a type the server's program does not have";
  }
  ASSERT_EQ(::kill(server_pid, SIGTERM), 0);
  const int status = ::pclose(server);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(Manager, TruncatedAndOversizedRequestsEndOnlyTheirConnection) {
  mp::BaseManager m;
  m.register_type<mp_test_served::Counter>("Counter");
  m.start();
  auto c = m.create<mp_test_served::Counter>(1);
  auto raw = mp::Client(m.address(), mp::ClientOptions{.authkey = mp::current_process().authkey()});
  // After the handshake the wire is frames (frames.hpp), written here by hand.
  const auto send_raw = [&](std::string_view bytes) {
    const std::span<const std::byte> parts[] = {std::as_bytes(std::span(bytes))};
    mp::posix::write_all(raw.fileno(), parts, true);
  };
  // A call of increment(int) whose argument is cut off: an error reply, nothing run.
  std::string body;
  {
    mp::reduction::OutArchive ar(body);
    ar(c.id(), std::string("increment"), std::uint64_t{1});
  }
  std::string call;
  mp::detail::append_frame(call, 1, 2 /* a call */, body + "xy");
  send_raw(call);
  mp::detail::FrameReader replies(1 << 20, "test");
  while (!replies.has_frame()) {
    auto room = replies.space();
    const std::size_t n = mp::posix::recv_some(raw.fileno(), room);
    ASSERT_GT(n, 0u) << "a reply, not a hang-up";
    replies.commit(n);
  }
  const auto reply = replies.next();
  EXPECT_EQ(reply->id, 1u);
  EXPECT_NE(reply->code, 10) << "not an ok";
  EXPECT_EQ(c.increment(0), 1) << "nothing ran";
  // A request over the size cap: that connection is dropped, the others go on.
  std::string huge;
  mp::detail::append_frame(huge, 2, 2, std::string((64u << 20) + 1, 'x'));
  try {
    send_raw(huge);
  } catch (const std::exception&) {
    // the server may hang up before all of it is sent (EPIPE)
  }
  EXPECT_ANY_THROW(raw.recv_bytes()) << "the connection is closed";
  EXPECT_EQ(c.increment(1), 2);
}

}  // namespace
