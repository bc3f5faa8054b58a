// CPython's test_shared_memory_SharedMemoryManager_basics and the ShareableList tests
// (_TestSharedMemory in _test_multiprocessing.py): segments the manager's server owns, written
// by children under each start method, unlinked at shutdown, also when the server was killed.
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <mp/managers.hpp>
#include <mp/resource_tracker.hpp>
#include <sstream>

#include "resource_tracker.hpp"
#include "support.hpp"

using namespace mp_test;

namespace {

bool segment_exists(const std::string& name) {
  return std::filesystem::exists("/dev/shm/" + name);
}

bool attach_says_enoent(const std::string& name) {
  try {
    mp::SharedMemory shm(name);
  } catch (const std::system_error& e) {
    return e.code() == std::errc::no_such_file_or_directory;
  }
  return false;
}

using List = mp::ShareableList<int, std::string, double, std::optional<bool>>;

void write_into(mp::SharedMemory shm, List list) {
  std::memcpy(shm.buf().data(), "howdy", 5);
  list.set<0>(42);
  list.set<1>("from the child");
  list.set<2>(2.5);
  list.set<3>(true);
}

class SharedMemoryManagerAcross : public ::testing::TestWithParam<std::string> {};

TEST_P(SharedMemoryManagerAcross, AChildWritesTheParentReadsShutdownUnlinks) {
  mp::SharedMemoryManager smm({.context = &mp::get_context(GetParam())});
  smm.start();
  mp::SharedMemory shm = smm.SharedMemory(128);
  List list = smm.ShareableList(
      std::tuple<int, std::string, double, std::optional<bool>>(0, "", 0.0, std::nullopt),
      {0, 32, 0, 0});
  EXPECT_EQ(smm.segment_names(), (std::vector<std::string>{shm.name(), list.shm().name()}));
  auto child = mp::get_context(GetParam()).Process(write_into, shm, list);
  child.start();
  child.join(kHang);
  ASSERT_EQ(child.exitcode(), 0);
  EXPECT_EQ(std::memcmp(shm.buf().data(), "howdy", 5), 0);
  EXPECT_EQ(list.get<0>(), 42);
  EXPECT_EQ(list.get<1>(), "from the child");
  EXPECT_EQ(list.get<2>(), 2.5);
  EXPECT_EQ(list.get<3>(), true);
  ASSERT_TRUE(segment_exists(shm.name()));
  smm.shutdown();
  EXPECT_FALSE(segment_exists(shm.name()));
  EXPECT_FALSE(segment_exists(list.shm().name()));
  EXPECT_TRUE(attach_says_enoent(shm.name()));
  EXPECT_TRUE(attach_says_enoent(list.shm().name()));
  // Our mappings outlive the names, as in Python.
  EXPECT_EQ(list.get<0>(), 42);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SharedMemoryManagerAcross,
                         ::testing::Values("fork", "spawn", "forkserver"));

TEST(SharedMemoryManager, LeavingTheScopeUnlinks) {
  std::string a, b;
  {
    mp::SharedMemoryManager smm;
    smm.start();
    a = smm.SharedMemory(10).name();
    b = smm.ShareableList(1, "text").shm().name();
    EXPECT_TRUE(segment_exists(a));
    EXPECT_TRUE(segment_exists(b));
  }
  EXPECT_FALSE(segment_exists(a));
  EXPECT_FALSE(segment_exists(b));
}

TEST(SharedMemoryManager, NotStartedAndReleased) {
  mp::SharedMemoryManager smm;
  EXPECT_EQ(logic_text([&] { smm.SharedMemory(10); }),
            "the SharedMemoryManager is not started (start() it)");
  smm.start();
  auto shm = smm.SharedMemory(10);
  EXPECT_TRUE(smm.release_segment(shm.name()));
  EXPECT_FALSE(segment_exists(shm.name()));
  EXPECT_FALSE(smm.release_segment(shm.name()));
  EXPECT_TRUE(smm.segment_names().empty());
  // One its user removed already is skipped at shutdown.
  auto other = smm.SharedMemory(10);
  other.unlink();
  smm.shutdown();
  smm.shutdown();  // idempotent
}

pid_t start_and_find_server(mp::SharedMemoryManager& smm) {
  std::set<pid_t> before;
  for (auto& p : mp::active_children()) before.insert(*p->pid());
  smm.start();
  for (auto& p : mp::active_children())
    if (!before.count(*p->pid())) return *p->pid();
  return 0;
}

TEST(SharedMemoryManager, AKilledServersSegmentsAreUnlinkedAtShutdown) {
  mp::SharedMemoryManager smm;
  const pid_t server = start_and_find_server(smm);
  ASSERT_GT(server, 0);
  auto shm = smm.SharedMemory(64);
  auto list = smm.ShareableList(1, 2.0);
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  EXPECT_THROW(smm.SharedMemory(64), mp::ManagerError);
  smm.shutdown();  // the server cannot: this process removes what it made
  EXPECT_FALSE(segment_exists(shm.name()));
  EXPECT_FALSE(segment_exists(list.shm().name()));
}

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

// A program of its own (no tracker inherited from the test process) that makes segments
// through a manager, kills its server, then is killed: nobody unlinks them but the tracker.
void program_killed_with_its_server(std::string out, std::string err) {
  mp::detail::resource_tracker_stop();
  int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ::dup2(fd, 2);
  ::close(fd);
  mp::SharedMemoryManager smm({.context = &mp::get_context("spawn")});
  const pid_t server = start_and_find_server(smm);
  auto shm = smm.SharedMemory(64);
  auto list = smm.ShareableList(7, "seven");
  Channel::send(out, std::to_string(mp::detail::resource_tracker_pid()) + " " + shm.name() + " " +
                         list.shm().name());
  ::kill(server, SIGKILL);
  ::kill(::getpid(), SIGKILL);
}

TEST(SharedMemoryManager, AKilledProgramsSegmentsAreReclaimedByTheTracker) {
  Channel out;
  const auto err = temp_dir() / "stderr";
  auto program = mp::fork_context.Process(program_killed_with_its_server, out.path(), err.string());
  program.start();
  const auto said = out.recv();
  ASSERT_TRUE(said);
  std::istringstream in(*said);
  int tracker = 0;
  std::string a, b;
  in >> tracker >> a >> b;
  program.join(kHang);
  EXPECT_EQ(program.exitcode(), -SIGKILL);
  ASSERT_GT(tracker, 0);
  ASSERT_TRUE(wait_gone(tracker));
  EXPECT_FALSE(segment_exists(a));
  EXPECT_FALSE(segment_exists(b));
  std::ifstream log(err);
  std::string text(std::istreambuf_iterator<char>(log), {});
  EXPECT_NE(text.find("leaked shared_memory objects"), std::string::npos) << text;
  std::filesystem::remove_all(err.parent_path());
}

TEST(SharedMemoryManager, AThousandSegmentsLeaveNoDescriptorBehind) {
  mp::SharedMemoryManager smm;
  smm.start();
  (void)smm.SharedMemory(8);  // the connection and the tracker are open from here
  const int fds = open_fd_count();
  std::vector<std::string> names;
  for (int i = 0; i < 1000; ++i) {
    auto shm = smm.SharedMemory(4096);
    shm.buf()[0] = std::byte{1};
    if (i % 2)
      EXPECT_TRUE(smm.release_segment(shm.name()));
    else
      names.push_back(shm.name());
  }
  EXPECT_EQ(open_fd_count(), fds);
  EXPECT_EQ(smm.segment_names().size(), 501u);
  smm.shutdown();
  std::size_t left = 0;
  for (const auto& n : names) left += segment_exists(n);
  EXPECT_EQ(left, 0u);
}

// ---- ShareableList on its own ----

TEST(ShareableList, ValuesTypesAndRepr) {
  mp::ShareableList l(7, 2.5, "seven", true, std::optional<std::int64_t>{},
                      mp::Bytes{std::byte{0}});
  static_assert(
      std::is_same_v<decltype(l), mp::ShareableList<int, double, std::string, bool,
                                                    std::optional<std::int64_t>, mp::Bytes>>);
  EXPECT_EQ(l.size(), 6u);
  EXPECT_EQ(l.get<0>(), 7);
  EXPECT_EQ(l.get<2>(), "seven");
  EXPECT_EQ(l.get<4>(), std::nullopt);
  l.set<4>(std::int64_t{-3});
  EXPECT_EQ(l.get<4>(), -3);
  l.set<4>(std::nullopt);
  EXPECT_EQ(l.get<4>(), std::nullopt);
  l.set<5>(mp::Bytes{std::byte{'a'}, std::byte{0xff}});
  std::ostringstream os;
  os << l;
  EXPECT_EQ(os.str(), "ShareableList([7, 2.5, 'seven', True, None, b'a\\xff'], name='" +
                          l.shm().name() + "')");
  EXPECT_EQ(l.count(7), 1u);
  EXPECT_EQ(l.count("seven"), 1u);
  EXPECT_EQ(l.index(true), 3u);
  l.shm().unlink();
}

TEST(ShareableList, CountAndIndex) {
  mp::ShareableList l(3, "x", 3, 4.0);
  EXPECT_EQ(l.count(3), 2u);
  EXPECT_EQ(l.index(3), 0u);
  EXPECT_EQ(l.index(4), 3u);
  EXPECT_EQ(l.index("x"), 1u);
  EXPECT_EQ(error_text<std::invalid_argument>([&] { l.index(99); }), "99 not in this container");
  EXPECT_EQ(error_text<std::invalid_argument>([&] { l.index("y"); }), "'y' not in this container");
  l.shm().unlink();
}

TEST(ShareableList, ASlotKeepsItsCapacity) {
  // CPython's rounding: 5 bytes get 8, 8 get 16.
  mp::ShareableList l("howdy", "12345678");
  l.set<0>("1234567");
  l.set<1>("123456789abcdef");
  EXPECT_EQ(error_text<std::invalid_argument>([&] { l.set<0>("123456789"); }),
            "bytes/str item exceeds available storage");
  EXPECT_EQ(l.get<0>(), "1234567") << "a refused value writes nothing";
  mp::ShareableList<std::string> big(std::tuple<std::string>("a"), {100});
  big.set<0>(std::string(100, 'z'));
  EXPECT_EQ(big.get<0>(), std::string(100, 'z'));
  EXPECT_THROW(big.set<0>(std::string(105, 'z')), std::invalid_argument);
  EXPECT_EQ(error_text<std::invalid_argument>(
                [] { mp::ShareableList<std::string>(std::tuple<std::string>("too long"), {4}); }),
            "bytes/str item exceeds available storage");
  l.shm().unlink();
  big.shm().unlink();
}

TEST(ShareableList, AttachChecksTheLayout) {
  mp::ShareableList l(1, "text", 2.0);
  mp::ShareableList<int, std::string, double> same{mp::SharedMemory(l.shm().name())};
  EXPECT_EQ(same.get<1>(), "text");
  same.set<0>(5);
  EXPECT_EQ(l.get<0>(), 5);
  const auto& name = l.shm().name();
  EXPECT_EQ(error_text<std::invalid_argument>(
                [&] { mp::ShareableList<int, std::string, float> other{mp::SharedMemory(name)}; }),
            "mp::ShareableList: segment '" + name +
                "' does not hold this list's layout: slot 2 holds double, not float");
  EXPECT_EQ(error_text<std::invalid_argument>(
                [&] { mp::ShareableList<int, std::string> other{mp::SharedMemory(name)}; }),
            "mp::ShareableList: segment '" + name +
                "' does not hold this list's layout: it has 3 slots, not 2");
  mp::SharedMemory plain(std::nullopt, true, 64);
  EXPECT_EQ(error_text<std::invalid_argument>(
                [&] { mp::ShareableList<int> other{mp::SharedMemory(plain.name())}; }),
            "mp::ShareableList: segment '" + plain.name() +
                "' does not hold this list's layout: it holds no mp::ShareableList (no header)");
  plain.unlink();
  l.shm().unlink();
  EXPECT_EQ(logic_text([] { mp::ShareableList<int>().get<0>(); }),
            "an empty or closed ShareableList (default-constructed, not loaded)");
}

}  // namespace
