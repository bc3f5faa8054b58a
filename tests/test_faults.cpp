// Bad input and faults: a clear error, nothing lost, no hang, no leak.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <system_error>

#include "forkserver.hpp"
#include "posix/posix.hpp"
#include "runtime.hpp"
#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

extern char** environ;

namespace {

void noop() {}
void block_on(std::string gate) {
  Channel::recv_line(gate);
}

// ---- the executable ----

TEST(Faults, MissingOrNonExecutableExecutable) {
  // The default method (forkserver) execs the executable only to start its server: no server
  // may be running from an earlier test.
  mp::detail::forkserver_stop();
  auto dir = temp_dir();
  auto not_exec = dir / "not_executable";
  std::filesystem::copy_file(mp::get_executable(), not_exec);
  std::filesystem::permissions(not_exec, std::filesystem::perms::owner_read);
  const int fds = open_fd_count();
  for (auto [path, err] :
       {std::pair{(dir / "missing").string(), ENOENT}, std::pair{not_exec.string(), EACCES}}) {
    // (root, too, gets EACCES: exec needs at least one execute bit.)
    mp::set_executable(path);
    mp::Process p(noop);
    try {
      p.start();
      ADD_FAILURE() << "start() succeeded with " << path;
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code().value(), err) << e.what();
      EXPECT_NE(std::string(e.what()).find("posix_spawn " + path), std::string::npos) << e.what();
    }
    EXPECT_FALSE(p.pid());
  }
  mp::set_executable("");
  EXPECT_EQ(open_fd_count(), fds);
  EXPECT_TRUE(no_child_left());
  EXPECT_TRUE(mp::active_children().empty());
  std::filesystem::remove_all(dir);
}

TEST(Faults, CopyOfTheProgramRunsChildren) {
  auto dir = temp_dir();
  auto copy = dir / "copy";
  std::filesystem::copy_file(mp::get_executable(), copy);
  mp::set_executable(copy.string());
  auto p = mp::spawn_context.Process(noop);
  p.start();
  p.join(kHang);
  mp::set_executable("");
  EXPECT_EQ(p.exitcode(), 0);
  std::filesystem::remove_all(dir);
}

TEST(Faults, ChildProgramThatNeverCallsInit) {
  Capture err(2);
  mp::set_executable(helper_path("no_init"));
  auto p = mp::spawn_context.Process(noop);
  p.start();
  p.join(kHang);
  mp::set_executable("");
  auto text = err.text();
  EXPECT_EQ(p.exitcode(), 1);
  EXPECT_NE(text.find("no_init: start() refused: An attempt has been made to start a new process "
                      "before the current process has finished its bootstrapping phase"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("never called mp::init(argc, argv)"), std::string::npos) << text;
  EXPECT_TRUE(no_child_left());
}

TEST(Faults, ForkServerProgramThatNeverCallsInit) {
  // Under forkserver the server is that program: it must fail fast, naming the fix.
  mp::detail::forkserver_stop();
  Capture err(2);
  mp::set_executable(helper_path("no_init"));
  auto p = mp::forkserver_context.Process(noop);
  try {
    p.start();
    ADD_FAILURE() << "start() succeeded";
  } catch (const mp::ProcessError& e) {
    EXPECT_NE(std::string(e.what()).find("must call mp::init(argc, argv)"), std::string::npos)
        << e.what();
  }
  mp::set_executable("");
  mp::detail::forkserver_stop();
  EXPECT_FALSE(p.pid());
  EXPECT_TRUE(no_child_left());
  auto text = err.text();
  EXPECT_NE(text.find("never called mp::init(argc, argv)"), std::string::npos) << text;
}

TEST(Faults, ChildProgramFromAnotherBuild) {
  Capture err(2);
  mp::set_executable(helper_path("other_build"));
  auto p = mp::spawn_context.Process(noop);
  p.start();
  p.join(kHang);
  mp::set_executable("");
  auto text = err.text();
  EXPECT_EQ(p.exitcode(), 1);
  EXPECT_NE(text.find("is a different build from its parent"), std::string::npos) << text;
}

// A program whose main() forgot mp::init gets the same clear refusal under every method,
// before anything is started (under fork the resource tracker used to re-run its main()).
TEST(Faults, StartWithoutInitIsRefusedTheSameUnderEveryMethod) {
  for (const char* method : {"fork", "spawn", "forkserver"}) {
    const std::string cmd = helper_path("no_init") + " --start " + method + " 2>&1";
    FILE* f = ::popen(cmd.c_str(), "r");
    ASSERT_NE(f, nullptr);
    std::string text;
    char buf[512];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    const int status = ::pclose(f);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << method << ": " << text;
    EXPECT_EQ(text,
              "no_init: start() refused: mp::init(argc, argv) was not called: the program's "
              "main() must call mp::init(argc, argv) as its first statement (spawned children, "
              "the fork server and the resource tracker are this program started again)\n")
        << method;
  }
}

// ---- the main program's exit (SEMANTICS 35) ----

TEST(Exit, MainReturningTerminatesDaemonsAndJoinsTheOthers) {
  Channel out, gate, release;
  std::string exe = helper_path("exit_with_children");
  const char* argv[] = {exe.c_str(), out.path().c_str(), gate.path().c_str(),
                        release.path().c_str(), nullptr};
  int pid = -1;
  ASSERT_EQ(::posix_spawn(&pid, exe.c_str(), nullptr, nullptr, const_cast<char**>(argv), environ),
            0);
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  ASSERT_GE(pidfd, 0);
  EXPECT_EQ(out.recv(), "daemon ready");
  release.send("return");
  // main() returns: its exit terminates the daemon, whose handler runs...
  EXPECT_EQ(out.recv(), "daemon got SIGTERM");
  // ...then waits for the non-daemon child, which is still blocked on the gate.
  EXPECT_FALSE(wait_readable(pidfd, 300ms)) << "the program exited before joining its child";
  gate.send("go");
  EXPECT_TRUE(wait_readable(pidfd, kHang));
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ::close(pidfd);
}

// ---- the spawn pipe: the child side, fed by hand ----

// Starts this test binary as a spawned child whose socket (fd 3) we hold the other end of.
struct ManualChild {
  int pid = -1;
  mp::posix::unique_fd ours;
  // `pass`: descriptors handed over as 4, 5, ... (what a frame's arguments refer to).
  explicit ManualChild(const std::vector<int>& pass = {}) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      throw std::runtime_error("socketpair");
    ours.reset(sv[0]);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
    // From copies above the target numbers, so no dup2 overwrites a source still to be copied.
    std::vector<mp::posix::unique_fd> above;
    for (int fd : pass) above.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 100));
    for (std::size_t i = 0; i < above.size(); ++i)
      posix_spawn_file_actions_adddup2(&fa, above[i].get(), 4 + static_cast<int>(i));
    std::string exe = mp::get_executable();
    const std::string n = std::to_string(pass.size());
    const char* argv[] = {exe.c_str(), "--multiprocess-spawn", "3", "-1", n.c_str(), nullptr};
    if (::posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, const_cast<char**>(argv), environ))
      throw std::runtime_error("posix_spawn");
    posix_spawn_file_actions_destroy(&fa);
    ::close(sv[1]);
  }
  void send(const std::vector<std::byte>& bytes) {
    ASSERT_EQ(::send(ours.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
  }
  int wait() {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  }
};

TEST(Faults, CorruptedOrTruncatedSpawnData) {
  mp::Process p(noop);
  // The frame names the descriptors it hands over (the resource tracker's): each child gets them.
  const auto payload = mp::detail::spawn_payload(p, mp::StartMethod::spawn);
  const auto& frame = payload.frame;
  ASSERT_GT(frame.size(), 40u);
  struct Case {
    const char* what;
    std::vector<std::byte> bytes;
    const char* message;
  };
  auto flip = [&](std::size_t at) {
    auto f = frame;
    f[at] ^= std::byte{0x5a};
    return f;
  };
  std::vector<Case> cases = {
      {"intact", frame, nullptr},
      {"empty", {}, "the spawn data was truncated (got 0 of 24 header bytes)"},
      {"half a header", {frame.begin(), frame.begin() + 10}, "was truncated (got 10 of 24"},
      {"header only", {frame.begin(), frame.begin() + 24}, "the spawn data was truncated"},
      {"half the payload", {frame.begin(), frame.begin() + frame.size() / 2}, "was truncated"},
      {"all but the checksum", {frame.begin(), frame.end() - 8}, "was truncated"},
      {"bad magic", flip(0), "the spawn data is corrupted (bad header)"},
      {"bad length", flip(10), "the spawn data is corrupted (bad header)"},
      {"bad payload byte", flip(30), "the spawn data is corrupted (bad checksum)"},
      {"bad checksum", flip(frame.size() - 1), "the spawn data is corrupted (bad checksum)"},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.what);
    Capture err(2);
    ManualChild child(payload.fds);
    child.send(c.bytes);
    child.ours.reset();  // the "parent" is gone: EOF after what was sent
    int code = child.wait();
    auto text = err.text();
    if (!c.message) {
      EXPECT_EQ(code, 0) << text;
    } else {
      EXPECT_EQ(code, 1) << text;
      EXPECT_NE(text.find(c.message), std::string::npos) << text;
    }
  }
}

TEST(Faults, ParentDiesWhileTheChildReadsThePipe) {
  // A real parent process holds the only writing end; it sends half a frame and is SIGKILLed.
  mp::Process p(noop);
  const auto payload = mp::detail::spawn_payload(p, mp::StartMethod::spawn);
  const auto& frame = payload.frame;
  Capture err(2);
  ManualChild child(payload.fds);
  Channel gate;
  int writer = ::fork();
  ASSERT_GE(writer, 0);
  if (writer == 0) {
    (void)::send(child.ours.get(), frame.data(), frame.size() / 2, MSG_NOSIGNAL);
    Channel::recv_line(gate.path());  // never released: killed here
    ::_exit(0);
  }
  child.ours.reset();
  ::kill(writer, SIGKILL);
  ::waitpid(writer, nullptr, 0);
  EXPECT_EQ(child.wait(), 1);
  auto text = err.text();
  EXPECT_NE(text.find("the parent died or closed the pipe"), std::string::npos) << text;
}

// ---- resource exhaustion, inside a fork child so the test process keeps its limits ----

// Counts open descriptors below `limit` without opening one (there may be none to spare).
int count_fds_below(int limit) {
  int n = 0;
  for (int fd = 0; fd < limit; ++fd) n += ::fcntl(fd, F_GETFD) >= 0;
  return n;
}

// 0: the child ran; 40: start() threw EMFILE; anything else names a defect.
int exhaust_descriptors(std::string method, int spare) {
  // Whatever the spare count, start() either works or throws EMFILE, and leaks nothing.
  {  // Warm up first: sanitizer runtimes (UBSan's vptr check) need descriptors the first
     // time they look at a type, and a fork server of our own is not what is tested here.
    auto warm = mp::get_context(method).Process(noop);
    warm.start();
    warm.join(kHang);
    try {
      throw std::system_error(EMFILE, std::system_category(), "warm-up");
    } catch (const std::system_error&) {
    }
  }
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  int highest = 0;
  for (auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
    highest = std::max(highest, std::stoi(e.path().filename().string()));
  // Room above the highest open descriptor, so there are always fillers to free: a test run
  // with only stdio open (CI) would otherwise have none.
  const int limit = highest + 1 + 8;
  lim.rlim_cur = static_cast<rlim_t>(limit);
  if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) return 10;
  // Fill every free number below the limit, then free exactly `spare` of them.
  std::vector<int> fillers;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fillers.push_back(fd);
  if (errno != EMFILE) return 15;
  if (fillers.size() < 8) return 16;
  for (int i = 0; i < spare; ++i) {
    ::close(fillers.back());
    fillers.pop_back();
  }
  const int before = count_fds_below(limit);
  int result = 0;
  try {
    auto p = mp::get_context(method).Process(noop);
    p.start();
    p.join(kHang);
    if (p.exitcode() != 0) return 11;
  } catch (const std::system_error& e) {
    if (e.code().value() != EMFILE) return 12;
    result = 40;
  }
  if (count_fds_below(limit) != before) return 13;
  return no_child_left() ? result : 14;
}

void run_exhaust(std::string method, int spare) {
  mp::exit(exhaust_descriptors(method, spare));
}

class FaultsByMethod : public ::testing::TestWithParam<std::string> {};

TEST_P(FaultsByMethod, OutOfDescriptorsDuringStart) {
  std::string results;  // one letter per spare count: E = EMFILE, s = started
  for (int spare = 0; spare <= 6; ++spare) {
    auto harness = mp::fork_context.Process(run_exhaust, GetParam(), spare);
    harness.start();
    harness.join(kHang);
    auto code = harness.exitcode().value_or(-1);
    results += code == 0 ? "s" : code == 40 ? "E" : "(" + std::to_string(code) + ")";
  }
  // With too few descriptors start() throws EMFILE, with enough it works, and nothing in
  // between: the first spare counts fail, the rest start. How many a start needs depends on
  // the method and what travels with the child (a pipe or socketpair takes two; without pidfds
  // the sentinel pipe two more; a resource tracker's descriptors one each).
  EXPECT_TRUE(results.size() == 7 && results.front() == 'E' && results.back() == 's' &&
              results.find_first_not_of('E') == results.find('s') &&
              results.find_first_not_of('s', results.find('s')) == std::string::npos)
      << results;
  std::printf("[ info ] %s: %s (E: EMFILE, s: started, by spare descriptors 0..6)\n",
              GetParam().c_str(), results.c_str());
}

void run_out_of_processes(std::string method) {
  if (::geteuid() == 0 && ::setuid(65534) != 0) mp::exit(20);  // root ignores RLIMIT_NPROC
  rlimit lim{0, 0};
  if (::setrlimit(RLIMIT_NPROC, &lim) != 0) mp::exit(21);
  const int before = open_fd_count();
  auto p = mp::get_context(method).Process(noop);
  try {
    p.start();
    p.join(kHang);
    mp::exit(22);
  } catch (const std::system_error& e) {
    if (e.code().value() != EAGAIN) mp::exit(23);
  }
  mp::exit(open_fd_count() == before && no_child_left() ? 0 : 24);
}

TEST_P(FaultsByMethod, OutOfProcessesDuringStart) {
  auto harness = mp::fork_context.Process(run_out_of_processes, GetParam());
  harness.start();
  harness.join(kHang);
  EXPECT_EQ(harness.exitcode(), 0);
}

// ---- parent death: daemon children die with a SIGKILLed parent ----

void start_daemon_and_wait(std::string method, std::string out, std::string gate) {
  auto child = mp::get_context(method).Process(mp::Options{.daemon = true}, block_on, gate);
  child.start();
  Channel::send(out, std::to_string(*child.pid()));
  Channel::recv_line(gate);
}

TEST_P(FaultsByMethod, DaemonChildrenDieWithASigkilledParent) {
  Channel out, gate;
  auto parent =
      mp::fork_context.Process(start_daemon_and_wait, GetParam(), out.path(), gate.path());
  parent.start();
  auto pid = out.recv();
  ASSERT_TRUE(pid);
  // Not our child, but a pidfd works for any process and becomes readable when it ends.
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, std::stoi(*pid), 0));
  ASSERT_GE(pidfd, 0);
  parent.kill();
  parent.join(kHang);
  EXPECT_EQ(parent.exitcode(), -SIGKILL);
  EXPECT_TRUE(wait_readable(pidfd, kHang)) << "the daemon child outlived its SIGKILLed parent";
  ::close(pidfd);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, FaultsByMethod,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

}  // namespace
