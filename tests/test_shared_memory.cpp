// CPython's _TestSharedMemory: SharedMemory alone, across processes started by every method,
// against CPython itself, and on a /dev/shm that is full, read-only or closed to us.
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <regex>
#include <set>

#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

extern char** environ;

namespace mp::detail {
// The seam in src/shared_memory.cpp: generated names come from here while it is set.
extern std::string (*shm_name_source)();
}  // namespace mp::detail

namespace {

std::string test_name(const std::string& tag) {
  return "mp_test_" + tag + "_" + std::to_string(::getpid());
}

bool segment_exists(const std::string& name) {
  return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0;
}

std::set<std::string> shm_entries() {
  std::set<std::string> out;
  for (auto& e : std::filesystem::directory_iterator("/dev/shm"))
    out.insert(e.path().filename().string());
  return out;
}

void put(std::span<std::byte> buf, std::string_view s) {
  std::memcpy(buf.data(), s.data(), s.size());
}

std::string get(std::span<const std::byte> buf, std::size_t n) {
  return std::string(reinterpret_cast<const char*>(buf.data()), n);
}

std::string repr(const mp::SharedMemory& shm) {
  std::ostringstream os;
  os << shm;
  return os.str();
}

// The errno of the std::system_error f() throws: 0 if none, -1 for another exception.
template <class F>
int errno_of(F f, std::string* what = nullptr) {
  try {
    f();
  } catch (const std::system_error& e) {
    if (what) *what = e.what();
    return e.code().value();
  } catch (...) {
    return -1;
  }
  return 0;
}

// The what() of the std::invalid_argument f() throws ("no exception" if none).
template <class F>
std::string invalid_text(F f) {
  return error_text<std::invalid_argument>(f);
}

TEST(SharedMemory, Basics) {
  const std::string name = test_name("basics");
  mp::resource_tracker::ensure_running();  // its two descriptors are not the segment's
  const int fds = open_fd_count();
  mp::SharedMemory shm(name, true, 512);
  EXPECT_EQ(open_fd_count(), fds) << "the mapping holds the segment; no descriptor stays open";
  EXPECT_EQ(shm.name(), name);
  EXPECT_EQ(shm.size(), 512u);
  EXPECT_EQ(shm.buf().size(), 512u);
  EXPECT_TRUE(shm.tracked());
  EXPECT_EQ(repr(shm), "SharedMemory('" + name + "', size=512)");
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_size, 512);

  // Attaching sees the creator's writes; its `size` is ignored, the segment keeps its own.
  put(shm.buf(), "hello");
  mp::SharedMemory other(name, false, 4096);
  EXPECT_EQ(other.size(), 512u);
  EXPECT_NE(other.buf().data(), shm.buf().data());
  EXPECT_EQ(get(other.buf(), 5), "hello");
  put(other.buf(), "HE");
  EXPECT_EQ(get(shm.buf(), 5), "HEllo");

  std::string what;
  EXPECT_EQ(errno_of([&] { (void)mp::SharedMemory(name, true, 512); }, &what), EEXIST);
  EXPECT_NE(what.find("'/" + name + "'"), std::string::npos) << what;
  EXPECT_EQ(errno_of([&] { (void)mp::SharedMemory(name + "_missing"); }, &what), ENOENT);
  EXPECT_NE(what.find("'/" + name + "_missing'"), std::string::npos) << what;
  shm.unlink();
  EXPECT_EQ(open_fd_count(), fds);
}

TEST(SharedMemory, ConstructorErrors) {
  // CPython's texts, and its order of checks.
  EXPECT_EQ(invalid_text([] { (void)mp::SharedMemory("x", true, -2); }),
            "'size' must be a positive integer");
  EXPECT_EQ(invalid_text([] { (void)mp::SharedMemory("x", false, -1); }),
            "'size' must be a positive integer");
  EXPECT_EQ(invalid_text([] { (void)mp::SharedMemory(std::nullopt, true, 0); }),
            "'size' must be a positive number different from zero");
  EXPECT_EQ(invalid_text([] { (void)mp::SharedMemory("x", true); }),
            "'size' must be a positive number different from zero");
  EXPECT_EQ(invalid_text([] { (void)mp::SharedMemory(std::nullopt); }),
            "'name' can only be None if create=True");
  EXPECT_EQ(invalid_text([] { (void)mp::SharedMemory(std::nullopt, false, 64); }),
            "'name' can only be None if create=True");
  // Python 3.13's ValueError (3.11 cut the name at the NUL and opened another segment).
  const std::string name = test_name("nul");
  mp::SharedMemory shm(name, true, 512);
  EXPECT_EQ(invalid_text([&] { (void)mp::SharedMemory(name + std::string("\0a", 2)); }),
            "embedded null character");
  EXPECT_EQ(invalid_text([&] { (void)mp::SharedMemory(name + std::string("\0a", 2), true, 8); }),
            "embedded null character");
  // What shm_open refuses: an empty name, a '/' inside.
  EXPECT_EQ(errno_of([] { (void)mp::SharedMemory(""); }), EINVAL);
  EXPECT_EQ(errno_of([] { (void)mp::SharedMemory("a/b", true, 8); }), EINVAL);
  shm.unlink();

  // An empty segment cannot be mapped: CPython's mmap ValueError; the segment is not ours
  // to remove.
  const std::string empty = test_name("empty");
  const int fd = ::open(("/dev/shm/" + empty).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  const int fds = open_fd_count();
  EXPECT_EQ(invalid_text([&] { (void)mp::SharedMemory(empty); }), "cannot mmap an empty file");
  EXPECT_EQ(open_fd_count(), fds);
  EXPECT_TRUE(segment_exists(empty));
  ::unlink(("/dev/shm/" + empty).c_str());  // attaching fails: remove it by hand
}

TEST(SharedMemory, GeneratedNames) {
  mp::SharedMemory a(std::nullopt, true, 100);
  mp::SharedMemory b(std::nullopt, true, 100);
  const std::regex shape("psm_[0-9a-f]{8}");
  EXPECT_TRUE(std::regex_match(a.name(), shape)) << a.name();
  EXPECT_TRUE(std::regex_match(b.name(), shape)) << b.name();
  EXPECT_LE(a.name().size() + 1, 14u) << "FreeBSD's limit, with the slash";
  EXPECT_NE(a.name(), b.name());
  EXPECT_TRUE(segment_exists(a.name()));
  a.unlink();
  b.unlink();
}

std::deque<std::string> g_names;
std::string next_name() {
  std::string n = g_names.front();
  g_names.pop_front();
  return n;
}

TEST(SharedMemory, GeneratedNameCollisionIsRetried) {
  // CPython's test_shared_memory_recreate: the generator hands out a taken name first.
  const std::string taken = test_name("taken"), fresh = test_name("fresh");
  mp::SharedMemory first(taken, true, 64);
  put(first.buf(), "mine");
  g_names = {taken, taken, fresh};
  mp::detail::shm_name_source = next_name;
  std::optional<mp::SharedMemory> second;
  EXPECT_NO_THROW(second.emplace(std::nullopt, true, 128));
  mp::detail::shm_name_source = nullptr;
  ASSERT_TRUE(second);
  EXPECT_EQ(second->name(), fresh);
  EXPECT_TRUE(g_names.empty());
  EXPECT_EQ(get(first.buf(), 4), "mine") << "the taken segment is untouched";
  EXPECT_EQ(mp::SharedMemory(taken).size(), 64u);
  first.unlink();
  second->unlink();
}

TEST(SharedMemory, UnlinkRules) {
  const std::string name = test_name("unlink");
  mp::SharedMemory shm(name, true, 4096);
  mp::SharedMemory other(name);
  shm.unlink();
  EXPECT_FALSE(segment_exists(name));
  // Mappings made before the unlink still share the memory.
  put(shm.buf(), "still shared");
  EXPECT_EQ(get(other.buf(), 12), "still shared");
  EXPECT_EQ(errno_of([&] { (void)mp::SharedMemory(name); }), ENOENT);
  std::string what;
  EXPECT_EQ(errno_of([&] { shm.unlink(); }, &what), ENOENT);
  EXPECT_NE(what.find("No such file or directory: '/" + name + "'"), std::string::npos) << what;
  EXPECT_NE(what.find("already removed"), std::string::npos) << what;
  EXPECT_THROW(shm.unlink(), mp::FileNotFoundError);
  EXPECT_EQ(errno_of([&] { other.unlink(); }), ENOENT);

  // close() and unlink() in either order.
  mp::SharedMemory a(name, true, 10);
  a.close();
  EXPECT_NO_THROW(a.unlink());
  mp::SharedMemory b(name, true, 10);
  b.unlink();
  EXPECT_NO_THROW(b.close());
  EXPECT_FALSE(segment_exists(name));
}

TEST(SharedMemory, CloseIsIdempotentAndDropsBuf) {
  const std::string name = test_name("close");
  mp::SharedMemory shm(name, true, 1000);
  shm.close();
  EXPECT_TRUE(shm.buf().empty());
  EXPECT_EQ(shm.buf().data(), nullptr);
  EXPECT_EQ(shm.size(), 1000u) << "the size stays, as CPython's";
  shm.close();
  EXPECT_TRUE(segment_exists(name)) << "close() never unlinks";
  { mp::SharedMemory dropped(name); }
  EXPECT_TRUE(segment_exists(name)) << "nor does the destructor";
  shm.unlink();
}

TEST(SharedMemory, EmptyAndMovedFromObjects) {
  mp::SharedMemory empty;
  EXPECT_EQ(empty.name(), "");
  EXPECT_TRUE(empty.buf().empty());
  EXPECT_NO_THROW(empty.unlink());  // CPython: `if self._name`
  empty.close();
  mp::SharedMemory shm(std::nullopt, true, 64);
  put(shm.buf(), "moved");
  mp::SharedMemory moved(std::move(shm));
  EXPECT_EQ(shm.name(), "");  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_TRUE(shm.buf().empty());
  EXPECT_EQ(get(moved.buf(), 5), "moved");
  mp::SharedMemory target(std::nullopt, true, 32);
  const std::string target_name = target.name();
  target = std::move(moved);
  EXPECT_EQ(get(target.buf(), 5), "moved");
  target.unlink();
  mp::SharedMemory(target_name).unlink();
}

TEST(SharedMemory, CopiesAreHandlesToTheSameSegment) {
  mp::SharedMemory shm(std::nullopt, true, 64);
  mp::SharedMemory copy = shm;
  EXPECT_EQ(copy.name(), shm.name());
  EXPECT_EQ(copy.size(), 64u);
  EXPECT_EQ(copy.tracked(), shm.tracked());
  put(copy.buf(), "copied");
  EXPECT_EQ(get(shm.buf(), 6), "copied");
  // Closing one handle leaves the others mapped.
  shm.close();
  EXPECT_TRUE(shm.buf().empty());
  EXPECT_EQ(get(copy.buf(), 6), "copied");
  mp::SharedMemory assigned;
  assigned = copy;
  copy.close();
  EXPECT_EQ(get(assigned.buf(), 6), "copied");
  mp::SharedMemory empty;
  mp::SharedMemory empty_copy(empty);
  EXPECT_EQ(empty_copy.name(), "");
  EXPECT_TRUE(empty_copy.buf().empty());
  assigned.unlink();
  EXPECT_FALSE(segment_exists(shm.name()));
}

TEST(SharedMemory, PagesAreReservedAtCreate) {
  // CPython only ftruncates: a sparse segment. Ours has every page allocated at once.
  mp::SharedMemory shm(std::nullopt, true, 1 << 20);
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + shm.name()).c_str(), &st), 0);
  EXPECT_GE(static_cast<long long>(st.st_blocks) * 512, 1 << 20);
  shm.unlink();
}

TEST(SharedMemory, ThousandCyclesLeakNothing) {
  const int fds = open_fd_count();
  const auto entries = shm_entries();
  for (int i = 0; i < 1000; ++i) {
    mp::SharedMemory shm(std::nullopt, true, 4096);
    mp::SharedMemory other(shm.name());
    put(shm.buf(), "cycle");
    ASSERT_EQ(get(other.buf(), 5), "cycle") << i;
    other.close();
    shm.close();
    shm.unlink();
    ASSERT_FALSE(segment_exists(shm.name())) << i;
  }
  EXPECT_EQ(open_fd_count(), fds);
  EXPECT_EQ(shm_entries(), entries);
}

// ---- across processes ----

void write_hello(mp::SharedMemory shm) {
  if (shm.size() != 64) mp::exit(2);
  if (!shm.tracked()) mp::exit(3);
  put(shm.buf(), "HELLO");
}

void attach_and_write(std::string name, std::string text) {
  mp::SharedMemory shm(name);
  put(shm.buf(), text);
}

// Exits with the errno attaching fails with (0 if it works).
void attach_and_report(std::string name) {
  try {
    mp::SharedMemory shm(name);
  } catch (const std::system_error& e) {
    mp::exit(e.code().value());
  }
}

void receive_and_write(mp::Connection conn) {
  auto shm = conn.recv<mp::SharedMemory>();
  put(shm.buf(), "via a connection");
  conn.send_bytes("done");
}

class SharedMemoryAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
};

TEST_P(SharedMemoryAcross, ObjectAsArgumentWritesHello) {
  mp::SharedMemory shm(std::nullopt, true, 64);
  mp::SharedMemory view(shm.name());
  // The creator itself travels: by name (spawn, forkserver) or as the forked copy.
  auto p = ctx().Process(write_hello, std::move(shm));
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(get(view.buf(), 5), "HELLO");
  EXPECT_TRUE(segment_exists(view.name())) << "the child's copy closed, never unlinked";
  view.unlink();
}

TEST_P(SharedMemoryAcross, ChildAttachesByNameWritesHowdy) {
  mp::SharedMemory shm(std::nullopt, true, 64);
  auto p = ctx().Process(attach_and_write, shm.name(), "howdy");
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(get(shm.buf(), 5), "howdy");
  shm.unlink();
}

TEST_P(SharedMemoryAcross, ReattachAfterUnlinkIsENOENT) {
  mp::SharedMemory shm(std::nullopt, true, 64);
  shm.unlink();
  auto p = ctx().Process(attach_and_report, shm.name());
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), ENOENT);
}

TEST_P(SharedMemoryAcross, SentThroughAConnectionToARunningChild) {
  auto [mine, theirs] = mp::Pipe();
  auto p = ctx().Process(receive_and_write, std::move(theirs));
  p.start();
  mp::SharedMemory shm(std::nullopt, true, 64);
  mine.send(shm);
  ASSERT_TRUE(mine.poll(kHang));
  EXPECT_EQ(mine.recv_bytes(), "done");
  EXPECT_EQ(get(shm.buf(), 16), "via a connection");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  shm.unlink();
}

void write_slot(mp::SharedMemory shm, int slot) {
  shm.buf()[static_cast<std::size_t>(slot)] = static_cast<std::byte>('A' + slot);
}

TEST_P(SharedMemoryAcross, OneObjectPassedToThreeProcesses) {
  // Python's way: the same object as the argument of several processes. A copy is another
  // handle to the same segment.
  mp::SharedMemory shm(std::nullopt, true, 3);
  std::vector<mp::Process> ps;
  for (int slot = 0; slot < 3; ++slot) ps.push_back(ctx().Process(write_slot, shm, slot));
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(get(shm.buf(), 3), "ABC");
  shm.unlink();
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SharedMemoryAcross,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

TEST(SharedMemory, UnpicklingADeadObjectIsENOENT) {
  // CPython's test_shared_memory_pickle_unpickle_dead_object: serialized, unlinked, loaded.
  mp::SharedMemory shm(std::nullopt, true, 64);
  std::string bytes;
  {
    mp::reduction::OutArchive ar(bytes);
    ar(shm);
  }
  mp::SharedMemory alive;
  {
    mp::reduction::InArchive ar(bytes);
    ar(alive);
  }
  EXPECT_EQ(alive.name(), shm.name());
  EXPECT_EQ(alive.size(), 64u);
  shm.unlink();
  mp::reduction::InArchive ar(bytes);
  mp::SharedMemory dead;
  EXPECT_EQ(errno_of([&] { ar(dead); }), ENOENT);
}

TEST(SharedMemory, ReceivingADeadObjectNamesTheError) {
  // Connection::recv wraps whatever stops it rebuilding an object in mp::PicklingError.
  auto [a, b] = mp::Pipe();
  mp::SharedMemory shm(std::nullopt, true, 64);
  a.send(shm);
  shm.unlink();
  try {
    (void)b.recv<mp::SharedMemory>();
    ADD_FAILURE() << "expected an error";
  } catch (const mp::PicklingError& e) {
    EXPECT_NE(std::string(e.what()).find("shm_open '/" + shm.name() + "': No such file"),
              std::string::npos)
        << e.what();
  }
}

// ---- against CPython (Debian's python3) ----

const char* const kPython = "/usr/bin/python3";

// Runs python3 with `script`, its stdout on a pipe. The resource tracker Python starts
// inherits that stdout too, so read lines, never up to EOF.
struct Python {
  pid_t pid = -1;
  mp::Connection out;
  // With `with_stderr`, its stderr (and its resource tracker's) goes to the same pipe.
  explicit Python(const std::string& script, bool with_stderr = false) {
    auto [r, w] = mp::Pipe(false);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, w.fileno(), 1);
    if (with_stderr) posix_spawn_file_actions_adddup2(&fa, w.fileno(), 2);
    const char* argv[] = {kPython, "-c", script.c_str(), nullptr};
    if (::posix_spawn(&pid, kPython, &fa, nullptr, const_cast<char**>(argv), environ) != 0)
      throw std::runtime_error("posix_spawn python3");
    posix_spawn_file_actions_destroy(&fa);
    out = std::move(r);
  }
  std::string line() {
    std::string s;
    char c;
    while (wait_readable(out.fileno(), kHang) && ::read(out.fileno(), &c, 1) == 1 && c != '\n')
      s += c;
    return s;
  }
  // Everything up to EOF: once Python and its resource tracker have both exited.
  std::string rest() {
    std::string s;
    char buf[256];
    ssize_t n;
    while (wait_readable(out.fileno(), kHang) && (n = ::read(out.fileno(), buf, sizeof buf)) > 0)
      s.append(buf, static_cast<std::size_t>(n));
    return s;
  }
  // Its exit status, waiting at most kHang (through a pidfd, where there is one).
  int wait() {
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd >= 0) {
      const bool ended = wait_readable(pidfd, kHang);
      ::close(pidfd);
      if (!ended) ::kill(pid, SIGKILL);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

// Python 3.11 registers an attached segment with its resource tracker, which would unlink it
// when Python exits (gh-82300): the scripts take it back.
const char* const kUntrack =
    "from multiprocessing import shared_memory, resource_tracker\n"
    "def untrack(shm): resource_tracker.unregister(shm._name, 'shared_memory')\n";

TEST(Interop, CPythonAttachesToOurSegment) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << "no " << kPython;
  mp::SharedMemory shm(std::nullopt, true, 4096);
  put(shm.buf(), "from C++");
  Python py(std::string(kUntrack) + "shm = shared_memory.SharedMemory('" + shm.name() +
            "')\n"
            "untrack(shm)\n"
            "print(bytes(shm.buf[:8]).decode(), shm.size, flush=True)\n"
            "shm.buf[:11] = b'from Python'\n"
            "shm.close()\n"
            "print('closed', flush=True)\n");
  EXPECT_EQ(py.line(), "from C++ 4096");
  EXPECT_EQ(py.line(), "closed");
  EXPECT_EQ(py.wait(), 0);
  EXPECT_EQ(get(shm.buf(), 11), "from Python");
  EXPECT_TRUE(segment_exists(shm.name()));
  shm.unlink();
}

TEST(Interop, CPythonsTrackerRemovesOurSegmentUnlinkSaysSo) {
  // gh-82300 (Python 3.11, 3.12): an attaching Python registers the segment with its
  // resource tracker, which unlinks it when that Python exits.
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << "no " << kPython;
  mp::SharedMemory shm(std::nullopt, true, 4096);
  Python py(
      "from multiprocessing import shared_memory\n"
      "shm = shared_memory.SharedMemory('" +
          shm.name() +
          "')\n"
          "shm.close()\n",
      true);
  EXPECT_EQ(py.wait(), 0);
  const std::string output = py.rest();  // EOF: its tracker has exited too
  if (segment_exists(shm.name())) {
    shm.unlink();
    GTEST_SKIP() << "this Python's tracker leaves an attached segment alone: " << output;
  }
  try {
    shm.unlink();
    ADD_FAILURE() << "unlink() of a removed segment did not throw";
  } catch (const mp::FileNotFoundError& e) {
    EXPECT_EQ(e.code().value(), ENOENT);
    EXPECT_EQ(e.filename(), "/" + shm.name());
    const std::string what = e.what();
    EXPECT_NE(what.find("No such file or directory: '/" + shm.name() + "'"), std::string::npos)
        << what;
    EXPECT_NE(what.find("already removed"), std::string::npos) << what;
    EXPECT_NE(what.find("resource tracker"), std::string::npos) << what;
  }
  // A std::system_error still, as before.
  EXPECT_EQ(errno_of([&] { shm.unlink(); }), ENOENT);
}

TEST(Interop, WeAttachToACPythonSegment) {
  if (::access(kPython, X_OK) != 0) GTEST_SKIP() << "no " << kPython;
  Python py(std::string(kUntrack) +
            "shm = shared_memory.SharedMemory(create=True, size=1000)\n"
            "untrack(shm)\n"
            "shm.buf[:11] = b'from Python'\n"
            "print(shm.name, flush=True)\n"
            "shm.close()\n");
  const std::string name = py.line();
  EXPECT_EQ(py.wait(), 0);
  ASSERT_FALSE(name.empty());
  mp::SharedMemory shm(name);
  EXPECT_EQ(shm.size(), 1000u);
  EXPECT_EQ(get(shm.buf(), 11), "from Python");
  shm.unlink();
  EXPECT_FALSE(segment_exists(name));
}

// ---- faults: /dev/shm full, read-only, closed to us (root only) ----

struct Outcome {
  std::string skip;  // why the namespace could not be set up
  int err = 0;       // errno of the std::system_error the constructor threw (0: none)
  std::string what;
  int left = -1;  // entries in /dev/shm afterwards
  template <class Archive>
  void serialize(Archive& ar) {
    ar(skip, err, what, left);
  }
};

// In a fork child: a private mount namespace with a fresh tmpfs on /dev/shm, then create.
void create_on_private_shm(mp::Connection out, std::string options, bool read_only, bool as_nobody,
                           std::int64_t size) {
  Outcome o;
  if (::unshare(CLONE_NEWNS) != 0) {
    o.skip = std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
  } else if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
             ::mount("tmpfs", "/dev/shm", "tmpfs", read_only ? MS_RDONLY : 0, options.c_str()) !=
                 0) {
    o.skip = std::string("mount: ") + std::strerror(errno);
  } else if (as_nobody && (::setgid(65534) != 0 || ::setuid(65534) != 0)) {
    o.skip = std::string("setuid: ") + std::strerror(errno);
  } else {
    o.err = errno_of(
        [&] {
          mp::SharedMemory shm(std::nullopt, true, size);
          shm.unlink();
        },
        &o.what);
    o.left = static_cast<int>(shm_entries().size());
  }
  out.send(o);
}

Outcome run_on_private_shm(const std::string& options, bool read_only, bool as_nobody,
                           std::int64_t size) {
  auto [mine, theirs] = mp::Pipe(false);
  auto p = mp::get_context("fork").Process(create_on_private_shm, std::move(theirs), options,
                                           read_only, as_nobody, size);
  p.start();
  Outcome o;
  o.skip = "the child sent nothing";
  if (mine.poll(kHang)) o = mine.recv<Outcome>();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  return o;
}

#define REQUIRE_ROOT() \
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (mount namespaces, setuid)"

TEST(SharedMemoryFaults, DevShmFullIsENOSPCAndLeavesNothing) {
  REQUIRE_ROOT();
  // CPython creates this segment and dies of SIGBUS at the first write past 64 KiB.
  const Outcome o = run_on_private_shm("size=64k", false, false, 1 << 20);
  if (!o.skip.empty()) GTEST_SKIP() << o.skip;
  EXPECT_EQ(o.err, ENOSPC) << o.what;
  EXPECT_NE(o.what.find("posix_fallocate '/psm_"), std::string::npos) << o.what;
  EXPECT_EQ(o.left, 0) << "the half-made segment is unlinked";
  // Room enough: the same call works there.
  const Outcome fits = run_on_private_shm("size=64k", false, false, 32 << 10);
  EXPECT_EQ(fits.err, 0) << fits.what;
  EXPECT_EQ(fits.left, 0);
}

TEST(SharedMemoryFaults, ReadOnlyDevShmIsEROFS) {
  REQUIRE_ROOT();
  const Outcome o = run_on_private_shm("size=64k", true, false, 4096);
  if (!o.skip.empty()) GTEST_SKIP() << o.skip;
  EXPECT_EQ(o.err, EROFS) << o.what;
  EXPECT_NE(o.what.find("shm_open '/psm_"), std::string::npos) << o.what;
  EXPECT_EQ(o.left, 0);
}

TEST(SharedMemoryFaults, UnwritableDevShmIsEACCES) {
  REQUIRE_ROOT();
  // A /dev/shm owned by root, 0755, and a child that is nobody.
  const Outcome o = run_on_private_shm("size=64k,mode=0755", false, true, 4096);
  if (!o.skip.empty()) GTEST_SKIP() << o.skip;
  EXPECT_EQ(o.err, EACCES) << o.what;
  EXPECT_NE(o.what.find("shm_open '/psm_"), std::string::npos) << o.what;
  EXPECT_EQ(o.left, 0);
}

void attach_as_nobody(std::string name) {
  if (::setgid(65534) != 0 || ::setuid(65534) != 0) mp::exit(100);
  attach_and_report(name);
}

TEST(SharedMemoryFaults, Mode0600KeepsOtherUsersOut) {
  REQUIRE_ROOT();
  mp::SharedMemory shm(std::nullopt, true, 64);
  auto p = mp::get_context("fork").Process(attach_as_nobody, shm.name());
  p.start();
  p.join(kHang);
  if (p.exitcode() == 100) GTEST_SKIP() << "setuid(65534) refused";
  EXPECT_EQ(p.exitcode(), EACCES);
  shm.unlink();
}

}  // namespace
