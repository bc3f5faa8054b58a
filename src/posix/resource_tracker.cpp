// The resource tracker (CPython's resource_tracker.py). A fresh exec of the program, started on
// first use, reads "REGISTER:kind:name" / "UNREGISTER:kind:name" lines from a pipe whose write
// end this process and its children hold. When the last write end closes (every process of the
// tree has ended, however it ended) it removes what is still registered, warning on stderr as
// CPython does. Each line is shorter than PIPE_BUF, so lines from many processes never mix.
#include "resource_tracker.hpp"

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>

#include "mp/reduction.hpp"
#include "mp/resource_tracker.hpp"
#include "mp/spawn.hpp"
#include "posix/posix.hpp"
#include "posix/shm.hpp"
#include "runtime.hpp"

namespace mp {
namespace detail {
namespace {

struct Tracker {
  std::mutex mu;
  int fd = -1;  // our write end; -1: none yet
  int pid = 0;  // the tracker, when this process started it (and must reap it)
};

Tracker& tracker() {
  static Tracker* t = [] {
    // A fork child keeps the write end (it shares the tracker) but not the duty to reap it,
    // and not a lock another thread may have held at the fork.
    ::pthread_atfork(nullptr, nullptr, [] {
      Tracker& t = tracker();
      new (&t.mu) std::mutex;
      t.pid = 0;
    });
    return new Tracker;  // never destroyed: used until the very end of the process
  }();
  return *t;
}

void launch(Tracker& t) {
  auto [r, w] = posix::make_pipe();
  int pid = -1;
  const std::vector<std::string> argv = {mp::get_executable(), kResourceTrackerFlag, "3"};
  const int keep[] = {r.get()};
  posix::spawn_process(spawn_executable(), argv, keep, &pid);
  t.fd = w.release();
  t.pid = pid;
}

void check(std::string_view name, std::string_view kind) {
  if (kind != "shared_memory")
    throw std::invalid_argument("Cannot register " + std::string(name) +
                                " for automatic cleanup: unknown resource type " +
                                std::string(kind));
  if (name.find_first_of(std::string_view("\n\0", 2)) != std::string_view::npos ||
      name.size() > 512)
    throw std::invalid_argument("resource name not trackable: '" + std::string(name) + "'");
}

void send(std::string_view command, std::string_view kind, std::string_view name) {
  std::string line =
      std::string(command) + ":" + std::string(kind) + ":" + std::string(name) + "\n";
  const std::span<const std::byte> parts[] = {std::as_bytes(std::span(line))};
  Tracker& t = tracker();
  std::lock_guard l(t.mu);
  if (t.fd < 0) launch(t);
  try {
    posix::write_all(t.fd, parts, false);
    return;
  } catch (const std::system_error& e) {
    if (e.code().value() != EPIPE) throw;
  }
  // Nobody reads: the tracker was killed. Start another, as CPython does, and say what that
  // costs: the dead one's registrations are lost.
  std::fputs(
      "resource_tracker: process died unexpectedly, relaunching.  Some resources might "
      "leak.\n",
      stderr);
  posix::unique_fd(t.fd).reset();
  t.fd = -1;
  if (t.pid > 0) posix::reap(t.pid, true);
  t.pid = 0;
  launch(t);
  posix::write_all(t.fd, parts, false);
}

}  // namespace

void track_resource(std::string_view kind, std::string_view name) {
  resource_tracker::register_resource(name, kind);
}

void untrack_resource(std::string_view kind, std::string_view name) {
  resource_tracker::unregister_resource(name, kind);
}

int tracker_for_child() {
  Tracker& t = tracker();
  std::lock_guard l(t.mu);
  return t.fd < 0 ? -1 : reduction::duplicate_for_child(t.fd);
}

void adopt_tracker(int fd) {
  Tracker& t = tracker();
  std::lock_guard l(t.mu);
  if (t.fd >= 0) posix::unique_fd(t.fd).reset();
  t.fd = fd;
  t.pid = 0;
}

void resource_tracker_stop() {
  Tracker& t = tracker();
  std::lock_guard l(t.mu);
  if (t.fd >= 0) posix::unique_fd(t.fd).reset();
  t.fd = -1;
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
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGTERM, SIG_IGN);
  if (argc < 3) posix::exit_now(2);
  const int fd = std::atoi(argv[2]);
  posix::set_cloexec(fd, true);
  std::map<std::string, std::set<std::string>> registered;  // kind -> names
  std::string pending;
  char chunk[4096];
  for (;;) {
    // Returns once the chunk is full or at EOF: every byte is drained as it comes, so no
    // writer ever blocks on a full pipe.
    const std::size_t n = posix::read_full(fd, std::as_writable_bytes(std::span(chunk)));
    pending.append(chunk, n);
    for (std::size_t nl; (nl = pending.find('\n')) != std::string::npos;) {
      const std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      const auto a = line.find(':'), b = line.find(':', a == std::string::npos ? a : a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      const std::string command = line.substr(0, a), kind = line.substr(a + 1, b - a - 1);
      const std::string name = line.substr(b + 1);
      if (command == "REGISTER") registered[kind].insert(name);
      if (command == "UNREGISTER") registered[kind].erase(name);
    }
    if (n < sizeof chunk) break;  // EOF: every process holding the pipe has ended
  }
  for (const auto& [kind, names] : registered) {
    if (names.empty()) continue;
    std::fprintf(stderr,
                 "resource_tracker: There appear to be %zu leaked %s objects to clean up at "
                 "shutdown\n",
                 names.size(), kind.c_str());
    for (const auto& name : names) {
      try {
        if (kind == "shared_memory") posix::shm_unlink(name);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "resource_tracker: %s: %s\n", name.c_str(), e.what());
      }
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
  if (t.fd < 0) detail::launch(t);
}

void register_resource(std::string_view name, std::string_view kind) {
  detail::check(name, kind);
  detail::send("REGISTER", kind, name);
}

void unregister_resource(std::string_view name, std::string_view kind) {
  detail::check(name, kind);
  detail::send("UNREGISTER", kind, name);
}

}  // namespace resource_tracker
}  // namespace mp
