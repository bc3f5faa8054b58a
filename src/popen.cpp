// What the three launchers share (CPython's popen_fork.Popen, which the others extend):
// waiting for, signalling and reaping a started child, and handing a spawn or forkserver
// child the rest of its frame.
#include "popen.hpp"

#include <csignal>
#include <system_error>

namespace mp::detail {

Child::Child(int pid, posix::unique_fd pidfd, posix::unique_fd sentinel, posix::unique_fd lifeline)
    : pid_(pid),
      pidfd_(std::move(pidfd)),
      sentinel_(std::move(sentinel)),
      lifeline_(std::move(lifeline)) {}

std::optional<int> Child::reap_locked() {
  if (!returncode_) {
    returncode_ = posix::reap(pid_, false);
    if (returncode_) lifeline_.reset();  // the child is gone: nobody watches it any more
  }
  return returncode_;
}

std::optional<int> Child::poll() {
  if (foreign_) return std::nullopt;  // a fork child cannot know: CPython says None too
  std::lock_guard l(mu_);
  return reap_locked();
}

std::optional<int> Child::wait(std::optional<Duration> timeout) {
  if (foreign_) return std::nullopt;
  {
    std::lock_guard l(mu_);
    if (returncode_) return returncode_;
  }
  // Wait without the lock, so terminate() from another thread is never held up.
  if (timeout && !posix::wait_readable(sentinel(), timeout)) return std::nullopt;
  // Block until the child is a zombie, without reaping it: reaping happens only under the
  // lock. Needed after a pipe sentinel too: the pipe closes just before the exit.
  posix::wait_exited(pid_);
  std::lock_guard l(mu_);
  return reap_locked();
}

void Child::send(int sig) {
  if (foreign_) return;
  std::lock_guard l(mu_);
  if (returncode_) return;  // reaped: the pid may belong to someone else now
  posix::send_signal(pidfd_.get(), pid_, sig);
}

void Child::terminate() {
  send(SIGTERM);
}
void Child::kill() {
  send(SIGKILL);
}

void Child::close() {
  if (foreign_) return;
  std::lock_guard l(mu_);
  pidfd_.reset();
  sentinel_.reset();
  lifeline_.reset();
}

void Child::forget() {
  // Runs in a fork child, which owns none of this. The mutex is not touched: another thread
  // of the parent may have held it at fork().
  foreign_ = true;
  pidfd_.reset();
  sentinel_.reset();
  lifeline_.reset();
}

posix::unique_fd open_pidfd_or_kill(int pid) {
  if (!posix::have_pidfd()) return posix::unique_fd();
  try {
    return posix::open_pidfd(pid);
  } catch (...) {
    // Out of descriptors with a child already running: without a pidfd we could not wait for
    // it, so it must not outlive this failed start().
    posix::send_signal(-1, pid, SIGKILL);
    posix::reap(pid, true);
    throw;
  }
}

std::shared_ptr<Popen> hand_over_frame(int pid, std::span<const std::byte> frame,
                                       posix::unique_fd parent_end, posix::unique_fd sentinel_r) {
  posix::unique_fd pidfd = open_pidfd_or_kill(pid);
  const int watch = pidfd ? pidfd.get() : sentinel_r.get();
  try {
    // A child that dies before reading everything (it never called mp::init, say) is not an
    // error here: its exit code tells the story, as in CPython.
    posix::send_all(parent_end.get(), frame, watch);
  } catch (...) {
    posix::send_signal(pidfd.get(), pid, SIGKILL);
    posix::reap(pid, true);
    throw;
  }
  return std::make_shared<Child>(pid, std::move(pidfd), std::move(sentinel_r),
                                 std::move(parent_end));
}

}  // namespace mp::detail
