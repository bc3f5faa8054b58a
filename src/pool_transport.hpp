// The pool engine's seam (STYLE.md 13): how the engine reaches one worker. The bookkeeping
// (tasks, windows, results, futures, worker death, callbacks) is written once, in Engine
// (src/pool.cpp); a worker is a stream socket of frames both ways, a descriptor readable once
// it has ended, and the means to end it. Two transports give it: local worker processes (the
// default, src/pool.cpp) and MPI ranks (src/mpi.cpp, component multiprocess::mpi), whose
// links bridge the same frame stream over MPI messages.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "mp/tasks.hpp"

namespace mp::detail {

class ResultRing;

// One worker as the engine sees it.
class WorkerLink {
 public:
  virtual ~WorkerLink() = default;
  /// The engine's end of the worker's frame stream (a stream socket, read and written without
  /// waiting).
  virtual int fd() const = 0;
  /// Readable once the worker has ended (its frames before the end are all in fd()).
  virtual int sentinel() const = 0;
  /// Named in WorkerLost and RemoteError (a process id; for a rank, its worker's).
  virtual int pid() const = 0;
  /// After the end: the id of the last task the worker began (0: none), so the engine knows
  /// which task of the ones it sent died with it.
  virtual std::uint64_t running() const = 0;
  /// Asks it to end now (SIGTERM), or makes it (SIGKILL); no-ops once it has ended.
  virtual void terminate() = 0;
  virtual void kill() = 0;
  /// Waits for the end (within `timeout`); then exitcode() is set.
  virtual void join(std::optional<Duration> timeout) = 0;
  virtual std::optional<int> exitcode() const = 0;
  /// Where the worker's frames come from when not from fd() (which then carries only the
  /// bytes that ring for them, and the end); null: from fd().
  virtual ResultRing* ring() { return nullptr; }
};

// What each worker is started with.
struct WorkerSpec {
  std::uint32_t slot = 0;  // 0 .. processes - 1
  std::string initializer;
  std::int64_t maxtasks = 0;  // 0: no limit
  std::int64_t spin_ns = 0;
  const Context* context = nullptr;
};

// Starts workers for one engine.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::unique_ptr<WorkerLink> start(const WorkerSpec& spec) = 0;
};

// A worker's loop, whatever carries its frames: runs `initializer`, says kReady, then runs
// the tasks read from `fd` in order, writing each result back, until told to stop, EOF,
// `maxtasks` tasks, or (parent >= 0) the parent's sentinel. Before each task, the task's id
// is stored in `running` (when not null). Its frames go to `ring` (not null: `fd` then only
// rings for them) or to `fd`. Returns when done; the parent gone ends it quietly.
void serve_tasks(int fd, int parent, std::atomic_ref<std::uint64_t>* running,
                 const std::string& initializer, std::int64_t maxtasks, std::int64_t spin_ns,
                 ResultRing* ring = nullptr);

}  // namespace mp::detail
