// A main() that returns while it has children: at exit the library terminates the daemon child
// (its SIGTERM handler runs) and joins the non-daemon one (CPython util._exit_function).
//   exit_with_children OUT_FIFO GATE_FIFO RELEASE_FIFO
// main() returns once RELEASE_FIFO gets a line (after the daemon has installed its handler);
// the non-daemon child ends once GATE_FIFO gets one.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <mp/mp.hpp>

namespace {
char g_out[256];

void say(const std::string& path, const std::string& line) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  std::string l = line + "\n";
  if (fd < 0 || ::write(fd, l.data(), l.size()) < 0) ::_exit(3);
  ::close(fd);
}

extern "C" void on_sigterm(int) {
  // Async-signal-safe: open, write, _exit.
  int fd = ::open(g_out, O_WRONLY | O_CLOEXEC);
  const char msg[] = "daemon got SIGTERM\n";
  if (fd >= 0 && ::write(fd, msg, sizeof msg - 1) < 0) ::_exit(4);
  ::_exit(0);
}

void daemon_child(std::string out) {
  std::strncpy(g_out, out.c_str(), sizeof g_out - 1);
  ::signal(SIGTERM, on_sigterm);
  say(out, "daemon ready");
  for (;;) ::pause();
}

void wait_for_line(std::string fifo) {
  int fd = ::open(fifo.c_str(), O_RDONLY | O_CLOEXEC);
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') {
  }
  ::close(fd);
}
}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  if (argc != 4) return 2;
  mp::Process d(mp::Options{.daemon = true}, daemon_child, std::string(argv[1]));
  mp::Process n(wait_for_line, std::string(argv[2]));
  d.start();
  n.start();
  wait_for_line(argv[3]);
  return 0;  // d and n are still running: the library's atexit handler deals with them
}
