// CPython's _test_multiprocessing.py process tests (TestProcess and friends), run under every
// start method. Children report through FIFO channels passed by path.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

namespace {

// ---- child targets: plain functions, so they cross to spawned children ----

void noop() {}
void block_on(std::string gate) {
  Channel::recv_line(gate);
}
void say_then_block(std::string out, std::string gate) {
  Channel::send(out, "ready");
  Channel::recv_line(gate);
}
void block_forever(std::string out) {
  Channel::send(out, std::to_string(::getpid()));
  for (;;) ::pause();
}
void exit_with(int code) {
  mp::exit(code);
}
void throw_system_exit(int code) {
  throw mp::SystemExit(code);
}
void system_exit_message(std::string msg) {
  throw mp::SystemExit(msg);
}
void throw_runtime_error(std::string msg) {
  throw std::runtime_error(msg);
}
void raise_sigsegv() {
  ::signal(SIGSEGV, SIG_DFL);  // sanitizers install their own handler
  ::raise(SIGSEGV);
}

void report_self(std::string out) {
  auto& me = mp::current_process();
  Channel::send(out, me.name() + "|" + std::to_string(*me.pid()) + "|" +
                         std::to_string(::getpid()) + "|" + (me.is_alive() ? "alive" : "dead") +
                         "|" + (me.daemon() ? "daemon" : "nodaemon") + "|" +
                         mp::get_start_method());
}

void report_parent(std::string out) {
  auto* parent = mp::parent_process();
  Channel::send(out, parent ? parent->name() + "|" + std::to_string(parent->pid()) + "|" +
                                  (parent->is_alive() ? "alive" : "dead")
                            : "none");
}

void report_own_name(std::string out) {
  Channel::send(out, mp::current_process().name());
}

void report_names_of_grandchildren(std::string out) {
  mp::Process c(report_own_name, out);
  c.start();
  c.join();
}

void report_names_of_children(std::string out) {
  mp::Process a(noop), b(noop);
  Channel::send(out, mp::current_process().name() + "|" + a.name() + "|" + b.name());
  // A third level: a grandchild's child is "Process-N:3:1".
  mp::Process g(report_names_of_grandchildren, out);
  g.start();
  g.join();
}

void report_grandchild_parent(std::string out) {
  mp::Process g(report_parent, out);
  g.start();
  g.join();
  Channel::send(out, mp::current_process().name() + "|" + std::to_string(*g.exitcode()));
}

// CPython test_recursion: a tree of depth 2, each node starting its children one at a time.
void recurse(std::string out, std::vector<int> id) {
  std::string s = "[";
  for (std::size_t i = 0; i < id.size(); ++i) s += (i ? "," : "") + std::to_string(id[i]);
  Channel::send(out, s + "]");
  if (id.size() < 2) {
    for (int i = 0; i < 2; ++i) {
      auto next = id;
      next.push_back(i);
      mp::Process p(recurse, out, next);
      p.start();
      p.join();
    }
  }
}

void report_args(std::string out, int i, double d, std::string s, std::vector<int> v,
                 std::map<std::string, int> m, std::tuple<int, std::string> t) {
  std::string vs;
  for (int x : v) vs += std::to_string(x) + ",";
  Channel::send(out, std::to_string(i) + "|" + std::to_string(d) + "|" + s + "|" + vs + "|" +
                         std::to_string(m.at("a")) + std::to_string(m.at("b")) + "|" +
                         std::to_string(std::get<0>(t)) + std::get<1>(t));
}

void report_active_children(std::string out) {
  Channel::send(out, std::to_string(mp::active_children().size()));
}

void report_stdin(std::string out) {
  char c;
  ssize_t n = ::read(0, &c, 1);
  Channel::send(out, "read=" + std::to_string(n));
}

void write_unflushed(std::string text) {
  std::cout << text;  // no newline, no flush: the child's exit must flush it
  std::printf("%s", "-c");
}

void write_with_failed_streams() {
  std::cout.setstate(std::ios::badbit);
  std::cerr.setstate(std::ios::failbit);
  std::cout << "lost";
}

void write_with_closed_stdio() {
  ::close(1);
  ::close(2);
  std::cout << "lost" << std::endl;
  std::cerr << "lost" << std::endl;
  std::printf("lost\n");
}

void report_fds_then_block(std::string out, std::string gate) {
  Channel::send(out, std::to_string(open_fd_count()));
  Channel::recv_line(gate);
}

void report_fd_valid(std::string out, int fd) {
  Channel::send(out, ::fcntl(fd, F_GETFD) < 0 ? "EBADF" : "open");
}

void report_authkey(std::string out) {
  auto& key = mp::current_process().authkey();
  std::string hex;
  char b[3];
  for (auto x : key.bytes()) {
    std::snprintf(b, sizeof b, "%02x", static_cast<unsigned>(x));
    hex += b;
  }
  Channel::send(out, hex);
}

// Static-initialised to 1; a test sets it to 99 in the parent before start().
int g_set_in_main = 1;
void report_global(std::string out) {
  Channel::send(out, std::to_string(g_set_in_main));
}

struct NoSerializer {
  int x = 0;
};
void takes_no_serializer(NoSerializer) {}

void report_env(std::string out) {
  const char* v = std::getenv("MP_TEST_SET_AT_START");
  Channel::send(out, v ? v : "(unset)");
}

// A child starting one grandchild by each start method.
void start_by_every_method(std::string out) {
  std::string codes;
  int i = 0;
  for (const char* m : {"fork", "spawn", "forkserver"}) {
    auto g = mp::get_context(m).Process(exit_with, 10 + i++);
    g.start();
    g.join(kHang);
    codes += std::to_string(g.exitcode().value_or(-1000)) + " ";
  }
  Channel::send(out, codes);
}

// Writes through a descriptor it was given as an argument (a pipe's write end).
void write_to_passed_fd(mp::reduction::DupFd fd, std::string text) {
  if (::write(fd.fd(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) mp::exit(3);
  ::close(fd.fd());
}

void report_cwd(std::string out) {
  Channel::send(out, std::filesystem::current_path().string());
}

// A middle process: starts a grandchild (daemon or not) that blocks, then returns from run().
void start_blocked_grandchild(std::string out, std::string gate, bool daemon) {
  mp::Process g(mp::Options{.daemon = daemon}, block_on, gate);
  g.start();
  Channel::send(out, std::to_string(*g.pid()));
}

// A middle process that drops its Process object while the grandchild runs.
void drop_running_child(std::string out, std::string gate) {
  {
    mp::Process g(block_on, gate);
    g.start();
    Channel::send(out, std::to_string(*g.pid()));
  }
  Channel::send(out, "dropped " + std::to_string(mp::active_children().size()));
}

void start_from_daemon(std::string out) {
  mp::Process g(noop);
  // The creator's daemon flag is the default (SEMANTICS 2).
  Channel::send(out, g.daemon() ? "inherits daemon" : "not daemon");
  try {
    g.start();
    Channel::send(out, "started");
  } catch (const std::logic_error& e) {
    Channel::send(out, e.what());
  }
}

void watch_parent(std::string out) {
  auto* parent = mp::parent_process();
  Channel::send(out, parent->is_alive() ? "alive" : "dead");
  parent->join(kHang);
  Channel::send(out, parent->is_alive() ? "alive" : "dead");
}

void middle_with_watcher(std::string out, std::string gate) {
  mp::Process g(watch_parent, out);
  g.start();
  Channel::recv_line(gate);
}

void register_child_atexit(std::string out) {
  static std::string path;
  path = out;
  std::atexit([] { Channel::send(path, "child-atexit"); });
}

struct Echo : mp::Process {
  std::string out, text;
  int times = 0;
  void run() override {
    std::string s;
    for (int i = 0; i < times; ++i) s += text;
    for (auto& c : s) c = static_cast<char>(std::toupper(c));
    Channel::send(out, s);
  }
  MP_FIELDS(Echo, out, text, times)
};

struct Undeclared : mp::Process {
  void run() override {}
};

class ProcessTest : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
  bool is_fork() const { return GetParam() == "fork"; }
  // How a PicklingError names the child it was for.
  std::string child_kind() const {
    return GetParam() == "forkserver" ? "for a forkserver child" : "for a spawned child";
  }
  // A plain Process (named Process-N) bound to this test's start method.
  template <class... A>
  mp::Process make(A&&... a) {
    mp::Process p(std::forward<A>(a)...);
    ctx().bind_to(p);
    return p;
  }
  template <class... A>
  mp::Process make(mp::Options o, A&&... a) {
    mp::Process p(std::move(o), std::forward<A>(a)...);
    ctx().bind_to(p);
    return p;
  }
};

// ---- lifecycle (SEMANTICS 2, 15, 20, 21) ----

TEST_P(ProcessTest, LifecycleOfAProcess) {
  Channel out, gate;
  auto p = make(say_then_block, out.path(), gate.path());
  EXPECT_FALSE(p.pid());
  EXPECT_FALSE(p.exitcode());
  EXPECT_FALSE(p.is_alive());
  EXPECT_FALSE(p.daemon());
  EXPECT_EQ(mp::active_children().size(), 0u);
  EXPECT_THROW(p.sentinel(), std::logic_error);

  p.start();
  EXPECT_FALSE(p.exitcode());
  EXPECT_TRUE(p.is_alive());
  ASSERT_TRUE(p.pid());
  auto children = mp::active_children();
  ASSERT_EQ(children.size(), 1u);
  EXPECT_EQ(children[0], &p);
  ASSERT_EQ(out.recv(), "ready");
  pollfd s{p.sentinel(), POLLIN, 0};
  EXPECT_EQ(::poll(&s, 1, 0), 0) << "sentinel ready while the child runs";

  gate.send("go");
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_FALSE(p.is_alive());
  EXPECT_TRUE(p.pid());
  EXPECT_EQ(mp::active_children().size(), 0u);
  EXPECT_EQ(::poll(&s, 1, 0), 1) << "sentinel not ready after exit";
  p.join();  // a second join returns at once
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ProcessTest, JoinWithTimeouts) {
  Channel out, gate;
  auto p = make(say_then_block, out.path(), gate.path());
  p.start();
  ASSERT_EQ(out.recv(), "ready");
  auto t0 = std::chrono::steady_clock::now();
  p.join(0s);
  p.join(-1s);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_TRUE(p.is_alive());
  EXPECT_FALSE(p.exitcode());
  t0 = std::chrono::steady_clock::now();
  p.join(300ms);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 200ms);
  EXPECT_FALSE(p.exitcode());
  gate.send("go");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

// ---- exit codes (SEMANTICS 22, 25-28) ----

TEST_P(ProcessTest, TerminateAndKill) {
  Channel out;
  auto t = make(block_forever, out.path());
  t.start();
  ASSERT_TRUE(out.recv());
  t.terminate();
  t.join(kHang);
  EXPECT_EQ(t.exitcode(), -SIGTERM);
  EXPECT_NE(t.repr().find("exitcode=-SIGTERM"), std::string::npos) << t;
  t.terminate();  // ended and reaped: a no-op (SEMANTICS 24)
  t.kill();

  auto k = make(block_forever, out.path());
  k.start();
  ASSERT_TRUE(out.recv());
  k.kill();
  k.join(kHang);
  EXPECT_EQ(k.exitcode(), -SIGKILL);
  EXPECT_NE(k.repr().find("exitcode=-SIGKILL"), std::string::npos) << k;
}

TEST_P(ProcessTest, ExitCodes) {
  const std::vector<std::pair<int, int>> cases = {{8, 8}, {0, 0}, {255, 255}, {256, 0}, {-1, 255}};
  for (auto [code, expected] : cases) {
    auto a = make(exit_with, code);
    a.start();
    a.join(kHang);
    EXPECT_EQ(a.exitcode(), expected) << "mp::exit(" << code << ")";
    auto b = make(throw_system_exit, code);
    b.start();
    b.join(kHang);
    EXPECT_EQ(b.exitcode(), expected) << "throw SystemExit(" << code << ")";
  }
  auto n = make(noop);
  n.start();
  n.join(kHang);
  EXPECT_EQ(n.exitcode(), 0);
}

TEST_P(ProcessTest, SignalExitCodeIsNamed) {
  auto p = make(raise_sigsegv);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), -SIGSEGV);
  EXPECT_NE(p.repr().find("exitcode=-SIGSEGV"), std::string::npos) << p;
  EXPECT_EQ(mp::exitcode_to_name(3), "3");
}

TEST_P(ProcessTest, UncaughtExceptionPrintsAndExitsOne) {
  Capture err(2);
  auto p = make(throw_runtime_error, std::string("boom 42"));
  p.set_name("Thrower");
  auto m = make(system_exit_message, std::string("a message"));
  p.start();
  p.join(kHang);
  m.start();
  m.join(kHang);
  auto text = err.text();
  EXPECT_EQ(p.exitcode(), 1);
  EXPECT_EQ(m.exitcode(), 1);
  EXPECT_NE(text.find("Process Thrower:\nstd::runtime_error: boom 42\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("a message\n"), std::string::npos) << text;
}

// ---- streams (SEMANTICS 29-31) ----

TEST_P(ProcessTest, StreamsAreFlushedAtChildExit) {
  Capture out(1);
  std::cout << "unflushed-";  // buffered in the parent before start()
  auto p = make(write_unflushed, std::string("child-text"));
  p.start();
  p.join(kHang);
  std::cout << "end";
  auto text = out.text();
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(text, "unflushed-child-text-cend") << "parent text must appear exactly once";
}

TEST_P(ProcessTest, StdinIsDevNull) {
  Channel out;
  auto p = make(report_stdin, out.path());
  p.start();
  EXPECT_EQ(out.recv(), "read=0");
  p.join(kHang);
}

TEST_P(ProcessTest, ClosedStdioStillExitsZero) {
  auto p = make(write_with_closed_stdio);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  auto q = make(write_with_failed_streams);
  q.start();
  q.join(kHang);
  EXPECT_EQ(q.exitcode(), 0);
}

// ---- names and identities (SEMANTICS 1, 4-6, 8-10) ----

TEST_P(ProcessTest, NamesCountEveryConstruction) {
  mp::Process a(noop);
  auto n = std::stoi(a.name().substr(a.name().find('-') + 1));
  for (int i = 0; i < 17; ++i) mp::Process unused(noop);
  mp::Process b(noop), c(noop);
  EXPECT_EQ(b.name(), "Process-" + std::to_string(n + 18));
  EXPECT_EQ(c.name(), "Process-" + std::to_string(n + 19));
  Echo e;
  EXPECT_EQ(e.name(), "Echo-" + std::to_string(n + 20));
  EXPECT_EQ(e.repr().rfind("<Echo name='Echo-", 0), 0u) << e;
  auto s = ctx().Process(noop);
  const std::map<std::string, std::string> token = {
      {"fork", "ForkProcess-"}, {"spawn", "SpawnProcess-"}, {"forkserver", "ForkServerProcess-"}};
  EXPECT_EQ(s.name(), token.at(GetParam()) + std::to_string(n + 21));
  mp::Process named(mp::Options{.name = "worker"}, noop);
  EXPECT_EQ(named.name(), "worker");
}

TEST_P(ProcessTest, ChildSeesItself) {
  Channel out;
  auto p = make(mp::Options{.daemon = true}, report_self, out.path());
  const auto name_at_start = p.name();
  p.start();
  p.set_name("renamed-after-start");  // does not reach the child (SEMANTICS 9)
  auto line = out.recv();
  p.join(kHang);
  ASSERT_TRUE(line);
  const auto pid = std::to_string(*p.pid());
  EXPECT_EQ(*line, name_at_start + "|" + pid + "|" + pid + "|alive|daemon|" + GetParam());
}

TEST_P(ProcessTest, MainProcess) {
  auto& me = mp::current_process();
  EXPECT_EQ(me.name(), "MainProcess");
  EXPECT_EQ(me.pid(), ::getpid());
  EXPECT_TRUE(me.is_alive());
  EXPECT_FALSE(me.daemon());
  EXPECT_FALSE(me.exitcode());
  EXPECT_EQ(me.authkey().size(), 32u);
  EXPECT_EQ(me.repr(), "<_MainProcess name='MainProcess' parent=None started>");
  EXPECT_EQ(mp::parent_process(), nullptr);
  EXPECT_GE(mp::cpu_count(), 1);
}

TEST_P(ProcessTest, ParentProcessInChildAndGrandchild) {
  Channel out;
  auto p = make(report_parent, out.path());
  p.start();
  EXPECT_EQ(out.recv(), "MainProcess|" + std::to_string(::getpid()) + "|alive");
  p.join(kHang);

  auto q = make(report_grandchild_parent, out.path());
  q.start();
  auto grandchild_view = out.recv();
  auto middle = out.recv();
  q.join(kHang);
  ASSERT_TRUE(grandchild_view && middle);
  EXPECT_EQ(*middle, q.name() + "|0");
  EXPECT_EQ(*grandchild_view, q.name() + "|" + std::to_string(*q.pid()) + "|alive");
}

TEST_P(ProcessTest, GrandchildSeesItsParentDie) {
  Channel out, gate;
  auto middle = make(middle_with_watcher, out.path(), gate.path());
  middle.start();
  EXPECT_EQ(out.recv(), "alive");
  middle.terminate();
  middle.join(kHang);
  EXPECT_EQ(middle.exitcode(), -SIGTERM);
  EXPECT_EQ(out.recv(), "dead");  // parent_process().join() returned once the middle died
}

TEST_P(ProcessTest, ChildrenOfChildrenAreNumberedPerParent) {
  Channel out;
  for (int i = 0; i < 3; ++i) mp::Process unused(noop);  // the child's counter restarts anyway
  auto p = make(report_names_of_children, out.path());
  p.start();
  auto line = out.recv();
  auto third = out.recv();
  p.join(kHang);
  EXPECT_EQ(line, p.name() + "|" + p.name() + ":1|" + p.name() + ":2");
  EXPECT_EQ(third, p.name() + ":3:1") << "a grandchild's child";
}

TEST_P(ProcessTest, Recursion) {
  Channel out;
  auto p = make(recurse, out.path(), std::vector<int>{});
  p.start();
  std::vector<std::string> got;
  for (int i = 0; i < 7; ++i) got.push_back(out.recv().value_or("timeout"));
  p.join(kHang);
  EXPECT_EQ(got,
            (std::vector<std::string>{"[]", "[0]", "[0,0]", "[0,1]", "[1]", "[1,0]", "[1,1]"}));
  EXPECT_EQ(p.exitcode(), 0);
}

// ---- active_children, daemons, exit handling (SEMANTICS 12, 18, 35, 36, 42) ----

TEST_P(ProcessTest, ActiveChildrenReapsFinishedChildren) {
  auto p = make(noop);
  p.start();
  const int pid = *p.pid();
  // Until it has ended (a zombie), without reaping it: that is active_children()'s job.
  siginfo_t info{};
  while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
  }
  EXPECT_TRUE(mp::active_children().empty());
  EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD) << "active_children() must reap";
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ProcessTest, AChildStartsWithNoChildren) {
  Channel out, gate, out2;
  auto running = make(say_then_block, out.path(), gate.path());
  running.start();
  ASSERT_EQ(out.recv(), "ready");
  auto p = make(report_active_children, out2.path());
  p.start();
  EXPECT_EQ(out2.recv(), "0") << "the parent's children are not the child's (even under fork)";
  p.join(kHang);
  gate.send("go");
  running.join(kHang);
}

TEST_P(ProcessTest, TerminateAChildThatEndedButIsNotReaped) {
  auto p = make(noop);
  p.start();
  siginfo_t info{};
  while (::waitid(P_PID, static_cast<id_t>(*p.pid()), &info, WEXITED | WNOWAIT) < 0 &&
         errno == EINTR) {
  }
  p.terminate();  // a zombie: harmless, no error
  p.kill();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0) << "it had ended by itself";
}

TEST_P(ProcessTest, DaemonCannotHaveChildren) {
  Channel out;
  auto p = make(mp::Options{.daemon = true}, start_from_daemon, out.path());
  p.start();
  EXPECT_EQ(out.recv(), "inherits daemon");
  EXPECT_EQ(out.recv(), "daemonic processes are not allowed to have children");
  p.join(kHang);
  try {
    p.set_daemon(false);
    ADD_FAILURE() << "set_daemon after start";
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(), "process has already started");
  }
}

TEST_P(ProcessTest, DaemonGrandchildIsTerminatedWhenItsParentReturns) {
  Channel out, gate;  // the gate is never opened: only termination ends the grandchild
  auto middle = make(start_blocked_grandchild, out.path(), gate.path(), true);
  middle.start();
  auto pid = out.recv();
  middle.join(kHang);
  EXPECT_EQ(middle.exitcode(), 0);
  ASSERT_TRUE(pid);
  // The middle terminated and reaped its daemon child before it exited.
  EXPECT_EQ(::kill(std::stoi(*pid), 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST_P(ProcessTest, NonDaemonGrandchildIsJoinedBeforeItsParentExits) {
  Channel out, gate;
  auto middle = make(start_blocked_grandchild, out.path(), gate.path(), false);
  middle.start();
  ASSERT_TRUE(out.recv());
  middle.join(300ms);
  EXPECT_TRUE(middle.is_alive()) << "the middle must wait for its non-daemon child";
  gate.send("go");
  middle.join(kHang);
  EXPECT_EQ(middle.exitcode(), 0);
}

TEST_P(ProcessTest, DroppingAProcessObjectNeitherBlocksNorKills) {
  Channel out, gate;
  auto middle = make(drop_running_child, out.path(), gate.path());
  middle.start();
  auto pid = out.recv();
  EXPECT_EQ(out.recv(), "dropped 0");
  ASSERT_TRUE(pid);
  EXPECT_EQ(::kill(std::stoi(*pid), 0), 0) << "the dropped child must still run";
  middle.join(300ms);
  EXPECT_TRUE(middle.is_alive()) << "its exit must still join the dropped child";
  gate.send("go");
  middle.join(kHang);
  EXPECT_EQ(middle.exitcode(), 0);
  EXPECT_EQ(::kill(std::stoi(*pid), 0), -1) << "the dropped child was reaped by its parent";
  EXPECT_EQ(errno, ESRCH);
}

// ---- misuse (SEMANTICS 16, 17, 32, 33, 34) ----

TEST_P(ProcessTest, MisuseThrowsCPythonTexts) {
  auto p = make(noop);
  auto expect_logic = [](auto f, const std::string& text) {
    try {
      f();
      ADD_FAILURE() << "expected: " << text;
    } catch (const std::logic_error& e) {
      EXPECT_EQ(std::string(e.what()), text);
    }
  };
  expect_logic([&] { p.join(); }, "can only join a started process");
  p.start();
  expect_logic([&] { p.start(); }, "cannot start a process twice");
  p.join(kHang);
  const int sentinel = p.sentinel();
  p.close();
  EXPECT_EQ(::fcntl(sentinel, F_GETFD), -1) << "close() must close the sentinel";
  p.close();  // idempotent
  const std::string closed = "process object is closed";
  expect_logic([&] { (void)p.pid(); }, closed);
  expect_logic([&] { (void)p.exitcode(); }, closed);
  expect_logic([&] { (void)p.sentinel(); }, closed);
  expect_logic([&] { (void)p.is_alive(); }, closed);
  expect_logic([&] { p.join(); }, closed);
  expect_logic([&] { p.terminate(); }, closed);
  expect_logic([&] { p.kill(); }, closed);
  expect_logic([&] { p.start(); }, closed);
  EXPECT_FALSE(p.name().empty());
  EXPECT_FALSE(p.daemon());

  Channel out, gate;
  auto r = make(say_then_block, out.path(), gate.path());
  r.start();
  ASSERT_EQ(out.recv(), "ready");
  expect_logic([&] { r.close(); },
               "Cannot close a process while it is still running. You should first call join() "
               "or terminate().");
  gate.send("go");
  r.join(kHang);

  mp::Process never(noop);
  never.close();  // allowed on a never-started object
}

TEST_P(ProcessTest, ReprFollowsTheState) {
  Channel out;
  auto p = make(mp::Options{.name = "P"}, block_forever, out.path());
  const auto me = std::to_string(::getpid());
  EXPECT_EQ(p.repr(), "<Process name='P' parent=" + me + " initial>");
  p.set_daemon(true);
  p.start();
  ASSERT_TRUE(out.recv());
  const auto pid = std::to_string(*p.pid());
  EXPECT_EQ(p.repr(), "<Process name='P' pid=" + pid + " parent=" + me + " started daemon>");
  p.terminate();
  p.join(kHang);
  EXPECT_EQ(p.repr(), "<Process name='P' pid=" + pid + " parent=" + me +
                          " stopped exitcode=-SIGTERM daemon>");
  p.close();
  EXPECT_EQ(p.repr(), "<Process name='P' parent=" + me + " closed daemon>");
}

// ---- many processes (SEMANTICS 23) ----

TEST_P(ProcessTest, ManyProcesses) {
  const int n = GetParam() == "spawn" ? 20 : 100;
  std::vector<mp::Process> procs;
  for (int i = 0; i < n; ++i) procs.push_back(make(noop));
  for (auto& p : procs) p.start();
  for (auto& p : procs) {
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
  }
  procs.clear();
  // Terminated while still bootstrapping: nothing may hang, and since these children never
  // end by themselves, SIGTERM is what ended every one.
  Channel never;
  for (int i = 0; i < n; ++i) procs.push_back(make(block_on, never.path()));
  for (auto& p : procs) {
    p.start();
    p.terminate();
  }
  for (auto& p : procs) {
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), -SIGTERM);
  }
}

// ---- arguments and subclasses (SEMANTICS 37, 38) ----

TEST_P(ProcessTest, ArgumentsArriveIntact) {
  Channel out;
  // A string_view argument is stored as a std::string: it crosses and cannot dangle.
  std::string_view text = "text and more";
  auto p =
      make(report_args, out.path(), 7, 3.625, text.substr(0, 4), std::vector<int>{1, 2, 3},
           std::map<std::string, int>{{"a", 4}, {"b", 5}}, std::tuple<int, std::string>{6, "x"});
  p.start();
  EXPECT_EQ(out.recv(), "7|3.625000|text|1,2,3,|45|6x");
  p.join(kHang);
}

TEST_P(ProcessTest, SubclassFieldsCross) {
  Channel out;
  Echo e;
  ctx().bind_to(e);
  e.out = out.path();
  e.text = "hello";
  e.times = 2;
  e.start();
  EXPECT_EQ(out.recv(), "HELLOHELLO");
  e.join(kHang);
  EXPECT_EQ(e.exitcode(), 0);
}

TEST_P(ProcessTest, TargetIsDroppedAfterStart) {
  auto arg = std::make_shared<int>(5);
  auto p = make([](std::shared_ptr<int>) {}, arg);
  EXPECT_EQ(arg.use_count(), 2);
  p.start();
  EXPECT_EQ(arg.use_count(), 1);
  p.join(kHang);
}

// ---- threads and signals (SEMANTICS 40, 41) ----

std::atomic<int> g_alarms{0};
extern "C" void on_alarm(int) {
  g_alarms.fetch_add(1, std::memory_order_relaxed);
}

TEST_P(ProcessTest, SignalsDuringBlockingCallsAreRetried) {
  // SIGALRM every millisecond, without SA_RESTART: every blocking call sees EINTR.
  struct sigaction sa {};
  sa.sa_handler = on_alarm;
  struct sigaction old {};
  ASSERT_EQ(::sigaction(SIGALRM, &sa, &old), 0);
  itimerval timer{{0, 1000}, {0, 1000}};
  ASSERT_EQ(::setitimer(ITIMER_REAL, &timer, nullptr), 0);
  Channel out, gate;
  for (int i = 0; i < 5; ++i) {
    auto p = make(say_then_block, out.path(), gate.path());
    p.start();
    EXPECT_EQ(out.recv(), "ready");
    p.join(50ms);
    EXPECT_TRUE(p.is_alive());
    gate.send("go");
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  itimerval off{};
  ::setitimer(ITIMER_REAL, &off, nullptr);
  ::sigaction(SIGALRM, &old, nullptr);
  EXPECT_GT(g_alarms.load(), 0);
}

// Inside a child, under a signal storm: its bootstrap (for spawn, its reading of the spawn
// data too), starting and joining a grandchild, waits on its parent, and its exit.
void blocking_calls_under_signals(std::string out, std::string gate) {
  arm_alarm_storm();
  auto g = mp::Process(block_on, gate);
  g.start();
  g.join(std::chrono::milliseconds(20));
  const bool waited = g.is_alive();
  Channel::send(out, "go-ahead");  // the test opens the gate for the grandchild
  g.join();
  mp::parent_process()->join(std::chrono::milliseconds(20));
  Channel::send(out, std::string(waited ? "ok " : "join(timeout) returned early ") +
                         std::to_string(*g.exitcode()) + " " +
                         (alarms_received() > 0 ? "signalled" : "no signals"));
}

TEST_P(ProcessTest, SignalsInsideAChildAreRetriedToo) {
  Channel out, gate;
  ::setenv("MP_TEST_ALARM_STORM", "1", 1);
  auto p = make(blocking_calls_under_signals, out.path(), gate.path());
  p.start();
  ::unsetenv("MP_TEST_ALARM_STORM");
  ASSERT_EQ(out.recv(), "go-ahead");
  gate.send("go");
  EXPECT_EQ(out.recv(), "ok 0 signalled");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ProcessTest, TwoThreadsJoinTheSameChild) {
  Channel out, gate;
  auto p = make(say_then_block, out.path(), gate.path());
  p.start();
  ASSERT_EQ(out.recv(), "ready");
  std::optional<int> a, b;
  std::thread t1([&] {
    p.join();
    a = p.exitcode();
  });
  std::thread t2([&] {
    p.join(kHang);
    b = p.exitcode();
  });
  gate.send("go");
  t1.join();
  t2.join();
  EXPECT_EQ(a, 0);
  EXPECT_EQ(b, 0);
}

// ---- spawn-only and fork-only behaviour (SEMANTICS 19, 39, 47, 50-53) ----

TEST_P(ProcessTest, DescriptorHygiene) {
  Channel out;
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int fd50 = ::fcntl(devnull, F_DUPFD, 50);  // not close-on-exec, on purpose
  ::close(devnull);
  ASSERT_GE(fd50, 50);
  auto p = make(report_fd_valid, out.path(), fd50);
  p.start();
  EXPECT_EQ(out.recv(), is_fork() ? "open" : "EBADF");
  p.join(kHang);
  ::close(fd50);

  // A child's descriptor count does not grow with its running siblings: each reports while
  // the earlier ones still run.
  Channel gate;
  std::vector<mp::Process> procs;
  std::set<std::string> counts;
  for (int i = 0; i < 5; ++i) {
    procs.push_back(make(report_fds_then_block, out.path(), gate.path()));
    procs.back().start();
    counts.insert(out.recv().value_or("timeout"));
  }
  for (std::size_t i = 0; i < procs.size(); ++i) gate.send("go");
  for (auto& q : procs) q.join(kHang);
  if (!is_fork()) {
    EXPECT_EQ(counts.size(), 1u) << "child fd counts differ";
  }
}

TEST_P(ProcessTest, UnpicklableTargetIsRefusedBeforeAnyChildExists) {
  int captured = 3;
  auto p = make([captured] { (void)captured; });
  Undeclared u;
  ctx().bind_to(u);
  const int fds = open_fd_count();
  if (is_fork()) {
    p.start();
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
    u.start();
    u.join(kHang);
    EXPECT_EQ(u.exitcode(), 0);
    return;
  }
  try {
    p.start();
    ADD_FAILURE() << "expected PicklingError";
  } catch (const mp::PicklingError& e) {
    EXPECT_NE(std::string(e.what()).find("lambda"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("fork start method"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(child_kind()), std::string::npos) << e.what();
  }
  try {
    u.start();
    ADD_FAILURE() << "expected PicklingError";
  } catch (const mp::PicklingError& e) {
    EXPECT_NE(std::string(e.what()).find("MP_FIELDS"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(child_kind()), std::string::npos) << e.what();
  }
  EXPECT_FALSE(p.pid());
  EXPECT_TRUE(mp::active_children().empty());
  EXPECT_EQ(open_fd_count(), fds);
  siginfo_t info{};
  EXPECT_TRUE(::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0 || info.si_pid == 0);
}

TEST_P(ProcessTest, StateSetInMainIsAbsentUnderSpawn) {
  // The seed's trap: a spawned child is a fresh run of the program (static initialisation
  // anew); a fork child is a copy of the parent.
  Channel out;
  g_set_in_main = 99;
  auto p = make(report_global, out.path());
  p.start();
  EXPECT_EQ(out.recv(), is_fork() ? "99" : "1");
  p.join(kHang);
  g_set_in_main = 1;
}

TEST_P(ProcessTest, UnserializableArgumentIsNamed) {
  auto p = make(takes_no_serializer, NoSerializer{});
  if (is_fork()) {
    p.start();
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
    return;
  }
  try {
    p.start();
    ADD_FAILURE() << "expected PicklingError";
  } catch (const mp::PicklingError& e) {
    EXPECT_NE(std::string(e.what()).find("NoSerializer"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("serialize(Archive&)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(child_kind()), std::string::npos) << e.what();
  }
  EXPECT_FALSE(p.pid());
}

TEST_P(ProcessTest, AuthkeyCrossesOnlyThroughThePipe) {
  Channel out, gate;
  auto p = make(report_authkey, out.path());
  p.start();
  auto child_key = out.recv();
  p.join(kHang);
  std::string hex;
  char b[3];
  for (auto x : mp::current_process().authkey().bytes()) {
    std::snprintf(b, sizeof b, "%02x", static_cast<unsigned>(x));
    hex += b;
  }
  EXPECT_EQ(child_key, hex);

  auto q = make(report_authkey, out.path());
  q.set_authkey(mp::AuthenticationString("a different key"));
  q.start();
  EXPECT_EQ(out.recv(), "6120646966666572656e74206b6579");
  q.join(kHang);
  EXPECT_EQ(mp::current_process().authkey().size(), 32u);

  // Nowhere in the child's command line or environment, as raw bytes or hex.
  auto r = make(say_then_block, out.path(), gate.path());
  r.start();
  ASSERT_EQ(out.recv(), "ready");
  for (const char* what : {"cmdline", "environ"}) {
    std::ifstream f("/proc/" + std::to_string(*r.pid()) + "/" + what);
    std::string text((std::istreambuf_iterator<char>(f)), {});
    std::string raw(reinterpret_cast<const char*>(mp::current_process().authkey().bytes().data()),
                    32);
    EXPECT_EQ(text.find(raw), std::string::npos) << what;
    EXPECT_EQ(text.find(hex), std::string::npos) << what;
  }
  gate.send("go");
  r.join(kHang);
}

TEST_P(ProcessTest, ChildGetsTheEnvironmentAsOfStart) {
  Channel out;
  ::setenv("MP_TEST_SET_AT_START", "yes", 1);
  auto p = make(report_env, out.path());
  p.start();
  ::unsetenv("MP_TEST_SET_AT_START");
  EXPECT_EQ(out.recv(), "yes");
  p.join(kHang);
}

TEST_P(ProcessTest, ChildrenStartChildrenByEveryMethod) {
  Channel out;
  auto p = make(start_by_every_method, out.path());
  p.start();
  EXPECT_EQ(out.recv(), "10 11 12 ");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ProcessTest, DescriptorArgumentsCross) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  auto p = make(write_to_passed_fd, mp::reduction::DupFd(fds[1]), std::string("through the fd"));
  p.start();
  // The child owns its own copy before start() returns: ours may go at once (SEMANTICS 48).
  ::close(fds[1]);
  std::string got;
  char buf[64];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(got, "through the fd") << "and EOF once the child's copy closed";
}

TEST_P(ProcessTest, ChildStartsInTheParentsCwd) {
  auto old = std::filesystem::current_path();
  auto dir = temp_dir();
  Channel out;
  std::filesystem::current_path(dir);
  auto p = make(report_cwd, out.path());
  p.start();
  std::filesystem::current_path(old);
  EXPECT_EQ(out.recv(), dir.string());
  p.join(kHang);
  std::filesystem::remove_all(dir);
}

TEST_P(ProcessTest, InheritedObjectCannotBeDrivenFromAForkChild) {
  if (!is_fork()) GTEST_SKIP() << "only a fork child inherits the parent's objects";
  Channel out, gate;
  auto sibling = make(say_then_block, out.path(), gate.path());
  sibling.start();
  ASSERT_EQ(out.recv(), "ready");
  mp::Process unstarted(noop);
  auto prober = make([&, path = out.path()] {
    std::string r;
    for (auto f :
         std::vector<std::function<void()>>{[&] { (void)sibling.is_alive(); },
                                            [&] { sibling.join(); }, [&] { unstarted.start(); }}) {
      try {
        f();
        r += "none|";
      } catch (const std::logic_error& e) {
        r += std::string(e.what()) + "|";
      }
    }
    r += sibling.repr().find(" unknown") != std::string::npos ? "unknown" : sibling.repr();
    Channel::send(path, r);
  });
  prober.start();
  EXPECT_EQ(out.recv(),
            "can only test a child process|can only join a child process|can only start a "
            "process object created by current process|unknown");
  prober.join(kHang);
  gate.send("go");
  sibling.join(kHang);
}

TEST_P(ProcessTest, AtexitHandlersOfTheChild) {
  Channel out;
  auto p = make(register_child_atexit, out.path());
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  // A spawned child is a program of its own: its handlers run. Fork and forkserver children
  // are forks (of the program, of the server): they leave through _exit, and the handlers
  // and static destructors of the image they were forked from must not run there.
  const bool spawned = GetParam() == "spawn";
  auto line = out.recv(spawned ? kHang : 0s);  // after join, a write would be there
  if (spawned)
    EXPECT_EQ(line, "child-atexit");
  else
    EXPECT_FALSE(line);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ProcessTest,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

}  // namespace

// ---- check mode: MP_CHECK_PICKLE=1 makes fork children go through the declared fields ----

namespace {

struct Stats : mp::Process {
  std::string out;
  std::vector<int> xs;
  std::string label;  // left out of MP_FIELDS: a spawned child never sees it
  void run() override {
    Channel::send(out, "label='" + label + "' xs=" + std::to_string(xs.size()));
  }
  MP_FIELDS(Stats, out, xs)
};

struct CheckPickleMode {
  CheckPickleMode() { ::setenv("MP_CHECK_PICKLE", "1", 1); }
  ~CheckPickleMode() { ::unsetenv("MP_CHECK_PICKLE"); }
};

std::string run_stats(const char* method) {
  Channel out;
  Stats s;
  mp::get_context(method).bind_to(s);
  s.out = out.path();
  s.xs = {1, 2, 3};
  s.label = "x";
  s.start();
  auto line = out.recv();
  s.join(kHang);
  EXPECT_EQ(s.exitcode(), 0) << method;
  return line.value_or("(nothing)");
}

}  // namespace

TEST(CheckPickleMode, AFieldLeftOutOfMpFieldsShowsUnderForkToo) {
  EXPECT_EQ(run_stats("fork"), "label='x' xs=3") << "without check mode fork copies the object";
  EXPECT_EQ(run_stats("spawn"), "label='' xs=3");
  CheckPickleMode on;
  for (const char* m : {"fork", "spawn", "forkserver"})
    EXPECT_EQ(run_stats(m), "label='' xs=3") << m << ": the same result under every method";
}

TEST(CheckPickleMode, WhatSpawnRefusesForkRefusesToo) {
  CheckPickleMode on;
  int captured = 5;
  auto p = mp::fork_context.Process([captured] { mp::exit(captured); });
  try {
    p.start();
    ADD_FAILURE() << "a capturing lambda was started in check mode";
  } catch (const mp::PicklingError& e) {
    EXPECT_NE(std::string(e.what()).find("MP_CHECK_PICKLE"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(p.pid());
  Undeclared u;
  mp::fork_context.bind_to(u);
  EXPECT_THROW(u.start(), mp::PicklingError);
  // Descriptors cross as under spawn: a Pipe end passed to the rebuilt object still works.
  auto [r, w] = mp::Pipe(false);
  auto q = mp::fork_context.Process([](mp::Connection c) { c.send(std::string("through")); },
                                    std::move(w));
  q.start();
  EXPECT_EQ(r.recv<std::string>(), "through");
  q.join(kHang);
  EXPECT_EQ(q.exitcode(), 0);
}
