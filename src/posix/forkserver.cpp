// The fork server: its client half (start, restart, stop, request) and its main loop.
#include "posix/forkserver.hpp"
#include "posix/futex.hpp"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <sstream>

#include "auth.hpp"
#include "mp/process.hpp"
#include "mp/spawn.hpp"
#include "posix/child.hpp"
#include "posix/launch.hpp"
#include "runtime.hpp"

namespace mp::posix {
namespace {

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

void remove_dir(const std::string& dir) {
  if (dir.empty()) return;
  std::error_code ec;
  // Ours even if someone made it unreadable: take it back first, or it cannot be listed.
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
  std::filesystem::remove_all(dir, ec);
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
  remove_dir(c.dir);
  c.dir.clear();
  c.address.clear();
}

void start_locked(Client& c) {
  char tmpl[] = "/tmp/mp-forkserver-XXXXXX";
  if (!::mkdtemp(tmpl)) check(-1, "mkdtemp");  // mode 0700: only we can reach the socket
  c.dir = tmpl;
  c.address = c.dir + "/socket";
  try {
    unique_fd listener(check(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (c.address.size() >= sizeof addr.sun_path)
      throw std::runtime_error("forkserver socket path too long: " + c.address);
    std::memcpy(addr.sun_path, c.address.c_str(), c.address.size() + 1);
    check(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), "bind");
    check(::listen(listener.get(), 128), "listen");
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
    spawn_process(detail::spawn_executable(), argv, keep, &pid);
    c.server = std::make_shared<Child>(pid, open_pidfd_or_kill(pid), unique_fd(), unique_fd());
    c.alive_w = std::move(alive_w);
    c.from_main_thread = is_main_thread();
    c.environment_hash = environment_hash();
    c.cwd = getcwd();
    c.key = init.key;
    init_r.reset();
    send_all(init_w.get(), {reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()},
             c.server->sentinel());
    ::shutdown(init_w.get(), SHUT_WR);  // the end of the start-up data
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
  unique_fd fd(check(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, c.address.c_str(), c.address.size() + 1);
  while (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    if (errno == EINTR) continue;
    return unique_fd();
  }
  return fd;
}

// Sends one request with its descriptors and reads the child's pid (or -errno).
int request_locked(int conn, const ForkRequest& request, std::span<const int> fds) {
  iovec iov{const_cast<ForkRequest*>(&request), sizeof request};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
  while (::sendmsg(conn, &msg, MSG_NOSIGNAL) < 0) {
    if (errno == EPIPE || errno == ECONNRESET)
      throw ProcessError("the fork server closed the connection");
    if (errno != EINTR) check(-1, "sendmsg to the fork server");
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
        detail::answer_challenge(fd.get(), c.key, deadline());
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

void forkserver_forget() {
  Client* existing = existing_client();
  if (!existing || (!existing->server && !existing->conn && !existing->alive_w)) return;
  auto& c = *existing;
  new (&c.mu) std::mutex;  // another thread may have held it at fork()
  if (c.server) c.server->forget();
  c.server.reset();
  c.conn.reset();  // the parent's authenticated connection: never ours to use
  c.alive_w.reset();
  c.dir.clear();  // the parent's: never removed from here
  c.address.clear();
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
  int* tid_address = nullptr;  // glibc's copy of our thread id, for the children
  void* robust_head = nullptr;
  std::size_t robust_len = 0;
  std::vector<unique_fd> clients;  // authenticated connections, one per program process
};

void log_line(const std::string& line) {
  std::string l = "multiprocess forkserver: " + line + "\n";
  std::fputs(l.c_str(), stderr);
  std::fflush(stderr);
}

[[noreturn]] void server_exit(const Server& s, int code) {
  remove_dir(s.dir);
  exit_now(code);
}

// fork(), except that the child's parent is our parent (the program that asked for it).
// glibc's own bookkeeping is redone as its _Fork does: the kernel writes the child's thread id
// into glibc's thread descriptor (CLONE_CHILD_SETTID), and the robust-mutex list is registered
// again. We are single-threaded, so no lock can be held across the clone.
int clone_parent(const Server& s) {
  clone_args args{};
  args.flags = CLONE_PARENT | (s.tid_address ? CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID : 0);
  args.child_tid = reinterpret_cast<std::uint64_t>(s.tid_address);
  long pid = ::syscall(SYS_clone3, &args, sizeof args);
  if (pid < 0 && errno == ENOSYS) {
    // Before Linux 5.3: the old clone, whose argument order depends on the architecture.
    const unsigned long flags = args.flags | SIGCHLD;
#if defined(__x86_64__)
    pid = ::syscall(SYS_clone, flags, nullptr, nullptr, s.tid_address, nullptr);
#elif defined(__aarch64__) || defined(__arm__) || defined(__powerpc64__)
    pid = ::syscall(SYS_clone, flags, nullptr, nullptr, nullptr, s.tid_address);
#endif
  }
  if (pid == 0 && s.robust_head) ::syscall(SYS_set_robust_list, s.robust_head, s.robust_len);
  return static_cast<int>(pid);
}

// Receives the request and its descriptors (close-on-exec; owned by the returned vector).
std::vector<unique_fd> receive(int conn, std::vector<std::byte>& bytes, bool& truncated) {
  bytes.assign(sizeof(ForkRequest) + 1, std::byte{0});  // one more: detects oversized requests
  iovec iov{bytes.data(), bytes.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * ForkRequest::kMaxFds));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  // Called when poll() said readable: whatever is there now is the request (one sendmsg), so
  // never wait for more: a client that sends half a request cannot stall the server.
  ssize_t n;
  while ((n = ::recvmsg(conn, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)) < 0) {
    if (errno == EAGAIN) throw std::runtime_error("no request after all");
    if (errno == ECONNRESET) {
      n = 0;
      break;
    }
    if (errno != EINTR) check(-1, "recvmsg");
  }
  std::vector<unique_fd> fds;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      fds.push_back(above_stdio(unique_fd(fd)));
    }
  }
  truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  bytes.resize(static_cast<std::size_t>(n));
  return fds;
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
  int pid = clone_parent(s);
  if (pid < 0) {
    int err = errno;
    reply(conn, -err);
    throw std::system_error(err, std::system_category(), "clone3");
  }
  if (pid == 0) {
    forget_thread_identity();  // a raw clone: no atfork handler ran
    // The child: none of the server's descriptors are its business.
    ::close(s.listener);
    ::close(s.alive_r);
    for (const auto& client : s.clients) ::close(client.get());
    ::signal(SIGINT, SIG_DFL);
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
        ::dup2(fds[next].get(), target);
        fds[next++].reset();
      } else {
        ::close(target);
      }
    }
    std::vector<int> passed;
    for (; next < fds.size(); ++next) passed.push_back(fds[next].release());
    detail::child_main(data, sentinel, std::move(passed));
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
  s.program_pid = ::getppid();
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
  ::signal(SIGINT, SIG_IGN);  // Ctrl-C is for the program; it ends us by closing alive_w

  for (const auto& ref : init.preload) {
    try {
      reinterpret_cast<void (*)()>(const_cast<void*>(reduction::resolve(ref)))();
    } catch (const std::exception& e) {
      log_line(std::string("preload hook failed: ") + e.what());
    }
  }
  try {
    detail::warm_up_child_path();
  } catch (const std::exception& e) {
    log_line(std::string("warm-up failed: ") + e.what());
  }
  if (::prctl(PR_GET_TID_ADDRESS, &s.tid_address) != 0) s.tid_address = nullptr;
  if (::syscall(SYS_get_robust_list, 0, &s.robust_head, &s.robust_len) != 0)
    s.robust_head = nullptr;
  const std::byte ready{1};
  (void)::send(init_fd, &ready, 1, MSG_NOSIGNAL);
  ::close(init_fd);

  std::vector<pollfd> p;
  for (;;) {
    p.assign({{s.alive_r, POLLIN, 0}, {s.listener, POLLIN, 0}});
    for (const auto& c : s.clients) p.push_back({c.get(), POLLIN, 0});
    if (::poll(p.data(), p.size(), -1) < 0) {
      if (errno == EINTR) continue;
      log_line(std::string("poll: ") + std::strerror(errno));
      server_exit(s, 1);
    }
    if (p[0].revents) server_exit(s, 0);  // EOF: the program has ended
    // Requests first, newest connection last; a client that misbehaves loses its connection.
    for (std::size_t i = p.size(); i-- > 2;) {
      if (!p[i].revents) continue;
      bool keep = false;
      try {
        keep = serve(s, p[i].fd);
      } catch (const std::exception& e) {
        log_line(std::string("dropped a connection: ") + e.what());
      }
      if (!keep) s.clients.erase(s.clients.begin() + static_cast<std::ptrdiff_t>(i - 2));
    }
    if (!(p[1].revents & POLLIN)) continue;
    unique_fd conn(::accept4(s.listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    // Nothing a client sends is acted on before it has proved it holds the authkey.
    try {
      detail::deliver_challenge(conn.get(), s.key, deadline());
      s.clients.push_back(std::move(conn));
    } catch (const std::exception& e) {
      log_line(std::string("dropped a connection: ") + e.what());
    }
  }
}

}  // namespace mp::posix
