// mp::Connection between two processes, side by side with the floors the operating system sets:
// the same exchange written with plain write/read on a socketpair (what a duplex mp::Pipe() is)
// and on a pair of pipes, each between the parent and a fork()ed child.
//
//   - *_roundtrip: the parent sends an 8-byte message, the child echoes it back; the time
//     reported is one round trip. mp's child is started with the fork context and echoes with
//     recv_bytes/send_bytes until a "stop" message.
//   - floor_socketpair_framed_roundtrip: the socketpair floor with mp's framing and system calls
//     (one write of length + body; one read for the length, one for the body): the best mp can
//     do while it never reads past the end of a message.
//   - floor_socketpair_busypoll_roundtrip: the socketpair floor again, but each side first spins
//     up to 20 us on a non-blocking recv before a blocking read: what a bounded busy-poll in
//     recv_bytes would buy (the library does not do it). The spin_hits counter is the share of
//     the parent's reads that the spin satisfied.
//   - *_bandwidth: 64 MiB in 1 MiB messages from the parent to the child, which answers one byte
//     after the last one; the time reported is per 64 MiB (bytes_per_second: the rate). mp's
//     child receives with recv_bytes_into a preallocated 1 MiB buffer, or with recv_bytes.
//
// Each case runs three ways, because where the two processes run decides the result more than
// anything else (in a small VM, waking an idle CPU costs tens of microseconds):
//   - no suffix: wherever the scheduler puts them (on 2 CPUs: often the same one, not always);
//   - *_1core: both pinned to one CPU: every message is a context switch, and a spinner only
//     burns the time its peer needs to answer;
//   - *_2cores: a CPU each: every message wakes the other CPU, and a spinner finds the answer
//     without sleeping.
// The targets are checked where the placement is fixed: *_1core and *_2cores.
//
// Repetitions are interleaved at random (--benchmark_enable_random_interleaving=true, which a
// later flag may turn off) so that a change of load on the machine hits every case alike.
//
//   connection [--benchmark_* flags]
#include <mp/mp.hpp>

#include <benchmark/benchmark.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pinning.hpp"
#include "repetitions.hpp"

namespace {

constexpr std::size_t kSmall = 8;                     // bytes per round-trip message
constexpr std::size_t kChunk = std::size_t{1} << 20;  // bytes per bandwidth message
constexpr int kChunks = 64;                           // messages per bandwidth iteration
constexpr std::size_t kTotal = kChunk * kChunks;
constexpr std::string_view kStop = "stop";  // tells mp's children to return
constexpr long kSpinNs = 20000;             // the busy-poll floor's spin before blocking

using bench::Pin;
using bench::pin_child;
using bench::Pinning;

// ---- mp's children (fork context: started from this very process image)

void mp_echo(mp::Connection conn, int cpu) {
  pin_child(cpu);
  for (;;) {
    std::string m = conn.recv_bytes();
    if (m == kStop) return;
    conn.send_bytes(m);
  }
}

// Receives kChunks messages, answers one byte, and again, until "stop".
void mp_sink(mp::Connection conn, bool into, int cpu) {
  pin_child(cpu);
  std::vector<std::byte> buf(kChunk);
  std::size_t got = 0;
  for (;;) {
    std::size_t n;
    if (into) {
      n = conn.recv_bytes_into(buf);
      if (n == kStop.size() && std::memcmp(buf.data(), kStop.data(), n) == 0) return;
    } else {
      std::string m = conn.recv_bytes();
      if (m == kStop) return;
      n = m.size();
    }
    got += n;
    if (got >= kTotal) {
      got = 0;
      conn.send_bytes("!");
    }
  }
}

// ---- mp

void run_mp_roundtrip(benchmark::State& state, Pin where) {
  Pinning pin(where);
  if (!pin.ok()) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  try {
    auto [parent, child] = mp::Pipe();
    auto p = mp::fork_context.Process(mp_echo, std::move(child), pin.child_cpu());
    p.start();
    const std::array<std::byte, kSmall> ping{};
    for (auto _ : state) {
      parent.send_bytes(ping);
      std::string pong = parent.recv_bytes();
      if (pong.size() != kSmall) {
        state.SkipWithError("wrong echo");
        break;
      }
    }
    parent.send_bytes(kStop);
    p.join();
    if (p.exitcode() != 0) state.SkipWithError("echo child did not exit with 0");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void run_mp_bandwidth(benchmark::State& state, bool into, Pin where) {
  Pinning pin(where);
  if (!pin.ok()) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  try {
    auto [parent, child] = mp::Pipe();
    auto p = mp::fork_context.Process(mp_sink, std::move(child), into, pin.child_cpu());
    p.start();
    std::vector<std::byte> chunk(kChunk, std::byte{0x5a});
    for (auto _ : state) {
      for (int i = 0; i < kChunks; ++i) parent.send_bytes(chunk);
      if (parent.recv_bytes() != "!") {
        state.SkipWithError("wrong answer");
        break;
      }
    }
    parent.send_bytes(kStop);
    p.join();
    if (p.exitcode() != 0) state.SkipWithError("sink child did not exit with 0");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kTotal));
}

// ---- floors, in plain C style

long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

// One read of at most n bytes (EINTR retried). With spin_ns > 0 (a socket), non-blocking recvs
// for up to spin_ns first; *spun tells whether one of them got the data.
ssize_t read_some(int fd, void* buf, size_t n, long spin_ns, int* spun) {
  ssize_t r;
  if (spun) *spun = 0;
  if (spin_ns > 0) {
    long t0 = now_ns();
    do {
      r = recv(fd, buf, n, MSG_DONTWAIT);
      if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        if (spun) *spun = 1;
        return r;
      }
    } while (now_ns() - t0 < spin_ns);
  }
  do r = read(fd, buf, n);
  while (r < 0 && errno == EINTR);
  return r;
}

// Exactly n bytes; 0 at once on EOF, -1 on error or EOF inside.
ssize_t read_full(int fd, void* buf, size_t n, long spin_ns, int* spun) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read_some(fd, (char*)buf + got, n - got, spin_ns, got == 0 ? spun : NULL);
    if (r == 0 && got == 0) return 0;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return (ssize_t)n;
}

int write_full(int fd, const void* buf, size_t n) {
  size_t put = 0;
  while (put < n) {
    ssize_t r = write(fd, (const char*)buf + put, n - put);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    put += (size_t)r;
  }
  return 0;
}

// A message of n <= kSmall bytes. Raw: the bytes alone, one write and one read. Framed: as mp
// does it (CPython's 4-byte big-endian length first), with mp's system calls but nothing else:
// one write for length and body, then one read for the length and one for the body.
int send_msg(int fd, const char* body, size_t n, int framed) {
  if (!framed) return write_full(fd, body, n);
  unsigned char m[4 + kSmall];
  m[0] = m[1] = 0;
  m[2] = (unsigned char)(n >> 8);
  m[3] = (unsigned char)n;
  memcpy(m + 4, body, n);
  return write_full(fd, m, 4 + n);
}

// The message's size; 0 on EOF, -1 on error.
ssize_t recv_msg(int fd, char* body, size_t n, int framed, long spin_ns, int* spun) {
  if (!framed) return read_full(fd, body, n, spin_ns, spun);
  unsigned char h[4];
  ssize_t r = read_full(fd, h, 4, spin_ns, spun);
  if (r <= 0) return r;
  size_t len = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
  if (len > n || read_full(fd, body, len, 0, NULL) != (ssize_t)len) return -1;
  return (ssize_t)len;
}

// A child echoing kSmall-byte messages from `in` to `out` until EOF.
[[noreturn]] void floor_echo(int in, int out, int framed, long spin_ns) {
  char buf[kSmall];
  for (;;) {
    ssize_t r = recv_msg(in, buf, kSmall, framed, spin_ns, NULL);
    if (r == 0) _exit(0);
    if (r < 0 || send_msg(out, buf, (size_t)r, framed) != 0) _exit(1);
  }
}

enum class Channel { socketpair, pipes };
enum Framing { raw, framed };

void run_floor_roundtrip(benchmark::State& state, Channel ch, long spin_ns, Pin where,
                         Framing framing = raw) {
  Pinning pin(where);
  if (!pin.ok()) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  // Parent writes to fds[0].. and reads from its own end; the child the other way round.
  int p_read, p_write, c_read, c_write;
  int sv[2], down[2], up[2];
  if (ch == Channel::socketpair) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      state.SkipWithError("socketpair failed");
      return;
    }
    p_read = p_write = sv[0];
    c_read = c_write = sv[1];
  } else {
    if (pipe2(down, O_CLOEXEC) != 0 || pipe2(up, O_CLOEXEC) != 0) {
      state.SkipWithError("pipe2 failed");
      return;
    }
    p_read = up[0];
    p_write = down[1];
    c_read = down[0];
    c_write = up[1];
  }
  pid_t pid = fork();
  if (pid == 0) {
    pin_child(pin.child_cpu());
    close(p_read);
    if (p_write != p_read) close(p_write);
    floor_echo(c_read, c_write, framing, spin_ns);
  }
  close(c_read);
  if (c_write != c_read) close(c_write);
  char ping[kSmall] = {0}, pong[kSmall];
  long hits = 0;
  for (auto _ : state) {
    int spun = 0;
    if (pid < 0 || send_msg(p_write, ping, kSmall, framing) != 0 ||
        recv_msg(p_read, pong, kSmall, framing, spin_ns, &spun) != (ssize_t)kSmall) {
      state.SkipWithError("floor round trip failed");
      break;
    }
    hits += spun;
  }
  if (ch == Channel::socketpair) shutdown(p_write, SHUT_WR);  // EOF for the child
  close(p_write);
  if (p_read != p_write) close(p_read);
  int status = 0;
  if (pid > 0 && (waitpid(pid, &status, 0) != pid || status != 0))
    state.SkipWithError("floor child failed");
  if (spin_ns > 0)
    state.counters["spin_hits"] =
        state.iterations() ? (double)hits / (double)state.iterations() : 0.0;
}

void run_floor_bandwidth(benchmark::State& state, Pin where) {
  Pinning pin(where);
  if (!pin.ok()) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    state.SkipWithError("socketpair failed");
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {  // reads until EOF, one byte back per kTotal received
    pin_child(pin.child_cpu());
    close(sv[0]);
    char* buf = (char*)malloc(kChunk);
    size_t got = 0;
    for (;;) {
      ssize_t r = read_some(sv[1], buf, kChunk, 0, NULL);
      if (r == 0) _exit(0);
      if (r < 0) _exit(1);
      got += (size_t)r;
      if (got >= kTotal) {
        got -= kTotal;
        if (write_full(sv[1], "!", 1) != 0) _exit(1);
      }
    }
  }
  close(sv[1]);
  std::vector<char> chunk(kChunk, 0x5a);
  for (auto _ : state) {
    bool ok = pid > 0;
    for (int i = 0; ok && i < kChunks; ++i) ok = write_full(sv[0], chunk.data(), kChunk) == 0;
    char answer;
    if (!ok || read_full(sv[0], &answer, 1, 0, NULL) != 1) {
      state.SkipWithError("floor bandwidth failed");
      break;
    }
  }
  shutdown(sv[0], SHUT_WR);
  close(sv[0]);
  int status = 0;
  if (pid > 0 && (waitpid(pid, &status, 0) != pid || status != 0))
    state.SkipWithError("floor child failed");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kTotal));
}

// ---- registration

benchmark::internal::Benchmark* setup(benchmark::internal::Benchmark* b, double min_time) {
  // Median of 5 repetitions: on 2 cores a single run is at the mercy of the scheduler.
  return bench::repeat(b->UseRealTime()->Unit(benchmark::kMicrosecond), min_time, 5);
}

void register_all() {
  const double rt = 0.15, bw = 0.25;  // seconds per repetition
  struct Placement {
    Pin pin;
    const char* suffix;
  };
  const Placement placements[] = {{Pin::none, ""}, {Pin::same, "_1core"}, {Pin::split, "_2cores"}};
  auto name = [](const char* base, const Placement& where) {
    return std::string(base) + where.suffix;
  };
  for (const Placement& w : placements) {
    const Pin pin = w.pin;
    setup(benchmark::RegisterBenchmark(name("mp_roundtrip", w).c_str(),
                                       [pin](benchmark::State& s) { run_mp_roundtrip(s, pin); }),
          rt);
    setup(benchmark::RegisterBenchmark(
              name("floor_socketpair_roundtrip", w).c_str(),
              [pin](benchmark::State& s) { run_floor_roundtrip(s, Channel::socketpair, 0, pin); }),
          rt);
    setup(benchmark::RegisterBenchmark(name("floor_socketpair_framed_roundtrip", w).c_str(),
                                       [pin](benchmark::State& s) {
                                         run_floor_roundtrip(s, Channel::socketpair, 0, pin,
                                                             framed);
                                       }),
          rt);
    setup(benchmark::RegisterBenchmark(
              name("floor_pipes_roundtrip", w).c_str(),
              [pin](benchmark::State& s) { run_floor_roundtrip(s, Channel::pipes, 0, pin); }),
          rt);
    setup(benchmark::RegisterBenchmark(name("floor_socketpair_busypoll_roundtrip", w).c_str(),
                                       [pin](benchmark::State& s) {
                                         run_floor_roundtrip(s, Channel::socketpair, kSpinNs, pin);
                                       }),
          rt);
  }
  for (const Placement& w : placements) {
    const Pin pin = w.pin;
    setup(benchmark::RegisterBenchmark(
              name("mp_bandwidth_recv_bytes_into", w).c_str(),
              [pin](benchmark::State& s) { run_mp_bandwidth(s, true, pin); }),
          bw)
        ->Unit(benchmark::kMillisecond);
    setup(benchmark::RegisterBenchmark(
              name("mp_bandwidth_recv_bytes", w).c_str(),
              [pin](benchmark::State& s) { run_mp_bandwidth(s, false, pin); }),
          bw)
        ->Unit(benchmark::kMillisecond);
    setup(benchmark::RegisterBenchmark(name("floor_socketpair_bandwidth", w).c_str(),
                                       [pin](benchmark::State& s) { run_floor_bandwidth(s, pin); }),
          bw)
        ->Unit(benchmark::kMillisecond);
  }
}

// The console output, plus the median real time of each benchmark (µs) for the ratio table.
class Collector : public benchmark::ConsoleReporter {
 public:
  Collector() : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_ColorTabular : OO_Tabular) {}
  std::map<std::string, double> median;
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs)
      if (!r.error_occurred && (r.run_type == Run::RT_Iteration || r.aggregate_name == "median"))
        median[r.run_name.function_name] =
            r.GetAdjustedRealTime() * 1e6 / benchmark::GetTimeUnitMultiplier(r.time_unit);
  }
};

double mib_per_s(double us_per_64mib) {
  return (double)kTotal / (1 << 20) / (us_per_64mib * 1e-6);
}

const char* const kSuffixes[] = {"", "_1core", "_2cores"};

void print_grid(const std::map<std::string, double>& t) {
  struct Line {
    const char *label, *base;
    bool rate;
  };
  const Line lines[] = {
      {"round trip, us", nullptr, false},
      {"  mp Pipe()", "mp_roundtrip", false},
      {"  socketpair", "floor_socketpair_roundtrip", false},
      {"  socketpair, mp's framing", "floor_socketpair_framed_roundtrip", false},
      {"  pipe pair", "floor_pipes_roundtrip", false},
      {"  socketpair, 20 us busy-poll", "floor_socketpair_busypoll_roundtrip", false},
      {"64 MiB in 1 MiB messages, MiB/s", nullptr, true},
      {"  mp recv_bytes_into", "mp_bandwidth_recv_bytes_into", true},
      {"  mp recv_bytes", "mp_bandwidth_recv_bytes", true},
      {"  socketpair write/read", "floor_socketpair_bandwidth", true},
  };
  std::printf("\n%-34s %10s %10s %10s   (medians)\n", "", "unpinned", "1 core", "2 cores");
  for (const Line& l : lines) {
    std::printf("%-34s", l.label);
    for (const char* suffix : kSuffixes) {
      if (!l.base) break;
      auto it = t.find(std::string(l.base) + suffix);
      if (it == t.end())
        std::printf(" %10s", "-");
      else
        std::printf(l.rate ? " %10.0f" : " %10.2f", l.rate ? mib_per_s(it->second) : it->second);
    }
    std::printf("\n");
  }
}

void print_ratios(const std::map<std::string, double>& t) {
  enum Kind { time, rate };
  struct Row {
    Kind kind;  // time: num/den of the times, lower is better; rate: num/den of the rates
    std::string num, den;
    double limit;  // the target: time <= limit, rate >= limit; 0: none, for information
    std::string note;
  };
  std::vector<std::vector<Row>> groups;
  for (const char* sfx : kSuffixes) {
    const std::string x = sfx;
    const bool pinned = !x.empty();  // targets only where the placement is fixed
    const char* luck = "placement left to the scheduler";
    groups.push_back({
        {time, "mp_roundtrip" + x, "floor_socketpair_roundtrip" + x, pinned ? 1.1 : 0,
         pinned ? "" : luck},
        {time, "mp_roundtrip" + x, "floor_socketpair_framed_roundtrip" + x, 0,
         "floor with mp's framing & syscalls"},
        {time, "floor_socketpair_framed_roundtrip" + x, "floor_socketpair_roundtrip" + x, 0,
         "the framing's second read"},
        {time, "floor_pipes_roundtrip" + x, "floor_socketpair_roundtrip" + x, 0,
         "pipes instead of a socket"},
        {time, "floor_socketpair_busypoll_roundtrip" + x, "floor_socketpair_roundtrip" + x, 0,
         "< 1: what a 20 us busy-poll gains"},
        {rate, "mp_bandwidth_recv_bytes_into" + x, "floor_socketpair_bandwidth" + x,
         pinned ? 0.8 : 0, pinned ? "" : luck},
        {rate, "mp_bandwidth_recv_bytes" + x, "floor_socketpair_bandwidth" + x, pinned ? 0.8 : 0,
         pinned ? "" : luck},
    });
  }
  groups.push_back({
      {time, "floor_socketpair_roundtrip_2cores", "floor_socketpair_roundtrip_1core", 0,
       "waking another CPU vs a context switch"},
      {time, "floor_socketpair_busypoll_roundtrip_2cores", "floor_socketpair_roundtrip_1core", 0,
       "< 1: busy-poll apart beats blocking together"},
      {time, "floor_socketpair_busypoll_roundtrip_2cores", "floor_socketpair_roundtrip", 0,
       "< 1: ... beats the unpinned floor"},
  });
  std::printf("\n%-78s %9s %9s %8s  %s\n", "ratio of medians (time; bandwidth: of MiB/s)", "num",
              "den", "ratio", "target");
  for (const auto& rows : groups) {
    bool first = true;
    for (const Row& r : rows) {
      auto n = t.find(r.num), d = t.find(r.den);
      if (n == t.end() || d == t.end()) continue;  // filtered out or failed
      double num = r.kind == time ? n->second : mib_per_s(n->second);
      double den = r.kind == time ? d->second : mib_per_s(d->second);
      double ratio = num / den;
      std::string name = r.num + " / " + r.den, target = r.note;
      if (r.limit > 0) {
        bool ok = r.kind == time ? ratio <= r.limit : ratio >= r.limit;
        char buf[48];
        std::snprintf(buf, sizeof buf, "%s %.1fx %s", r.kind == time ? "<=" : ">=", r.limit,
                      ok ? "ok" : "MISSED");
        target = buf;
      }
      if (first) std::printf("\n");
      first = false;
      std::printf("%-78s %9.*f %9.*f %7.2fx  %s\n", name.c_str(), r.kind == time ? 2 : 0, num,
                  r.kind == time ? 2 : 0, den, ratio, target.c_str());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);  // for a spawned child (none here: every mp child is forked)

  // Interleaved repetitions by default; the caller's flags come after, so they can say no.
  std::vector<char*> args(argv, argv + argc);
  char interleave[] = "--benchmark_enable_random_interleaving=true";
  args.insert(args.begin() + 1, interleave);
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);

  register_all();
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  print_grid(reporter.median);
  print_ratios(reporter.median);
}
