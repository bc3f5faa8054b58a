// Test helpers: channels a child can use under every start method (FIFOs named by path, since
// connections come later), stream capture, and the generous bound that catches hangs.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <mp/mp.hpp>
#include <mp/types.hpp>  // the tests send maps, optionals, variants, ...

namespace mp_test {

using namespace std::chrono_literals;
constexpr auto kHang = 60s;  // catches hangs; never a speed check

inline std::filesystem::path temp_dir() {
  char tmpl[] = "/tmp/mp-test-XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp");
  return tmpl;
}

/// A one-way line channel through a FIFO. The test process owns it; a child (any start method)
/// gets its path as an argument and calls send()/recv() on the path.
class Channel {
 public:
  Channel() : dir_(temp_dir()), path_((dir_ / "fifo").string()) {
    if (::mkfifo(path_.c_str(), 0600) != 0) throw std::runtime_error("mkfifo");
    // O_RDWR: the FIFO always has a writer (us), so poll() reports data, never hang-ups.
    fd_ = ::open(path_.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  }
  ~Channel() {
    ::close(fd_);
    std::filesystem::remove_all(dir_);
  }
  Channel(const Channel&) = delete;
  const std::string& path() const { return path_; }

  /// The next line a child sent, or nullopt after `timeout`.
  std::optional<std::string> recv(std::chrono::duration<double> timeout = kHang) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<long long>(left.count(), 0))) <= 0) {
        if (left.count() <= 0) return std::nullopt;
        continue;
      }
      char tmp[4096];
      ssize_t n = ::read(fd_, tmp, sizeof tmp);
      if (n > 0) buf_.append(tmp, static_cast<std::size_t>(n));
    }
  }
  /// Sends a line to a child blocked in recv_line(path()).
  void send(const std::string& line) {
    std::string l = line + "\n";
    if (::write(fd_, l.data(), l.size()) != static_cast<ssize_t>(l.size())) std::abort();
  }

  /// Child side: one line (< PIPE_BUF, so lines of concurrent children never interleave).
  /// EINTR-safe: some tests run children under a signal storm.
  static void send(const std::string& path, const std::string& line) {
    int fd;
    while ((fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC)) < 0)
      if (errno != EINTR) std::abort();
    std::string l = line + "\n";
    ssize_t n;
    while ((n = ::write(fd, l.data(), l.size())) < 0)
      if (errno != EINTR) std::abort();
    if (n != static_cast<ssize_t>(l.size())) std::abort();
    ::close(fd);
  }
  /// Child side: blocks until the test sends a line.
  static std::string recv_line(const std::string& path) {
    int fd;
    while ((fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC)) < 0)
      if (errno != EINTR) std::abort();
    std::string line;
    for (char c;;) {
      ssize_t n = ::read(fd, &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n != 1 || c == '\n') break;
      line += c;
    }
    ::close(fd);
    return line;
  }

 private:
  std::filesystem::path dir_;
  std::string path_;
  int fd_ = -1;
  std::string buf_;
};

/// Redirects this process's fd (1 or 2) into a file while alive; children started meanwhile
/// inherit it. text() reads what was written.
class Capture {
 public:
  explicit Capture(int fd) : fd_(fd), dir_(temp_dir()), file_(dir_ / "out") {
    std::fflush(nullptr);
    saved_ = ::dup(fd_);
    int f = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ::dup2(f, fd_);
    ::close(f);
  }
  ~Capture() {
    restore();
    std::filesystem::remove_all(dir_);
  }
  void restore() {
    if (saved_ < 0) return;
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    ::dup2(saved_, fd_);
    ::close(saved_);
    saved_ = -1;
  }
  std::string text() {
    restore();
    std::ifstream in(file_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  int fd_;
  int saved_ = -1;
  std::filesystem::path dir_, file_;
};

/// poll() for readability, EINTR retried by looping until the deadline.
inline bool wait_readable(int fd, std::chrono::duration<double> timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<long long>(left.count(), 0))) > 0) return true;
    if (left.count() <= 0) return false;
  }
}

inline int open_fd_count() {
  int n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n - 1;
}

/// The what() of the E that f() throws; `none` if it throws nothing.
template <class E, class F>
std::string error_text(F f, const char* none = "no exception") {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return none;
}
/// The what() of the std::logic_error f() throws ("no exception" if none).
template <class F>
std::string logic_text(F f) {
  return error_text<std::logic_error>(f);
}

/// No child of ours has ended unreaped (no zombie).
inline bool no_child_left() {
  siginfo_t info{};
  return ::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0 || info.si_pid == 0;
}

/// SIGALRM every 100 µs without SA_RESTART, for the rest of this process: every blocking call
/// sees EINTR. A child of the test binary arms it before mp::init when MP_TEST_ALARM_STORM
/// is set, so its reading of the spawn data is covered too.
void arm_alarm_storm();
int alarms_received();

/// The test binary's helper programs sit beside it.
std::string helper_path(const std::string& name);

}  // namespace mp_test
