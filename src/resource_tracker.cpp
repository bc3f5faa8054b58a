// The resource tracker (CPython's resource_tracker.py), without a message per resource.
//
// CPython writes a line down a pipe for every register and unregister, waking its tracker each
// time. Here the registrations live in a table in shared memory (a memfd the program, its
// children and the tracker all map): registering is a few stores, no system call. The pipe is
// only a lifeline: the tracker, a fresh exec of the program started on first use, blocks
// reading it, and when the last write end closes (every process of the tree has ended, however
// it ended) it removes what the table still holds, warning on stderr as CPython does.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "mp/reduction.hpp"
#include "mp/resource_tracker.hpp"
#include "mp/spawn.hpp"
#include "posix/futex.hpp"
#include "posix/posix.hpp"
#include "posix/shm.hpp"
#include "resource_tracker.hpp"
#include "runtime.hpp"

namespace mp {
namespace detail {
namespace {

// One registration. A slot goes kEmpty (never used: a lookup stops here) or kDeleted -> kWriting
// (claimed by one process) -> kLive -> kDeleted.
struct Slot {
  static constexpr std::uint32_t kEmpty = 0, kWriting = 1, kLive = 2, kDeleted = 3;
  std::atomic<std::uint32_t> state{kEmpty};
  std::uint32_t kind = 0;  // 1: shared_memory
  std::uint32_t length = 0;
  std::uint32_t pad = 0;
  char name[256];
};
constexpr std::size_t kSlots = 4096;  // 1 MiB, sparse: only slots in use take memory
constexpr std::uint32_t kSharedMemory = 1;

struct Table {
  Slot slots[kSlots];
};

std::size_t home_of(std::string_view name) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return static_cast<std::size_t>(h % kSlots);
}

struct Tracker {
  std::mutex mu;
  int lifeline = -1;  // our write end of the tracker's pipe; -1: no tracker yet
  posix::SharedMapping table;
  int pid = 0;  // the tracker, when this process started it (and must reap it)
  // The table is mapped on first use: a child that never registers anything (most) pays for
  // no mapping. Until then table.fd is set and table.addr null.
  Table* slots() {
    if (!table.addr) {
      const int fd = std::exchange(table.fd, -1);
      table = posix::map_shared(fd);
    }
    return static_cast<Table*>(table.addr);
  }
};

Tracker& tracker() {
  static Tracker* t = new Tracker;  // never destroyed: used until the very end of the process
  return *t;
}

void forget(Tracker& t) {
  if (t.lifeline >= 0) posix::unique_fd(t.lifeline).reset();
  t.lifeline = -1;
  posix::unmap_shared(t.table);
}

// A new tracker with a new, empty table (a relaunched one starts afresh, as CPython's). On
// failure nothing is left open.
void launch(Tracker& t) {
  forget(t);
  try {
    t.table = posix::create_shared_mapping(sizeof(Table), "mp-resource-tracker");
    auto [r, w] = posix::make_pipe();
    int pid = -1;
    const std::vector<std::string> argv = {mp::get_executable(), kResourceTrackerFlag, "3", "4"};
    const int keep[] = {r.get(), t.table.fd};
    posix::spawn_process(spawn_executable(), argv, keep, &pid);
    t.lifeline = w.release();
    t.pid = pid;
  } catch (...) {
    forget(t);
    throw;
  }
}

// Whether the tracker still reads its pipe: a write end whose readers are all gone polls
// POLLERR. One system call, no wake-up of the tracker.
bool tracker_alive(const Tracker& t) {
  return posix::has_reader(t.lifeline);
}

void check(std::string_view name, std::string_view kind) {
  if (kind != "shared_memory")
    throw std::invalid_argument("Cannot register " + std::string(name) +
                                " for automatic cleanup: unknown resource type " +
                                std::string(kind));
  if (name.empty() || name.size() > sizeof(Slot::name) || name.find('\0') != std::string_view::npos)
    throw std::invalid_argument("resource name not trackable: '" + std::string(name) + "'");
}

bool same_name(const Slot& s, std::string_view name) {
  return s.length == name.size() && std::memcmp(s.name, name.data(), name.size()) == 0;
}

void add(Table& table, std::string_view name) {
  // Registered already (CPython's tracker keeps a set): nothing to add.
  for (std::size_t i = 0, at = home_of(name); i < kSlots; ++i, at = (at + 1) % kSlots) {
    const Slot& s = table.slots[at];
    const std::uint32_t state = s.state.load(std::memory_order_acquire);
    if (state == Slot::kEmpty) break;
    if (state == Slot::kLive && same_name(s, name)) return;
  }
  for (std::size_t i = 0, at = home_of(name); i < kSlots; ++i, at = (at + 1) % kSlots) {
    Slot& s = table.slots[at];
    std::uint32_t state = s.state.load(std::memory_order_relaxed);
    if (state != Slot::kEmpty && state != Slot::kDeleted) continue;
    if (!s.state.compare_exchange_strong(state, Slot::kWriting, std::memory_order_acquire))
      continue;
    s.kind = kSharedMemory;
    s.length = static_cast<std::uint32_t>(name.size());
    std::memcpy(s.name, name.data(), name.size());
    s.state.store(Slot::kLive, std::memory_order_release);
    return;
  }
  throw std::runtime_error("resource tracker: more than 4096 resources registered at once");
}

void remove(Table& table, std::string_view name) {
  for (std::size_t i = 0, at = home_of(name); i < kSlots; ++i, at = (at + 1) % kSlots) {
    Slot& s = table.slots[at];
    std::uint32_t state = s.state.load(std::memory_order_acquire);
    if (state == Slot::kEmpty) return;  // never registered (or registered with a dead tracker)
    if (state == Slot::kLive && same_name(s, name) &&
        s.state.compare_exchange_strong(state, Slot::kDeleted, std::memory_order_relaxed))
      return;
  }
}

}  // namespace

void track_resource(std::string_view kind, std::string_view name) {
  resource_tracker::register_resource(name, kind);
}

void untrack_resource(std::string_view kind, std::string_view name) {
  resource_tracker::unregister_resource(name, kind);
}

void resource_tracker_before_fork() {
  tracker().mu.lock();
}
void resource_tracker_after_fork(bool in_child) {
  Tracker& t = tracker();
  // A fork child shares the tracker (it keeps the write end and the table), not the duty to
  // reap it.
  if (in_child) t.pid = 0;
  t.mu.unlock();
}

int tracker_for_child() {
  Tracker& t = tracker();
  std::lock_guard l(t.mu);
  // Process::start() has started it; a dry run (the fork server's warm-up) hands nothing.
  if (t.lifeline < 0 || t.table.fd < 0) return -1;
  const int index = reduction::duplicate_for_child(t.lifeline);
  reduction::duplicate_for_child(t.table.fd);  // index + 1
  return index;
}

void adopt_tracker(int index) {
  const int lifeline = reduction::passed_fd(index), table = reduction::passed_fd(index + 1);
  Tracker& t = tracker();
  std::lock_guard l(t.mu);
  forget(t);
  t.table = {table, nullptr, 0};
  t.lifeline = lifeline;
  t.pid = 0;
}

void resource_tracker_stop() {
  Tracker& t = tracker();
  std::lock_guard l(t.mu);
  forget(t);
  if (t.pid > 0) posix::reap(t.pid, true);  // it ends at EOF, once no child holds the pipe
  t.pid = 0;
}

int resource_tracker_pid() {
  Tracker& t = tracker();
  std::lock_guard l(t.mu);
  return t.pid;
}

[[noreturn]] void resource_tracker_main(int argc, char** argv) {
  // Like CPython's: a Ctrl-C or a SIGTERM meant for the program must not stop the cleanup.
  posix::ignore_signal(SIGINT);
  posix::ignore_signal(SIGTERM);
  if (argc < 4) posix::exit_now(2);
  const int lifeline = std::atoi(argv[2]);
  posix::set_cloexec(lifeline, true);
  posix::SharedMapping mapping = posix::map_shared(std::atoi(argv[3]));
  const Table& table = *static_cast<const Table*>(mapping.addr);
  // Nothing is ever written here: the read returns at EOF, when every write end has closed.
  std::byte ignored[64];
  while (posix::read_full(lifeline, ignored) == sizeof ignored) {
  }
  std::vector<std::string> leaked;
  for (const Slot& s : table.slots)
    if (s.state.load(std::memory_order_acquire) == Slot::kLive && s.kind == kSharedMemory)
      leaked.emplace_back(s.name, std::min<std::size_t>(s.length, sizeof s.name));
  if (!leaked.empty())
    std::fprintf(stderr,
                 "resource_tracker: There appear to be %zu leaked shared_memory objects to clean "
                 "up at shutdown\n",
                 leaked.size());
  for (const auto& name : leaked) {
    try {
      posix::shm_unlink(name);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "resource_tracker: %s: %s\n", name.c_str(), e.what());
    }
  }
  std::fflush(stderr);
  posix::exit_now(0);
}

}  // namespace detail

namespace resource_tracker {

void ensure_running() {
  auto& t = detail::tracker();
  std::lock_guard l(t.mu);
  if (t.lifeline < 0) detail::launch(t);
}

void register_resource(std::string_view name, std::string_view kind) {
  detail::check(name, kind);
  auto& t = detail::tracker();
  std::lock_guard l(t.mu);
  if (t.lifeline < 0) {
    detail::launch(t);
  } else if (!detail::tracker_alive(t)) {
    // Killed: start another, as CPython does, and say what that costs: what the dead one
    // knew is not known to the new one.
    std::fputs(
        "resource_tracker: process died unexpectedly, relaunching.  Some resources might "
        "leak.\n",
        stderr);
    if (t.pid > 0) posix::reap(t.pid, true);
    t.pid = 0;
    detail::launch(t);
  }
  detail::add(*t.slots(), name);
}

void unregister_resource(std::string_view name, std::string_view kind) {
  detail::check(name, kind);
  auto& t = detail::tracker();
  std::lock_guard l(t.mu);
  if (t.lifeline >= 0) detail::remove(*t.slots(), name);
}

}  // namespace resource_tracker
}  // namespace mp
