// CPython's TestResourceTracker and the shared-memory leak tests: what a killed program leaves
// behind is removed once it has ended, a child that only attaches removes nothing (gh-82300),
// and a killed tracker is replaced. Each "program" is a fork child of the test process with its
// stderr in a file, so the tracker it starts writes there.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "resource_tracker.hpp"
#include "support.hpp"

using namespace mp_test;

namespace {

const std::string kLeakWarning =
    "resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at shutdown";

// Waits (bounded) until process `pid`, which need not be our child, has ended.
bool wait_gone(int pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  int r;
  do r = ::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kHang).count()));
  while (r < 0 && errno == EINTR);
  ::close(fd);
  return r == 1;
}

bool segment_exists(const std::string& name) {
  return std::filesystem::exists("/dev/shm/" + name);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Makes this fork child a program of its own: stderr to a file, and no tracker inherited
// from the test process (its first registration starts one of its own).
void stderr_to(const std::string& path) {
  mp::detail::resource_tracker_stop();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ::dup2(fd, 2);
  ::close(fd);
}

class ResourceTracker : public ::testing::TestWithParam<std::string> {};

// A child of the program creates a segment and leaves it: it shares the program's tracker.
void create_and_leave(std::string out) {
  mp::SharedMemory shm(std::nullopt, true, 4096);
  Channel::send(out, shm.name() + " " + std::to_string(mp::detail::resource_tracker_pid()));
}

void program_killed_with_a_leak(std::string method, std::string out, std::string err) {
  stderr_to(err);
  mp::resource_tracker::ensure_running();
  if (mp::detail::resource_tracker_pid() <= 0) mp::exit(5);
  Channel::send(out, std::to_string(mp::detail::resource_tracker_pid()));
  auto child = mp::get_context(method).Process(create_and_leave, out);
  child.start();
  child.join(kHang);
  if (child.exitcode() != 0) mp::exit(3);
  ::kill(::getpid(), SIGKILL);
}

TEST_P(ResourceTracker, WhatAKilledProgramLeftIsRemovedWhenItEnds) {
  Channel out;
  const auto err = temp_dir() / "stderr";
  auto program =
      mp::fork_context.Process(program_killed_with_a_leak, GetParam(), out.path(), err.string());
  program.start();
  const auto tracker = out.recv();
  const auto made = out.recv();
  ASSERT_TRUE(tracker && made);
  const std::string name = made->substr(0, made->find(' '));
  EXPECT_EQ(made->substr(made->find(' ') + 1), "0") << "the child started a tracker of its own";
  program.join(kHang);
  EXPECT_EQ(program.exitcode(), -SIGKILL);
  ASSERT_GT(std::stoi(*tracker), 0);
  ASSERT_TRUE(wait_gone(std::stoi(*tracker)));
  EXPECT_FALSE(segment_exists(name));
  EXPECT_NE(read_file(err.string()).find(kLeakWarning), std::string::npos)
      << read_file(err.string());
  std::filesystem::remove_all(err.parent_path());
}

void attach_and_write(std::string name) {
  mp::SharedMemory shm(name);
  std::memcpy(shm.buf().data(), "howdy", 5);
}

TEST_P(ResourceTracker, AChildThatOnlyAttachesRemovesNothing) {
  mp::SharedMemory shm(std::nullopt, true, 4096);
  auto child = mp::get_context(GetParam()).Process(attach_and_write, shm.name());
  child.start();
  child.join(kHang);
  EXPECT_EQ(child.exitcode(), 0);
  EXPECT_TRUE(segment_exists(shm.name()));
  mp::SharedMemory again(shm.name());
  EXPECT_EQ(std::memcmp(again.buf().data(), "howdy", 5), 0);
  shm.unlink();
}

void create_then_exit(std::string out) {
  mp::SharedMemory shm(std::nullopt, true, 4096);
  std::memcpy(shm.buf().data(), "hi", 2);
  Channel::send(out, shm.name());
}

void start_a_creating_child(std::string method, std::string out) {
  mp::detail::resource_tracker_stop();  // a program with no tracker yet
  auto child = mp::get_context(method).Process(create_then_exit, out);
  child.start();
  child.join(kHang);
  if (child.exitcode() != 0) mp::exit(3);
  // The child is gone; its segment is not, while this program runs (CPython: b'hi').
  auto name = Channel::recv_line(out);
  mp::SharedMemory shm(name);
  if (std::memcmp(shm.buf().data(), "hi", 2) != 0) mp::exit(4);
  shm.unlink();
}

TEST_P(ResourceTracker, WhatAChildCreatedOutlivesTheChild) {
  Channel out;
  auto program = mp::fork_context.Process(start_a_creating_child, GetParam(), out.path());
  program.start();
  program.join(kHang);
  EXPECT_EQ(program.exitcode(), 0);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ResourceTracker,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

void tracker_killed_between(std::string out, std::string err) {
  stderr_to(err);
  mp::SharedMemory first(std::nullopt, true, 4096);
  const int dead = mp::detail::resource_tracker_pid();
  if (dead <= 0) mp::exit(5);
  ::kill(dead, SIGKILL);
  siginfo_t info{};
  ::waitid(P_PID, static_cast<id_t>(dead), &info, WEXITED | WNOWAIT);  // dead, not yet reaped
  mp::SharedMemory second(std::nullopt, true, 4096);  // the tracker is relaunched here
  Channel::send(out, first.name() + " " + second.name() + " " +
                         std::to_string(mp::detail::resource_tracker_pid()));
  // Exits without unlinking either.
}

TEST(ResourceTrackerFaults, AKilledTrackerIsRelaunchedWithAWarning) {
  Channel out;
  const auto err = temp_dir() / "stderr";
  auto program = mp::fork_context.Process(tracker_killed_between, out.path(), err.string());
  program.start();
  auto line = out.recv();
  ASSERT_TRUE(line);
  std::istringstream words(*line);
  std::string first, second;
  int tracker = 0;
  words >> first >> second >> tracker;
  program.join(kHang);
  EXPECT_EQ(program.exitcode(), 0);
  ASSERT_GT(tracker, 0);
  ASSERT_TRUE(wait_gone(tracker));
  const std::string text = read_file(err.string());
  EXPECT_NE(text.find("resource_tracker: process died unexpectedly, relaunching.  Some resources "
                      "might leak."),
            std::string::npos)
      << text;
  EXPECT_FALSE(segment_exists(second));  // registered with the new tracker: removed
  EXPECT_NE(text.find(kLeakWarning), std::string::npos) << text;
  EXPECT_TRUE(segment_exists(first));  // lost with the old one, as CPython warns
  ::shm_unlink(("/" + first).c_str());
  std::filesystem::remove_all(err.parent_path());
}

void clean_program(std::string out, std::string err) {
  stderr_to(err);
  mp::SharedMemory shm(std::nullopt, true, 4096);
  shm.unlink();
  Channel::send(out, std::to_string(mp::detail::resource_tracker_pid()));
}

TEST(ResourceTrackerFaults, AProgramThatCleansUpHearsNothing) {
  Channel out;
  const auto err = temp_dir() / "stderr";
  auto program = mp::fork_context.Process(clean_program, out.path(), err.string());
  program.start();
  auto tracker = out.recv();
  ASSERT_TRUE(tracker);
  program.join(kHang);
  EXPECT_EQ(program.exitcode(), 0);
  ASSERT_GT(std::stoi(*tracker), 0);
  ASSERT_TRUE(wait_gone(std::stoi(*tracker)));
  EXPECT_EQ(read_file(err.string()), "");
  std::filesystem::remove_all(err.parent_path());
}

void register_twice(std::string out, std::string err) {
  stderr_to(err);
  mp::SharedMemory shm(std::nullopt, true, 4096, false);  // not tracked by itself
  const std::string path = "/" + shm.name();
  mp::resource_tracker::register_resource(path, "shared_memory");
  mp::resource_tracker::register_resource(path, "shared_memory");  // a set: still once
  mp::resource_tracker::unregister_resource(path, "shared_memory");
  Channel::send(out, shm.name() + " " + std::to_string(mp::detail::resource_tracker_pid()));
}

TEST(ResourceTrackerFaults, RegisteringTwiceIsRegisteringOnce) {
  Channel out;
  const auto err = temp_dir() / "stderr";
  auto program = mp::fork_context.Process(register_twice, out.path(), err.string());
  program.start();
  auto line = out.recv();
  ASSERT_TRUE(line);
  const std::string name = line->substr(0, line->find(' '));
  const int tracker = std::stoi(line->substr(line->find(' ') + 1));
  program.join(kHang);
  EXPECT_EQ(program.exitcode(), 0);
  ASSERT_GT(tracker, 0);
  ASSERT_TRUE(wait_gone(tracker));
  EXPECT_TRUE(segment_exists(name)) << "unregistered, yet removed";
  EXPECT_EQ(read_file(err.string()), "");
  ::shm_unlink(("/" + name).c_str());
  std::filesystem::remove_all(err.parent_path());
}

TEST(ResourceTrackerFaults, UnknownKindsAndUntrackableNames) {
  try {
    mp::resource_tracker::register_resource("/x", "semaphore");
    ADD_FAILURE() << "an unknown kind was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "Cannot register /x for automatic cleanup: unknown resource type semaphore");
  }
  EXPECT_THROW(
      mp::resource_tracker::register_resource("/" + std::string(300, 'a'), "shared_memory"),
      std::invalid_argument);
  EXPECT_THROW(mp::resource_tracker::register_resource(std::string("/a\0b", 4), "shared_memory"),
               std::invalid_argument);
}

}  // namespace
