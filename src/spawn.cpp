// Spawned children (CPython spawn.py): the preparation data and the process object travel down
// an inherited socket as one checksummed frame; mp::init is the child's spawn_main.
#include "mp/spawn.hpp"

#include <csignal>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <sstream>

#include <cereal/types/optional.hpp>  // PrepData::environment

#include "forkserver.hpp"
#include "mp/context.hpp"
#include "mp/process.hpp"
#include "posix/posix.hpp"
#include "resource_tracker.hpp"
#include "runtime.hpp"

namespace mp {
namespace detail {
namespace {

constexpr std::uint32_t kMagic = 0x3150534d;  // "MSP1"
constexpr std::uint32_t kVersion = 1;

struct Header {
  std::uint32_t magic;
  std::uint32_t version;
  std::uint64_t length;
  std::uint64_t check;  // of the fields above: a corrupted length is caught before allocating
};

std::uint64_t fnv1a(const void* data, std::size_t n) {
  auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

// What a child needs before it can rebuild its process object (spawn.get_preparation_data).
struct PrepData {
  std::string build_id;
  std::string name;
  std::string class_token;
  std::vector<int> identity;
  bool daemon = false;
  AuthenticationString authkey;
  std::string cwd;
  int parent_pid = 0;
  std::string parent_name;
  int start_method = 0;
  bool parent_death_signal = false;
  std::string executable;
  // Under forkserver: the program's environment at start() (the server's dates from its own
  // start). Spawned children get it from exec.
  std::optional<std::vector<std::string>> environment;
  int resource_tracker = -1;  // the index of the parent's tracker among the passed descriptors

  template <class Archive>
  void serialize(Archive& ar) {
    ar(build_id, name, class_token, identity, daemon, authkey, cwd, parent_pid, parent_name,
       start_method, parent_death_signal, executable, environment, resource_tracker);
  }
};

std::string g_executable;  // empty: /proc/self/exe; guarded by runtime().exe_mu

[[noreturn]] void die(const std::string& msg) {
  flush_std_streams();
  std::string line = "multiprocess: spawned child: " + msg + "\n";
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
  posix::exit_now(1);
}

int parse_fd(const char* s) {
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (!s[0] || *end || v < -1 || v > 1 << 30)
    die(std::string("bad descriptor argument '") + s + "'");
  return static_cast<int>(v);
}

std::vector<std::byte> read_frame(int fd) {
  Header h{};
  auto got = posix::read_full(fd, {reinterpret_cast<std::byte*>(&h), sizeof h});
  if (got != sizeof h)
    die("the spawn data was truncated (got " + std::to_string(got) + " of " +
        std::to_string(sizeof h) + " header bytes): the parent died or closed the pipe");
  if (h.magic != kMagic || h.check != fnv1a(&h, offsetof(Header, check)))
    die("the spawn data is corrupted (bad header)");
  if (h.version != kVersion)
    die("the spawn data has version " + std::to_string(h.version) + ", expected " +
        std::to_string(kVersion) + ": the parent is a different build");
  std::vector<std::byte> payload(h.length + sizeof(std::uint64_t));
  got = posix::read_full(fd, payload);
  if (got != payload.size())
    die("the spawn data was truncated (got " + std::to_string(got) + " of " +
        std::to_string(payload.size()) + " bytes): the parent died or closed the pipe");
  std::uint64_t sum;
  std::memcpy(&sum, payload.data() + h.length, sizeof sum);
  if (sum != fnv1a(payload.data(), h.length)) die("the spawn data is corrupted (bad checksum)");
  payload.resize(h.length);
  return payload;
}

// Reads the preparation data and rebuilds the process object from a frame's payload. With
// `apply`, the data takes effect in this process (environment, parent-death signal, cwd, ...);
// without, it is a dry run (the fork server warms itself up with one).
std::unique_ptr<Process> rebuild(std::vector<std::byte> payload, PrepData& prep, bool apply) {
  try {
    reduction::InArchive ar(payload);  // in place: no copy of the payload
    ar(prep.build_id);
    if (prep.build_id != posix::build_id())
      die("this program (" + posix::self_exe() + ", build-id " + posix::build_id() +
          ") is a different build from its parent (build-id " + prep.build_id +
          "); mp::set_executable must name a copy of the same binary");
    ar(prep.name, prep.class_token, prep.identity, prep.daemon, prep.authkey, prep.cwd,
       prep.parent_pid, prep.parent_name, prep.start_method, prep.parent_death_signal,
       prep.executable, prep.environment, prep.resource_tracker);
    if (apply) {
      if (prep.resource_tracker >= 0) adopt_tracker(prep.resource_tracker);
      // Usually the server's environment is already the program's: then nothing to redo.
      if (prep.environment) posix::set_environment(*prep.environment);
      if (prep.parent_death_signal && prep.daemon &&
          !posix::set_parent_death_signal(SIGKILL, prep.parent_pid))
        posix::exit_now(1);  // the parent is already gone: a daemon child has nothing to do
      if (!prep.cwd.empty()) posix::chdir(prep.cwd);
      if (!prep.executable.empty()) set_executable(prep.executable);
      force_default_start_method(static_cast<StartMethod>(prep.start_method));
    }
    reduction::CodeRef loader_ref;
    ar(loader_ref);
    auto loader = reinterpret_cast<reduction::ProcessLoader>(
        const_cast<void*>(reduction::resolve(loader_ref)));
    return loader(ar);
  } catch (const std::exception& e) {
    die(std::string("cannot rebuild the process object: ") + reduction::demangle(typeid(e)) + ": " +
        e.what());
  }
}

}  // namespace

namespace {
// The rebuilt object takes the identity the parent gave it.
void adopt_identity(Process& self, const PrepData& prep) {
  auto& s = ProcessState::of(self);
  s.identity = prep.identity;
  s.name = prep.name;
  s.class_token = prep.class_token;
  s.daemon = prep.daemon;
  s.authkey = prep.authkey;
  s.parent_pid = prep.parent_pid;
  s.method = static_cast<StartMethod>(prep.start_method);
}
}  // namespace

bool check_pickle_mode() {
  const char* v = std::getenv("MP_CHECK_PICKLE");
  return v && *v && *v != '0';
}

std::unique_ptr<Process> rebuild_process(const SpawnPayload& payload) {
  reduction::set_passed_fds(payload.fds);
  std::vector<std::byte> body(payload.frame.begin() + sizeof(Header),
                              payload.frame.end() - sizeof(std::uint64_t));
  PrepData prep;
  auto self = rebuild(std::move(body), prep, false);
  adopt_identity(*self, prep);
  return self;
}

[[noreturn]] void child_main(int data_fd, int sentinel_w, std::vector<int> passed_fds) {
  auto& r = runtime();
  r.own_sentinel_w = sentinel_w;
  reduction::set_passed_fds(std::move(passed_fds));

  PrepData prep;
  auto self = rebuild(read_frame(data_fd), prep, true);
  adopt_identity(*self, prep);
  // Kept for the process's life, like the object itself (CPython's _current_process).
  Process& me = *self.release();
  const bool forked = static_cast<StartMethod>(prep.start_method) == StartMethod::forkserver;
  // A fork server child's stdin is the server's, /dev/null already.
  int code = bootstrap(me, ParentInfo{prep.parent_name, prep.parent_pid, data_fd}, !forked);
  if (forked) {
    // A fork of the server: as a fork child, it must not run the static destructors and
    // atexit handlers of the server's image (bootstrap flushed the streams already).
    posix::exit_now(code);
  }
  // A spawned child is a program of its own: leave normally, so the atexit handlers and
  // static destructors of this process run.
  std::exit(code);
}

void warm_up_child_path() {
  // Everything a child does for the first time in this image (binding symbols, setting up
  // locales and streams, first allocations) is done once here, before the server forks:
  // each child inherits it instead of paying for it (in time and copy-on-write faults).
  Process sample;
  auto payload = spawn_payload(sample, StartMethod::forkserver);
  rebuild_process(payload);
  std::ostringstream warm;
  warm << exitcode_to_name(-15) << sample;
}

SpawnPayload spawn_payload(const Process& p, StartMethod method) {
  auto& s = ProcessState::of(p);
  PrepData prep;
  prep.build_id = posix::build_id();
  prep.name = p.name();
  prep.class_token = s.class_token.empty() ? std::string(p.mp_class_name()) : s.class_token;
  prep.identity = s.identity;
  prep.daemon = s.daemon;
  prep.authkey = s.authkey;
  // A spawned child inherits our cwd at exec, as a fork child does at fork; a fork server's
  // child has the server's, which was ours when it started: send it only if it changed.
  if (method == StartMethod::forkserver) {
    auto cwd = posix::getcwd();
    if (cwd != detail::forkserver_cwd()) prep.cwd = std::move(cwd);
  }
  prep.parent_pid = posix::getpid();
  prep.parent_name = current_process().name();
  prep.start_method = static_cast<int>(method);
  // PR_SET_PDEATHSIG follows the thread that made the child: only the main thread outlives
  // the program. Under forkserver the server arranges it (the request says so).
  prep.parent_death_signal = method == StartMethod::spawn && posix::is_main_thread();
  {
    std::lock_guard l(runtime().exe_mu);
    prep.executable = g_executable;
  }
  // The server's environment is the program's as it was when the server started; send ours
  // only if it has changed since.
  if (method == StartMethod::forkserver &&
      posix::environment_hash() != detail::forkserver_environment_hash())
    prep.environment = posix::get_environment();

  std::string bytes(sizeof(Header), '\0');
  SpawnPayload out;
  {
    reduction::SpawningScope spawning;  // the authkey may cross here, and only here
    reduction::OutArchive ar(bytes);
    prep.resource_tracker = tracker_for_child();
    ar(prep);
    pickle_process(p, ar);
    out.fds = spawning.fds;
  }
  const std::size_t length = bytes.size() - sizeof(Header);
  Header h{kMagic, kVersion, length, 0};
  h.check = fnv1a(&h, offsetof(Header, check));
  std::uint64_t sum = fnv1a(bytes.data() + sizeof(Header), length);
  auto& frame = out.frame;
  frame.resize(bytes.size() + sizeof sum);
  std::memcpy(frame.data(), bytes.data(), bytes.size());
  std::memcpy(frame.data(), &h, sizeof h);
  std::memcpy(frame.data() + bytes.size(), &sum, sizeof sum);
  return out;
}

std::string spawn_executable() {
  std::lock_guard l(runtime().exe_mu);
  if (g_executable.empty()) return "/proc/self/exe";  // the running image itself
  // Another file may be another build: only a build-id tells (code travels as offsets).
  if (posix::build_id().empty())
    throw ProcessError(
        "mp::set_executable needs this program to carry a GNU build-id (link "
        "with -Wl,--build-id) so that a different build can be refused");
  return g_executable;
}

}  // namespace detail

void init(int argc, char** argv) {
  detail::runtime().initialized = true;
  if (argc < 2 || !argv || !argv[1]) return;
  const bool marked = std::strcmp(argv[1], detail::kSpawnFlag) == 0 ||
                      std::strcmp(argv[1], detail::kForkServerFlag) == 0 ||
                      std::strcmp(argv[1], detail::kResourceTrackerFlag) == 0;
  // A setuid/setgid program must not run code references read from a descriptor: whoever
  // starts it with our marker would choose what it runs.
  if (marked && posix::secure_execution())
    detail::die("refusing to act as a spawned child in a setuid/setgid program");
  if (std::strcmp(argv[1], detail::kSpawnFlag) == 0) {
    // argv: exe --multiprocess-spawn DATA_FD SENTINEL_FD|-1 N_PASSED; the passed descriptors
    // follow the others.
    if (argc < 5) detail::die("bad command line");
    detail::runtime().spawn_pending = false;
    const int data = detail::parse_fd(argv[2]), sentinel = detail::parse_fd(argv[3]);
    const int n = detail::parse_fd(argv[4]);
    std::vector<int> passed;
    for (int i = 0, fd = std::max(data, sentinel) + 1; i < n; ++i) passed.push_back(fd + i);
    // Our descriptors must not reach our own spawned children.
    posix::set_cloexec(data, true);
    if (sentinel >= 0) posix::set_cloexec(sentinel, true);
    for (int fd : passed) posix::set_cloexec(fd, true);
    detail::child_main(data, sentinel, std::move(passed));
  }
  if (std::strcmp(argv[1], detail::kForkServerFlag) == 0) {
    detail::runtime().spawn_pending = false;
    detail::forkserver_main(argc, argv);
  }
  if (std::strcmp(argv[1], detail::kResourceTrackerFlag) == 0) {
    detail::runtime().spawn_pending = false;
    detail::resource_tracker_main(argc, argv);
  }
}

void set_executable(std::string path) {
  std::lock_guard l(detail::runtime().exe_mu);
  detail::g_executable = std::move(path);
}

std::string get_executable() {
  {
    std::lock_guard l(detail::runtime().exe_mu);
    if (!detail::g_executable.empty()) return detail::g_executable;
  }
  static const std::string self = posix::self_exe();
  return self;
}

}  // namespace mp
