// The forkserver start method (CPython popen_forkserver.py): the server forks the child, which
// then reads its preparation data and process object as a spawned child does.
#include <stdexcept>
#include <tuple>
#include <vector>

#include "forkserver.hpp"
#include "popen.hpp"

namespace mp::detail {

std::shared_ptr<Popen> popen_forkserver(std::span<const std::byte> frame, std::span<const int> fds,
                                        bool daemon) {
  // As under spawn: one socket for the data, kept open by us as the child's lifeline.
  auto [parent_end, child_end] = posix::make_socketpair();
  posix::unique_fd sentinel_r, sentinel_w;
  if (!posix::have_pidfd()) std::tie(sentinel_r, sentinel_w) = posix::make_pipe();
  std::vector<int> send = {child_end.get()};
  std::uint32_t flags = 0;
  if (sentinel_w) {
    send.push_back(sentinel_w.get());
    flags |= ForkRequest::kHasSentinel;
  }
  for (auto [fd, flag] : {std::pair{1, ForkRequest::kHasStdout}, {2, ForkRequest::kHasStderr}}) {
    if (posix::is_open(fd)) {  // closed here: closed in the child too
      send.push_back(fd);
      flags |= flag;
    }
  }
  send.insert(send.end(), fds.begin(), fds.end());
  if (send.size() > ForkRequest::kMaxFds) throw std::logic_error("too many fds");

  ForkRequest request;
  request.nfds = static_cast<std::uint32_t>(send.size());
  request.flags = flags;
  // Queue what fits of the frame first: the child finds it there as soon as it exists,
  // instead of waiting for our round trip with the server.
  const std::size_t queued = posix::send_nowait(parent_end.get(), frame);
  const int pid = forkserver_fork(request, send, daemon);
  child_end.reset();
  sentinel_w.reset();
  // The child is our own (CLONE_PARENT) and unreaped: its pid cannot have been reused.
  return hand_over_frame(pid, frame.subspan(queued), std::move(parent_end), std::move(sentinel_r));
}

}  // namespace mp::detail
