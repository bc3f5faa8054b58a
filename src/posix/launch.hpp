// The launchers, one per start method.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "popen.hpp"
#include "posix/posix.hpp"

namespace mp::posix {

/// Whether pidfd_open works here (Linux 5.3+, and no seccomp filter refusing it).
bool have_pidfd();

/// pidfd_open for a child just started; on failure the child is killed and reaped, and the
/// error rethrown. Invalid (no throw) where pidfds are unsupported.
posix::unique_fd open_pidfd_or_kill(int pid);

/// The end of a spawn or forkserver start, once the child exists: its pidfd, the rest of its
/// frame sent down `parent_end` (kept as its lifeline), and the Child that owns them all. If
/// sending fails, the child is killed and reaped before the error propagates.
std::shared_ptr<detail::Popen> hand_over_frame(int pid, std::span<const std::byte> frame,
                                               unique_fd parent_end, unique_fd sentinel_r);

/// What a fork child runs: given the descriptor that becomes readable when the parent ends
/// and its own sentinel pipe end (-1 with pidfds). Must not return.
using ForkChildMain = void (*)(void* arg, int parent_sentinel, int own_sentinel_w);

/// fork(): the child runs child_main(arg, ...) and never returns here.
std::shared_ptr<detail::Popen> popen_fork(ForkChildMain child_main, void* arg);

/// A fresh exec of `exe` reading `frame` (preparation data + pickled process) from an
/// inherited socket named on its command line.
/// `argv0` is what the child sees as its program name; `fds` are handed over to it in order.
std::shared_ptr<detail::Popen> popen_spawn(const std::string& exe, const std::string& argv0,
                                           std::span<const std::byte> frame,
                                           std::span<const int> fds);

/// Asks the fork server (started or restarted as needed) for a child that reads `frame`;
/// `fds` are handed over to it by SCM_RIGHTS.
std::shared_ptr<detail::Popen> popen_forkserver(std::span<const std::byte> frame,
                                                std::span<const int> fds, bool daemon);

/// The marker arguments of a spawned child's and of the fork server's command lines.
inline constexpr const char* kSpawnFlag = "--multiprocess-spawn";
inline constexpr const char* kForkServerFlag = "--multiprocess-forkserver";

/// The fork server's main loop (mp::init in a program started with kForkServerFlag).
[[noreturn]] void forkserver_main(int argc, char** argv);

}  // namespace mp::posix
