// Managers (CPython's _TestManagerRestart, _TestMyManager, the BaseManager items of SEMANTICS),
// first step: registered types served by a server child under every start method.
#include <signal.h>
#include <unistd.h>
#include <mp/managers.hpp>

#include <future>

#include "posix/posix.hpp"
#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

namespace {

struct Counter {
  int n = 0;
  Counter() = default;
  explicit Counter(int start) : n(start) {}
  int increment(int by) { return n += by; }
  int get() const { return n; }
  std::string describe(const std::string& prefix) const { return prefix + std::to_string(n); }
  void fail() { throw std::out_of_range("no such thing"); }
  int server_pid() const { return ::getpid(); }
  MP_METHODS(Counter, increment, get, describe, fail, server_pid)
};

// A method that never returns (the server's connection thread stays in it until killed).
struct Hanger {
  void hang() {
    for (;;) ::pause();
  }
  int server_pid() const { return ::getpid(); }
  MP_METHODS(Hanger, hang, server_pid)
};

struct Other {
  int value() const { return 1; }
  MP_METHODS(Other, value)
};

class ManagerAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
};

TEST_P(ManagerAcross, RegisteredTypesAreServedByAChild) {
  mp::BaseManager m({.context = &ctx()});
  m.register_type<Counter>("Counter");
  m.start();
  auto c = m.create<Counter>();
  EXPECT_EQ(c.increment(5), 5);
  EXPECT_EQ(c.increment(2), 7);
  EXPECT_EQ(c.get(), 7);
  EXPECT_EQ(c.describe("n="), "n=7");
  EXPECT_NE(c.server_pid(), ::getpid());
  auto d = m.create<Counter>(40);
  EXPECT_EQ(d.increment(2), 42);
  EXPECT_EQ(c.get(), 7) << "two objects";
  auto copy = c;
  EXPECT_EQ(copy.increment(1), 8) << "a copy is the same object";
  EXPECT_EQ(c.get(), 8);
}

TEST_P(ManagerAcross, AMethodsErrorReachesTheCallerAndTheServerGoesOn) {
  mp::BaseManager m({.context = &ctx()});
  m.register_type<Counter>("Counter");
  m.start();
  auto c = m.create<Counter>();
  try {
    c.fail();
    ADD_FAILURE() << "no error";
  } catch (const mp::RemoteError& e) {
    EXPECT_EQ(e.type_name(), "std::out_of_range");
    EXPECT_EQ(e.message(), "no such thing");
  }
  EXPECT_EQ(c.increment(1), 1);
}

TEST_P(ManagerAcross, ADeadServerIsOneErrorForEveryLaterCall) {
  mp::BaseManager m({.context = &ctx()});
  m.register_type<Counter>("Counter");
  m.start();
  auto c = m.create<Counter>();
  const int server = c.server_pid();
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  const std::string text = error_text<mp::ManagerError>([&] { c.get(); });
  EXPECT_NE(text.find("is gone"), std::string::npos) << text;
  EXPECT_EQ(error_text<mp::ManagerError>([&] { c.get(); }), text);
}

// The manager moved to: it owns the server, which its scope end stops; the moved-from one's
// shutdown() (and its scope end) does nothing.
TEST(Manager, AMovedFromManagerShutsNothingDown) {
  mp::BaseManager a;
  a.register_type<Counter>("Counter");
  a.start();
  mp::BaseManager b(std::move(a));
  a.shutdown();
  auto c = b.create<Counter>();
  EXPECT_EQ(c.increment(2), 2) << "the server still serves";
}

TEST_P(ManagerAcross, AsyncCallsAreInFlightTogetherAndRunInOrder) {
  mp::BaseManager m({.context = &ctx()});
  m.register_type<Counter>("Counter");
  m.start();
  auto c = m.create<Counter>();
  // Far more than the 64 in flight: async_call waits for the oldest itself.
  std::vector<mp::Future<int>> futures;
  for (int i = 0; i < 1000; ++i) futures.push_back(c.async_call<&Counter::increment>(1));
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(futures[i].result(), i + 1) << "in the order made";
  EXPECT_TRUE(futures[0].done());
  EXPECT_FALSE(futures[0].cancel()) << "sent at once: not cancellable";
  // Requests and replies of 1 MiB each, pipelined: neither side blocks the other for good.
  const std::string big(1 << 20, 'x');
  std::vector<mp::Future<std::string>> large;
  for (int i = 0; i < 20; ++i) large.push_back(c.async_call<&Counter::describe>(big));
  for (auto& f : large) EXPECT_EQ(f.result(), big + "1000");
  // mp::wait and mp::as_completed take them as they take an executor's futures.
  std::vector<mp::Future<int>> more;
  for (int i = 0; i < 10; ++i) more.push_back(c.async_call<&Counter::increment>(2));
  auto waited = mp::wait(more, 60s);
  EXPECT_EQ(waited.done.size(), 10u);
  int seen = 0;
  for (auto f : mp::as_completed(std::move(more))) seen += f.done();
  EXPECT_EQ(seen, 10);
  EXPECT_EQ(c.get(), 1020);
  auto done = c.async_call<&Counter::get>();
  std::atomic<int> called{0};
  done.add_done_callback([&](const mp::Future<int>& f) { called += f.result(); });
  EXPECT_EQ(done.result(), 1020);
  EXPECT_EQ(called.load(), 1020);
}

// Nobody waits in result(): the session's reader thread finishes the futures, callbacks and
// all (after the moment it leaves a caller to read its own replies), burst after burst.
TEST(Manager, AsyncCallsFinishWithNobodyWaiting) {
  mp::BaseManager m;
  m.register_type<Counter>("Counter");
  m.start();
  auto c = m.create<Counter>();
  for (int burst = 1; burst <= 3; ++burst) {
    std::vector<std::promise<int>> called(8);
    std::vector<mp::Future<int>> futures;
    for (auto& p : called) {
      futures.push_back(c.async_call<&Counter::increment>(1));
      futures.back().add_done_callback([&p](const mp::Future<int>& f) { p.set_value(f.result()); });
    }
    for (std::size_t i = 0; i < called.size(); ++i) {
      auto seen = called[i].get_future();
      ASSERT_EQ(seen.wait_for(kHang), std::future_status::ready) << "burst " << burst;
      EXPECT_EQ(seen.get(), static_cast<int>((burst - 1) * called.size() + i + 1));
    }
  }
}

// Rounds of 32 async calls, each awaited in turn with no timeout: a wait whose reply another
// thread (the session's reader) has already read must not block reading for it.
void await_rounds(mp::Proxy<Counter> c, int rounds) {
  std::vector<mp::Future<int>> batch;
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < 32; ++i) batch.push_back(c.async_call<&Counter::get>());
    for (auto& f : batch)
      if (f.result() != 0) ::_exit(2);
    batch.clear();
  }
}

TEST(Manager, AWaiterNeverReadsForAReplyAlreadyRead) {
  mp::BaseManager m;
  m.register_type<Counter>("Counter");
  m.start();
  mp::Process p(await_rounds, m.create<Counter>(), 3000);
  p.start();
  p.join(120s);
  if (p.is_alive()) p.kill(), p.join();
  EXPECT_EQ(p.exitcode(), 0) << "every result came (a hang was killed: -9)";
}

// A process that starts a manager (its server started `method`'s way), says the server's
// pid, and waits to be killed.
void own_a_manager(std::string method, mp::Connection out) {
  mp::BaseManager m({.context = &mp::get_context(method)});
  m.register_type<Counter>("Counter");
  m.start();
  out.send(m.create<Counter>().server_pid());
  for (;;) ::pause();
}

TEST_P(ManagerAcross, AServerWhoseOwnerIsKilledEnds) {
  auto [r, w] = mp::Pipe(false);
  mp::Process owner = mp::get_context("fork").Process(own_a_manager, GetParam(), std::move(w));
  owner.start();
  ASSERT_TRUE(r.poll(60s));
  const int server = r.recv<int>();
  auto server_fd = mp::posix::open_pidfd(server);
  ASSERT_TRUE(server_fd) << "pidfd_open(" << server << ")";
  ASSERT_EQ(::kill(*owner.pid(), SIGKILL), 0);
  owner.join();
  EXPECT_EQ(owner.exitcode(), -SIGKILL);
  // No shutdown() ran: the server sees its owner's sentinel end, and ends (not an orphan).
  EXPECT_TRUE(wait_readable(server_fd.get(), 30s)) << "the server outlived its owner";
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ManagerAcross,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

TEST(Manager, UnregisteredAndMisuse) {
  mp::BaseManager m;
  m.register_type<Counter>("Counter");
  EXPECT_EQ(error_text<std::logic_error>([&] { m.create<Counter>(); }),
            "the manager is not started or connected");
  m.start();
  EXPECT_EQ(error_text<std::logic_error>([&] { m.create<Other>(); }),
            "create<T>(): T is not registered with this manager (register_type<T>)");
  EXPECT_EQ(error_text<std::logic_error>([&] { m.register_type<Other>("Other"); }),
            "register_type() comes before start() or connect()");
  EXPECT_EQ(error_text<mp::ProcessError>([&] { m.start(); }), "Already started server");
}

TEST(Manager, WrongAuthkeyIsRefusedAndNothingRuns) {
  mp::BaseManager m({.authkey = mp::AuthenticationString("right key")});
  m.register_type<Counter>("Counter");
  m.start();
  mp::BaseManager other({.address = m.address(), .authkey = mp::AuthenticationString("wrong")});
  other.register_type<Counter>("Counter");
  EXPECT_THROW(other.connect(), mp::AuthenticationError);
  EXPECT_EQ(m.create<Counter>().increment(3), 3) << "the server goes on";
}

TEST(Manager, TcpNeedsAnAuthkeyAndWorksOnLoopback) {
  EXPECT_THROW(mp::BaseManager({.address = mp::Address(std::pair<std::string, int>("127.0.0.1", 0)),
                                .authkey = mp::AuthenticationString("")}),
               std::invalid_argument);
  mp::BaseManager m({.address = mp::Address(std::pair<std::string, int>("127.0.0.1", 0))});
  m.register_type<Counter>("Counter");
  m.start();
  const auto& [host, port] = std::get<std::pair<std::string, int>>(m.address());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_GT(port, 0);
  mp::BaseManager client({.address = m.address()});
  client.register_type<Counter>("Counter");
  client.connect();
  auto c = client.create<Counter>(1);
  EXPECT_EQ(c.increment(1), 2);
}

}  // namespace

namespace {

void make_counters_then_wait(mp::Address address, int n, std::string ready_path) {
  mp::BaseManager m({.address = address});
  m.register_type<Counter>("Counter");
  m.connect();
  std::vector<mp::Proxy<Counter>> held;
  for (int i = 0; i < n; ++i) held.push_back(m.create<Counter>(i));
  Channel::send(ready_path, "made");
  for (;;) ::pause();  // until killed
}

TEST(Manager, DroppedProxiesAndDeadClientsFreeTheirObjects) {
  mp::BaseManager m;
  m.register_type<Counter>("Counter");
  m.start();
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(m.create<Counter>(i).get(), i);
  EXPECT_EQ(m.number_of_objects(), 0u);
  auto kept = m.create<Counter>();
  EXPECT_EQ(m.number_of_objects(), 1u);

  Channel ready;
  auto p = mp::Process(make_counters_then_wait, m.address(), 10, ready.path());
  p.start();
  ASSERT_EQ(ready.recv(), "made");
  EXPECT_EQ(m.number_of_objects(), 11u);
  p.kill();
  p.join(kHang);
  // The server sees the connection close: the dead client's ten go (polled: no fixed delay).
  const auto deadline = std::chrono::steady_clock::now() + kHang;
  while (m.number_of_objects() != 1u && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  EXPECT_EQ(m.number_of_objects(), 1u);
  EXPECT_EQ(kept.increment(1), 1);
}

TEST(Manager, AStalledOrGarbledClientHoldsUpNobody) {
  mp::BaseManager m;
  m.register_type<Counter>("Counter");
  m.start();
  // Connected, never says a word (the handshake waits in that connection's thread).
  auto silent = mp::Client(m.address());
  (void)silent;
  auto c = m.create<Counter>();
  EXPECT_EQ(c.increment(2), 2);
  // Authenticated, then garbage: a frame header whose length is absurd.
  auto raw = mp::Client(m.address(), mp::ClientOptions{.authkey = mp::current_process().authkey()});
  raw.send_bytes(std::string(32, '\xff'));
  EXPECT_THROW(raw.recv_bytes(), mp::EOFError) << "the server drops a malformed peer";
  EXPECT_EQ(c.increment(2), 4);
  // Authenticated, then half a frame and silence: its connection waits, nobody else does.
  auto half =
      mp::Client(m.address(), mp::ClientOptions{.authkey = mp::current_process().authkey()});
  half.send_bytes("xy");
  EXPECT_FALSE(half.poll(50ms));
  EXPECT_EQ(c.increment(2), 6);
}

TEST(Manager, ATypeRegisteredOtherwiseOnTheServerIsRefused) {
  mp::BaseManager m;
  m.register_type<Other>("Counter");  // the server's "Counter" is another type
  m.start();
  mp::BaseManager client({.address = m.address()});
  client.register_type<Counter>("Counter");
  client.connect();
  const std::string text = error_text<mp::ManagerError>([&] { client.create<Counter>(); });
  EXPECT_NE(text.find("registered here as another type"), std::string::npos) << text;
  mp::BaseManager unknown({.address = m.address()});
  unknown.register_type<Counter>("Nothing");
  unknown.connect();
  EXPECT_EQ(error_text<mp::ManagerError>([&] { unknown.create<Counter>(); }),
            "no type is registered as 'Nothing'");
}

}  // namespace

TEST(Manager, AnAsyncCallsErrorFailsOnlyItsFutureAndNamesTheMethod) {
  mp::BaseManager m;
  m.register_type<Counter>("Counter");
  m.start();
  auto c = m.create<Counter>();
  auto failing = c.async_call<&Counter::fail>();
  auto fine = c.async_call<&Counter::increment>(3);
  const int server = c.server_pid();
  const std::string text = error_text<mp::RemoteError>([&] { failing.result(); });
  EXPECT_EQ(text, "std::out_of_range: no such thing (in the manager's server pid " +
                      std::to_string(server) + ", method 'fail')");
  EXPECT_EQ(error_text<mp::RemoteError>([&] { c.fail(); }), text) << "a plain call says the same";
  EXPECT_TRUE(failing.exception() != nullptr);
  EXPECT_EQ(fine.result(), 3);
}

TEST(Manager, ADeadServerFailsEveryAsyncCallInFlight) {
  mp::BaseManager m;
  m.register_type<Hanger>("Hanger");
  m.register_type<Counter>("Counter");
  m.start();
  auto h = m.create<Hanger>();
  auto c = m.create<Counter>();
  const int server = h.server_pid();
  auto stuck = h.async_call<&Hanger::hang>();
  // The server reads one connection's calls in order: those behind the hanging one wait too.
  std::vector<mp::Future<int>> behind;
  for (int i = 0; i < 5; ++i) behind.push_back(c.async_call<&Counter::increment>(1));
  EXPECT_EQ(error_text<mp::TimeoutError>([&] { stuck.result(50ms); }, "none"),
            error_text<mp::TimeoutError>([] { mp::detail::throw_timeout(); }));
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string text = error_text<mp::ManagerError>([&] { stuck.result(60s); });
  EXPECT_NE(text.find("is gone"), std::string::npos) << text;
  for (auto& f : behind) EXPECT_EQ(error_text<mp::ManagerError>([&] { f.result(60s); }), text);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 30s) << "reported, not hung";
  EXPECT_EQ(error_text<mp::ManagerError>([&] { c.async_call<&Counter::get>(); }), text)
      << "and every later call";
}

TEST(Manager, ThreadsMixingPlainAndAsyncCallsEachGetTheirReplies) {
  mp::BaseManager m;
  m.register_type<Counter>("Counter");
  m.start();
  auto c = m.create<Counter>();
  std::vector<std::thread> threads;
  std::atomic<int> out_of_order{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      int last = 0;
      std::vector<mp::Future<int>> futures;
      for (int i = 0; i < 500; ++i) {
        if (i % 2) {
          futures.push_back(c.async_call<&Counter::increment>(1));
        } else {
          const int now = c.increment(1);
          if (now <= last) ++out_of_order;
          last = now;
        }
      }
      int previous = 0;
      for (auto& f : futures) {
        const int v = f.result();
        if (v <= previous) ++out_of_order;
        previous = v;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(out_of_order.load(), 0);
  EXPECT_EQ(c.get(), 2000);
}
