// The spawn start method (CPython popen_spawn_posix.py): a fresh exec of the program that reads
// its preparation data and process object from an inherited socket.

#include <string>
#include <tuple>
#include <vector>

#include "popen.hpp"

namespace mp::detail {

std::shared_ptr<Popen> popen_spawn(const std::string& exe, const std::string& argv0,
                                   std::span<const std::byte> frame, std::span<const int> fds) {
  // One socket carries the data and then serves as the child's view of this parent: we keep
  // our end open for the child's whole life, so EOF there means the parent has gone.
  // A socket rather than a pipe: send(MSG_NOSIGNAL) cannot raise SIGPIPE if the child dies.
  auto [parent_end, child_end] = posix::make_socketpair();
  posix::unique_fd sentinel_r, sentinel_w;
  if (!posix::have_pidfd()) std::tie(sentinel_r, sentinel_w) = posix::make_pipe();

  // The child's descriptors are 3 (the socket), 4 (the sentinel pipe, when used), then the
  // ones its arguments handed over.
  std::vector<std::string> argv = {argv0, kSpawnFlag, "3", sentinel_w ? "4" : "-1",
                                   std::to_string(fds.size())};
  std::vector<int> keep = {child_end.get()};
  if (sentinel_w) keep.push_back(sentinel_w.get());
  keep.insert(keep.end(), fds.begin(), fds.end());
  int pid = -1;
  posix::spawn_process(exe, argv, keep, &pid);
  child_end.reset();
  sentinel_w.reset();
  return hand_over_frame(pid, frame, std::move(parent_end), std::move(sentinel_r));
}

}  // namespace mp::detail
