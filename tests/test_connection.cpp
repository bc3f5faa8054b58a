// CPython's _TestConnection, _TestPoll, TestWait and friends: Pipe and Connection, alone and
// across processes started by every method.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <optional>

#include "posix/posix.hpp"
#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

extern char** environ;

namespace {

std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span(s));
}

TEST(Connection, DuplexAndSimplex) {
  auto [a, b] = mp::Pipe();
  EXPECT_TRUE(a.readable() && a.writable() && b.readable() && b.writable());
  auto [r, w] = mp::Pipe(false);
  EXPECT_TRUE(r.readable());
  EXPECT_FALSE(r.writable());
  EXPECT_FALSE(w.readable());
  EXPECT_TRUE(w.writable());
  EXPECT_GE(a.fileno(), 0);
}

TEST(Connection, ObjectsAndBytesRoundTrip) {
  auto [a, b] = mp::Pipe();
  a.send(std::vector<double>{1, 2.25, -3});
  EXPECT_EQ(b.recv<std::vector<double>>(), (std::vector<double>{1, 2.25, -3}));
  a.send(std::optional<int>{});  // Python's None
  EXPECT_EQ(b.recv<std::optional<int>>(), std::nullopt);
  b.send(std::map<std::string, int>{{"x", 1}});
  EXPECT_EQ((a.recv<std::map<std::string, int>>()), (std::map<std::string, int>{{"x", 1}}));
  a.send_bytes("hello");
  EXPECT_EQ(b.recv_bytes(), "hello");
}

TEST(Connection, ReceivingAsAnotherTypeIsAnError) {
  auto [a, b] = mp::Pipe();
  a.send(42);
  EXPECT_THROW(b.recv<std::string>(), mp::PicklingError);
  a.send_bytes("raw");
  EXPECT_THROW(b.recv<int>(), mp::PicklingError);
  a.send(7);
  EXPECT_EQ(b.recv<int>(), 7) << "the connection is still usable";
}

TEST(Connection, SendBytesOffsets) {
  const std::string az = "abcdefghijklmnopqrstuvwxyz";
  auto [a, b] = mp::Pipe();
  a.send_bytes(bytes(az), 5);
  EXPECT_EQ(b.recv_bytes(), az.substr(5));
  a.send_bytes(bytes(az), 7, 8);
  EXPECT_EQ(b.recv_bytes(), az.substr(7, 8));
  a.send_bytes(bytes(az), 26);
  EXPECT_EQ(b.recv_bytes(), "");
  a.send_bytes(bytes(az), 26, 0);
  EXPECT_EQ(b.recv_bytes(), "");
  EXPECT_EQ(logic_text([&] { a.send_bytes(bytes(az), 27); }), "buffer length < offset");
  EXPECT_EQ(logic_text([&] { a.send_bytes(bytes(az), 22, 5); }), "buffer length < offset + size");
  EXPECT_EQ(logic_text([&] { a.send_bytes(bytes(az), 26, 1); }), "buffer length < offset + size");
}

TEST(Connection, RecvBytesInto) {
  auto [a, b] = mp::Pipe();
  std::vector<std::byte> buf(16, std::byte{'.'});
  a.send_bytes("abcd");
  EXPECT_EQ(b.recv_bytes_into(buf), 4u);
  a.send_bytes("xy");
  EXPECT_EQ(b.recv_bytes_into(buf, 12), 2u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), buf.size()), "abcd........xy..");
  EXPECT_EQ(logic_text([&] { b.recv_bytes_into(buf, 17); }), "offset too large");
  a.send_bytes("a message too long");
  try {
    b.recv_bytes_into(buf, 8);
    ADD_FAILURE() << "expected BufferTooShort";
  } catch (const mp::BufferTooShort& e) {
    EXPECT_EQ(e.message(), "a message too long");
  }
  EXPECT_FALSE(b.poll()) << "the message was consumed";
  a.send_bytes("z");
  EXPECT_THROW(b.recv_bytes_into(buf, 16), mp::BufferTooShort);
}

TEST(Connection, MessageLongerThanMaxlength) {
  auto [a, b] = mp::Pipe();
  a.send_bytes("0123456789");
  try {
    b.recv_bytes(5);
    ADD_FAILURE() << "expected bad message length";
  } catch (const mp::ProcessError& e) {
    EXPECT_STREQ(e.what(), "bad message length");
  }
  EXPECT_FALSE(b.readable()) << "a duplex end becomes write-only";
  EXPECT_EQ(logic_text([&] { b.recv_bytes(); }), "connection is write-only");
  auto [r, w] = mp::Pipe(false);
  w.send_bytes("0123456789");
  EXPECT_THROW(r.recv_bytes(5), mp::ProcessError);
  EXPECT_TRUE(r.closed()) << "a read-only end is closed";
}

TEST(Connection, PollNeverConsumesAndEmptyMessagesCount) {
  auto [a, b] = mp::Pipe();
  EXPECT_FALSE(b.poll());
  EXPECT_FALSE(b.poll(-1s));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(b.poll(300ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 200ms);
  a.send_bytes("");
  EXPECT_TRUE(b.poll());
  EXPECT_TRUE(b.poll(1s));
  EXPECT_EQ(b.recv_bytes(), "");
  EXPECT_FALSE(b.poll());
}

TEST(Connection, MessagesNeverMergeOrSplit) {
  auto [a, b] = mp::Pipe();
  for (const char* m : {"a", "", "b", "cd", ""}) a.send_bytes(m);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b.poll(1s));
  for (const char* m : {"a", "", "b", "cd", ""}) EXPECT_EQ(b.recv_bytes(), m);
}

TEST(Connection, TruncatedMessage) {
  auto [a, b] = mp::Pipe();
  const unsigned char partial[] = {0, 0, 0, 10, 'a', 'b', 'c'};
  ASSERT_EQ(::write(a.fileno(), partial, sizeof partial), 7);
  a.close();
  try {
    b.recv_bytes();
    ADD_FAILURE() << "expected an error";
  } catch (const mp::ProcessError& e) {
    EXPECT_STREQ(e.what(), "got end of file during message");
  }
}

TEST(Connection, LengthsBeyondMemoryAreRefusedBeforeAllocating) {
  {  // -1 and an 8-byte length of 1 TiB: more than this machine has
    auto [a, b] = mp::Pipe();
    const unsigned char huge[] = {0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0, 0, 0, 0, 0};
    ASSERT_EQ(::write(a.fileno(), huge, sizeof huge), 12);
    try {
      b.recv_bytes();
      ADD_FAILURE() << "expected bad message length";
    } catch (const mp::ProcessError& e) {
      EXPECT_STREQ(e.what(), "bad message length");
    }
  }
  {  // 1 GiB announced, 3 bytes sent: an end of file, read without allocating the gigabyte
    auto [a, b] = mp::Pipe();
    const unsigned char liar[] = {0x40, 0, 0, 0, 'a', 'b', 'c'};
    ASSERT_EQ(::write(a.fileno(), liar, sizeof liar), 7);
    a.close();
    try {
      b.recv_bytes();
      ADD_FAILURE() << "expected an error";
    } catch (const mp::ProcessError& e) {
      EXPECT_STREQ(e.what(), "got end of file during message");
    }
  }
}

TEST(Connection, LongLengthFormIsReadForAnySize) {
  // CPython reads -1 and an 8-byte length whatever the size; so do we.
  auto [a, b] = mp::Pipe();
  const unsigned char frame[] = {0xff, 0xff, 0xff, 0xff, 0,   0,   0,   0,  0,
                                 0,    0,    5,    'h',  'e', 'l', 'l', 'o'};
  ASSERT_EQ(::write(a.fileno(), frame, sizeof frame), static_cast<ssize_t>(sizeof frame));
  EXPECT_EQ(b.recv_bytes(), "hello");
}

// A message over 2 GiB takes the long form on the wire (-1, then 8 bytes) and arrives whole.
// The sender's buffer is untouched anonymous memory (it reads as zeros and costs nothing)
// but for a marker on each side of the 2 GiB line.
void send_over_two_gib(mp::Connection conn) {
  const std::size_t n = (std::size_t(2) << 30) + 1024;
  void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (m == MAP_FAILED) mp::exit(3);
  auto* bytes = static_cast<unsigned char*>(m);
  bytes[0] = 'a';
  bytes[0x7fffffff] = 'b';
  bytes[n - 1] = 'c';
  conn.send_bytes({static_cast<const std::byte*>(m), n});
  conn.send_bytes("small after big");
}

TEST(Connection, MessagesOverTwoGibibytes) {
  const std::size_t n = (std::size_t(2) << 30) + 1024;
  auto [mine, theirs] = mp::Pipe();
  auto p = mp::fork_context.Process(send_over_two_gib, std::move(theirs));
  p.start();
  {
    // CPython's long form on the wire: -1, then the length as 8 big-endian bytes.
    unsigned char head[12];
    ASSERT_EQ(::recv(mine.fileno(), head, sizeof head, MSG_PEEK | MSG_WAITALL), 12);
    const unsigned char expected[] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0x04, 0};
    EXPECT_EQ(std::memcmp(head, expected, 12), 0);
    const std::string got = mine.recv_bytes();
    ASSERT_EQ(got.size(), n);
    EXPECT_EQ(got[0], 'a');
    EXPECT_EQ(got[0x7fffffff], 'b');
    EXPECT_EQ(got[n - 1], 'c');
    EXPECT_EQ(got[n / 2], '\0');
  }
  EXPECT_EQ(mine.recv_bytes(), "small after big");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST(Connection, EofAndBrokenPipeWithoutSigpipe) {
  ::signal(SIGPIPE, SIG_DFL);  // what a C++ program has by default: SIGPIPE would kill it
  for (bool duplex : {true, false}) {
    auto [r, w] = mp::Pipe(duplex);
    w.close();
    EXPECT_TRUE(r.poll());
    EXPECT_THROW(r.recv_bytes(), mp::EOFError);
    EXPECT_THROW(r.recv<int>(), mp::EOFError);
  }
  for (bool duplex : {true, false}) {
    auto [r, w] = mp::Pipe(duplex);
    r.close();
    try {
      w.send_bytes("to nobody");
      ADD_FAILURE() << "expected EPIPE";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code().value(), EPIPE) << e.what();
    }
  }
}

TEST(Connection, MisuseTexts) {
  auto [r, w] = mp::Pipe(false);
  EXPECT_EQ(logic_text([&] { r.send_bytes("x"); }), "connection is read-only");
  EXPECT_EQ(logic_text([&] { w.recv_bytes(); }), "connection is write-only");
  EXPECT_EQ(logic_text([&] { w.poll(); }), "connection is write-only");
  r.close();
  r.close();
  EXPECT_TRUE(r.closed());
  for (auto f :
       std::vector<std::function<void()>>{[&] { (void)r.fileno(); }, [&] { r.send_bytes("x"); },
                                          [&] { r.recv_bytes(); }, [&] { r.poll(); }})
    EXPECT_EQ(logic_text(f), "handle is closed");
  EXPECT_EQ(logic_text([] { mp::Connection c(-1, true, true); }), "invalid handle");
  EXPECT_EQ(logic_text([] { mp::Connection c(0, false, false); }),
            "at least one of `readable` and `writable` must be True");
  mp::Connection bogus(::dup(0), true, false);
  ::close(bogus.fileno());  // now a descriptor number that is not open
  EXPECT_THROW(bogus.poll(), std::system_error);
  (void)bogus.fileno();
}

// ---- across processes ----

// Echoes until "stop" (a fork child holds the parent's end too, so it would wait for an EOF
// that never comes: CPython's tests stop on a sentinel message the same way).
void echo(mp::Connection conn) {
  for (std::string m; (m = conn.recv_bytes()) != "stop";) conn.send_bytes(m);
}

void poll_then_leave(mp::Connection reader, mp::Connection done) {
  reader.poll(kHang);  // never consumes
  done.send_bytes("polled");
}

void send_pid_messages(mp::Connection out, int index) {
  for (int i = 0; i < 10; ++i) out.send(std::pair<int, int>(index, ::getpid()));
}

void under_signals(mp::Connection conn) {
  arm_alarm_storm();
  auto big = conn.recv_bytes();
  conn.send_bytes(big);
  conn.send(conn.recv<std::string>() + " back");
}

class ConnectionAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
};

TEST_P(ConnectionAcross, SixteenMebibytesEchoed) {
  auto [mine, theirs] = mp::Pipe();
  auto p = ctx().Process(echo, std::move(theirs));
  p.start();
  std::string big(16 << 20, 'x');
  for (std::size_t i = 0; i < big.size(); i += 4093) big[i] = static_cast<char>(i);
  mine.send_bytes(big);
  EXPECT_EQ(mine.recv_bytes() == big, true);
  mine.send(std::string("and an object"));
  EXPECT_EQ(mine.recv_bytes().size(), sizeof(std::uint64_t) + 8 + 13);
  mine.send_bytes("stop");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ConnectionAcross, ParentClosesItsCopyRightAfterStart) {
  // The argument was moved in: after start() the parent's copy is gone, the child's stays.
  auto [mine, theirs] = mp::Pipe();
  auto p = ctx().Process(echo, std::move(theirs));
  p.start();
  EXPECT_TRUE(theirs.closed());
  mine.send_bytes("ping");
  EXPECT_EQ(mine.recv_bytes(), "ping");
  mine.send_bytes("stop");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ConnectionAcross, PollInAChildConsumesNothing) {
  auto [reader, writer] = mp::Pipe(false);
  auto [done_r, done_w] = mp::Pipe(false);
  // The child polls its own copy of the reader: same pipe, the message must stay whole.
  auto p = ctx().Process(poll_then_leave, mp::Connection(::dup(reader.fileno()), true, false),
                         std::move(done_w));
  p.start();
  writer.send_bytes("first");
  EXPECT_EQ(done_r.recv_bytes(), "polled");
  p.join(kHang);
  EXPECT_EQ(reader.recv_bytes(), "first");
}

TEST_P(ConnectionAcross, EofOnlyOnceEveryCopyIsClosed) {
  if (GetParam() == "fork")
    GTEST_SKIP() << "a fork child inherits every descriptor, the writer's original too";
  auto [r, w] = mp::Pipe(false);
  auto [gate_r, gate_w] = mp::Pipe(false);
  // A child holds a copy of the writer until the gate opens.
  auto p = ctx().Process(
      +[](mp::Connection w, mp::Connection gate) {
        (void)gate.recv_bytes();
        w.close();
      },
      mp::Connection(::dup(w.fileno()), false, true), std::move(gate_r));
  p.start();
  w.close();
  EXPECT_FALSE(r.poll(200ms)) << "the child's copy keeps the pipe open";
  gate_w.send_bytes("go");
  EXPECT_TRUE(r.poll(kHang));
  EXPECT_THROW(r.recv_bytes(), mp::EOFError);
  p.join(kHang);
}

void use_received_handles(mp::Connection via) {
  // A raw descriptor (a pipe's write end, numbered above 256), then a whole Connection.
  mp::posix::unique_fd fd(mp::recv_handle(via));
  if (::write(fd.get(), "raw", 3) != 3) mp::exit(3);
  auto conn = mp::recv_connection(via);
  conn.send_bytes("through a received connection");
  via.send_bytes("done");
}

TEST_P(ConnectionAcross, HandlesAndConnectionsSentToARunningChild) {
  auto [mine, theirs] = mp::Pipe();
  auto p = ctx().Process(use_received_handles, std::move(theirs));
  p.start();
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  const int high = ::fcntl(fds[1], F_DUPFD_CLOEXEC, 300);
  ::close(fds[1]);
  mp::send_handle(mine, high);
  ::close(high);
  auto [r, w] = mp::Pipe(false);
  mp::send_connection(mine, w);
  w.close();
  EXPECT_EQ(mine.recv_bytes(), "done");
  char buf[3];
  EXPECT_EQ(::read(fds[0], buf, 3), 3);
  EXPECT_EQ(std::string(buf, 3), "raw");
  ::close(fds[0]);
  EXPECT_EQ(r.recv_bytes(), "through a received connection");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST(Connection, RecvHandleWithoutOne) {
  auto [a, b] = mp::Pipe();
  ASSERT_EQ(::write(a.fileno(), "A", 1), 1);  // the byte, no descriptor with it
  try {
    mp::recv_handle(b);
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "received 0 items of ancdata");
  }
  a.close();
  EXPECT_THROW(mp::recv_handle(b), mp::EOFError);
}

TEST_P(ConnectionAcross, WaitCollectsEveryMessage) {
  std::vector<mp::Connection> readers;
  std::vector<mp::Process> procs;
  for (int i = 0; i < 4; ++i) {
    auto [r, w] = mp::Pipe(false);
    readers.push_back(std::move(r));
    procs.push_back(ctx().Process(send_pid_messages, std::move(w), i));
    procs.back().start();
  }
  std::map<int, int> per_child;
  std::vector<mp::Connection*> live;
  for (auto& r : readers) live.push_back(&r);
  while (!live.empty()) {
    for (auto* c : mp::wait(live, kHang)) {
      try {
        auto [index, pid] = c->recv<std::pair<int, int>>();
        EXPECT_EQ(pid, *procs[static_cast<std::size_t>(index)].pid());
        ++per_child[index];
      } catch (const mp::EOFError&) {
        std::erase(live, c);
      }
    }
  }
  for (auto& p : procs) p.join(kHang);
  EXPECT_EQ(per_child, (std::map<int, int>{{0, 10}, {1, 10}, {2, 10}, {3, 10}}));
}

TEST_P(ConnectionAcross, SignalsDuringSendAndRecv) {
  auto [mine, theirs] = mp::Pipe();
  auto p = ctx().Process(under_signals, std::move(theirs));
  p.start();
  std::string big(16 << 20, 'y');
  mine.send_bytes(big);
  EXPECT_EQ(mine.recv_bytes().size(), big.size());
  mine.send(std::string("there"));
  EXPECT_EQ(mine.recv<std::string>(), "there back");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, ConnectionAcross,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

TEST(Wait, TimeoutsAndSentinels) {
  auto [a, b] = mp::Pipe();
  auto [c, d] = mp::Pipe();
  mp::Connection* both[] = {&a, &c};
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(mp::wait(both, 500ms).empty());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 400ms);
  EXPECT_TRUE(mp::wait(both, -1s).empty());
  d.send(std::optional<int>{});
  auto ready = mp::wait(both, kHang);
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(ready[0], &c);

  // Raw descriptors mix in: a process sentinel.
  Channel gate;
  auto p = mp::get_context("fork").Process(
      +[](std::string g) { Channel::recv_line(g); }, gate.path());
  p.start();
  const int fds[] = {p.sentinel(), a.fileno()};
  EXPECT_TRUE(mp::wait(std::span<const int>(fds), 0s).empty());
  b.send_bytes("x");
  EXPECT_EQ(mp::wait(std::span<const int>(fds), kHang), std::vector<int>{a.fileno()});
  gate.send("go");
  p.join(kHang);
  EXPECT_EQ(mp::wait(std::span<const int>(fds), kHang).size(), 2u);
}

}  // namespace

namespace {

// Starts `python -c script` with `fd` as its descriptor 3; its pid, or -1.
pid_t spawn_python(const char* python, const std::string& script, int fd) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fd, 3);
  const char* argv[] = {python, "-c", script.c_str(), nullptr};
  pid_t pid = -1;
  if (::posix_spawn(&pid, python, &fa, nullptr, const_cast<char**>(argv), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

// CPython's own Connection on the other end of ours: the same framing, both ways.
TEST(Interop, CPythonConnectionReadsAndWritesOurFraming) {
  const char* python = "/usr/bin/python3";
  if (::access(python, X_OK) != 0) GTEST_SKIP() << "no " << python;
  auto [mine, theirs] = mp::Pipe();
  const std::string script =
      "from multiprocessing.connection import Connection\n"
      "c = Connection(3)\n"
      "while True:\n"
      "    m = c.recv_bytes()\n"
      "    if m == b'stop': break\n"
      "    c.send_bytes(m[::-1])\n";
  const pid_t pid = spawn_python(python, script, theirs.fileno());
  ASSERT_GT(pid, 0);
  theirs.close();
  std::string big(16 << 20, 'a');
  big.back() = 'z';
  for (const std::string& m : {std::string("hello"), std::string(), big}) {
    mine.send_bytes(m);
    ASSERT_TRUE(mine.poll(kHang));
    EXPECT_EQ(mine.recv_bytes(), std::string(m.rbegin(), m.rend())) << m.size() << " bytes";
  }
  mine.send_bytes("stop");
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace

namespace {

struct OnlyTheChildSendsThis {
  int x = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x);
  }
};

void send_token(mp::Connection w) {
  w.send(OnlyTheChildSendsThis{3});
}

template <class F>
std::string pickling_text(F f) {
  return error_text<mp::PicklingError>(f, "no PicklingError");
}

// Issue 15 item 6: a mismatch names what arrived, even a type this process never sent.
TEST(Connection, AMismatchNamesTheTypeThatArrived) {
  auto [a, b] = mp::Pipe();
  a.send(42);
  EXPECT_EQ(pickling_text([&] { (void)b.recv<long>(); }),
            "received an object of type 'int', not the expected 'long'");
  auto [r, w] = mp::Pipe(false);
  auto p = mp::spawn_context.Process(send_token, std::move(w));
  p.start();
  ASSERT_TRUE(r.poll(kHang));
  EXPECT_EQ(pickling_text([&] { (void)r.recv<std::vector<std::string>>(); }),
            "received an object of type '(anonymous namespace)::OnlyTheChildSendsThis', not the "
            "expected 'std::vector<std::string>'");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

// Issue 15 item 5: Python's conn.send(obj) reaching recv<T>() is named for what it is.
TEST(Interop, APythonPickleIsToldApartFromAnotherType) {
  const char* python = "/usr/bin/python3";
  if (::access(python, X_OK) != 0) GTEST_SKIP() << "no " << python;
  auto [mine, theirs] = mp::Pipe();
  const std::string script =
      "from multiprocessing.connection import Connection\n"
      "c = Connection(3)\n"
      "c.send({'a': 1})\n"
      "c.send(1)\n"  // 5 bytes: shorter than a type tag
      "c.send_bytes(b'ok')\n";
  const pid_t pid = spawn_python(python, script, theirs.fileno());
  ASSERT_GT(pid, 0);
  theirs.close();
  const std::string hint =
      "this message is a Python pickle: use recv_bytes(), or send_bytes() on the Python side";
  EXPECT_EQ(pickling_text([&] { (void)mine.recv<std::map<std::string, int>>(); }),
            "cannot receive a 'std::map<std::string, int>': " + hint);
  EXPECT_EQ(pickling_text([&] { (void)mine.recv<int>(); }), "cannot receive a 'int': " + hint);
  EXPECT_EQ(mine.recv_bytes(), "ok");
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
