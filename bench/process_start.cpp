// Start + join of a no-op child with mp's spawn and fork start methods, side by side with the
// floors the operating system sets: posix_spawn of this same binary, posix_spawn of a plain C++
// no-op that does not link multiprocess, and fork + _exit. The *_1GiB cases repeat the mp ones
// while the parent holds 1 GiB of touched memory: spawn should stay flat, fork grows with the
// page tables it copies.
//
//   process_start [--benchmark_* flags]
#include <mp/mp.hpp>

#include <benchmark/benchmark.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

extern char** environ;

namespace {

// argv[1] of a child of the "posix_spawn(self)" floor: exit at the top of main.
constexpr const char* kExitNow = "--bench-exit-now";

void noop() {}

// ---- mp

void run_mp(benchmark::State& state, const mp::Context& ctx) {
  for (auto _ : state) {
    auto p = ctx.Process(noop);
    p.start();
    p.join();
    if (p.exitcode() != 0) {
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

// ---- 1 GiB of touched memory in the parent
//
// Every benchmark's Setup says whether it wants the memory, so the result does not depend on the
// order the benchmarks run in, and the 1 GiB is allocated and touched only when that changes.
// MADV_NOHUGEPAGE: 4 KiB pages like an ordinary heap, whatever the machine's THP setting.

constexpr size_t kBallast = size_t{1} << 30;
void* g_ballast = nullptr;

void hold_ballast(bool want) {
  if (want && !g_ballast) {
    void* p = mmap(NULL, kBallast, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("mmap 1 GiB");
      std::exit(1);
    }
    madvise(p, kBallast, MADV_NOHUGEPAGE);
    std::memset(p, 1, kBallast);
    g_ballast = p;
  } else if (!want && g_ballast) {
    munmap(g_ballast, kBallast);
    g_ballast = nullptr;
  }
}

void with_1GiB(const benchmark::State&) {
  hold_ballast(true);
}
void without_1GiB(const benchmark::State&) {
  hold_ballast(false);
}

// ---- registration

benchmark::internal::Benchmark* setup(benchmark::internal::Benchmark* b, bool big = false) {
  // Median of 5 repetitions: on 2 cores a single run is at the mercy of the scheduler.
  return b->Setup(big ? with_1GiB : without_1GiB)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond)
      ->MinTime(0.4)
      ->Repetitions(5)
      ->ReportAggregatesOnly();
}

void register_all() {
  setup(benchmark::RegisterBenchmark("mp_spawn", BM_mp_spawn));
  setup(benchmark::RegisterBenchmark("posix_spawn_self", BM_posix_spawn_self));
  setup(benchmark::RegisterBenchmark("posix_spawn_noop", BM_posix_spawn_noop));
  setup(benchmark::RegisterBenchmark("mp_fork", BM_mp_fork));
  setup(benchmark::RegisterBenchmark("fork_exit", BM_fork_exit));
  setup(benchmark::RegisterBenchmark("mp_spawn_1GiB", BM_mp_spawn), true);
  setup(benchmark::RegisterBenchmark("mp_fork_1GiB", BM_mp_fork), true);
  // Shows how much of mp_fork_1GiB is the kernel's fork itself.
  setup(benchmark::RegisterBenchmark("fork_exit_1GiB", BM_fork_exit), true);
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
        median[r.run_name.function_name] = r.GetAdjustedRealTime();
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
      {"mp_spawn",      "posix_spawn_self", 1.3, ""},
      {"mp_spawn",      "posix_spawn_noop", 0,   "exec floor without libstdc++ & co"},
      {"mp_fork",       "fork_exit",        1.5, ""},
      {"mp_spawn_1GiB", "mp_spawn",         0,   "should stay ~1 (flat)"},
      {"mp_fork_1GiB",  "mp_fork",          0,   "grows: page tables copied"},
      {"mp_fork_1GiB",  "fork_exit_1GiB",   0,   "mp's share of the 1 GiB fork"},
  };
  // clang-format on
  std::printf("\n%-34s %9s %9s %7s  %s\n", "ratio of median real times", "num us", "den us",
              "ratio", "target");
  for (const Row& r : rows) {
    auto n = t.find(r.num), d = t.find(r.den);
    if (n == t.end() || d == t.end()) continue;  // filtered out or failed
    double ratio = n->second / d->second;
    std::string name = std::string(r.num) + " / " + r.den, target = r.note;
    if (r.limit > 0) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "<= %.1fx %s", r.limit, ratio <= r.limit ? "ok" : "MISSED");
      target = buf;
    }
    std::printf("%-34s %9.1f %9.1f %6.2fx  %s\n", name.c_str(), n->second, d->second, ratio,
                target.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);  // a spawned child runs noop() here and exits: it never benchmarks
  if (argc > 1 && std::strcmp(argv[1], kExitNow) == 0) std::exit(0);  // floor 1's child

  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  hold_ballast(false);
  print_ratios(reporter.median);
}
