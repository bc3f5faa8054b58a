// The ground floor: every platform call the library makes, behind small functions. Only
// src/posix/ includes <unistd.h> and <sys/*.h>; the mechanisms above (src/) call mp::posix::.
// Nothing here includes a library header but mp/errors.hpp (tools/check_layering.sh).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace mp::posix {

using Duration = std::chrono::duration<double>;

/// Owns one descriptor.
class unique_fd {
 public:
  explicit unique_fd(int fd = -1) noexcept : fd_(fd) {}
  unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept;  // closes the old one; no EINTR retry: Linux freed it already

 private:
  int fd_;
};

/// Throws std::system_error(errno, call) when r < 0.
int check(int r, const char* call);

/// The same descriptor, moved to a number above 2 if it had one of stdio's.
unique_fd above_stdio(unique_fd fd);
/// pipe2(O_CLOEXEC): {read end, write end}, both above 2.
std::pair<unique_fd, unique_fd> make_pipe();
/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC).
std::pair<unique_fd, unique_fd> make_socketpair();
/// open("/dev/null") with O_CLOEXEC.
unique_fd open_devnull(int flags);
/// A timerfd on CLOCK_MONOTONIC (close-on-exec, non-blocking, above 2): readable once it
/// has expired, until cleared.
unique_fd make_timer();
/// Expires once, `after` from now (a positive time; 0 would disarm it).
void arm_timer(int timer, Duration after);
void disarm_timer(int timer);
/// Takes the expiry back (the timer is no longer readable); nothing to take is fine.
void clear_timer(int timer);

/// Wait until fd is readable (or hung up); nullopt timeout waits forever. EINTR is retried
/// with the time left. Negative timeouts mean 0.
bool wait_readable(int fd, std::optional<Duration> timeout);

/// Writes everything (EINTR retried); false if the peer is gone (EPIPE, never SIGPIPE).
/// `abort_fd` (if >= 0) readable ends the wait for a slow reader: returns false.
bool send_all(int fd, std::span<const std::byte> data, int abort_fd);
/// Reads exactly data.size() bytes unless EOF (or a reset connection) comes first; returns
/// the count read. EINTR retried.
std::size_t read_full(int fd, std::span<std::byte> data);

/// pidfd_open(2); an invalid fd where the kernel (or a seccomp filter) has none.
unique_fd open_pidfd(int pid);
/// Whether pidfd_open works here (Linux 5.3+, and no seccomp filter refusing it);
/// MP_NO_PIDFD=1 in the environment says no (the tests run the pipe fallback with it).
bool have_pidfd();
/// Blocks until our child `pid` has ended, without reaping it (waitid WNOWAIT); returns at
/// once if it is no longer our child (another thread reaped it). EINTR retried.
void wait_exited(int pid);
/// Sends sig through the pidfd when valid, else kill(pid). ESRCH is ignored.
void send_signal(int pidfd, int pid, int sig);
/// waitpid; the exit code (-signum when signalled) once the child has ended, else nullopt;
/// 255 when someone else already reaped it (the status is lost).
std::optional<int> reap(int pid, bool block);

/// Fork the caller. In the child, `child` runs and must not return.
int fork_process();

/// posix_spawn of `exe` with `argv`. The child gets `keep_fds` as descriptors 3, 4, ... (the
/// numbers are returned; argv can name them as "{0}", "{1}") and no other descriptor above 2.
/// Throws std::system_error naming the step and the path.
std::vector<int> spawn_process(const std::string& exe, const std::vector<std::string>& argv,
                               std::span<const int> keep_fds, int* pid);

/// Close-on-exec flag on `fd` in this process.
void set_cloexec(int fd, bool on);
/// Whether `fd` is an open descriptor.
bool is_open(int fd);
/// close(2), errors ignored; async-signal-safe (a child dropping what is not its business).
void close_fd(int fd) noexcept;
/// dup2(2): `to` becomes a copy of `from` (inheritable); async-signal-safe.
void dup_to(int from, int to) noexcept;
/// The signal's disposition becomes SIG_IGN / SIG_DFL.
void ignore_signal(int sig) noexcept;
void default_signal(int sig) noexcept;
/// pthread_atfork: `prepare` runs before every fork(), `parent` and `child` after it.
void at_fork(void (*prepare)(), void (*parent)(), void (*child)());

/// What a raw clone child needs to redo glibc's per-thread bookkeeping as glibc's own _Fork
/// does: where glibc keeps the thread id, and the robust-mutex list head.
struct CloneIdentity {
  int* tid_address = nullptr;
  void* robust_head = nullptr;
  std::size_t robust_len = 0;
};
CloneIdentity clone_identity();
/// fork(), except that the child's parent is our parent (CLONE_PARENT): 0 in the child, the
/// child's pid here, -errno on failure. Only for a single-threaded caller (no lock can be held
/// across it; no atfork handler runs).
int clone_parent(const CloneIdentity& identity);

int getpid();
/// The kernel marked this exec as secure (setuid, setgid, capabilities: AT_SECURE).
bool secure_execution();
int getppid();
bool is_main_thread();
/// PR_SET_PDEATHSIG: `sig` when the parent thread ends; false if the parent is already gone.
bool set_parent_death_signal(int sig, int expected_parent);
/// stdin becomes /dev/null (read returns 0 at once).
void close_stdin();
/// Bytes of physical memory (an upper bound for any allocation worth trying).
std::uint64_t physical_memory();
/// Number of CPUs this process may run on.
int cpu_count();
/// Cryptographically random bytes (getrandom).
std::vector<std::byte> random_bytes(std::size_t n);
/// "TERM" for SIGTERM; empty when the signal has no name.
std::string signal_abbrev(int sig);
std::string getcwd();
/// A hash of the environment (to tell whether it changed).
std::uint64_t environment_hash();
/// The environment as NAME=value strings; replacing it (in a child that is alone).
std::vector<std::string> get_environment();
void set_environment(const std::vector<std::string>& env);
void chdir(const std::string& dir);
/// The running program's path (/proc/self/exe resolved).
std::string self_exe();
/// The executable's GNU build-id in hex (empty if it has none).
std::string build_id();

/// Code addresses as (module, offset) pairs valid in another copy of this program.
bool code_address_module(const void* address, std::string& module, std::uint64_t& offset);
const void* code_address_resolve(const std::string& module, std::uint64_t offset);

/// Number of open descriptors (counts /proc/self/fd).
int count_open_fds();
/// Raise sig with the default action (used to test signal exit codes).
[[noreturn]] void exit_now(int code);

}  // namespace mp::posix

namespace mp::posix {
using Deadline = std::chrono::steady_clock::time_point;
/// Reads exactly data.size() bytes before `deadline`; returns the count read (short on EOF).
/// Throws mp::TimeoutError when the deadline passes first. EINTR is retried.
std::size_t read_until(int fd, std::span<std::byte> data, Deadline deadline);
/// Writes everything before `deadline` (MSG_NOSIGNAL on sockets: never SIGPIPE); throws
/// std::system_error (EPIPE when the peer is gone) or mp::TimeoutError.
void write_until(int fd, std::span<const std::byte> data, Deadline deadline);
}  // namespace mp::posix

namespace mp::posix {
/// Writes all the parts, in order, as one stream (writev/sendmsg; EINTR and short writes
/// handled). A socket never raises SIGPIPE (MSG_NOSIGNAL); for a pipe SIGPIPE is blocked
/// around the write and a signal it raised is taken back. The peer gone: system_error EPIPE.
void write_all(int fd, std::span<const std::span<const std::byte>> parts, bool is_socket);
/// One byte with descriptor `fd` attached (SCM_RIGHTS), as CPython's reduction.sendfds.
void send_fd(int socket, int fd);
/// The descriptor of one such byte (close-on-exec); -1 when the byte came without one, -2 on
/// EOF.
int recv_fd(int socket);
/// Whether fd is a socket.
bool is_socket(int fd);
/// For the write end of a pipe: false once every reader has gone (polls POLLERR; one system
/// call, no wake-up of the reader).
bool has_reader(int write_fd);
/// shutdown(SHUT_WR): the peer reads EOF after what was sent.
void shutdown_write(int socket);
/// shutdown(SHUT_RDWR): wakes this process's own threads blocked reading or writing it.
void shutdown_both(int socket);
/// Whether the peer of a stream socket has closed or shut down its end (POLLRDHUP), now.
bool peer_hung_up(int socket);
/// send() of what fits now, without waiting (MSG_DONTWAIT | MSG_NOSIGNAL); the bytes queued
/// (0 when the buffer is full or the peer has gone: the caller's next blocking send tells).
std::size_t send_nowait(int socket, std::span<const std::byte> data);
/// One sendmsg of `data` with `fds` attached (SCM_RIGHTS), EINTR retried, never SIGPIPE; the
/// peer gone: std::system_error EPIPE or ECONNRESET.
void send_with_fds(int socket, std::span<const std::byte> data, std::span<const int> fds);
/// One recvmsg, never waiting (MSG_DONTWAIT): `size` bytes into `data`, the descriptors that
/// came (close-on-exec, above stdio), `truncated` when some were lost (MSG_CTRUNC: out of
/// descriptors). EOF and a reset connection: size 0, no fds. Nothing there: would_block.
struct Received {
  std::size_t size = 0;
  std::vector<unique_fd> fds;
  bool truncated = false;
  bool would_block = false;
};
Received recv_with_fds_nowait(int socket, std::span<std::byte> data, std::size_t max_fds);
/// recv() of what is there now, without waiting: the count (0 at EOF or a reset connection),
/// or nullopt when nothing is there yet.
std::optional<std::size_t> recv_nowait(int socket, std::span<std::byte> data);
/// recv_nowait() again and again for up to `spin`, yielding the CPU now and then: what a
/// reader whose data is microseconds away does instead of sleeping (nullopt: nothing came).
std::optional<std::size_t> recv_spinning(int socket, std::span<std::byte> data, Duration spin);
/// The descriptors among `fds` that are readable (or hung up) within `timeout`.
std::vector<int> wait_any_readable(std::span<const int> fds, std::optional<Duration> timeout);
/// One descriptor of a poll_fds() set: what to wait for, and what was found.
struct PollFd {
  int fd = -1;
  bool want_write = false;  // and always readable (or hung up)
  bool readable = false;
  bool writable = false;
};
/// poll() once, up to `timeout` (nullopt: no bound); returns the number ready. A signal
/// (EINTR) returns 0, as a timeout does: the caller looks again.
int poll_fds(std::span<PollFd> fds, std::optional<Duration> timeout);
/// recv() of at least one byte, waiting for it (EINTR retried); 0 at EOF or a reset connection.
std::size_t recv_some(int socket, std::span<std::byte> data);
}  // namespace mp::posix
