// The forkserver start method (CPython popen_forkserver.py): the server forks the child, which
// then reads its preparation data and process object as a spawned child does.
#include <fcntl.h>
#include <signal.h>

#include "mp/errors.hpp"
#include "posix/child.hpp"
#include "posix/forkserver.hpp"
#include "posix/launch.hpp"

namespace mp::posix {

std::shared_ptr<detail::Popen> popen_forkserver(std::span<const std::byte> frame,
                                                std::span<const int> fds, bool daemon) {
  // As under spawn: one socket for the data, kept open by us as the child's lifeline.
  auto [parent_end, child_end] = make_socketpair();
  unique_fd sentinel_r, sentinel_w;
  if (!have_pidfd()) std::tie(sentinel_r, sentinel_w) = make_pipe();
  std::vector<int> send = {child_end.get()};
  std::uint32_t flags = 0;
  if (sentinel_w) {
    send.push_back(sentinel_w.get());
    flags |= ForkRequest::kHasSentinel;
  }
  for (auto [fd, flag] : {std::pair{1, ForkRequest::kHasStdout}, {2, ForkRequest::kHasStderr}}) {
    if (::fcntl(fd, F_GETFD) >= 0) {  // closed here: closed in the child too
      send.push_back(fd);
      flags |= flag;
    }
  }
  send.insert(send.end(), fds.begin(), fds.end());
  if (send.size() > ForkRequest::kMaxFds) throw std::logic_error("too many fds");

  int pid = -1;
  for (int attempt = 0;; ++attempt) {
    bool from_main_thread = false;
    unique_fd conn = forkserver_connect(from_main_thread);
    ForkRequest request;
    request.nfds = static_cast<std::uint32_t>(send.size());
    request.flags = flags;
    // The child's parent thread is the one that started the server (CLONE_PARENT).
    if (daemon && from_main_thread) request.flags |= ForkRequest::kParentDeathSignal;
    try {
      pid = forkserver_request(conn.get(), request, send);
      break;
    } catch (const mp::ProcessError&) {
      if (attempt > 0) throw;  // the server died mid-request: once more, with a new one
    }
  }
  child_end.reset();
  sentinel_w.reset();
  // The child is our own (CLONE_PARENT) and unreaped: its pid cannot have been reused.
  unique_fd pidfd = open_pidfd_or_kill(pid);
  int watch = pidfd ? pidfd.get() : sentinel_r.get();
  try {
    send_all(parent_end.get(), frame, watch);
  } catch (...) {
    send_signal(pidfd.get(), pid, SIGKILL);
    reap(pid, true);
    throw;
  }
  return std::make_shared<Child>(pid, std::move(pidfd), std::move(sentinel_r),
                                 std::move(parent_end));
}

}  // namespace mp::posix
