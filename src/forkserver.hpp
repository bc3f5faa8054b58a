// The fork server (CPython forkserver.py): a fresh, single-threaded exec of the program that
// forks children on request. Its children are made with clone(CLONE_PARENT), so they are the
// requesting program's own children: waited for, signalled and reaped exactly like fork and
// spawn children, and still joinable with their true exit codes if the server dies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace mp::detail {

/// A request, as the server reads it before acting (decode_request checks every field).
struct ForkRequest {
  static constexpr std::uint32_t kMagic = 0x314b524d;  // "MRK1"
  static constexpr std::uint32_t kMaxFds = 64;
  static constexpr std::uint32_t kHasSentinel = 1;
  static constexpr std::uint32_t kParentDeathSignal = 2;  // a daemon: dies with the program
  static constexpr std::uint32_t kHasStdout = 4;          // the program's current stdout follows
  static constexpr std::uint32_t kHasStderr = 8;          // the program's current stderr follows
  std::uint32_t magic = kMagic;
  std::uint32_t nfds = 0;   // sent with it: data socket, [sentinel], [stdout], [stderr], passed...
  std::uint32_t flags = 0;  // kHas* | kParentDeathSignal
  std::uint32_t reserved = 0;
};

/// Validates a request's bytes and the number of descriptors that came with it; throws
/// std::runtime_error naming what is wrong.
ForkRequest decode_request(std::span<const std::byte> bytes, std::size_t fds_received);

/// Client side: asks the server (started, connected and authenticated as needed; restarted
/// once if it has died or become unreachable) for a child and returns its pid. Adds
/// kParentDeathSignal for a daemon when that signal can work. Throws std::system_error with
/// the server's errno when it could not make the child.
int forkserver_fork(ForkRequest request, std::span<const int> fds, bool daemon);
/// Stops the server (at normal exit); waits for it and removes its socket directory.
void forkserver_stop();
/// Drops this process's connection to the server (the next start connects again; for tests).
void forkserver_disconnect();
/// Around fork() (runtime's fork handlers): the client's lock is held across it; in the child
/// the parent's server is then forgotten without being touched.
void forkserver_before_fork();
void forkserver_after_fork(bool in_child);
/// Hooks the server runs once before it forks (set_forkserver_preload).
void forkserver_set_preload(std::vector<void (*)()> hooks);
/// The hash of the environment, and the working directory, the running (or next) server
/// started with: its children have them unless told otherwise.
std::uint64_t forkserver_environment_hash();
std::string forkserver_cwd();
/// The running server's pid, or -1; its socket path, or empty (for tests).
int forkserver_pid();
std::string forkserver_address();

/// The fork server's main loop (mp::init in a program started with kForkServerFlag).
[[noreturn]] void forkserver_main(int argc, char** argv);

}  // namespace mp::detail
