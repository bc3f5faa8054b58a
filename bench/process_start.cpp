// Start + join of a no-op child with mp's spawn, fork and forkserver start methods, side by side
// with the floors the operating system sets: posix_spawn of this same binary, posix_spawn of a
// plain C++ no-op that does not link multiprocess, and fork + _exit.
//
//   - mp_forkserver is timed with its server already running (warmed up once per run);
//     forkserver_first_start is the other half: in a fresh process, the first start + join,
//     which execs the server and then has it fork the child.
//   - The *_1GiB cases repeat the mp ones while the parent holds 1 GiB of touched memory: spawn
//     and forkserver should stay flat, fork grows with the page tables it copies.
//   - The *_1GiB_8threads cases add 8 threads spinning in the parent while timing. What the
//     parent holds still costs spawn and forkserver nothing, but with fewer cores than spinners
//     every child, server and the parent itself wait for a core: the floors timed under the same
//     load (posix_spawn_self_1GiB_8threads, fork_exit_1GiB_8threads) show that share.
//   - The *_64concurrent cases start 64 no-op children back to back, then join all 64: the
//     time reported is per batch of 64.
//   - The *_parent_memory/MiB:N cases sweep what the parent holds, 1 MiB to 4 GiB of touched
//     memory (the sizes that fit in half of MemAvailable), for each start method and the
//     fork + _exit floor: how a start's cost grows with the parent (tools/report.sh charts it).
//
//   process_start [--benchmark_* flags]
#include <mp/mp.hpp>

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "repetitions.hpp"

extern char** environ;

namespace {

// argv[1] of a child of the "posix_spawn(self)" floor: exit at the top of main.
constexpr const char* kExitNow = "--bench-exit-now";
// argv[1] of a child of forkserver_first_start: time the first forkserver start + join and
// write the nanoseconds, in decimal, to descriptor kFirstStartFd.
constexpr const char* kFirstStart = "--bench-forkserver-first-start";
constexpr int kFirstStartFd = 3;
// Children per batch of the *_64concurrent cases.
constexpr int kBatch = 64;

void noop() {}

bool start_join(const mp::Context& ctx) {
  auto p = ctx.Process(noop);
  p.start();
  p.join();
  return p.exitcode() == 0;
}

// ---- mp

void run_mp(benchmark::State& state, const mp::Context& ctx) {
  // The server starts on the first forkserver start; that is forkserver_first_start's business.
  if (ctx.start_method() == mp::StartMethod::forkserver && !start_join(ctx)) {
    state.SkipWithError("warm-up child did not exit with 0");
    return;
  }
  for (auto _ : state) {
    if (!start_join(ctx)) {
      state.SkipWithError("child did not exit with 0");
      break;
    }
  }
}

void BM_mp_spawn(benchmark::State& state) {
  run_mp(state, mp::spawn_context);
}
void BM_mp_fork(benchmark::State& state) {
  run_mp(state, mp::fork_context);
}
void BM_mp_forkserver(benchmark::State& state) {
  run_mp(state, mp::forkserver_context);
}

// 64 starts back to back, then 64 joins: the children run (and exit) while the next ones start.
void run_mp_batch(benchmark::State& state, const mp::Context& ctx) {
  if (ctx.start_method() == mp::StartMethod::forkserver && !start_join(ctx)) {
    state.SkipWithError("warm-up child did not exit with 0");
    return;
  }
  std::vector<mp::Process> batch;
  batch.reserve(kBatch);
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) {
      batch.push_back(ctx.Process(noop));
      batch.back().start();
    }
    bool ok = true;
    for (auto& p : batch) {
      p.join();
      ok = ok && p.exitcode() == 0;
    }
    batch.clear();
    if (!ok) {
      state.SkipWithError("a child did not exit with 0");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}

void BM_mp_spawn_batch(benchmark::State& state) {
  run_mp_batch(state, mp::spawn_context);
}
void BM_mp_fork_batch(benchmark::State& state) {
  run_mp_batch(state, mp::fork_context);
}
void BM_mp_forkserver_batch(benchmark::State& state) {
  run_mp_batch(state, mp::forkserver_context);
}

// ---- forkserver's first start, in a fresh process each time

// In the child: the one timed start; the server starts here, as it would in any program.
[[noreturn]] void first_start_child() {
  ::fcntl(kFirstStartFd, F_SETFD, FD_CLOEXEC);  // not for the server to inherit
  auto t0 = std::chrono::steady_clock::now();
  bool ok = start_join(mp::forkserver_context);
  auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  char buf[32];
  int n = std::snprintf(buf, sizeof buf, "%lld\n", ok ? static_cast<long long>(ns) : -1LL);
  if (::write(kFirstStartFd, buf, static_cast<size_t>(n)) != n) std::exit(1);
  std::exit(ok ? 0 : 1);  // stops the server on the way out
}

// In the parent: runs one such child and returns what it measured, in seconds (< 0: failed).
double first_start_once() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], kFirstStartFd);  // dup2 clears FD_CLOEXEC
  char* argv[] = {(char*)"process_start", (char*)kFirstStart, NULL};
  pid_t pid;
  int err = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  std::string out;
  if (err == 0) {
    char buf[64];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  }
  ::close(fds[0]);
  int status = 0;
  if (err != 0 || waitpid(pid, &status, 0) != pid || status != 0 || out.empty()) return -1;
  long long ns = std::atoll(out.c_str());
  return ns > 0 ? ns * 1e-9 : -1;
}

void BM_forkserver_first_start(benchmark::State& state) {
  for (auto _ : state) {
    double s = first_start_once();
    if (s < 0) {
      state.SkipWithError("forkserver first-start child failed");
      break;
    }
    state.SetIterationTime(s);
  }
}

// ---- floors, in plain C style

int spawn_and_wait(const char* path, char* const argv[]) {
  pid_t pid;
  if (posix_spawn(&pid, path, NULL, NULL, argv, environ) != 0) return -1;
  int status;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void floor_spawn(benchmark::State& state, const char* path, char* const argv[]) {
  for (auto _ : state) {
    if (spawn_and_wait(path, argv) != 0) {
      state.SkipWithError("posix_spawn floor failed");
      break;
    }
  }
}

// The very path mp's spawn execs (mp::set_executable is not used here).
void BM_posix_spawn_self(benchmark::State& state) {
  char* argv[] = {(char*)"process_start", (char*)kExitNow, NULL};
  floor_spawn(state, "/proc/self/exe", argv);
}

void BM_posix_spawn_noop(benchmark::State& state) {
  char* argv[] = {(char*)"mp_bench_noop", NULL};
  floor_spawn(state, MP_BENCH_NOOP, argv);
}

void BM_fork_exit(benchmark::State& state) {
  for (auto _ : state) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || status != 0) {
      state.SkipWithError("fork floor failed");
      break;
    }
  }
}

// ---- touched memory in the parent (1 GiB, or a size of the parent-memory sweep)
//
// Every benchmark's Setup says how much memory it wants, so the result does not depend on the
// order the benchmarks run in, and the memory is allocated and touched only when that changes.
// MADV_NOHUGEPAGE: 4 KiB pages like an ordinary heap, whatever the machine's THP setting.

constexpr size_t kBallast = size_t{1} << 30;
void* g_ballast = nullptr;
size_t g_ballast_size = 0;

void hold_ballast(size_t bytes) {
  if (bytes == g_ballast_size) return;
  if (g_ballast) munmap(g_ballast, g_ballast_size);
  g_ballast = nullptr;
  g_ballast_size = 0;
  if (bytes == 0) return;
  void* p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap of the parent's memory");
    std::exit(1);
  }
  madvise(p, bytes, MADV_NOHUGEPAGE);
  std::memset(p, 1, bytes);
  g_ballast = p;
  g_ballast_size = bytes;
}

// ---- 8 busy threads in the parent
//
// Started by the Setup of the *_8threads cases and stopped by their Teardown: they spin (no
// sleeping, no system calls) for as long as the benchmark runs, and only then.

constexpr int kSpinners = 8;
std::atomic<bool> g_stop_spinning{false};
std::vector<std::thread> g_spinners;

void spin_threads(bool want) {
  if (want && g_spinners.empty()) {
    g_stop_spinning.store(false);
    for (int i = 0; i < kSpinners; ++i)
      g_spinners.emplace_back([] {
        unsigned long n = 0;
        while (!g_stop_spinning.load(std::memory_order_relaxed)) ++n;
        benchmark::DoNotOptimize(n);
      });
  } else if (!want && !g_spinners.empty()) {
    g_stop_spinning.store(true);
    for (auto& t : g_spinners) t.join();
    g_spinners.clear();
  }
}

void plain(const benchmark::State&) {
  spin_threads(false);
  hold_ballast(0);
}
void with_1GiB(const benchmark::State&) {
  spin_threads(false);
  hold_ballast(kBallast);
}
void with_1GiB_8threads(const benchmark::State&) {
  hold_ballast(kBallast);  // touched before the threads compete for the cores
  spin_threads(true);
}
void stop_threads(const benchmark::State&) {
  spin_threads(false);
}

// ---- registration

// The parent-memory sweep: 1 MiB to 4 GiB, by 4x, up to half of what the machine has available
// now (the sweep must not push the machine into swapping or the OOM killer); the first two sizes
// in smoke mode. Size by size, every method at each size, so each size is touched only once.
size_t available_bytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[128];
  unsigned long long kib = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
  std::fclose(f);
  return static_cast<size_t>(kib) << 10;
}

void with_swept_memory(const benchmark::State& state) {
  spin_threads(false);
  hold_ballast(static_cast<size_t>(state.range(0)) << 20);
}

void register_parent_memory_sweep() {
  const size_t cap = available_bytes() / 2;
  const struct {
    const char* name;
    void (*fn)(benchmark::State&);
  } cases[] = {{"mp_spawn_parent_memory", BM_mp_spawn},
               {"mp_fork_parent_memory", BM_mp_fork},
               {"mp_forkserver_parent_memory", BM_mp_forkserver},
               {"fork_exit_parent_memory", BM_fork_exit}};
  size_t i = 0;
  for (int64_t mib = 1; mib <= 4096; mib *= 4, ++i) {
    if (!bench::in_sweep(i) || (static_cast<size_t>(mib) << 20) > cap) break;
    for (const auto& c : cases)
      bench::repeat(benchmark::RegisterBenchmark(c.name, c.fn)
                        ->Arg(mib)
                        ->ArgName("MiB")
                        ->Setup(with_swept_memory)
                        ->UseRealTime()
                        ->Unit(benchmark::kMicrosecond),
                    0.2, 5);
  }
}

enum class Parent { plain, big, big_busy };

benchmark::internal::Benchmark* setup(benchmark::internal::Benchmark* b,
                                      Parent parent = Parent::plain) {
  switch (parent) {
    case Parent::plain:
      b->Setup(plain);
      break;
    case Parent::big:
      b->Setup(with_1GiB);
      break;
    case Parent::big_busy:
      b->Setup(with_1GiB_8threads)->Teardown(stop_threads);
      break;
  }
  // Median of 5 repetitions: on 2 cores a single run is at the mercy of the scheduler.
  return bench::repeat(b->UseRealTime()->Unit(benchmark::kMicrosecond), 0.4, 5);
}

void register_all() {
  setup(benchmark::RegisterBenchmark("mp_spawn", BM_mp_spawn));
  setup(benchmark::RegisterBenchmark("posix_spawn_self", BM_posix_spawn_self));
  setup(benchmark::RegisterBenchmark("posix_spawn_noop", BM_posix_spawn_noop));
  setup(benchmark::RegisterBenchmark("mp_fork", BM_mp_fork));
  setup(benchmark::RegisterBenchmark("fork_exit", BM_fork_exit));
  setup(benchmark::RegisterBenchmark("mp_forkserver", BM_mp_forkserver));
  // Manual time: what each fresh child measured around its own first start + join.
  bench::repeat_iterations(
      benchmark::RegisterBenchmark("forkserver_first_start", BM_forkserver_first_start)
          ->Setup(plain)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond),
      10, 5);
  setup(benchmark::RegisterBenchmark("mp_spawn_1GiB", BM_mp_spawn), Parent::big);
  setup(benchmark::RegisterBenchmark("mp_fork_1GiB", BM_mp_fork), Parent::big);
  setup(benchmark::RegisterBenchmark("mp_forkserver_1GiB", BM_mp_forkserver), Parent::big);
  // Shows how much of mp_fork_1GiB is the kernel's fork itself.
  setup(benchmark::RegisterBenchmark("fork_exit_1GiB", BM_fork_exit), Parent::big);
  setup(benchmark::RegisterBenchmark("mp_spawn_1GiB_8threads", BM_mp_spawn), Parent::big_busy);
  setup(benchmark::RegisterBenchmark("mp_fork_1GiB_8threads", BM_mp_fork), Parent::big_busy);
  setup(benchmark::RegisterBenchmark("mp_forkserver_1GiB_8threads", BM_mp_forkserver),
        Parent::big_busy);
  // The floors under the same load: with fewer cores than spinners, what the operating system
  // itself loses to them (and, for fork, the 1 GiB copy made by a thread that shares the cores).
  setup(benchmark::RegisterBenchmark("posix_spawn_self_1GiB_8threads", BM_posix_spawn_self),
        Parent::big_busy);
  setup(benchmark::RegisterBenchmark("fork_exit_1GiB_8threads", BM_fork_exit), Parent::big_busy);
  // Reported per batch of 64, in milliseconds.
  setup(benchmark::RegisterBenchmark("mp_spawn_64concurrent", BM_mp_spawn_batch))
      ->Unit(benchmark::kMillisecond);
  setup(benchmark::RegisterBenchmark("mp_fork_64concurrent", BM_mp_fork_batch))
      ->Unit(benchmark::kMillisecond);
  setup(benchmark::RegisterBenchmark("mp_forkserver_64concurrent", BM_mp_forkserver_batch))
      ->Unit(benchmark::kMillisecond);
  register_parent_memory_sweep();
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

void print_ratios(const std::map<std::string, double>& t) {
  struct Row {
    const char *num, *den;
    double limit;  // the target ratio; 0: none, the row is for information
    const char* note;
  };
  // clang-format off
  const Row rows[] = {
      {"mp_spawn",                    "posix_spawn_self", 1.3, ""},
      {"mp_spawn",                    "posix_spawn_noop", 0,   "exec floor without libstdc++ & co"},
      {"mp_fork",                     "fork_exit",        1.5, ""},
      {"mp_forkserver",               "fork_exit",        2.0, ""},
      {"mp_forkserver",               "mp_spawn",         0,   "< 1: forkserver starts faster"},
      {"forkserver_first_start",      "mp_spawn",         0,   "server exec + first child"},
      {nullptr, nullptr, 0, nullptr},
      {"mp_spawn_1GiB",               "mp_spawn",         0,   "should stay ~1 (flat)"},
      {"mp_fork_1GiB",                "mp_fork",          0,   "grows: page tables copied"},
      {"mp_forkserver_1GiB",          "mp_forkserver",    0,   "should stay ~1 (flat)"},
      {"mp_fork_1GiB",                "fork_exit_1GiB",   0,   "mp's share of the 1 GiB fork"},
      {nullptr, nullptr, 0, nullptr},
      {"mp_spawn_1GiB_8threads",      "mp_spawn",         0,   "~1 if the cores outnumber the spinners"},
      {"mp_fork_1GiB_8threads",       "mp_fork",          0,   "grows: page tables copied"},
      {"mp_forkserver_1GiB_8threads", "mp_forkserver",    0,   "~1 if the cores outnumber the spinners"},
      {"posix_spawn_self_1GiB_8threads", "posix_spawn_self", 0, "the floor's own loss to the spinners"},
      {"mp_spawn_1GiB_8threads",      "posix_spawn_self_1GiB_8threads", 0, "mp's share, same load"},
      {"mp_fork_1GiB_8threads",       "fork_exit_1GiB_8threads", 0, "mp's share, same load"},
      {"mp_forkserver_1GiB_8threads", "fork_exit_1GiB_8threads", 0, "< 1: beats a bare fork here"},
      {nullptr, nullptr, 0, nullptr},
      {"mp_forkserver_64concurrent",  "mp_spawn_64concurrent", 0, "< 1: forkserver faster"},
  };
  // clang-format on
  std::printf("\n%-62s %9s %9s %8s  %s\n", "ratio of median real times", "num us", "den us",
              "ratio", "target");
  bool gap = false;  // a blank line before the next row printed
  for (const Row& r : rows) {
    if (!r.num) {
      gap = true;
      continue;
    }
    auto n = t.find(r.num), d = t.find(r.den);
    if (n == t.end() || d == t.end()) continue;  // filtered out or failed
    double ratio = n->second / d->second;
    std::string name = std::string(r.num) + " / " + r.den, target = r.note;
    if (r.limit > 0) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "<= %.1fx %s", r.limit, ratio <= r.limit ? "ok" : "MISSED");
      target = buf;
    }
    if (gap) std::printf("\n");
    gap = false;
    std::printf("%-62s %9.1f %9.1f %7.2fx  %s\n", name.c_str(), n->second, d->second, ratio,
                target.c_str());
  }

  if (auto f = t.find("forkserver_first_start"); f != t.end())
    std::printf("\nforkserver_first_start: %.1f us (fresh process: server exec + first child)\n",
                f->second);
  bool header = false;
  for (const char* m : {"spawn", "fork", "forkserver"}) {
    auto b = t.find("mp_" + std::string(m) + "_64concurrent");
    if (b == t.end()) continue;
    if (!header)
      std::printf("\n%d concurrent starts, then %d joins (median per batch):\n", kBatch, kBatch);
    header = true;
    std::printf("  mp %-10s %9.1f ms per batch  %7.1f us per child\n", m, b->second / 1e3,
                b->second / kBatch);
  }
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);  // a spawned child runs noop() here and exits: it never benchmarks
  if (argc > 1 && std::strcmp(argv[1], kExitNow) == 0) std::exit(0);  // floor 1's child
  if (argc > 1 && std::strcmp(argv[1], kFirstStart) == 0) first_start_child();

  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  spin_threads(false);
  hold_ballast(0);
  print_ratios(reporter.median);
}
