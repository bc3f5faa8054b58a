// The forkserver start method (CPython popen_forkserver.py): the server forks the child, which
// then reads its preparation data and process object as a spawned child does.
#include <fcntl.h>
#include <sys/socket.h>

#include "mp/errors.hpp"
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

  ForkRequest request;
  request.nfds = static_cast<std::uint32_t>(send.size());
  request.flags = flags;
  // Queue what fits of the frame first: the child finds it there as soon as it exists,
  // instead of waiting for our round trip with the server.
  std::size_t queued = 0;
  while (queued < frame.size()) {
    ssize_t n = ::send(parent_end.get(), frame.data() + queued, frame.size() - queued,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      queued += static_cast<std::size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      break;  // full (EAGAIN): the rest goes once the child reads
    }
  }
  const int pid = forkserver_fork(request, send, daemon);
  child_end.reset();
  sentinel_w.reset();
  // The child is our own (CLONE_PARENT) and unreaped: its pid cannot have been reused.
  return hand_over_frame(pid, frame.subspan(queued), std::move(parent_end), std::move(sentinel_r));
}

}  // namespace mp::posix
