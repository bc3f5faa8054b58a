// How the library knows a child: one small interface, one launcher per start method
// (CPython's popen_fork.py / popen_spawn_posix.py / popen_forkserver.py), and the Child that
// all three return: waiting, signalling and reaping live there once. Nothing in Popen says
// "fork", so a CreateProcess-shaped implementation fits later.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "posix/posix.hpp"

namespace mp::detail {

using Duration = std::chrono::duration<double>;

struct Popen {
  virtual ~Popen() = default;
  virtual int pid() const = 0;
  /// The exit code once the child has ended (reaping it), else nullopt.
  virtual std::optional<int> poll() = 0;
  /// Waits at most `timeout` (forever when nullopt); the exit code or nullopt.
  virtual std::optional<int> wait(std::optional<Duration> timeout) = 0;
  /// SIGTERM / SIGKILL; no-ops once the child has been reaped.
  virtual void terminate() = 0;
  virtual void kill() = 0;
  /// Readable when the child ends.
  virtual int sentinel() const = 0;
  /// Releases the descriptors (the child has ended).
  virtual void close() = 0;
  /// In a fork child: drop the parent's descriptors for this child, without waiting.
  virtual void forget() = 0;
};

/// A started child of this process: its pid, pidfd (or sentinel pipe) and exit code.
class Child final : public Popen {
 public:
  /// `pidfd` may be invalid (old kernel): then `sentinel` (a pipe the child holds the write end
  /// of) is what becomes readable. `lifeline` is kept open while the child runs: the child
  /// watches its other end to see this parent die.
  Child(int pid, posix::unique_fd pidfd, posix::unique_fd sentinel, posix::unique_fd lifeline);
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
  posix::unique_fd pidfd_, sentinel_, lifeline_;
};

// ---- the launchers (popen_fork.cpp, popen_spawn.cpp, popen_forkserver.cpp) ----

/// pidfd_open for a child just started; on failure the child is killed and reaped, and the
/// error rethrown. Invalid (no throw) where pidfds are unsupported.
posix::unique_fd open_pidfd_or_kill(int pid);

/// The end of a spawn or forkserver start, once the child exists: its pidfd, the rest of its
/// frame sent down `parent_end` (kept as its lifeline), and the Child that owns them all. If
/// sending fails, the child is killed and reaped before the error propagates.
std::shared_ptr<Popen> hand_over_frame(int pid, std::span<const std::byte> frame,
                                       posix::unique_fd parent_end, posix::unique_fd sentinel_r);

/// What a fork child runs: given the descriptor that becomes readable when the parent ends
/// and its own sentinel pipe end (-1 with pidfds). Must not return.
using ForkChildMain = void (*)(void* arg, int parent_sentinel, int own_sentinel_w);

/// fork(): the child runs child_main(arg, ...) and never returns here.
std::shared_ptr<Popen> popen_fork(ForkChildMain child_main, void* arg);

/// A fresh exec of `exe` reading `frame` (preparation data + pickled process) from an
/// inherited socket named on its command line.
/// `argv0` is what the child sees as its program name; `fds` are handed over to it in order.
std::shared_ptr<Popen> popen_spawn(const std::string& exe, const std::string& argv0,
                                   std::span<const std::byte> frame, std::span<const int> fds);

/// Asks the fork server (started or restarted as needed) for a child that reads `frame`;
/// `fds` are handed over to it by SCM_RIGHTS.
std::shared_ptr<Popen> popen_forkserver(std::span<const std::byte> frame, std::span<const int> fds,
                                        bool daemon);

/// The marker arguments of a spawned child's and of the fork server's command lines.
inline constexpr const char* kSpawnFlag = "--multiprocess-spawn";
inline constexpr const char* kForkServerFlag = "--multiprocess-forkserver";

}  // namespace mp::detail
