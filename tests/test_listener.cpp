// CPython's _TestListener, _TestListenerClient, _TestAuthentication (and friends): Listener
// and Client over every family, with and without keys, and against CPython itself.
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sstream>
#include <thread>

#include "auth.hpp"
#include "support.hpp"

using namespace mp_test;
using namespace std::chrono_literals;

extern char** environ;

namespace {

void send_hello(mp::Address address) {
  mp::Client(address).send(std::string("hello"));
}

void send_hello_with_key(mp::Address address, std::string key) {
  auto c = mp::Client(address, std::nullopt, mp::AuthenticationString(key));
  c.send(std::string("hello"));
}

std::vector<mp::Address> addresses() {
  return {mp::Address(std::string()),  // default: a fresh path
          mp::Address(std::string("\0mp-test-", 9) + std::to_string(::getpid())),
          mp::Address(std::pair<std::string, int>("localhost", 0))};
}

mp::Listener make_listener(const mp::Address& a,
                           std::optional<mp::AuthenticationString> key = std::nullopt) {
  if (auto* s = std::get_if<std::string>(&a); s && s->empty())
    return mp::Listener(std::nullopt, std::nullopt, 1, std::move(key));
  return mp::Listener(a, std::nullopt, 1, std::move(key));
}

TEST(Listener, EveryFamilyAcceptsAClient) {
  for (const auto& a : addresses()) {
    auto l = make_listener(a);
    auto p = mp::Process(send_hello, l.address());
    p.start();
    auto c = l.accept();
    EXPECT_EQ(c.recv<std::string>(), "hello");
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
  }
}

TEST(Listener, AddressesAndLastAccepted) {
  mp::Listener unix_default;
  const auto& path = std::get<std::string>(unix_default.address());
  EXPECT_TRUE(std::filesystem::exists(path)) << path;
  EXPECT_FALSE(unix_default.last_accepted());
  auto client = mp::Client(unix_default.address());
  unix_default.accept();
  EXPECT_EQ(unix_default.last_accepted(), mp::Address(std::string()));
  unix_default.close();
  EXPECT_FALSE(std::filesystem::exists(path)) << "close() removes the socket file";

  mp::Listener tcp(mp::Address(std::pair<std::string, int>("localhost", 0)));
  const auto& [host, port] = std::get<std::pair<std::string, int>>(tcp.address());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_GT(port, 0);
  auto c = mp::Client(tcp.address());
  tcp.accept();
  ASSERT_TRUE(tcp.last_accepted());
  using HostPort = std::pair<std::string, int>;
  EXPECT_EQ(std::get<HostPort>(*tcp.last_accepted()).first, "127.0.0.1");
}

TEST(Listener, ClientThatSentAndLeftBeforeAccept) {
  for (const auto& a : addresses()) {  // issue 14725
    auto l = make_listener(a);
    auto p = mp::Process(send_hello, l.address());
    p.start();
    p.join(kHang);
    auto c = l.accept();
    EXPECT_EQ(c.recv<std::string>(), "hello");
  }
}

TEST(Listener, PollSeesThePeersBytes) {  // issue 16955
  mp::Listener l;
  auto client = mp::Client(l.address());
  auto server = l.accept();
  server.send_bytes("x");
  EXPECT_TRUE(client.poll(1s));
  EXPECT_EQ(client.recv_bytes(), "x");
}

TEST(Listener, Errors) {
  for (const auto& a : addresses()) {
    auto l = make_listener(a);
    try {
      mp::Listener again(l.address());
      ADD_FAILURE() << "bound twice";
    } catch (const std::system_error& e) {
      EXPECT_EQ(e.code().value(), EADDRINUSE) << e.what();
    }
    l.close();
    EXPECT_EQ(logic_text([&] { l.accept(); }), "listener is closed");
  }
  EXPECT_EQ(logic_text([] { mp::Listener l(mp::Address(std::string(R"(\\.\test)"))); }),
            "Family AF_PIPE is not recognized.");
  EXPECT_EQ(logic_text([] { mp::Listener l(std::nullopt, std::string("AF_BOGUS")); }),
            "unrecognized family");
  try {
    mp::Client(mp::Address(std::string("/nonexistent/mp-socket")));
    ADD_FAILURE() << "connected to nothing";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), ENOENT);
  }
  int port = 0;
  {
    mp::Listener tcp(mp::Address(std::pair<std::string, int>("localhost", 0)));
    port = std::get<std::pair<std::string, int>>(tcp.address()).second;
  }
  try {
    mp::Client(mp::Address(std::pair<std::string, int>("localhost", port)));
    ADD_FAILURE() << "connected to a closed port";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), ECONNREFUSED);
  }
}

// A server that dies without close(): its socket file stays behind.
void listen_then_die(std::string path) {
  mp::Listener l{mp::Address(path)};
  ::kill(::getpid(), SIGKILL);
}

TEST(Listener, ACrashedServersSocketFileIsNamedInTheError) {
  mp::Listener dir;  // a private directory to put the path in
  const auto& own = std::get<std::string>(dir.address());
  const std::string path = own.substr(0, own.rfind('/')) + "/crashed";
  auto p = mp::get_context("fork").Process(listen_then_die, path);
  p.start();
  p.join(kHang);
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  ASSERT_TRUE(std::filesystem::exists(path));
  try {
    mp::Listener again{mp::Address(path)};
    ADD_FAILURE() << "bound over a socket file";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), EADDRINUSE) << e.what();
    EXPECT_NE(std::string(e.what()).find("bind '" + path + "'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("remove it"), std::string::npos) << e.what();
  }
  // What the docs say to do.
  std::filesystem::remove(path);
  mp::Listener restarted{mp::Address(path)};
  auto p2 = mp::Process(send_hello, restarted.address());
  p2.start();
  EXPECT_EQ(restarted.accept().recv<std::string>(), "hello");
  p2.join(kHang);
  EXPECT_EQ(p2.exitcode(), 0);
}

TEST(Listener, BindAndConnectErrorsNameTheAddress) {
  mp::Listener tcp(mp::Address(std::pair<std::string, int>("localhost", 0)));
  const auto port = std::get<std::pair<std::string, int>>(tcp.address()).second;
  try {
    mp::Listener again(mp::Address(std::pair<std::string, int>("127.0.0.1", port)));
    ADD_FAILURE() << "bound twice";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("bind ('127.0.0.1', " + std::to_string(port) + ")"),
              std::string::npos)
        << e.what();
  }
  try {
    mp::Client(mp::Address(std::string("/nonexistent/mp-socket")));
    ADD_FAILURE() << "connected to nothing";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("connect '/nonexistent/mp-socket'"), std::string::npos)
        << e.what();
  }
}

void send_hello_with_options(mp::Address address, std::string key) {
  auto c = mp::Client(address, {.authkey = mp::AuthenticationString(key)});
  c.send(std::string("hello"));
}

void connect_with_wrong_key(mp::Address address) {
  try {
    mp::Client(address, {.family = "AF_UNIX", .authkey = mp::AuthenticationString("wrong")});
  } catch (const mp::AuthenticationError&) {
    mp::exit(7);
  }
}

TEST(Listener, KeywordOptions) {
  mp::Listener l(std::nullopt, {.backlog = 4, .authkey = mp::AuthenticationString("k")});
  auto p = mp::Process(send_hello_with_options, l.address(), std::string("k"));
  p.start();
  EXPECT_EQ(l.accept().recv<std::string>(), "hello");
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  // The key is used: a wrong one fails on both sides.
  auto bad = mp::Process(connect_with_wrong_key, l.address());
  bad.start();
  EXPECT_THROW(l.accept(), mp::AuthenticationError);
  bad.join(kHang);
  EXPECT_EQ(bad.exitcode(), 7);

  mp::Listener tcp(std::nullopt, {.family = "AF_INET"});
  using HostPort = std::pair<std::string, int>;
  EXPECT_TRUE(std::holds_alternative<HostPort>(tcp.address()));
}

std::string printed(const mp::Address& a) {
  std::ostringstream os;
  os << a;
  return os.str();
}

TEST(Listener, AddressesPrintAsPython) {
  EXPECT_EQ(printed(mp::Address(std::string("/tmp/x/listener"))), "/tmp/x/listener");
  EXPECT_EQ(printed(mp::Address(std::string("\0mp-abstract", 12))), "\\0mp-abstract");
  EXPECT_EQ(printed(mp::Address(std::pair<std::string, int>("127.0.0.1", 5000))),
            "('127.0.0.1', 5000)");
  mp::Listener l;
  EXPECT_EQ(printed(l.address()), std::get<std::string>(l.address()));
}

TEST(Listener, Authentication) {
  for (const std::string& key : {std::string("a key"), std::string()}) {  // empty: bpo-43952
    auto l = make_listener(addresses()[0], mp::AuthenticationString(key));
    auto p = mp::Process(send_hello_with_key, l.address(), key);
    p.start();
    auto c = l.accept();
    EXPECT_EQ(c.recv<std::string>(), "hello");
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
  }
  // Different keys: both sides fail, and no application byte gets through.
  auto l = make_listener(addresses()[0], mp::AuthenticationString("server key"));
  Capture err(2);
  auto p = mp::Process(send_hello_with_key, l.address(), std::string("client key"));
  p.start();
  try {
    l.accept();
    ADD_FAILURE() << "a wrong key was accepted";
  } catch (const mp::AuthenticationError& e) {
    EXPECT_STREQ(e.what(), "digest received was wrong");
  }
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 1);
  auto text = err.text();
  EXPECT_NE(text.find("digest sent was rejected"), std::string::npos) << text;
}

TEST(Listener, ProtocolViolationsInTheHandshake) {
  auto l = make_listener(addresses()[0], mp::AuthenticationString("k"));
  auto raw = mp::Client(l.address());  // no key: it will not answer properly
  std::thread peer([&] {
    raw.recv_bytes();           // the challenge
    raw.send_bytes("garbage");  // instead of a digest
  });
  EXPECT_THROW(l.accept(), mp::AuthenticationError);
  peer.join();
  // A first message that is not a challenge.
  mp::Listener plain;
  std::thread server([&] { plain.accept().send_bytes("hello, no challenge"); });
  try {
    mp::Client(plain.address(), std::nullopt, mp::AuthenticationString("k"));
    ADD_FAILURE() << "expected AuthenticationError";
  } catch (const mp::AuthenticationError& e) {
    EXPECT_NE(std::string(e.what()).find("Protocol error, expected challenge"), std::string::npos);
  }
  server.join();
}

TEST(Listener, TenThousandConnectionsLeakNothing) {
  mp::Listener l;
  const int fds = open_fd_count();
  for (int i = 0; i < 10000; ++i) {
    auto client = mp::Client(l.address());
    auto server = l.accept();
  }
  EXPECT_EQ(open_fd_count(), fds);
}

void accept_under_signals(std::string out) {
  arm_alarm_storm();
  mp::Listener l(std::nullopt, std::nullopt, 1, mp::AuthenticationString("k"));
  auto p = mp::Process(send_hello_with_key, l.address(), std::string("k"));
  p.start();
  auto c = l.accept();
  Channel::send(out, c.recv<std::string>());
  p.join();
}

TEST(Listener, AcceptUnderSignals) {
  Channel out;
  auto h = mp::get_context("fork").Process(accept_under_signals, out.path());
  h.start();
  EXPECT_EQ(out.recv(), "hello");
  h.join(kHang);
  EXPECT_EQ(h.exitcode(), 0);
}

TEST(Listener, StalledHandshakeIsBounded) {
  // A peer that connects and then says nothing: accept() gives up after kHandshakeTimeout.
  mp::Listener l(std::nullopt, std::nullopt, 1, mp::AuthenticationString("k"));
  auto silent = mp::Client(l.address());
  // And the other side, at the same time: a Client whose listener never accepts (the kernel
  // completed the connection, nobody sends the challenge) gives up after the same bound.
  mp::Listener deaf;
  bool client_timed_out = false;
  std::thread client([&] {
    try {
      mp::Client(deaf.address(), std::nullopt, mp::AuthenticationString("k"));
    } catch (const mp::TimeoutError&) {
      client_timed_out = true;
    }
  });
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(l.accept(), mp::TimeoutError);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, mp::kHandshakeTimeout - 1s);
  client.join();
  EXPECT_TRUE(client_timed_out);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, mp::kHandshakeTimeout - 1s);
}

void die_mid_message(mp::Address address) {
  auto c = mp::Client(address);
  const unsigned char partial[] = {0, 0, 0, 100, 'h', 'a', 'l', 'f'};
  if (::write(c.fileno(), partial, sizeof partial) != sizeof partial) mp::exit(2);
  ::signal(SIGKILL, SIG_DFL);
  ::kill(::getpid(), SIGKILL);
}

TEST(Listener, PeerDiesMidMessage) {
  mp::Listener l;
  auto p = mp::Process(die_mid_message, l.address());
  p.start();
  auto c = l.accept();
  try {
    c.recv_bytes();
    ADD_FAILURE() << "expected an error";
  } catch (const mp::ProcessError& e) {
    EXPECT_STREQ(e.what(), "got end of file during message");
  }
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

// ---- against CPython (Debian's python3) ----

// Runs python3 with `script`; its first output line comes back (an address or a verdict).
struct Python {
  pid_t pid = -1;
  mp::Connection out;
  explicit Python(const std::string& script) {
    auto [r, w] = mp::Pipe(false);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, w.fileno(), 1);
    const char* argv[] = {"/usr/bin/python3", "-c", script.c_str(), nullptr};
    if (::posix_spawn(&pid, argv[0], &fa, nullptr, const_cast<char**>(argv), environ) != 0)
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
  int wait() {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

bool have_python() {
  return ::access("/usr/bin/python3", X_OK) == 0;
}

TEST(Interop, OurClientAgainstACPythonListener) {
  if (!have_python()) GTEST_SKIP() << "no /usr/bin/python3";
  for (bool right_key : {true, false}) {
    Python py(
        "import sys\n"
        "from multiprocessing.connection import Listener\n"
        "with Listener(('127.0.0.1', 0), authkey=b'secret') as l:\n"
        "    print(l.address[1], flush=True)\n"
        "    try:\n"
        "        with l.accept() as c:\n"
        "            c.send_bytes(c.recv_bytes().upper())\n"
        "        print('ok', flush=True)\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e, flush=True)\n");
    const int port = std::stoi(py.line());
    const mp::Address a(std::pair<std::string, int>("127.0.0.1", port));
    if (right_key) {
      auto c = mp::Client(a, std::nullopt, mp::AuthenticationString("secret"));
      c.send_bytes("hello");
      EXPECT_EQ(c.recv_bytes(), "HELLO");
      EXPECT_EQ(py.line(), "ok");
    } else {
      try {
        mp::Client(a, std::nullopt, mp::AuthenticationString("wrong"));
        ADD_FAILURE() << "a wrong key was accepted by CPython";
      } catch (const mp::AuthenticationError& e) {
        EXPECT_STREQ(e.what(), "digest sent was rejected");
      }
      EXPECT_EQ(py.line(), "AuthenticationError digest received was wrong");
    }
    EXPECT_EQ(py.wait(), 0);
  }
}

TEST(Interop, ACPythonClientAgainstOurListener) {
  if (!have_python()) GTEST_SKIP() << "no /usr/bin/python3";
  for (bool right_key : {true, false}) {
    mp::Listener l(mp::Address(std::pair<std::string, int>("127.0.0.1", 0)), std::nullopt, 1,
                   mp::AuthenticationString("secret"));
    const int port = std::get<std::pair<std::string, int>>(l.address()).second;
    Python py(std::string("from multiprocessing.connection import Client\n"
                          "try:\n"
                          "    with Client(('127.0.0.1', ") +
              std::to_string(port) + "), authkey=b'" + (right_key ? "secret" : "wrong") +
              "') as c:\n"
              "        c.send_bytes(b'hello')\n"
              "        print(c.recv_bytes().decode(), flush=True)\n"
              "except Exception as e:\n"
              "    print(type(e).__name__, e, flush=True)\n");
    if (right_key) {
      auto c = l.accept();
      auto m = c.recv_bytes();
      c.send_bytes(m + " back");
      EXPECT_EQ(py.line(), "hello back");
    } else {
      try {
        l.accept();
        ADD_FAILURE() << "a wrong key was accepted";
      } catch (const mp::AuthenticationError& e) {
        EXPECT_STREQ(e.what(), "digest received was wrong");
      }
      EXPECT_EQ(py.line(), "AuthenticationError digest sent was rejected");
    }
    EXPECT_EQ(py.wait(), 0);
  }
}

}  // namespace
