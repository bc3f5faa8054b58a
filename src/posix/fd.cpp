// Descriptors: ownership, pipes and socketpairs, close-on-exec, and waiting for one to be ready.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <system_error>

#include "mp/errors.hpp"
#include "posix/posix.hpp"

namespace mp::posix {

void unique_fd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

int check(int r, const char* call) {
  if (r < 0) throw std::system_error(errno, std::system_category(), call);
  return r;
}

unique_fd above_stdio(unique_fd fd) {
  // With stdin/stdout/stderr closed, a new descriptor may take their number, and a child's
  // stdio set-up would then overwrite it.
  if (fd && fd.get() < 3) fd = unique_fd(check(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3), "fcntl"));
  return fd;
}

std::pair<unique_fd, unique_fd> make_pipe() {
  int fds[2];
  check(::pipe2(fds, O_CLOEXEC), "pipe2");
  unique_fd a(fds[0]), b(fds[1]);
  return {above_stdio(std::move(a)), above_stdio(std::move(b))};
}

std::pair<unique_fd, unique_fd> make_socketpair() {
  int fds[2];
  check(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), "socketpair");
  unique_fd a(fds[0]), b(fds[1]);
  return {above_stdio(std::move(a)), above_stdio(std::move(b))};
}

unique_fd make_timer() {
  return above_stdio(
      unique_fd(check(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK), "timerfd")));
}

void arm_timer(int timer, Duration after) {
  const auto ns = std::max<std::int64_t>(
      1, std::chrono::duration_cast<std::chrono::nanoseconds>(after).count());
  itimerspec t{};
  t.it_value.tv_sec = time_t(ns / 1'000'000'000);
  t.it_value.tv_nsec = long(ns % 1'000'000'000);
  check(::timerfd_settime(timer, 0, &t, nullptr), "timerfd_settime");
}

void disarm_timer(int timer) {
  const itimerspec t{};
  check(::timerfd_settime(timer, 0, &t, nullptr), "timerfd_settime");
}

void clear_timer(int timer) {
  std::uint64_t expirations;
  while (::read(timer, &expirations, sizeof expirations) < 0 && errno == EINTR) {
  }
}

unique_fd open_devnull(int flags) {
  return unique_fd(check(::open("/dev/null", flags | O_CLOEXEC), "open /dev/null"));
}

bool is_open(int fd) {
  return ::fcntl(fd, F_GETFD) >= 0;
}
void close_fd(int fd) noexcept {
  ::close(fd);
}
void dup_to(int from, int to) noexcept {
  ::dup2(from, to);
}

void set_cloexec(int fd, bool on) {
  int flags = check(::fcntl(fd, F_GETFD), "fcntl F_GETFD");
  check(::fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC)), "fcntl F_SETFD");
}

// poll() one descriptor; EINTR is retried with the time that is left.
static bool poll_one(int fd, short events, std::optional<Duration> timeout) {
  using clock = std::chrono::steady_clock;
  // Beyond 30 years (or NaN) is forever: converting it to clock ticks would overflow.
  if (timeout && !(timeout->count() < 1e9)) timeout.reset();
  const auto deadline = timeout ? clock::now() + std::chrono::duration_cast<clock::duration>(
                                                     std::max(*timeout, Duration::zero()))
                                : clock::time_point::max();
  for (;;) {
    int ms = -1;
    if (timeout) {
      auto left = deadline - clock::now();
      // Round up so a wait never returns early and then spins on a 0 ms poll.
      ms = left <= clock::duration::zero()
               ? 0
               : static_cast<int>(std::min<long long>(
                     std::chrono::ceil<std::chrono::milliseconds>(left).count(), 1 << 30));
    }
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, ms);
    if (r > 0) {
      if (p.revents & POLLNVAL) throw std::system_error(EBADF, std::system_category(), "poll");
      return true;
    }
    if (r == 0) {
      if (!timeout || clock::now() >= deadline) return false;
      continue;
    }
    if (errno != EINTR) check(r, "poll");
  }
}

bool wait_readable(int fd, std::optional<Duration> timeout) {
  return poll_one(fd, POLLIN, timeout);
}

bool send_all(int fd, std::span<const std::byte> data, int abort_fd) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      data = data.subspan(static_cast<std::size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET) return false;
    if (errno != EAGAIN) check(-1, "send");
    // The reader is slow: wait for room, or for the reader to die.
    pollfd p[2] = {{fd, POLLOUT, 0}, {abort_fd, POLLIN, 0}};
    int r = ::poll(p, abort_fd >= 0 ? 2 : 1, -1);
    if (r < 0 && errno != EINTR) check(r, "poll");
    if (r > 0 && abort_fd >= 0 && (p[1].revents & (POLLIN | POLLHUP))) return false;
  }
  return true;
}

std::size_t read_full(int fd, std::span<std::byte> data) {
  std::size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (n == 0 || errno == ECONNRESET) {
      break;  // a reset socket ends like EOF: the caller sees a short read
    } else if (errno != EINTR) {
      check(-1, "read");
    }
  }
  return got;
}

}  // namespace mp::posix

namespace mp::posix {

// Waits for `events` on fd until the deadline: false when it passed.
static bool wait_for(int fd, short events, Deadline deadline) {
  for (;;) {
    auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() < 0) left = std::chrono::milliseconds(0);
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1 << 30)));
    if (r > 0) return true;
    if (r == 0 && left.count() == 0) return false;
    if (r < 0 && errno != EINTR) check(r, "poll");
  }
}

std::size_t read_until(int fd, std::span<std::byte> data, Deadline deadline) {
  std::size_t got = 0;
  while (got < data.size()) {
    if (!wait_for(fd, POLLIN, deadline)) throw mp::TimeoutError("timed out reading from a peer");
    ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n > 0) {
      got += static_cast<std::size_t>(n);
    } else if (n == 0 || errno == ECONNRESET) {
      break;  // the peer is gone (a reset socket is an end like EOF): the caller sees a short read
    } else if (errno != EINTR && errno != EAGAIN) {
      check(-1, "read");
    }
  }
  return got;
}

void write_until(int fd, std::span<const std::byte> data, Deadline deadline) {
  while (!data.empty()) {
    if (!wait_for(fd, POLLOUT, deadline)) throw mp::TimeoutError("timed out writing to a peer");
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == ENOTSOCK) n = ::write(fd, data.data(), data.size());
    if (n >= 0) {
      data = data.subspan(static_cast<std::size_t>(n));
    } else if (errno != EINTR && errno != EAGAIN) {
      check(-1, "send");
    }
  }
}

}  // namespace mp::posix
