// How the library knows a child: one small interface, one launcher per start method
// (CPython's popen_fork.py / popen_spawn_posix.py). Nothing here says "fork", so a
// CreateProcess-shaped implementation fits later.
#pragma once

#include <chrono>
#include <memory>
#include <optional>

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

}  // namespace mp::detail
