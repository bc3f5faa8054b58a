// The fork server under faults: wrong keys, garbage, a vanished socket, a killed server, a
// killed program, descriptor exhaustion; and its preload hook.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.hpp"
#include "forkserver.hpp"
#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

namespace {

void noop() {}
void exit_with(int code) {
  mp::exit(code);
}
void block_on(std::string gate) {
  Channel::recv_line(gate);
}
void say_then_block(std::string out, std::string gate) {
  Channel::send(out, "ready");
  Channel::recv_line(gate);
}

void start_and_join_ok() {
  auto p = mp::forkserver_context.Process(exit_with, 7);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 7);
}

int pidfd_of(int pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

mp::posix::unique_fd raw_connect(const std::string& address) {
  mp::posix::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, address.c_str(), address.size() + 1);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  return fd;
}

mp::posix::Deadline soon() {
  return std::chrono::steady_clock::now() + kHang;
}

// Waits until the server has answered (closed) this connection: it handled it completely.
void wait_closed(int fd) {
  ASSERT_TRUE(wait_readable(fd, kHang));
  char c;
  while (::read(fd, &c, 1) > 0) {
  }
}

TEST(ForkServer, ChildrenAreTheProgramsOwn) {
  start_and_join_ok();
  const auto dir = std::filesystem::path(mp::detail::forkserver_address()).parent_path();
  EXPECT_EQ(std::filesystem::status(dir).permissions(), std::filesystem::perms::owner_all)
      << "the socket directory must be private (0700)";
  const int server = mp::detail::forkserver_pid();
  ASSERT_GT(server, 0);
  Channel out, gate;
  auto p = mp::forkserver_context.Process(say_then_block, out.path(), gate.path());
  p.start();
  ASSERT_EQ(out.recv(), "ready");
  std::ifstream stat("/proc/" + std::to_string(*p.pid()) + "/stat");
  std::string pid, comm, state;
  int ppid = 0;
  stat >> pid >> comm >> state >> ppid;
  EXPECT_EQ(ppid, ::getpid()) << "a forkserver child's parent is the program (CLONE_PARENT)";
  gate.send("go");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST(ForkServer, WrongAuthkeyIsRefusedAndTheServerKeepsServing) {
  start_and_join_ok();
  const int server = mp::detail::forkserver_pid();
  auto fd = raw_connect(mp::detail::forkserver_address());
  try {
    mp::detail::answer_challenge(fd.get(), mp::AuthenticationString("not the key"), soon());
    ADD_FAILURE() << "a wrong key was accepted";
  } catch (const mp::AuthenticationError& e) {
    EXPECT_STREQ(e.what(), "digest sent was rejected");
  }
  wait_closed(fd.get());
  EXPECT_TRUE(no_child_left()) << "nothing may be forked for a client with a wrong key";
  EXPECT_EQ(mp::detail::forkserver_pid(), server);
  start_and_join_ok();
  EXPECT_EQ(mp::detail::forkserver_pid(), server) << "the same server kept serving";
}

// A peer that connects and never answers the challenge must not hold up anyone else: each
// handshake has its own deadline in the server's poll loop (issue: 9.8 s per silent peer).
TEST(ForkServer, SilentConnectionsDoNotDelayStarts) {
  start_and_join_ok();
  const int server = mp::detail::forkserver_pid();
  std::vector<mp::posix::unique_fd> silent;
  for (int i = 0; i < 10; ++i) silent.push_back(raw_connect(mp::detail::forkserver_address()));
  std::chrono::duration<double> worst{0};
  for (int i = 0; i < 20; ++i) {
    // Every other start authenticates a fresh connection while the silent ones wait.
    if (i % 2 == 0) mp::detail::forkserver_disconnect();
    const auto t0 = std::chrono::steady_clock::now();
    auto p = mp::forkserver_context.Process(exit_with, 3);
    p.start();
    p.join(kHang);
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
    worst = std::max(worst, took);
    EXPECT_EQ(p.exitcode(), 3);
    // A bound, not a speed check: one stalled handshake used to cost 10 s.
    EXPECT_LT(took.count(), 2.0) << "start " << i << " was held up by the silent peers";
  }
  EXPECT_EQ(mp::detail::forkserver_pid(), server) << "the same server kept serving";
  std::printf("[ info ] 20 starts beside 10 silent peers: slowest start+join %.2f ms\n",
              worst.count() * 1e3);
  // Each silent peer is dropped once its own handshake deadline (10 s) has passed.
  for (auto& fd : silent) wait_closed(fd.get());
  start_and_join_ok();
  EXPECT_EQ(mp::detail::forkserver_pid(), server);
}

TEST(ForkServer, GarbageTruncatedAndOversizedMessagesAreDropped) {
  // A server of our own whose stderr we read.
  mp::detail::forkserver_stop();
  Capture err(2);
  start_and_join_ok();
  const int server = mp::detail::forkserver_pid();
  const auto address = mp::detail::forkserver_address();
  auto key = mp::current_process().authkey();
  auto send_raw = [](int fd, std::string_view bytes) {
    ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  };
  {  // garbage instead of a response
    auto fd = raw_connect(address);
    mp::detail::recv_message(fd.get(), 256, soon());
    send_raw(fd.get(), std::string_view("\x00\x00\x00\x05hello", 9));
    wait_closed(fd.get());
  }
  {  // an oversized response: refused before it is read
    auto fd = raw_connect(address);
    mp::detail::recv_message(fd.get(), 256, soon());
    send_raw(fd.get(), "\x7f\xff\xff\xff");
    wait_closed(fd.get());
  }
  {  // truncated: a length, then the end
    auto fd = raw_connect(address);
    mp::detail::recv_message(fd.get(), 256, soon());
    send_raw(fd.get(), std::string_view("\x00\x00\x00\x28"
                                        "abc",
                                        7));
    ::shutdown(fd.get(), SHUT_WR);
    wait_closed(fd.get());
  }
  {  // authenticated, then a garbage request
    auto fd = raw_connect(address);
    mp::detail::answer_challenge(fd.get(), key, soon());
    send_raw(fd.get(), "this is not a request");
    wait_closed(fd.get());
  }
  {  // authenticated, then a request announcing descriptors that never come
    auto fd = raw_connect(address);
    mp::detail::answer_challenge(fd.get(), key, soon());
    mp::detail::ForkRequest r;
    r.nfds = 3;
    send_raw(fd.get(), std::string_view(reinterpret_cast<const char*>(&r), sizeof r));
    wait_closed(fd.get());
  }
  EXPECT_TRUE(no_child_left());
  start_and_join_ok();
  EXPECT_EQ(mp::detail::forkserver_pid(), server) << "the server must keep serving";
  mp::detail::forkserver_stop();
  const auto text = err.text();
  for (const char* reason : {"dropped a connection: digest received was wrong",
                             "dropped a connection: bad message length",
                             "dropped a connection: got end of file during message",
                             "dropped a connection: oversized request (over 16 bytes)",
                             "dropped a connection: request announces 3 descriptors, 0 came"})
    EXPECT_NE(text.find(reason), std::string::npos) << reason << "\n--- stderr:\n" << text;
}

TEST(ForkServer, RestartsWhenKilledBetweenStarts) {
  start_and_join_ok();
  const int old = mp::detail::forkserver_pid();
  const auto old_dir = std::filesystem::path(mp::detail::forkserver_address()).parent_path();
  ASSERT_EQ(::kill(old, SIGKILL), 0);
  int pidfd = pidfd_of(old);
  if (pidfd >= 0) {
    wait_readable(pidfd, kHang);
    ::close(pidfd);
  }
  start_and_join_ok();
  EXPECT_NE(mp::detail::forkserver_pid(), old);
  EXPECT_FALSE(std::filesystem::exists(old_dir)) << "stale socket directory";
  EXPECT_EQ(::waitpid(old, nullptr, WNOHANG), -1) << "the old server must have been reaped";
  EXPECT_TRUE(no_child_left());
}

TEST(ForkServer, SigintDoesNotStopIt) {
  start_and_join_ok();
  const int server = mp::detail::forkserver_pid();
  ASSERT_EQ(::kill(server, SIGINT), 0);
  start_and_join_ok();
  EXPECT_EQ(mp::detail::forkserver_pid(), server);
}

TEST(ForkServer, SurvivesItsSocketDirectoryBeingRemoved) {
  start_and_join_ok();
  const auto dir = std::filesystem::path(mp::detail::forkserver_address()).parent_path();
  std::filesystem::remove_all(dir);
  // The program's connection was made already: starts go on; nothing hangs or leaks.
  start_and_join_ok();
  start_and_join_ok();
  EXPECT_TRUE(no_child_left());
  // Leave a reachable server to the tests after this one (they connect by the address).
  mp::detail::forkserver_stop();
  start_and_join_ok();
}

TEST(ForkServer, RestartsWhenUnreachableAfterItsSocketDirectoryWentAway) {
  // A process with no connection yet (a fork child, which must start its own server) finds
  // the directory gone under its server: it replaces the server.
  auto h = mp::fork_context.Process(+[] {
    auto first = mp::forkserver_context.Process(exit_with, 7);
    first.start();
    first.join(kHang);
    const int old = mp::detail::forkserver_pid();
    const auto dir = std::filesystem::path(mp::detail::forkserver_address()).parent_path();
    mp::detail::forkserver_disconnect();
    std::filesystem::remove_all(dir);
    auto second = mp::forkserver_context.Process(exit_with, 8);
    second.start();
    second.join(kHang);
    mp::exit(first.exitcode() == 7 && second.exitcode() == 8 &&
                     mp::detail::forkserver_pid() != old && no_child_left()
                 ? 0
                 : 1);
  });
  h.start();
  h.join(kHang);
  EXPECT_EQ(h.exitcode(), 0);
}

// As another user (root reads anything): a directory made unreadable under the server.
void unreadable_directory_harness() {
  if (::geteuid() == 0 && ::setuid(65534) != 0) mp::exit(20);
  auto first = mp::forkserver_context.Process(exit_with, 7);
  first.start();
  first.join(kHang);
  if (first.exitcode() != 7) mp::exit(21);
  const int old = mp::detail::forkserver_pid();
  const auto dir = std::filesystem::path(mp::detail::forkserver_address()).parent_path();
  mp::detail::forkserver_disconnect();  // as a process that has yet to connect
  std::filesystem::permissions(dir, std::filesystem::perms::none);
  auto second = mp::forkserver_context.Process(exit_with, 8);
  second.start();
  second.join(kHang);
  if (second.exitcode() != 8) mp::exit(22);
  if (mp::detail::forkserver_pid() == old) mp::exit(23);
  if (std::filesystem::exists(dir)) mp::exit(24);
  mp::exit(0);
}

TEST(ForkServer, RestartsWhenItsSocketDirectoryIsUnreadable) {
  auto h = mp::fork_context.Process(unreadable_directory_harness);
  h.start();
  h.join(kHang);
  EXPECT_EQ(h.exitcode(), 0);
}

TEST(ForkServer, ChildrenOutliveAKilledServerWithTrueExitCodes) {
  Channel out, gate;
  auto p = mp::forkserver_context.Process(say_then_block, out.path(), gate.path());
  auto q = mp::forkserver_context.Process(exit_with, 42);
  p.start();
  q.start();
  ASSERT_EQ(out.recv(), "ready");
  ASSERT_EQ(::kill(mp::detail::forkserver_pid(), SIGKILL), 0);
  q.join(kHang);
  EXPECT_EQ(q.exitcode(), 42);
  EXPECT_TRUE(p.is_alive());
  p.terminate();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), -SIGTERM) << "signals reach it as before";
  start_and_join_ok();  // and a new server serves
}

void start_server_and_daemon(std::string out, std::string gate) {
  auto child = mp::forkserver_context.Process(mp::Options{.daemon = true}, block_on, gate);
  child.start();
  Channel::send(out,
                std::to_string(mp::detail::forkserver_pid()) + " " + std::to_string(*child.pid()));
  Channel::recv_line(gate);
}

TEST(ForkServer, ServerAndDaemonChildrenEndWithASigkilledProgram) {
  Channel out, gate;
  auto program = mp::fork_context.Process(start_server_and_daemon, out.path(), gate.path());
  program.start();
  auto line = out.recv();
  ASSERT_TRUE(line);
  std::istringstream is(*line);
  int server = 0, daemon = 0;
  is >> server >> daemon;
  int server_fd = pidfd_of(server), daemon_fd = pidfd_of(daemon);
  ASSERT_GE(server_fd, 0);
  ASSERT_GE(daemon_fd, 0);
  program.kill();
  program.join(kHang);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(wait_readable(server_fd, kHang)) << "the server outlived its program";
  EXPECT_TRUE(wait_readable(daemon_fd, kHang)) << "the daemon child outlived its program";
  std::cerr
      << "[ info ] server and daemon child gone "
      << std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()
      << " ms after the program died\n";
  ::close(server_fd);
  ::close(daemon_fd);
}

// Runs in the server, once: lowers its descriptor limit so it cannot receive any.
void starve_server() {
  int highest = 0;  // found without opening a descriptor of our own
  for (int fd = 0; fd < 4096; ++fd)
    if (::fcntl(fd, F_GETFD) >= 0) highest = fd;
  // Three free numbers once the server has closed its start-up socket (one of ours now): one
  // for the accepted connection, two more (which sanitizer runtimes need for a pipe of their
  // own), fewer than the three or four a request brings.
  rlimit lim{static_cast<rlim_t>(highest + 3), static_cast<rlim_t>(highest + 3)};
  ::setrlimit(RLIMIT_NOFILE, &lim);
}

void emfile_in_server_harness() {
  mp::set_forkserver_preload({&starve_server});
  mp::resource_tracker::ensure_running();  // start() would; it stays, it is not a leak
  const int fds = open_fd_count();
  auto p = mp::forkserver_context.Process(noop);
  try {
    p.start();
    mp::exit(30);
  } catch (const std::system_error& e) {
    if (e.code().value() != EMFILE) mp::exit(31);
  }
  mp::detail::forkserver_stop();
  mp::exit(open_fd_count() == fds && no_child_left() ? 0 : 32);
}

TEST(ForkServer, DescriptorExhaustionInTheServerIsReported) {
  Capture err(2);
  auto h = mp::fork_context.Process(emfile_in_server_harness);
  h.start();
  h.join(kHang);
  auto text = err.text();
  EXPECT_EQ(h.exitcode(), 0) << text;
  EXPECT_NE(text.find("descriptors lost in transit"), std::string::npos) << text;
}

int g_preloaded = 0;
void preload_hook() {
  ++g_preloaded;
}
void report_preloaded(std::string out) {
  Channel::send(out, std::to_string(g_preloaded));
}

void preload_harness(std::string out) {
  mp::set_forkserver_preload({&preload_hook});
  for (int i = 0; i < 2; ++i) {
    auto p = mp::forkserver_context.Process(report_preloaded, out);
    p.start();
    p.join(kHang);
  }
  auto s = mp::spawn_context.Process(report_preloaded, out);
  s.start();
  s.join(kHang);
}

TEST(ForkServer, PreloadRunsOnceInTheServer) {
  Channel out;
  auto h = mp::fork_context.Process(preload_harness, out.path());
  h.start();
  EXPECT_EQ(out.recv(), "1");
  EXPECT_EQ(out.recv(), "1") << "run once in the server, not once per child";
  EXPECT_EQ(out.recv(), "0") << "spawn children do not run it";
  h.join(kHang);
  EXPECT_EQ(h.exitcode(), 0);
}

}  // namespace
