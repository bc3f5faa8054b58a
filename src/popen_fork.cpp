// The fork start method (CPython popen_fork.py): the child is a copy of this process that runs
// the process object it already holds.
#include <tuple>

#include "popen.hpp"

namespace mp::detail {

std::shared_ptr<Popen> popen_fork(ForkChildMain child_main, void* arg) {
  // The child keeps `child_r` open: it reads EOF there once this process (holding `parent_w`)
  // has ended. That is how parent_process().is_alive() works in the child.
  auto [child_r, parent_w] = posix::make_pipe();
  posix::unique_fd sentinel_r, sentinel_w;
  if (!posix::have_pidfd()) std::tie(sentinel_r, sentinel_w) = posix::make_pipe();

  int pid = posix::fork_process();
  if (pid == 0) {
    parent_w.reset();
    sentinel_r.reset();
    child_main(arg, child_r.release(), sentinel_w.release());
    posix::exit_now(1);  // child_main never returns; this only documents it
  }
  child_r.reset();
  sentinel_w.reset();
  posix::unique_fd pidfd = open_pidfd_or_kill(pid);
  return std::make_shared<Child>(pid, std::move(pidfd), std::move(sentinel_r), std::move(parent_w));
}

}  // namespace mp::detail
