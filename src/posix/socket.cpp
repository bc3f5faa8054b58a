// Unix and TCP sockets for Listener/Client and the fork server: listen, accept, connect, and the
// private directories their paths live in.
#include "posix/socket.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <system_error>

namespace mp::posix {
namespace {

socklen_t unix_address(const std::string& path, sockaddr_un& addr) {
  addr = {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    throw std::system_error(ENAMETOOLONG, std::system_category(), "AF_UNIX path too long");
  std::memcpy(addr.sun_path, path.data(), path.size());
  // An abstract name's length is part of it: no terminating NUL counted.
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() +
                                (path.empty() || path[0] != '\0' ? 1 : 0));
}

sockaddr_in inet_address(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int e = ::getaddrinfo(host.c_str(), nullptr, &hints, &res); e != 0)
    throw std::runtime_error("getaddrinfo " + host + ": " + ::gai_strerror(e));
  sockaddr_in addr{};
  std::memcpy(&addr, res->ai_addr, sizeof addr);
  ::freeaddrinfo(res);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  return addr;
}

// A Unix socket address as messages show it: an abstract name's leading NUL as "\0".
std::string shown(const std::string& path) {
  return !path.empty() && path[0] == '\0' ? "\\0" + path.substr(1) : path;
}

[[noreturn]] void fail(const std::string& what) {
  throw std::system_error(errno, std::system_category(), what);
}

std::string ip_of(const sockaddr_in& a) {
  char buf[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf);
  return buf;
}

}  // namespace

void listen_unix(const std::string& path, int backlog, int& fd) {
  unique_fd s(check(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  sockaddr_un addr;
  socklen_t len = unix_address(path, addr);
  // The path in the message: EADDRINUSE is most often a dead server's socket file.
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0)
    fail("bind '" + shown(path) + "'");
  check(::listen(s.get(), backlog), "listen");
  fd = s.release();
}

std::pair<std::string, int> listen_inet(const std::string& host, int port, int backlog, int& fd) {
  unique_fd s(check(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  int one = 1;
  ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr = inet_address(host, port);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
    fail("bind ('" + host + "', " + std::to_string(port) + ")");
  check(::listen(s.get(), backlog), "listen");
  socklen_t len = sizeof addr;
  check(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&addr), &len), "getsockname");
  fd = s.release();
  return {ip_of(addr), ntohs(addr.sin_port)};
}

int accept_connection(int listener, std::string& peer_host, int& peer_port) {
  sockaddr_storage peer{};
  socklen_t len = sizeof peer;
  int fd;
  while ((fd = ::accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC)) < 0)
    if (errno != EINTR && errno != ECONNABORTED) check(-1, "accept");
  peer_port = -1;
  if (peer.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(peer);
    peer_host = ip_of(in);
    peer_port = ntohs(in.sin_port);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // messages, not a stream
  }
  return above_stdio(unique_fd(fd)).release();
}

// connect(), whose EINTR leaves the connection in progress: then wait for it to complete.
static void connect_fd(int fd, const sockaddr* addr, socklen_t len, const char* what) {
  if (::connect(fd, addr, len) == 0) return;
  if (errno != EINTR && errno != EINPROGRESS) check(-1, what);
  for (;;) {
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, -1) > 0) break;
    if (errno != EINTR) check(-1, "poll");
  }
  int err = 0;
  socklen_t n = sizeof err;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &n);
  if (err) throw std::system_error(err, std::system_category(), what);
}

unique_fd connect_unix(const std::string& path) {
  unique_fd s(check(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  sockaddr_un addr;
  socklen_t len = unix_address(path, addr);
  connect_fd(s.get(), reinterpret_cast<sockaddr*>(&addr), len,
             ("connect '" + shown(path) + "'").c_str());
  return above_stdio(std::move(s));
}

unique_fd connect_inet(const std::string& host, int port) {
  unique_fd s(check(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  sockaddr_in addr = inet_address(host, port);
  connect_fd(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr, "connect");
  int one = 1;
  ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return above_stdio(std::move(s));
}

std::string make_private_dir(const std::string& pattern) {
  std::string t = pattern;
  if (!::mkdtemp(t.data())) check(-1, "mkdtemp");
  return t;
}

void remove_private_dir(const std::string& dir) {
  if (dir.empty()) return;
  std::error_code ec;
  // Ours even if someone made it unreadable: take it back first, or it cannot be listed.
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
  std::filesystem::remove_all(dir, ec);
}

void unlink_path(const std::string& path) {
  if (!path.empty()) ::unlink(path.c_str());
}

}  // namespace mp::posix
