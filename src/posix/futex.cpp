// Shared futexes, memfd mappings and thread identity for the process-shared primitives.
#include "posix/futex.hpp"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>

namespace mp::posix {
namespace {

long futex(const std::atomic<std::uint32_t>& word, int op, std::uint32_t val,
           const timespec* timeout, std::uint32_t val3) {
  // Not FUTEX_PRIVATE_FLAG: the word lives in memory shared between processes.
  return ::syscall(SYS_futex, reinterpret_cast<const std::uint32_t*>(&word), op, val, timeout,
                   nullptr, val3);
}

// Reads a small /proc file whole; empty when it cannot be read.
std::string read_proc(const char* path) {
  int fd;
  do fd = ::open(path, O_RDONLY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return {};
  char buf[1024];
  std::size_t have = 0;
  for (;;) {
    ssize_t r = ::read(fd, buf + have, sizeof buf - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    have += static_cast<std::size_t>(r);
    if (have == sizeof buf) break;
  }
  ::close(fd);
  return std::string(buf, have);
}

// The state letter and the start time (field 22) of a /proc/.../stat line.
bool parse_stat(const std::string& stat, char& state, std::uint64_t& start) {
  auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return false;
  const char* p = stat.c_str() + close + 2;
  state = *p;
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return false;
    ++p;
  }
  start = std::strtoull(p, nullptr, 10);
  return true;
}

void forget_in_fork_child() {
  t_identity = {};
}

}  // namespace

thread_local ThreadIdentity t_identity __attribute__((tls_model("initial-exec")));

bool futex_wait(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::optional<Clock::time_point> deadline) {
  timespec ts{};
  const timespec* abs = nullptr;
  if (deadline) {
    // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time: steady_clock's clock on Linux.
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::max(deadline->time_since_epoch(), Clock::duration::zero()))
                        .count();
    ts.tv_sec = static_cast<time_t>(ns / 1000000000);
    ts.tv_nsec = static_cast<long>(ns % 1000000000);
    abs = &ts;
  }
  if (futex(word, FUTEX_WAIT_BITSET, expected, abs, FUTEX_BITSET_MATCH_ANY) == 0) return true;
  if (errno == ETIMEDOUT) return false;
  return true;  // EAGAIN (the word changed), EINTR: the caller looks again
}

void futex_wake(const std::atomic<std::uint32_t>& word, int n) {
  futex(word, FUTEX_WAKE, static_cast<std::uint32_t>(n), nullptr, 0);
}

SharedMapping create_shared_mapping(std::size_t size, const char* name) {
  int fd = ::memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::system_category(), "memfd_create");
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int e = errno;
    ::close(fd);
    throw std::system_error(e, std::system_category(), "ftruncate");
  }
  return map_shared(fd);
}

SharedMapping map_shared(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size <= 0) {
    int e = st.st_size <= 0 ? EINVAL : errno;
    ::close(fd);
    throw std::system_error(e, std::system_category(), "shared primitive: bad descriptor");
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) {
    int e = errno;
    ::close(fd);
    throw std::system_error(e, std::system_category(), "mmap");
  }
  return {fd, addr, size};
}

void unmap_shared(SharedMapping& m) noexcept {
  if (m.addr) ::munmap(m.addr, m.size);
  if (m.fd >= 0) ::close(m.fd);
  m = {};
}

const ThreadIdentity& load_thread_identity() {
  {
    static const bool registered = [] {
      ::pthread_atfork(nullptr, nullptr, forget_in_fork_child);
      return true;
    }();
    (void)registered;
    ThreadIdentity id;
    id.tid = static_cast<std::uint32_t>(::gettid());
    id.pid = ::getpid();
    char state = 0;
    parse_stat(read_proc("/proc/thread-self/stat"), state, id.start);
    t_identity = id;
  }
  return t_identity;
}

void forget_thread_identity() noexcept {
  t_identity = {};
}

namespace {

// Whether `tid` runs (the start time it has then in *started), is gone, or cannot be told.
enum class Seen { running, gone, unknown };
Seen look_at_thread(std::uint32_t tid, std::uint64_t& started) {
  if (tid == 0) return Seen::gone;
  // /proc/<tid> names any thread, not only a process's first. Only a positive "no such
  // thread" counts as dead: without /proc (a container, a chroot) or without the right to look
  // (EACCES), the holder is presumed alive, never robbed.
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%u/stat", tid);
  errno = 0;
  const std::string stat = read_proc(path);
  if (stat.empty()) {
    if (errno != 0 && errno != ENOENT && errno != ESRCH) return Seen::unknown;  // EACCES, ...
    // Gone, unless /proc itself is missing.
    return ::access("/proc/self/stat", R_OK) != 0 ? Seen::unknown : Seen::gone;
  }
  char state = 0;
  if (!parse_stat(stat, state, started)) return Seen::unknown;
  if (state == 'Z' || state == 'X' || state == 'x') return Seen::gone;
  return Seen::running;
}

}  // namespace

template <class Matches>
bool alive_if(std::uint32_t tid, Matches matches) {
  std::uint64_t started = 0;
  const Seen seen = look_at_thread(tid, started);
  return seen == Seen::unknown || (seen == Seen::running && matches(started));
}

bool thread_alive(std::uint32_t tid, std::uint64_t start) {
  return alive_if(tid, [&](std::uint64_t s) { return start == 0 || s == start; });
}

bool thread_alive_low32(std::uint32_t tid, std::uint32_t start_low32) {
  return alive_if(tid,
                  [&](std::uint64_t s) { return static_cast<std::uint32_t>(s) == start_low32; });
}

bool is_own_thread(std::uint32_t tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%u", tid);
  return ::access(path, F_OK) == 0;
}

}  // namespace mp::posix
