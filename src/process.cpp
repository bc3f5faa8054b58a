// The process object (CPython process.py) and this process's registry of children.
#include "mp/process.hpp"

#include <cxxabi.h>
#include <stdio_ext.h>
#include <csignal>

#include <algorithm>
#if defined(__GLIBCXX__)
#include <ext/stdio_sync_filebuf.h>
#endif
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>

#include "forkserver.hpp"
#include "mp/context.hpp"
#include "mp/resource_tracker.hpp"
#include "mp/spawn.hpp"
#include "posix/posix.hpp"
#include "resource_tracker.hpp"
#include "runtime.hpp"

namespace mp {
namespace detail {

namespace {

// The library's own locks are taken around every fork() — ours and any other — in one fixed
// order (the fork server client, the resource tracker, the arenas, the runtime), so a fork
// child of a busy multi-threaded parent finds each structure whole and each lock free. Nothing
// in the library calls fork() while holding one of them (posix_spawn runs no fork handlers).
void before_fork() {
  forkserver_before_fork();
  resource_tracker_before_fork();
  arenas_before_fork();
  runtime().mu.lock();
  runtime().exe_mu.lock();
}
void after_fork_in_parent() {
  runtime().exe_mu.unlock();
  runtime().mu.unlock();
  arenas_after_fork(false);
  resource_tracker_after_fork(false);
  forkserver_after_fork(false);
}
void after_fork_in_child() {
  runtime().exe_mu.unlock();
  runtime().mu.unlock();
  arenas_after_fork(true);
  resource_tracker_after_fork(true);
  forkserver_after_fork(true);
}

}  // namespace

Runtime& runtime() {
  // Never destroyed: children are joined by an atexit handler that may run after static
  // destructors of objects constructed later.
  static Runtime* r = [] {
    auto* made = new Runtime;
    posix::at_fork(before_fork, after_fork_in_parent, after_fork_in_child);
    return made;
  }();
  return *r;
}

const char* const kNoInitError =
    "mp::init(argc, argv) was not called: the program's main() must call mp::init(argc, argv) "
    "as its first statement (spawned children, the fork server and the resource tracker are "
    "this program started again)";

const char* const kBootstrappingError =
    "An attempt has been made to start a new process before the current process has finished "
    "its bootstrapping phase. This probably means that this program was started as a spawned "
    "child and its main() does not call mp::init(argc, argv) as its first statement: "
    "int main(int argc, char** argv) { mp::init(argc, argv); ... }";

void flush_std_streams() {
  // Python flushes sys.stdout and sys.stderr (util._flush_std_streams): the C++ and C standard
  // streams here. Streams synced with stdio (the default) are flushed through their FILE, and
  // only when something is pending: fflush locks the FILE, and in a fork child that write
  // costs a copy-on-write page fault. A closed or failed stream must not stop anything
  // (CPython test_stdio).
  for (std::ostream* os : {&std::cout, &std::cerr, &std::clog}) {
#if defined(__GLIBCXX__)
    if (dynamic_cast<__gnu_cxx::stdio_sync_filebuf<char>*>(os->rdbuf())) continue;
#endif
    os->flush();
  }
  for (FILE* f : {stdout, stderr})
    if (__fpending(f) > 0) std::fflush(f);
}

namespace {

thread_local bool t_in_run = false;

std::string join_identity(const std::vector<int>& id) {
  std::string s;
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (i) s += ':';
    s += std::to_string(id[i]);
  }
  return s;
}

// Drops finished children from the registry (CPython process._cleanup).
void cleanup_children(Runtime& r) {
  std::lock_guard l(r.mu);
  std::erase_if(r.children, [](const auto& e) { return e->popen->poll().has_value(); });
}

void discard_child(const std::shared_ptr<ChildEntry>& e) {
  auto& r = runtime();
  std::lock_guard l(r.mu);
  std::erase(r.children, e);
}

extern "C" void exit_function_c() {
  exit_function();
}

void register_exit_function() {
  static std::once_flag once;
  std::call_once(once, [] { std::atexit(exit_function_c); });
}

std::string current_exception_type() {
  auto* t = abi::__cxa_current_exception_type();
  return t ? reduction::demangle(*t) : "unknown exception";
}

// What start() hands to a fork child.
struct ForkArg {
  Process* self;
  bool from_main_thread;  // PR_SET_PDEATHSIG follows the forking thread, not the process
  const SpawnPayload* pickled = nullptr;  // check mode: the child rebuilds its object from it
};

// What a fork child runs right after fork(): this process is now the child.
[[noreturn]] void fork_child_main(void* arg, int parent_sentinel, int own_sentinel_w) {
  const auto fork_arg = *static_cast<ForkArg*>(arg);
  // In check mode the child runs what a spawned child would: the object rebuilt from its
  // declared fields, not the parent's copy (kept, like a spawned child's, for its life).
  auto& self = fork_arg.pickled ? *rebuild_process(*fork_arg.pickled).release() : *fork_arg.self;
  auto& r = runtime();
  // The fork handlers held every lock of ours across the fork: what follows is whole.
  r.fork_child = true;
  // The parent's children are not ours: drop their descriptors, never wait for them.
  for (auto& e : r.children) e->popen->forget();
  r.children.clear();
  if (r.own_sentinel_w >= 0) posix::unique_fd(r.own_sentinel_w).reset();
  r.own_sentinel_w = own_sentinel_w;
  ParentInfo parent{current_process().name(), ProcessState::of(self).parent_pid, parent_sentinel};
  force_default_start_method(StartMethod::fork);
  if (self.daemon() && fork_arg.from_main_thread &&
      !posix::set_parent_death_signal(SIGKILL, parent.pid))
    posix::exit_now(1);
  int code = bootstrap(self, std::move(parent));
  posix::exit_now(code);
}

}  // namespace

void exit_function() {
  auto& r = runtime();
  std::vector<std::shared_ptr<ChildEntry>> live;
  {
    std::lock_guard l(r.mu);
    if (r.exiting) return;
    r.exiting = true;
  }
  if (stop_pools_at_exit) stop_pools_at_exit();
  cleanup_children(r);
  {
    std::lock_guard l(r.mu);
    live = r.children;
  }
  // At exit nothing may throw: a failure for one child must not spare the others.
  for (auto& e : live) {
    try {
      if (e->daemon) e->popen->terminate();
    } catch (const std::exception&) {
    }
  }
  for (auto& e : live) {
    try {
      e->popen->wait(std::nullopt);
    } catch (const std::exception&) {
    }
  }
  {
    std::lock_guard l(r.mu);
    r.children.clear();
  }
  detail::forkserver_stop();  // after the children: none of them needs it any more
}

int bootstrap(Process& self, ParentInfo parent, bool close_stdin) {
  auto& r = runtime();
  {
    std::lock_guard l(r.mu);
    r.counter = 1;
    r.children.clear();
    r.exiting = false;
  }
  r.current = &self;
  r.parent.emplace(std::move(parent.name), parent.pid, parent.sentinel);
  if (close_stdin) posix::close_stdin();

  int code = 0;
  t_in_run = true;
  try {
    try {
      self.run();
    } catch (...) {
      exit_function();
      throw;
    }
    exit_function();
  } catch (const SystemExit& e) {
    if (e.message()) {
      std::cerr << *e.message() << '\n';
      code = 1;
    } else {
      code = *e.code();
    }
  } catch (const std::exception& e) {
    code = 1;
    std::cerr << "Process " << self.name() << ":\n"
              << reduction::demangle(typeid(e)) << ": " << e.what() << '\n';
  } catch (...) {
    code = 1;
    std::cerr << "Process " << self.name() << ":\n"
              << current_exception_type() << " (not derived from std::exception)\n";
  }
  t_in_run = false;
  flush_std_streams();
  return code;
}

void pickle_process(const Process& p, reduction::OutArchive& ar) {
  auto& s = ProcessState::of(p);
  // Named in the errors: "for a spawned child" was wrong under forkserver.
  const StartMethod method = p.start_method();
  const std::string child = method == StartMethod::forkserver ? "a forkserver child"
                            : method == StartMethod::fork ? "a fork child (MP_CHECK_PICKLE is set)"
                                                          : "a spawned child";
  if (s.target && typeid(p) == typeid(Process)) {
    s.target->pickle(ar, child);
  } else if (typeid(p) == typeid(Process)) {
    ar(reduction::code_ref(reinterpret_cast<const void*>(&load_subclass<Process>)));
  } else if (p.mp_declared_type() == typeid(p)) {
    ar(reduction::code_ref(reinterpret_cast<const void*>(p.mp_loader())));
    p.mp_save(ar);
  } else {
    auto type = reduction::demangle(typeid(p));
    throw PicklingError("Can't pickle '" + type + "' for " + child +
                        ": declare its class and fields with MP_FIELDS(" + type +
                        ", field1, field2, ...) inside the class, or use the fork start "
                        "method");
  }
}

}  // namespace detail

using detail::ProcessState;
using detail::runtime;

[[noreturn]] void exit(int code) {
  if (detail::t_in_run) throw SystemExit(code);
  detail::flush_std_streams();
  if (runtime().fork_child) {
    detail::exit_function();
    detail::flush_std_streams();
    posix::exit_now(code);
  }
  std::exit(code);
}

Process::Process() : Process(Options{}) {}

Process::Process(Options options) : s_(std::make_unique<detail::ProcessState>()) {
  auto& r = runtime();
  const Process& creator = current_process();
  {
    std::lock_guard l(r.mu);
    s_->identity = ProcessState::of(creator).identity;
    s_->identity.push_back(r.counter++);
  }
  s_->self = this;
  s_->name = std::move(options.name);
  s_->daemon = options.daemon.value_or(creator.daemon());
  s_->authkey = creator.authkey();
  s_->parent_pid = posix::getpid();
}

Process::Process(Options options, std::unique_ptr<detail::TargetBase> target)
    : Process(std::move(options)) {
  s_->target = std::move(target);
}

Process::Process(MainTag) : s_(std::make_unique<detail::ProcessState>()) {
  s_->self = this;
  s_->name = "MainProcess";
  s_->class_token = "_MainProcess";
  s_->authkey = AuthenticationString(posix::random_bytes(32));
  s_->is_main = true;
}

Process::Process(Process&& o) noexcept : s_(std::move(o.s_)) {
  if (!s_) return;
  s_->self = this;
  if (s_->child) {
    std::lock_guard l(runtime().mu);
    s_->child->owner = this;
  }
}

Process& Process::operator=(Process&& o) noexcept {
  if (this == &o) return *this;
  // The old state (its target's arguments may own other Process objects, whose destructors
  // take the lock) is destroyed after the lock is released.
  std::unique_ptr<detail::ProcessState> old = std::move(s_);
  {
    std::lock_guard l(runtime().mu);
    if (old && old->child) old->child->owner = nullptr;
    s_ = std::move(o.s_);
    if (s_) {
      s_->self = this;
      if (s_->child) s_->child->owner = this;
    }
  }
  return *this;
}

Process::~Process() {
  if (s_ && s_->child) {
    std::lock_guard l(runtime().mu);
    s_->child->owner = nullptr;
  }
}

void Process::run() {
  if (s_->target) s_->target->call();
}

static void check_closed(const detail::ProcessState& s) {
  if (s.closed) throw std::logic_error("process object is closed");
}

static bool is_current(const Process& p) {
  return &current_process() == &p;
}

void Process::start() {
  check_closed(*s_);
  if (s_->child) throw std::logic_error("cannot start a process twice");
  if (s_->parent_pid != posix::getpid())
    throw std::logic_error("can only start a process object created by current process");
  if (current_process().daemon())
    throw std::logic_error("daemonic processes are not allowed to have children");
  auto& r = runtime();
  if (r.spawn_pending) throw std::runtime_error(detail::kBootstrappingError);
  // Before anything is started: under fork the resource tracker, under spawn every child and
  // under forkserver the server is this program started again, and would run its main().
  if (!r.initialized) throw ProcessError(detail::kNoInitError);
  detail::cleanup_children(r);
  detail::register_exit_function();

  std::shared_ptr<detail::Popen> popen;
  const StartMethod method = start_method();
  // As CPython, for every method: under fork, buffered text would be written twice; and the
  // parent's text should come before its child's.
  detail::flush_std_streams();
  // As CPython's spawn and forkserver launchers (and under fork too): the resource tracker
  // runs before the child exists, so the child shares it (inherited, or handed over in the
  // payload) and what the child creates outlives the child.
  resource_tracker::ensure_running();
  if (method == StartMethod::fork) {
    // Check mode: the object is pickled as for spawn, before any child exists, and the child
    // is built from that, so the program behaves as it would under spawn and forkserver.
    std::optional<detail::SpawnPayload> pickled;
    if (detail::check_pickle_mode()) pickled = detail::spawn_payload(*this, method);
    detail::ForkArg arg{this, posix::is_main_thread(), pickled ? &*pickled : nullptr};
    popen = detail::popen_fork(&detail::fork_child_main, &arg);
  } else if (method == StartMethod::spawn) {
    // Everything is pickled before any child exists: an unpicklable target leaves nothing.
    auto payload = detail::spawn_payload(*this, method);
    // /proc/self/exe is the running image even if its file was replaced since.
    popen = detail::popen_spawn(detail::spawn_executable(), get_executable(), payload.frame,
                                payload.fds);
  } else {
    auto payload = detail::spawn_payload(*this, method);
    popen = detail::popen_forkserver(payload.frame, payload.fds, s_->daemon);
  }
  auto entry = std::make_shared<detail::ChildEntry>();
  entry->popen = std::move(popen);
  entry->daemon = s_->daemon;
  entry->owner = this;
  {
    std::lock_guard l(r.mu);
    r.children.push_back(entry);
  }
  s_->child = std::move(entry);
  // Drop the target and its arguments now, as CPython does (bpo-30775).
  s_->target.reset();
}

void Process::join() {
  check_closed(*s_);
  if (s_->parent_pid != posix::getpid()) throw std::logic_error("can only join a child process");
  if (!s_->child) throw std::logic_error("can only join a started process");
  if (s_->child->popen->wait(std::nullopt)) detail::discard_child(s_->child);
}

void Process::join(Duration timeout) {
  check_closed(*s_);
  if (s_->parent_pid != posix::getpid()) throw std::logic_error("can only join a child process");
  if (!s_->child) throw std::logic_error("can only join a started process");
  if (s_->child->popen->wait(timeout)) detail::discard_child(s_->child);
}

bool Process::is_alive() const {
  check_closed(*s_);
  if (is_current(*this)) return true;
  if (s_->parent_pid != posix::getpid()) throw std::logic_error("can only test a child process");
  if (!s_->child) return false;
  if (!s_->child->popen->poll()) return true;
  detail::discard_child(s_->child);
  return false;
}

void Process::terminate() {
  check_closed(*s_);
  if (!s_->child) throw std::logic_error("can only terminate a started process");
  s_->child->popen->terminate();
}

void Process::kill() {
  check_closed(*s_);
  if (!s_->child) throw std::logic_error("can only kill a started process");
  s_->child->popen->kill();
}

void Process::close() {
  if (s_->is_main) return;  // as CPython's _MainProcess.close()
  if (s_->child) {
    if (!s_->child->popen->poll())
      throw std::logic_error(
          "Cannot close a process while it is still running. You should first call join() or "
          "terminate().");
    s_->child->popen->close();
    detail::discard_child(s_->child);
    {
      std::lock_guard l(runtime().mu);
      s_->child->owner = nullptr;
    }
    s_->child.reset();
  }
  s_->closed = true;
}

std::string_view Process::mp_class_name() const {
  if (typeid(*this) == typeid(Process)) return "Process";
  // A subclass without MP_FIELDS: its unqualified name, as Python's type(self).__name__.
  std::string& name = s_->undeclared_class_name;
  if (name.empty()) {
    name = reduction::demangle(typeid(*this));
    auto pos = name.rfind("::");
    if (name.find('<') == std::string::npos && pos != std::string::npos) name.erase(0, pos + 2);
  }
  return name;
}

std::string Process::name() const {
  if (s_->name) return *s_->name;
  std::string token = s_->class_token.empty() ? std::string(mp_class_name()) : s_->class_token;
  return token + "-" + detail::join_identity(s_->identity);
}

void Process::set_name(std::string name) {
  s_->name = std::move(name);
}
bool Process::daemon() const {
  return s_->daemon;
}

void Process::set_daemon(bool daemonic) {
  if (s_->child) throw std::logic_error("process has already started");
  s_->daemon = daemonic;
}

const AuthenticationString& Process::authkey() const {
  return s_->authkey;
}
void Process::set_authkey(AuthenticationString key) {
  s_->authkey = std::move(key);
}

std::optional<int> Process::exitcode() const {
  check_closed(*s_);
  if (!s_->child) return std::nullopt;
  return s_->child->popen->poll();
}

std::optional<pid_t> Process::pid() const {
  check_closed(*s_);
  if (is_current(*this)) return posix::getpid();
  if (!s_->child) return std::nullopt;
  return s_->child->popen->pid();
}

int Process::sentinel() const {
  check_closed(*s_);
  if (!s_->child) throw std::logic_error("process not started");
  return s_->child->popen->sentinel();
}

StartMethod Process::start_method() const {
  return s_->method ? *s_->method : detail::default_start_method();
}

std::string exitcode_to_name(int exitcode) {
  if (exitcode < 0) {
    auto abbrev = posix::signal_abbrev(-exitcode);
    if (!abbrev.empty()) return "-SIG" + abbrev;
  }
  return std::to_string(exitcode);
}

// Python's repr() of a str: single quotes unless the text holds one and no double quote.
static std::string py_repr(const std::string& s) {
  const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\') out += '\\';
    out += c;
  }
  return out + q;
}

std::string Process::repr() const {
  std::optional<int> code;
  std::string status;
  if (is_current(*this)) {
    status = "started";
  } else if (s_->closed) {
    status = "closed";
  } else if (s_->parent_pid != posix::getpid()) {
    status = "unknown";
  } else if (!s_->child) {
    status = "initial";
  } else {
    code = s_->child->popen->poll();
    status = code ? "stopped" : "started";
  }
  std::string token = s_->class_token.empty() ? std::string(mp_class_name()) : s_->class_token;
  std::ostringstream os;
  os << '<' << token << " name=" << py_repr(name());
  if (s_->child) os << " pid=" << s_->child->popen->pid();
  os << " parent=" << (s_->parent_pid ? std::to_string(s_->parent_pid) : "None") << ' ' << status;
  if (code) os << " exitcode=" << exitcode_to_name(*code);
  if (daemon()) os << " daemon";
  os << '>';
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Process& p) {
  return os << p.repr();
}

bool ParentProcess::is_alive() const {
  return !posix::wait_readable(sentinel_, Duration::zero());
}
void ParentProcess::join() const {
  posix::wait_readable(sentinel_, std::nullopt);
}
void ParentProcess::join(Duration timeout) const {
  posix::wait_readable(sentinel_, timeout);
}

std::ostream& operator<<(std::ostream& os, const ParentProcess& p) {
  return os << "<_ParentProcess name=" << py_repr(p.name()) << " parent=None unknown>";
}

Process& current_process() {
  if (Process* p = runtime().current.load()) return *p;
  // Never destroyed, like the runtime: the atexit handler may still ask for it.
  static Process* main = new Process(Process::MainTag{});
  return *main;
}

const ParentProcess* parent_process() {
  auto& r = runtime();
  return r.parent ? &*r.parent : nullptr;
}

std::vector<Process*> active_children() {
  auto& r = runtime();
  detail::cleanup_children(r);
  std::vector<Process*> out;
  std::lock_guard l(r.mu);
  for (auto& e : r.children)
    if (e->owner) out.push_back(e->owner);
  return out;
}

int cpu_count() {
  return posix::cpu_count();
}

namespace detail {
namespace {
// At load time, before main(): was this program started as a spawned child? If so, start()
// refuses until main() calls mp::init (no fork bomb), and a main() that never calls it ends
// with a nonzero code and a message naming the fix, instead of looking like success.
extern "C" void spawn_pending_exit() {
  if (!runtime().spawn_pending) return;
  flush_std_streams();
  std::fputs(
      "multiprocess: this program was started as a spawned child process, but its main() "
      "never called mp::init(argc, argv). Make mp::init(argc, argv) the first statement of "
      "main().\n",
      stderr);
  posix::exit_now(1);
}

__attribute__((constructor)) void detect_spawn_child(int argc, char** argv, char**) {
  if (argc >= 2 && argv && argv[1] &&
      (std::strcmp(argv[1], detail::kSpawnFlag) == 0 ||
       std::strcmp(argv[1], detail::kForkServerFlag) == 0 ||
       std::strcmp(argv[1], kResourceTrackerFlag) == 0)) {
    runtime().spawn_pending = true;
    std::atexit(spawn_pending_exit);
  }
}
}  // namespace
}  // namespace detail

}  // namespace mp
