// Process-level system calls: pidfds, signals, reaping, spawning, cloning, and small queries.
#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <type_traits>

#include "posix/posix.hpp"

extern char** environ;

// include/mp/process.hpp declares mp::pid_t as int, without platform headers.
static_assert(std::is_same_v<::pid_t, int>, "mp::pid_t must be the platform's pid_t");

namespace mp::posix {

unique_fd open_pidfd(int pid) {
#ifdef SYS_pidfd_open
  // Linux 5.3+. Opened while the child is unreaped, so the pid cannot have been reused.
  // pidfd_open sets close-on-exec itself (man 2 pidfd_open).
  long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) return unique_fd(static_cast<int>(fd));
  // No pidfds here (old kernel, or a seccomp filter): the caller falls back to a pipe.
  if (errno == ENOSYS || errno == EPERM) return unique_fd();
  check(-1, "pidfd_open");  // EMFILE, ENOMEM: a real failure the caller must handle
#else
  (void)pid;
#endif
  return unique_fd();
}

bool have_pidfd() {
  static const bool ok = [] {
    if (const char* off = std::getenv("MP_NO_PIDFD"); off && *off && *off != '0') return false;
    try {
      return static_cast<bool>(open_pidfd(::getpid()));
    } catch (const std::system_error&) {
      return true;  // supported; this attempt failed for another reason (EMFILE)
    }
  }();
  return ok;
}

void wait_exited(int pid) {
  siginfo_t info{};
  while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) < 0) {
    if (errno == EINTR) continue;
    if (errno == ECHILD) return;  // reaped by another thread
    check(-1, "waitid");
  }
}

void send_signal(int pidfd, int pid, int sig) {
#ifdef SYS_pidfd_send_signal
  if (pidfd >= 0) {
    if (::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0 || errno == ESRCH) return;
    if (errno != ENOSYS && errno != EPERM) check(-1, "pidfd_send_signal");
  }
#else
  (void)pidfd;
#endif
  // Safe without a pidfd too: the caller only signals a child it has not reaped, and an
  // unreaped child keeps its pid.
  if (::kill(pid, sig) < 0 && errno != ESRCH) check(-1, "kill");
}

static int status_to_exitcode(int status) {
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

std::optional<int> reap(int pid, bool block) {
  for (;;) {
    int status = 0;
    ::pid_t r = ::waitpid(pid, &status, block ? 0 : WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status) || WIFSIGNALED(status)) return status_to_exitcode(status);
      continue;  // stopped/continued: not an end
    }
    if (r == 0) return std::nullopt;
    if (errno == EINTR) continue;
    // Someone else reaped it (a SIGCHLD handler calling waitpid(-1), or SIGCHLD ignored): it
    // has ended and its status is lost. 255, as CPython's forkserver reports an unknown end.
    if (errno == ECHILD) return 255;
    check(-1, "waitpid");
  }
}

std::vector<int> spawn_process(const std::string& exe, const std::vector<std::string>& argv,
                               std::span<const int> keep_fds, int* pid_out) {
  // The kept descriptors become 3, 4, ... in the child and everything above is closed, so a
  // child inherits exactly what it is meant to, even descriptors someone opened without
  // close-on-exec (CPython's spawn closes them too). Sources are first moved above the target
  // range, so no dup2 below overwrites a source still to be copied.
  const int first = 3, limit = first + static_cast<int>(keep_fds.size());
  std::vector<unique_fd> moved;
  std::vector<int> sources;
  for (int fd : keep_fds) {
    if (fd < limit) {
      moved.emplace_back(check(::fcntl(fd, F_DUPFD_CLOEXEC, limit), "fcntl F_DUPFD_CLOEXEC"));
      fd = moved.back().get();
    }
    sources.push_back(fd);
  }
  posix_spawn_file_actions_t actions;
  if (int e = ::posix_spawn_file_actions_init(&actions))
    throw std::system_error(e, std::system_category(), "posix_spawn_file_actions_init");
  struct Guard {
    posix_spawn_file_actions_t* a;
    ~Guard() { ::posix_spawn_file_actions_destroy(a); }
  } guard{&actions};
  std::vector<int> child_fds;
  for (std::size_t i = 0; i < sources.size(); ++i) {
    int target = first + static_cast<int>(i);
    // dup2 onto another number clears close-on-exec on the copy, in the child only.
    if (int e = ::posix_spawn_file_actions_adddup2(&actions, sources[i], target))
      throw std::system_error(e, std::system_category(), "posix_spawn_file_actions_adddup2");
    child_fds.push_back(target);
  }
  if (int e = ::posix_spawn_file_actions_addclosefrom_np(&actions, limit))
    throw std::system_error(e, std::system_category(), "posix_spawn_file_actions_addclosefrom_np");

  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::pid_t pid = -1;
  // glibc's posix_spawn uses clone(CLONE_VM | CLONE_VFORK): its cost does not grow with our
  // memory, and exec failures (ENOENT, EACCES, ...) come back as its return value.
  if (int e = ::posix_spawn(&pid, exe.c_str(), &actions, nullptr, args.data(), environ))
    throw std::system_error(e, std::system_category(), "posix_spawn " + exe);
  *pid_out = pid;
  return child_fds;
}

int fork_process() {
  ::pid_t pid = ::fork();
  return check(pid, "fork");
}

int getpid() {
  return ::getpid();
}
bool secure_execution() {
  return ::getauxval(AT_SECURE) != 0;
}
int getppid() {
  return ::getppid();
}
bool is_main_thread() {
  return ::gettid() == ::getpid();
}

bool set_parent_death_signal(int sig, int expected_parent) {
  if (::prctl(PR_SET_PDEATHSIG, sig) < 0) return true;  // not available: nothing to race
  // Close the race: the parent may have died before prctl took effect.
  return ::getppid() == expected_parent;
}

void ignore_signal(int sig) noexcept {
  ::signal(sig, SIG_IGN);
}
void default_signal(int sig) noexcept {
  ::signal(sig, SIG_DFL);
}
void at_fork(void (*prepare)(), void (*parent)(), void (*child)()) {
  if (int e = ::pthread_atfork(prepare, parent, child))
    throw std::system_error(e, std::system_category(), "pthread_atfork");
}

CloneIdentity clone_identity() {
  CloneIdentity id;
  if (::prctl(PR_GET_TID_ADDRESS, &id.tid_address) != 0) id.tid_address = nullptr;
  if (::syscall(SYS_get_robust_list, 0, &id.robust_head, &id.robust_len) != 0)
    id.robust_head = nullptr;
  return id;
}

// glibc's own bookkeeping is redone as its _Fork does: the kernel writes the child's thread id
// into glibc's thread descriptor (CLONE_CHILD_SETTID), and the robust-mutex list is registered
// again.
int clone_parent(const CloneIdentity& id) {
  clone_args args{};
  args.flags = CLONE_PARENT | (id.tid_address ? CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID : 0);
  args.child_tid = reinterpret_cast<std::uint64_t>(id.tid_address);
  long pid = ::syscall(SYS_clone3, &args, sizeof args);
  if (pid < 0 && errno == ENOSYS) {
    // Before Linux 5.3: the old clone, whose argument order depends on the architecture.
    const unsigned long flags = args.flags | SIGCHLD;
#if defined(__x86_64__)
    pid = ::syscall(SYS_clone, flags, nullptr, nullptr, id.tid_address, nullptr);
#elif defined(__aarch64__) || defined(__arm__) || defined(__powerpc64__)
    pid = ::syscall(SYS_clone, flags, nullptr, nullptr, nullptr, id.tid_address);
#endif
  }
  if (pid < 0) return -errno;
  if (pid == 0 && id.robust_head) ::syscall(SYS_set_robust_list, id.robust_head, id.robust_len);
  return static_cast<int>(pid);
}

void close_stdin() {
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  if (fd != 0) {
    ::dup2(fd, 0);  // dup2 clears close-on-exec on fd 0
    ::close(fd);
  } else {
    set_cloexec(0, false);
  }
}

std::uint64_t physical_memory() {
  static const std::uint64_t bytes = [] {  // sysconf asks the kernel (sysinfo) every time
    const long pages = ::sysconf(_SC_PHYS_PAGES), size = ::sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? std::uint64_t(pages) * std::uint64_t(size) : ~std::uint64_t(0);
  }();
  return bytes;
}

int cpu_count() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

std::vector<std::byte> random_bytes(std::size_t n) {
  std::vector<std::byte> out(n);
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::getrandom(out.data() + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      check(-1, "getrandom");
    }
    got += static_cast<std::size_t>(r);
  }
  return out;
}

std::string signal_abbrev(int sig) {
  // CPython's signal module names the two ends of the real-time range, nothing between.
  if (sig == SIGRTMIN) return "RTMIN";
  if (sig == SIGRTMAX) return "RTMAX";
  const char* name = ::sigabbrev_np(sig);
  return name ? name : "";
}

std::string getcwd() {
  std::error_code ec;
  auto p = std::filesystem::current_path(ec);
  return ec ? std::string() : p.string();
}

std::uint64_t environment_hash() {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the entries and their order
  for (char** e = environ; e && *e; ++e) {
    for (const char* c = *e; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 0x100000001b3ull;
    h = (h ^ 0xff) * 0x100000001b3ull;
  }
  return h;
}

std::vector<std::string> get_environment() {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) env.emplace_back(*e);
  return env;
}

void set_environment(const std::vector<std::string>& env) {
  ::clearenv();
  // putenv keeps the pointer: the strings must live as long as the process.
  for (const auto& entry : env) ::putenv(::strdup(entry.c_str()));
}

void chdir(const std::string& dir) {
  check(::chdir(dir.c_str()), ("chdir " + dir).c_str());
}

std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) check(-1, "readlink /proc/self/exe");
  return std::string(buf, static_cast<std::size_t>(n));
}

int count_open_fds() {
  int n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n - 1;  // the iterator's own descriptor
}

void exit_now(int code) {
  ::_exit(code);
}

}  // namespace mp::posix
