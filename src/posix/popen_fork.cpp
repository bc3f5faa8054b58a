// The fork start method (CPython popen_fork.py).
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <system_error>

#include "posix/child.hpp"
#include "posix/launch.hpp"

namespace mp::posix {

bool have_pidfd() {
  static const bool ok = [] {
    // MP_NO_PIDFD=1 forces the pipe fallback of kernels before 5.3 (the tests run with it too).
    if (const char* off = std::getenv("MP_NO_PIDFD"); off && *off && *off != '0') return false;
    try {
      return static_cast<bool>(open_pidfd(::getpid()));
    } catch (const std::system_error&) {
      return true;  // supported; this attempt failed for another reason (EMFILE)
    }
  }();
  return ok;
}

unique_fd open_pidfd_or_kill(int pid) {
  if (!have_pidfd()) return unique_fd();
  try {
    return open_pidfd(pid);
  } catch (...) {
    // Out of descriptors with a child already running: without a pidfd we could not wait for
    // it, so it must not outlive this failed start().
    send_signal(-1, pid, SIGKILL);
    reap(pid, true);
    throw;
  }
}

std::shared_ptr<detail::Popen> hand_over_frame(int pid, std::span<const std::byte> frame,
                                               unique_fd parent_end, unique_fd sentinel_r) {
  unique_fd pidfd = open_pidfd_or_kill(pid);
  const int watch = pidfd ? pidfd.get() : sentinel_r.get();
  try {
    // A child that dies before reading everything (it never called mp::init, say) is not an
    // error here: its exit code tells the story, as in CPython.
    send_all(parent_end.get(), frame, watch);
  } catch (...) {
    send_signal(pidfd.get(), pid, SIGKILL);
    reap(pid, true);
    throw;
  }
  return std::make_shared<Child>(pid, std::move(pidfd), std::move(sentinel_r),
                                 std::move(parent_end));
}

std::shared_ptr<detail::Popen> popen_fork(ForkChildMain child_main, void* arg) {
  // The child keeps `child_r` open: it reads EOF there once this process (holding `parent_w`)
  // has ended. That is how parent_process().is_alive() works in the child.
  auto [child_r, parent_w] = make_pipe();
  unique_fd sentinel_r, sentinel_w;
  if (!have_pidfd()) std::tie(sentinel_r, sentinel_w) = make_pipe();

  int pid = fork_process();
  if (pid == 0) {
    parent_w.reset();
    sentinel_r.reset();
    child_main(arg, child_r.release(), sentinel_w.release());
    ::_exit(1);  // child_main never returns; this only documents it
  }
  child_r.reset();
  sentinel_w.reset();
  unique_fd pidfd = open_pidfd_or_kill(pid);
  return std::make_shared<Child>(pid, std::move(pidfd), std::move(sentinel_r), std::move(parent_w));
}

}  // namespace mp::posix
