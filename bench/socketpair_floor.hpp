// The floor a round trip between two processes is measured against, shared by the benchmarks
// that compare with it (bench/pool.cpp, bench/managers.cpp): the parent writes 8 bytes on a
// socketpair, a fork()ed child reads them and echoes them back; one round trip per iteration.
// Plain C style and no multiprocess, so that it is what the operating system alone costs.
#pragma once

#include <benchmark/benchmark.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstddef>

namespace bench {

inline constexpr std::size_t kFloorMessage = 8;  // bytes per floor message

inline long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

// Exactly n bytes; 0 on EOF at once, -1 on error. With spin_ns > 0, non-blocking recvs for up to
// spin_ns before each blocking one.
inline ssize_t recv_full(int fd, char* buf, size_t n, long spin_ns) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = -1;
    if (spin_ns > 0) {
      const long t0 = now_ns();
      do r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
      while (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) &&
             now_ns() - t0 < spin_ns);
    }
    if (r < 0) {
      do r = recv(fd, buf + got, n - got, 0);
      while (r < 0 && errno == EINTR);
    }
    if (r == 0 && got == 0) return 0;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return (ssize_t)n;
}

inline int send_full(int fd, const char* buf, size_t n) {
  size_t put = 0;
  while (put < n) {
    ssize_t r = send(fd, buf + put, n - put, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    put += (size_t)r;
  }
  return 0;
}

// One round trip per iteration; spin_ns > 0: each side busy-polls that long before it blocks.
inline void run_floor_roundtrip(benchmark::State& state, long spin_ns) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    state.SkipWithError("socketpair failed");
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    char buf[kFloorMessage];
    for (;;) {
      ssize_t r = recv_full(sv[1], buf, kFloorMessage, spin_ns);
      if (r == 0) _exit(0);
      if (r < 0 || send_full(sv[1], buf, kFloorMessage) != 0) _exit(1);
    }
  }
  close(sv[1]);
  char ping[kFloorMessage] = {0}, pong[kFloorMessage];
  for (auto _ : state) {
    if (pid < 0 || send_full(sv[0], ping, kFloorMessage) != 0 ||
        recv_full(sv[0], pong, kFloorMessage, spin_ns) != (ssize_t)kFloorMessage) {
      state.SkipWithError("floor round trip failed");
      break;
    }
  }
  shutdown(sv[0], SHUT_WR);  // EOF for the child
  close(sv[0]);
  int status = 0;
  if (pid > 0 && (waitpid(pid, &status, 0) != pid || status != 0))
    state.SkipWithError("floor child failed");
}

}  // namespace bench
