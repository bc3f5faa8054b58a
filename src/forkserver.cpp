// The fork server (CPython forkserver.py): its client half (start, restart, stop, request)
// and its main loop, built on the src/posix/ wrappers.
#include "forkserver.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>

#include "auth.hpp"
#include "mp/process.hpp"
#include "mp/spawn.hpp"
#include "popen.hpp"
#include "posix/futex.hpp"
#include "posix/posix.hpp"
#include "posix/socket.hpp"
#include "runtime.hpp"

namespace mp::detail {
namespace {

using namespace mp::posix;

using namespace std::chrono_literals;
// Bounds one exchange with the server, so a stalled peer never blocks either side for long.
constexpr auto kExchangeTimeout = 10s;

Deadline deadline() {
  return std::chrono::steady_clock::now() + kExchangeTimeout;
}

// What the program hands its server at start, through a private pipe (the authkey is in it).
struct ServerInit {
  std::string build_id;
  AuthenticationString key;
  std::vector<reduction::CodeRef> preload;
  std::string dir;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(build_id, key, preload, dir);
  }
};

// ---- client ----

struct Client {
  std::mutex mu;
  std::vector<void (*)()> preload;
  std::shared_ptr<Child> server;  // our child; not in active_children()
  std::string dir, address;
  unique_fd alive_w;  // the server exits when this closes, however this program ends
  unique_fd conn;     // authenticated once, then one round trip per child
  bool from_main_thread = false;
  AuthenticationString key;
  std::uint64_t environment_hash = 0;  // of the environment the server inherited
  std::string cwd;                     // the working directory it inherited
};

std::atomic<Client*> g_client{nullptr};

Client& client() {
  // Never destroyed: used by the atexit handler.
  static Client* c = [] {
    auto* made = new Client;
    g_client = made;
    return made;
  }();
  return *c;
}

// Without creating it: a process that never used the fork server has nothing to stop or
// forget (a fork child must not allocate, and so write, for nothing).
Client* existing_client() {
  return g_client.load();
}

// Ends a server we cannot or need not use any more, and everything it left behind.
void stop_locked(Client& c, bool terminate) {
  c.conn.reset();
  c.alive_w.reset();
  if (c.server) {
    if (terminate) c.server->terminate();
    c.server->wait(std::nullopt);
    c.server.reset();
  }
  remove_private_dir(c.dir);
  c.dir.clear();
  c.address.clear();
}

void start_locked(Client& c) {
  c.dir = make_private_dir("/tmp/mp-forkserver-XXXXXX");  // mode 0700: only we reach the socket
  c.address = c.dir + "/socket";
  try {
    int listener_fd = -1;
    listen_unix(c.address, 128, listener_fd);
    unique_fd listener(listener_fd);
    auto [alive_r, alive_w] = make_pipe();
    auto [init_r, init_w] = make_socketpair();  // send() cannot raise SIGPIPE on a socket

    ServerInit init;
    init.build_id = build_id();
    init.key = current_process().authkey();
    init.dir = c.dir;
    for (auto hook : c.preload)
      init.preload.push_back(reduction::code_ref(reinterpret_cast<const void*>(hook)));
    std::string bytes;
    {
      reduction::SpawningScope spawning;  // the authkey may cross here
      reduction::OutArchive ar(bytes);
      ar(init);
    }

    const std::vector<std::string> argv = {get_executable(), kForkServerFlag, "3", "4", "5"};
    const int keep[] = {listener.get(), alive_r.get(), init_r.get()};
    int pid = -1;
    spawn_process(spawn_executable(), argv, keep, &pid);
    c.server = std::make_shared<Child>(pid, open_pidfd_or_kill(pid), unique_fd(), unique_fd());
    c.alive_w = std::move(alive_w);
    c.from_main_thread = is_main_thread();
    c.environment_hash = environment_hash();
    c.cwd = getcwd();
    c.key = init.key;
    init_r.reset();
    send_all(init_w.get(), {reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()},
             c.server->sentinel());
    shutdown_write(init_w.get());  // the end of the start-up data
    // The server answers one byte once it is ready to fork (after its preload hooks). EOF
    // instead means it died: most likely main() does not call mp::init first, so the server
    // ran the program's main() instead of serving.
    std::byte ready{};
    std::size_t got = 0;
    try {
      got = read_until(init_w.get(), {&ready, 1}, std::chrono::steady_clock::now() + 60s);
    } catch (const TimeoutError&) {
      throw ProcessError(
          "the fork server did not become ready within 60 s (a preload hook "
          "that does not return, or a main() that does not call mp::init?)");
    }
    if (got != 1) {
      auto code = c.server->wait(std::nullopt);
      throw ProcessError("the fork server exited (exit code " + std::to_string(code.value_or(-1)) +
                         ") before it was ready: the program's main() must call "
                         "mp::init(argc, argv) as its first statement");
    }
  } catch (...) {
    stop_locked(c, true);
    throw;
  }
}

unique_fd connect_locked(Client& c) {
  try {
    return connect_unix(c.address);
  } catch (const std::exception&) {
    return unique_fd();
  }
}

// Sends one request with its descriptors and reads the child's pid (or -errno).
int request_locked(int conn, const ForkRequest& request, std::span<const int> fds) {
  try {
    send_with_fds(conn, {reinterpret_cast<const std::byte*>(&request), sizeof request}, fds);
  } catch (const std::system_error& e) {
    if (e.code().value() == EPIPE || e.code().value() == ECONNRESET)
      throw ProcessError("the fork server closed the connection");
    throw std::system_error(e.code(), "sendmsg to the fork server");
  }
  std::int32_t reply = 0;
  auto got = read_until(conn, {reinterpret_cast<std::byte*>(&reply), sizeof reply}, deadline());
  if (got != sizeof reply)
    throw ProcessError("the fork server closed the connection without starting the child");
  return reply;
}

}  // namespace

int forkserver_fork(ForkRequest request, std::span<const int> fds, bool daemon) {
  auto& c = client();
  std::lock_guard l(c.mu);  // one request at a time on the shared connection
  for (int attempt = 0;; ++attempt) {
    int reply = 0;
    try {
      if (c.server && c.server->poll()) stop_locked(c, false);  // it died: start another
      if (!c.server) start_locked(c);
      if (!c.conn) {
        unique_fd fd = connect_locked(c);
        // Unreachable: its socket directory was removed or made unreadable. Replace it.
        if (!fd) throw ProcessError("cannot connect to the fork server at " + c.address);
        answer_challenge(fd.get(), c.key, deadline());
        c.conn = std::move(fd);
      }
      // The child's parent thread is the one that started the server (CLONE_PARENT).
      if (daemon && c.from_main_thread) request.flags |= ForkRequest::kParentDeathSignal;
      reply = request_locked(c.conn.get(), request, fds);
    } catch (const std::exception&) {
      if (attempt > 0) throw;
      stop_locked(c, true);  // gone or unusable: once more, with a new server
      continue;
    }
    // The server answered: a pid, or why it could not make the child (EMFILE, EAGAIN).
    if (reply < 0) throw std::system_error(-reply, std::system_category(), "fork server");
    return reply;
  }
}

void forkserver_stop() {
  Client* c = existing_client();
  if (!c) return;
  std::lock_guard l(c->mu);
  stop_locked(*c, false);
}

void forkserver_disconnect() {
  auto& c = client();
  std::lock_guard l(c.mu);
  c.conn.reset();
}

void forkserver_before_fork() {
  client().mu.lock();
}

void forkserver_after_fork(bool in_child) {
  auto& c = client();
  if (in_child) {
    // The parent's server, connection and directory are not this child's: it starts its own
    // server if it needs one. The lock was held across the fork, so all of it is whole.
    if (c.server) c.server->forget();
    c.server.reset();
    c.conn.reset();  // the parent's authenticated connection: never ours to use
    c.alive_w.reset();
    c.dir.clear();  // the parent's: never removed from here
    c.address.clear();
  }
  c.mu.unlock();
}

void forkserver_set_preload(std::vector<void (*)()> hooks) {
  auto& c = client();
  std::lock_guard l(c.mu);
  c.preload = std::move(hooks);
}

std::uint64_t forkserver_environment_hash() {
  auto& c = client();
  std::lock_guard l(c.mu);
  // No server yet: the one about to start inherits the current environment.
  return c.server ? c.environment_hash : environment_hash();
}

std::string forkserver_cwd() {
  auto& c = client();
  std::lock_guard l(c.mu);
  return c.server ? c.cwd : getcwd();
}

int forkserver_pid() {
  auto& c = client();
  std::lock_guard l(c.mu);
  return c.server ? c.server->pid() : -1;
}

std::string forkserver_address() {
  auto& c = client();
  std::lock_guard l(c.mu);
  return c.address;
}

ForkRequest decode_request(std::span<const std::byte> bytes, std::size_t fds_received) {
  ForkRequest r;
  if (bytes.size() > sizeof r)
    throw std::runtime_error("oversized request (over " + std::to_string(sizeof r) + " bytes)");
  if (bytes.size() < sizeof r)
    throw std::runtime_error("request of " + std::to_string(bytes.size()) + " bytes, expected " +
                             std::to_string(sizeof r));
  std::memcpy(&r, bytes.data(), sizeof r);
  if (r.magic != ForkRequest::kMagic) throw std::runtime_error("bad request magic");
  constexpr std::uint32_t known = ForkRequest::kHasSentinel | ForkRequest::kParentDeathSignal |
                                  ForkRequest::kHasStdout | ForkRequest::kHasStderr;
  if (r.flags & ~known) throw std::runtime_error("unknown request flags");
  if (r.reserved != 0) throw std::runtime_error("bad request (reserved field set)");
  const std::uint32_t needed = 1 + !!(r.flags & ForkRequest::kHasSentinel) +
                               !!(r.flags & ForkRequest::kHasStdout) +
                               !!(r.flags & ForkRequest::kHasStderr);
  if (r.nfds < needed || r.nfds > ForkRequest::kMaxFds)
    throw std::runtime_error("bad descriptor count " + std::to_string(r.nfds));
  if (r.nfds != fds_received)
    throw std::runtime_error("request announces " + std::to_string(r.nfds) + " descriptors, " +
                             std::to_string(fds_received) + " came with it");
  return r;
}

// ---- server ----

namespace {

struct Server {
  int listener = -1;
  int alive_r = -1;
  int program_pid = 0;  // our parent, and the parent of every child we make
  AuthenticationString key;
  std::string dir;
  CloneIdentity identity;          // what the raw clone of each child must redo of glibc's state
  std::vector<unique_fd> clients;  // authenticated connections, one per program process
};

// A connection that has been challenged and not yet answered. Handshakes are driven by the
// server's poll loop, each with its own deadline: a peer that connects and stays silent (or
// answers a byte at a time) never holds up a start.
struct Handshake {
  unique_fd fd;
  Deadline deadline;
  Challenge challenge;
  std::vector<std::byte> received;  // the answer's 4-byte length, then its payload
};
constexpr std::size_t kMaxPendingHandshakes = 64;  // beyond: the oldest is dropped

// Reads what has arrived of the answer; true when the handshake is over (either way: an
// accepted connection has been moved to s.clients). Throws to drop the connection.
bool advance(Server& s, Handshake& h) {
  for (;;) {
    std::size_t want = 4;
    if (h.received.size() >= 4) {
      const auto* b = reinterpret_cast<const unsigned char*>(h.received.data());
      const std::uint32_t n = std::uint32_t(b[0]) << 24 | std::uint32_t(b[1]) << 16 |
                              std::uint32_t(b[2]) << 8 | std::uint32_t(b[3]);
      if (n > kMaxHandshakeMessage) throw std::runtime_error("bad message length");
      want = 4 + n;
      if (h.received.size() == want) break;  // the whole answer
    }
    const std::size_t had = h.received.size();
    h.received.resize(want);  // never more than the answer: a request must not be swallowed
    auto got = recv_nowait(h.fd.get(), std::span(h.received).subspan(had));
    h.received.resize(had + got.value_or(0));
    if (!got) return false;  // the rest has not come yet
    if (*got == 0)
      throw std::runtime_error(had == 0 ? "EOF: the peer closed the connection"
                                        : "got end of file during message");
  }
  const bool ok = response_is_valid(s.key, h.challenge, std::span(h.received).subspan(4));
  const auto verdict = framed_verdict(ok);
  // A few bytes into a socket whose peer is waiting for them: they fit at once.
  if (send_nowait(h.fd.get(), verdict) != verdict.size() && ok)
    throw std::runtime_error("could not send the verdict");
  if (!ok) throw AuthenticationError("digest received was wrong");
  s.clients.push_back(std::move(h.fd));
  return true;
}

void log_line(const std::string& line) {
  std::string l = "multiprocess forkserver: " + line + "\n";
  std::fputs(l.c_str(), stderr);
  std::fflush(stderr);
}

[[noreturn]] void server_exit(const Server& s, int code) {
  remove_private_dir(s.dir);
  exit_now(code);
}

// Receives the request and its descriptors (close-on-exec; owned by the returned vector).
std::vector<unique_fd> receive(int conn, std::vector<std::byte>& bytes, bool& truncated) {
  bytes.assign(sizeof(ForkRequest) + 1, std::byte{0});  // one more: detects oversized requests
  // Called when poll() said readable: whatever is there now is the request (one sendmsg), so
  // never wait for more: a client that sends half a request cannot stall the server.
  Received r = recv_with_fds_nowait(conn, bytes, ForkRequest::kMaxFds);
  if (r.would_block) throw std::runtime_error("no request after all");
  truncated = r.truncated;
  bytes.resize(r.size);
  return std::move(r.fds);
}

void reply(int conn, std::int32_t value) {
  write_until(conn, {reinterpret_cast<const std::byte*>(&value), sizeof value}, deadline());
}

// One request on an authenticated connection; false when the client has gone (EOF).
bool serve(const Server& s, int conn) {
  std::vector<std::byte> bytes;
  bool truncated = false;
  auto fds = receive(conn, bytes, truncated);
  if (bytes.empty() && fds.empty()) return false;
  if (truncated) {
    // Out of descriptors (EMFILE), most likely: say so to the client.
    reply(conn, -EMFILE);
    throw std::runtime_error("descriptors lost in transit (control message truncated)");
  }
  const ForkRequest request = decode_request(bytes, fds.size());
  int pid = clone_parent(s.identity);
  if (pid < 0) {
    reply(conn, pid);
    throw std::system_error(-pid, std::system_category(), "clone3");
  }
  if (pid == 0) {
    forget_thread_identity();  // a raw clone: no atfork handler ran
    // The child: none of the server's descriptors are its business.
    close_fd(s.listener);
    close_fd(s.alive_r);
    for (const auto& client : s.clients) close_fd(client.get());
    default_signal(SIGINT);
    // Our parent is the program (CLONE_PARENT): the server's own parent.
    if ((request.flags & ForkRequest::kParentDeathSignal) &&
        !set_parent_death_signal(SIGKILL, s.program_pid))
      exit_now(1);
    std::size_t next = 0;
    const int data = fds[next++].release();
    const int sentinel = (request.flags & ForkRequest::kHasSentinel) ? fds[next++].release() : -1;
    // The program's stdout and stderr as they are now, as a fork or spawn child would have
    // them (the server's are the program's as they were when it started the server).
    for (auto [flag, target] :
         {std::pair{ForkRequest::kHasStdout, 1}, std::pair{ForkRequest::kHasStderr, 2}}) {
      if (request.flags & flag) {
        dup_to(fds[next].get(), target);
        fds[next++].reset();
      } else {
        close_fd(target);
      }
    }
    std::vector<int> passed;
    for (; next < fds.size(); ++next) passed.push_back(fds[next].release());
    child_main(data, sentinel, std::move(passed));
  }
  // Our copies go before the reply: once the program has the pid, the child alone holds its
  // ends (the sentinel pipe must read EOF as soon as the child ends, not when we get round to it).
  fds.clear();
  reply(conn, pid);
  return true;
}

}  // namespace

void forkserver_main(int argc, char** argv) {
  if (argc < 5) exit_now(2);
  Server s;
  s.program_pid = getppid();
  s.listener = std::atoi(argv[2]);
  s.alive_r = std::atoi(argv[3]);
  const int init_fd = std::atoi(argv[4]);
  for (int fd : {s.listener, s.alive_r, init_fd}) set_cloexec(fd, true);

  std::string bytes;  // up to the program's shutdown(SHUT_WR); the socket stays for "ready"
  {
    char buf[4096];
    for (std::size_t n;
         (n = read_full(init_fd, {reinterpret_cast<std::byte*>(buf), sizeof buf})) > 0;)
      bytes.append(buf, n);
  }
  ServerInit init;
  try {
    reduction::InArchive ar(bytes);
    ar(init);
  } catch (const std::exception& e) {
    log_line(std::string("bad start-up data: ") + e.what());
    exit_now(1);
  }
  s.dir = init.dir;
  if (init.build_id != build_id()) {
    log_line("this program is a different build from its parent; exiting");
    server_exit(s, 1);
  }
  s.key = init.key;
  close_stdin();
  ignore_signal(SIGINT);  // Ctrl-C is for the program; it ends us by closing alive_w

  for (const auto& ref : init.preload) {
    try {
      reinterpret_cast<void (*)()>(const_cast<void*>(reduction::resolve(ref)))();
    } catch (const std::exception& e) {
      log_line(std::string("preload hook failed: ") + e.what());
    }
  }
  try {
    warm_up_child_path();
  } catch (const std::exception& e) {
    log_line(std::string("warm-up failed: ") + e.what());
  }
  s.identity = clone_identity();
  const std::byte ready{1};
  (void)send_nowait(init_fd, {&ready, 1});
  close_fd(init_fd);

  std::vector<Handshake> pending;
  std::vector<int> watched;
  for (;;) {
    watched.assign({s.alive_r, s.listener});
    for (const auto& c : s.clients) watched.push_back(c.get());
    std::optional<Duration> timeout;
    const auto now = std::chrono::steady_clock::now();
    for (const auto& h : pending) {
      watched.push_back(h.fd.get());
      const Duration left = std::max(h.deadline - now, Deadline::duration::zero());
      if (!timeout || left < *timeout) timeout = left;
    }
    std::vector<int> ready;
    try {
      ready = wait_any_readable(watched, timeout);
    } catch (const std::exception& e) {
      log_line(std::string("poll: ") + e.what());
      server_exit(s, 1);
    }
    auto is_ready = [&](int fd) {
      return std::find(ready.begin(), ready.end(), fd) != ready.end();
    };
    if (is_ready(s.alive_r)) server_exit(s, 0);  // EOF: the program has ended
    // Requests first, newest connection last; a client that misbehaves loses its connection.
    for (std::size_t i = s.clients.size(); i-- > 0;) {
      if (!is_ready(s.clients[i].get())) continue;
      bool keep = false;
      try {
        keep = serve(s, s.clients[i].get());
      } catch (const std::exception& e) {
        log_line(std::string("dropped a connection: ") + e.what());
      }
      if (!keep) s.clients.erase(s.clients.begin() + static_cast<std::ptrdiff_t>(i));
    }
    // Then handshakes: nothing a client sends is acted on before it has proved it holds the
    // authkey, and none of them is waited for.
    const auto after = std::chrono::steady_clock::now();
    for (std::size_t i = pending.size(); i-- > 0;) {
      bool done = false;
      try {
        if (is_ready(pending[i].fd.get())) done = advance(s, pending[i]);
        if (!done && after >= pending[i].deadline)
          throw TimeoutError("no answer to the challenge within the handshake's time");
      } catch (const std::exception& e) {
        log_line(std::string("dropped a connection: ") + e.what());
        done = true;
      }
      if (done) pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
    }
    if (!is_ready(s.listener)) continue;
    Handshake h;
    try {
      std::string host;
      int port = -1;
      h.fd = unique_fd(accept_connection(s.listener, host, port));
    } catch (const std::exception&) {
      continue;
    }
    h.challenge = make_challenge();
    h.deadline = deadline();
    // Into a fresh socket's empty buffer: it fits at once, or the peer is already gone.
    if (send_nowait(h.fd.get(), h.challenge.framed) != h.challenge.framed.size()) {
      log_line("dropped a connection: could not send the challenge");
      continue;
    }
    if (pending.size() == kMaxPendingHandshakes) {
      log_line("dropped a connection: too many handshakes in progress");
      pending.erase(pending.begin());
    }
    pending.push_back(std::move(h));
  }
}

}  // namespace mp::detail
