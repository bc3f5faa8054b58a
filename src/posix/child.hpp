// A started child: its pid, pidfd (or sentinel pipe) and exit code. Waiting, signalling and
// reaping live here once, whatever the start method.
#pragma once

#include <mutex>

#include "popen.hpp"
#include "posix/posix.hpp"

namespace mp::posix {

class Child final : public detail::Popen {
 public:
  /// `pidfd` may be invalid (old kernel): then `sentinel` (a pipe the child holds the write end
  /// of) is what becomes readable. `lifeline` is kept open while the child runs: the child
  /// watches its other end to see this parent die.
  Child(int pid, unique_fd pidfd, unique_fd sentinel, unique_fd lifeline);
  int pid() const override { return pid_; }
  std::optional<int> poll() override;
  std::optional<int> wait(std::optional<Duration> timeout) override;
  void terminate() override;
  void kill() override;
  int sentinel() const override { return pidfd_ ? pidfd_.get() : sentinel_.get(); }
  void close() override;
  void forget() override;

 private:
  std::optional<int> reap_locked();
  void send(int sig);

  std::mutex mu_;  // reaping and signalling happen under it, so a reaped pid is never signalled
  const int pid_;
  bool foreign_ = false;  // inherited by a fork child: not its child
  std::optional<int> returncode_;
  unique_fd pidfd_, sentinel_, lifeline_;
};

}  // namespace mp::posix
