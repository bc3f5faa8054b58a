#include "posix/child.hpp"

#include <signal.h>
#include <sys/wait.h>

#include <cerrno>
#include <system_error>

namespace mp::posix {

Child::Child(int pid, unique_fd pidfd, unique_fd sentinel, unique_fd lifeline)
    : pid_(pid),
      pidfd_(std::move(pidfd)),
      sentinel_(std::move(sentinel)),
      lifeline_(std::move(lifeline)) {}

std::optional<int> Child::reap_locked() {
  if (!returncode_) {
    returncode_ = reap(pid_, false);
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
  if (timeout && !wait_readable(sentinel(), timeout)) return std::nullopt;
  // Block until the child is a zombie, without reaping it (WNOWAIT): reaping happens only
  // under the lock. Needed after a pipe sentinel too: the pipe closes just before the exit.
  siginfo_t info{};
  while (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT) < 0) {
    if (errno == EINTR) continue;
    if (errno == ECHILD) break;  // another thread reaped it: returncode_ is set below
    check(-1, "waitid");
  }
  std::lock_guard l(mu_);
  return reap_locked();
}

void Child::send(int sig) {
  if (foreign_) return;
  std::lock_guard l(mu_);
  if (returncode_) return;  // reaped: the pid may belong to someone else now
  send_signal(pidfd_.get(), pid_, sig);
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

}  // namespace mp::posix
