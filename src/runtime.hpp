// The library's per-process state and the pieces process.cpp, spawn.cpp and context.cpp share.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "mp/process.hpp"
#include "popen.hpp"

namespace mp::detail {

// A started child as the registry sees it: it outlives its Process object, so that a child
// whose object was destroyed is still reaped, and at exit terminated (daemon) or joined.
struct ChildEntry {
  std::shared_ptr<Popen> popen;
  bool daemon = false;
  Process* owner = nullptr;  // null once the Process object is gone
};

struct ProcessState {
  Process* self = nullptr;
  std::vector<int> identity;        // (1, 2) for "Process-1:2"
  std::optional<std::string> name;  // explicit name; else derived from class and identity
  std::string class_token;          // "SpawnProcess" from a context; else the class name
  bool daemon = false;
  AuthenticationString authkey;
  std::optional<StartMethod> method;  // from a context; else the default context's
  std::unique_ptr<TargetBase> target;
  std::shared_ptr<ChildEntry> child;  // set by start(), dropped by close()
  int parent_pid = 0;                 // the creating process; 0 prints as None
  bool closed = false;
  bool is_main = false;
  mutable std::string undeclared_class_name;  // cache for a subclass without MP_FIELDS

  static ProcessState& of(const Process& p) { return *p.s_; }
};

// This process's view of itself (CPython process.py's module globals).
struct Runtime {
  std::mutex mu;      // guards counter, children and default_method
  std::mutex exe_mu;  // guards the path set_executable() gave
  int counter = 1;
  std::optional<StartMethod> default_method;  // unset until fixed by use or set_start_method
  std::atomic<Process*> current{nullptr};     // null: the main process object
  std::optional<ParentProcess> parent;
  std::vector<std::shared_ptr<ChildEntry>> children;
  bool exiting = false;
  bool fork_child = false;     // this process is a fork child: it must leave through _exit
  bool spawn_pending = false;  // started by spawn, and main() has not called mp::init yet
  bool initialized = false;    // mp::init has run (here, or in the parent a fork copied)
  int own_sentinel_w = -1;     // without pidfds: our end of the parent's sentinel pipe
};
Runtime& runtime();

struct ParentInfo {
  std::string name;
  int pid = 0;
  int sentinel = -1;
};

// Around fork(): the arena allocator's lock (synchronize.cpp), held across it.
void arenas_before_fork();
void arenas_after_fork(bool in_child);

// Runs the process object in this (child) process: CPython's BaseProcess._bootstrap.
// Returns the exit code.
int bootstrap(Process& self, ParentInfo parent, bool close_stdin = true);

// Terminates daemonic children, then joins all children (CPython util._exit_function).
void exit_function();
// Set by the first Pool: stops this process's pools (their workers, their thread) first.
inline void (*stop_pools_at_exit)() = nullptr;

// Flushes C and C++ standard streams (CPython util._flush_std_streams).
void flush_std_streams();

// Serializes the process object for a spawned child; throws PicklingError.
void pickle_process(const Process& p, reduction::OutArchive& ar);

// What a spawned or forkserver child is sent: one frame (preparation data and the pickled
// process object) and the descriptors its arguments handed over (reduction::DupFd).
struct SpawnPayload {
  std::vector<std::byte> frame;
  std::vector<int> fds;
};
SpawnPayload spawn_payload(const Process& p, StartMethod method);

// MP_CHECK_PICKLE=1 (read at each start): fork children too are built from the pickled
// process object, as spawned and forkserver children are (docs/from-python.md).
bool check_pickle_mode();
// What a spawned child would rebuild from `payload`, in this process (a fork child in check
// mode): its descriptors are the same numbers here, inherited.
std::unique_ptr<Process> rebuild_process(const SpawnPayload& payload);

// A spawned or forkserver child: reads the frame from `data_fd`, rebuilds its process object
// (with `passed_fds` for its descriptors) and runs it. Never returns.
[[noreturn]] void child_main(int data_fd, int sentinel_w, std::vector<int> passed_fds);
// In the fork server, before it forks: goes once through what each child will do.
void warm_up_child_path();

// What spawn execs: the path given to set_executable, else /proc/self/exe.
std::string spawn_executable();

// What the default start method becomes when nobody chose one.
inline constexpr StartMethod kDefaultStartMethod = StartMethod::forkserver;

// The default start method, fixing it when unset.
StartMethod default_start_method();
void force_default_start_method(StartMethod m);

// The class token a context gives its processes ("SpawnProcess").
std::string context_class_token(StartMethod m);

// The spawn-child startup text for start() when main() skipped mp::init.
extern const char* const kBootstrappingError;
// What start() says, under every method, in a program whose main() never called mp::init.
extern const char* const kNoInitError;

}  // namespace mp::detail

namespace mp::reduction {
// In a child, before its process object is rebuilt: the descriptors passed_fd() returns.
void set_passed_fds(std::vector<int> fds);

// True only on a thread writing a child's preparation data (inside a SpawningScope).
bool spawning();
// duplicate_for_child, but a descriptor already handed over keeps its index (a shared
// arena holding several of the child's primitives crosses once).
int duplicate_for_child_once(int fd);
// Marks this thread as spawning for its lifetime: the authkey may be written, and descriptors
// registered with duplicate_for_child() are collected in fds.
class SpawningScope {
 public:
  SpawningScope();
  ~SpawningScope();
  SpawningScope(const SpawningScope&) = delete;
  SpawningScope& operator=(const SpawningScope&) = delete;
  std::vector<int> fds;  // in index order

 private:
  SpawningScope* previous_;
};
}  // namespace mp::reduction
