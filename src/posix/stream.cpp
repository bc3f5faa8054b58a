// Whole-message writes and exact reads on pipes and stream sockets, descriptors passed over
// Unix sockets (SCM_RIGHTS), and waiting on many.
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>

#include <pthread.h>
#include <unistd.h>
#include <algorithm>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <system_error>
#include <vector>

#include "posix/posix.hpp"

namespace mp::posix {

bool is_socket(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

namespace {

// Blocks SIGPIPE on this thread for its lifetime; takes back a SIGPIPE the write raised.
class NoSigpipe {
 public:
  NoSigpipe() {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old_);
  }
  ~NoSigpipe() {
    if (raised_ && !was_pending_) {
      sigset_t pipe;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      const timespec zero{0, 0};
      while (sigtimedwait(&pipe, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  void raised() { raised_ = true; }

 private:
  sigset_t old_;
  bool was_pending_ = false;
  bool raised_ = false;
};

}  // namespace

void write_all(int fd, std::span<const std::span<const std::byte>> parts, bool socket) {
  iovec iov[8];
  std::size_t count = 0;
  for (auto p : parts)
    if (!p.empty() && count < 8) iov[count++] = {const_cast<std::byte*>(p.data()), p.size()};
  std::size_t first = 0;
  std::optional<NoSigpipe> guard;
  if (!socket) guard.emplace();
  while (first < count) {
    ssize_t n;
    if (socket) {
      msghdr msg{};
      msg.msg_iov = iov + first;
      msg.msg_iovlen = count - first;
      n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    } else {
      n = ::writev(fd, iov + first, static_cast<int>(count - first));
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE && guard) guard->raised();
      check(-1, socket ? "send" : "write");
    }
    // Skip what was written: whole parts, then a partial one.
    auto left = static_cast<std::size_t>(n);
    while (first < count && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (first < count) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
}

namespace {
// The descriptors an SCM_RIGHTS control message brought (each now open here).
std::vector<int> received_fds(msghdr& msg) {
  std::vector<int> fds;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  }
  return fds;
}
}  // namespace

void send_fd(int socket, int fd) {
  char byte = 1;  // CPython sends len(fds) % 256
  iovec iov{&byte, 1};
  char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  while (::sendmsg(socket, &msg, MSG_NOSIGNAL) < 0)
    if (errno != EINTR) check(-1, "sendmsg");
}

int recv_fd(int socket) {
  char byte = 0;
  iovec iov{&byte, 1};
  char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  while ((n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC)) < 0)
    if (errno != EINTR) check(-1, "recvmsg");
  int found = -1;
  for (int fd : received_fds(msg)) {
    if (found < 0)
      found = fd;
    else
      ::close(fd);  // one was asked for: the rest must not leak
  }
  if (n == 0 && found < 0) return -2;
  return found < 0 ? -1 : above_stdio(unique_fd(found)).release();
}

bool has_reader(int write_fd) {
  pollfd p{write_fd, POLLOUT, 0};
  int r;
  do r = ::poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  return r <= 0 || !(p.revents & (POLLERR | POLLHUP | POLLNVAL));
}

void shutdown_write(int socket) {
  ::shutdown(socket, SHUT_WR);
}

void shutdown_both(int socket) {
  ::shutdown(socket, SHUT_RDWR);
}

bool peer_hung_up(int socket) {
  pollfd p{socket, POLLRDHUP, 0};
  int r;
  do r = ::poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  return r > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

std::size_t send_nowait(int socket, std::span<const std::byte> data) {
  std::size_t queued = 0;
  while (queued < data.size()) {
    ssize_t n =
        ::send(socket, data.data() + queued, data.size() - queued, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0)
      queued += static_cast<std::size_t>(n);
    else if (n < 0 && errno != EINTR)
      break;  // full (EAGAIN) or gone
  }
  return queued;
}

void send_with_fds(int socket, std::span<const std::byte> data, std::span<const int> fds) {
  iovec iov{const_cast<std::byte*>(data.data()), data.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
  }
  while (::sendmsg(socket, &msg, MSG_NOSIGNAL) < 0)
    if (errno != EINTR) check(-1, "sendmsg");
}

Received recv_with_fds_nowait(int socket, std::span<std::byte> data, std::size_t max_fds) {
  iovec iov{data.data(), data.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * max_fds));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  Received r;
  ssize_t n;
  while ((n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)) < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      r.would_block = true;
      return r;
    }
    if (errno == ECONNRESET) return r;
    if (errno != EINTR) check(-1, "recvmsg");
  }
  for (int fd : received_fds(msg)) r.fds.push_back(above_stdio(unique_fd(fd)));
  r.truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  r.size = static_cast<std::size_t>(n);
  return r;
}

std::optional<std::size_t> recv_nowait(int socket, std::span<std::byte> data) {
  ssize_t n;
  while ((n = ::recv(socket, data.data(), data.size(), MSG_DONTWAIT)) < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return std::nullopt;
    if (errno == ECONNRESET) return 0;
    if (errno != EINTR) check(-1, "recv");
  }
  return static_cast<std::size_t>(n);
}

std::optional<std::size_t> recv_spinning(int socket, std::span<std::byte> data, Duration spin) {
  using clock = std::chrono::steady_clock;
  const auto until = clock::now() + std::chrono::duration_cast<clock::duration>(spin);
  for (int look = 1;; ++look) {
    if (auto n = recv_nowait(socket, data)) return n;
    if (clock::now() >= until) return std::nullopt;
    if (look % 8 == 0) sched_yield();  // the writer may be waiting for this CPU
  }
}

std::vector<int> wait_any_readable(std::span<const int> fds, std::optional<Duration> timeout) {
  using clock = std::chrono::steady_clock;
  if (timeout && !(timeout->count() < 1e9)) timeout.reset();
  const auto deadline = timeout ? clock::now() + std::chrono::duration_cast<clock::duration>(
                                                     std::max(*timeout, Duration::zero()))
                                : clock::time_point::max();
  std::vector<pollfd> p;
  for (int fd : fds) p.push_back({fd, POLLIN, 0});
  for (;;) {
    int ms = -1;
    if (timeout) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now());
      ms = static_cast<int>(std::clamp<long long>(left.count(), 0, 1 << 30));
    }
    int r = ::poll(p.data(), p.size(), ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      check(r, "poll");
    }
    std::vector<int> ready;
    for (const auto& q : p) {
      if (q.revents & POLLNVAL) throw std::system_error(EBADF, std::system_category(), "poll");
      if (q.revents) ready.push_back(q.fd);
    }
    if (!ready.empty() || (timeout && clock::now() >= deadline)) return ready;
  }
}

int poll_fds(std::span<PollFd> fds, std::optional<Duration> timeout) {
  std::vector<pollfd> p;
  p.reserve(fds.size());
  for (const auto& f : fds)
    p.push_back({f.fd, static_cast<short>(POLLIN | (f.want_write ? POLLOUT : 0)), 0});
  int ms = -1;
  if (timeout && timeout->count() < 1e9) {
    auto t = std::chrono::ceil<std::chrono::milliseconds>(std::max(*timeout, Duration::zero()));
    ms = static_cast<int>(std::min<long long>(t.count(), 1 << 30));
  }
  int r = ::poll(p.data(), p.size(), ms);
  if (r < 0) {
    if (errno == EINTR) return 0;
    check(r, "poll");
  }
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i].revents & POLLNVAL) throw std::system_error(EBADF, std::system_category(), "poll");
    fds[i].readable = (p[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
    fds[i].writable = (p[i].revents & (POLLOUT | POLLERR)) != 0;
  }
  return r;
}

std::size_t recv_some(int socket, std::span<std::byte> data) {
  ssize_t n;
  while ((n = ::recv(socket, data.data(), data.size(), 0)) < 0) {
    if (errno == ECONNRESET) return 0;
    if (errno != EINTR) check(-1, "recv");
  }
  return static_cast<std::size_t>(n);
}

}  // namespace mp::posix
