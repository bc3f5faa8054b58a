// mp::Pool with 2 workers, side by side with the floor the operating system sets, in one run
// (bench/python_pool.py then times CPython's Pool and ProcessPoolExecutor and compares):
//
//   - mp_pool_apply_roundtrip: pool.apply(inc, 1), one task at a time: the round trip of a
//     trivial int task to a worker and back.
//   - floor_socketpair_roundtrip: the floor for it: the parent writes 8 bytes on a socketpair, a
//     fork()ed child reads them (blocking) and echoes them back; one round trip.
//   - floor_socketpair_busypoll20us_roundtrip: the same, but each side first spins up to 20 us on
//     recv(MSG_DONTWAIT) before a blocking read: what the "hot" target (a bounded spin
//     before a worker or the waiting caller sleeps, <= 0.5x the blocking floor) can reach.
//   - mp_pool_apply_roundtrip_hot, mp_executor_submit_roundtrip_hot: the same round trips on a
//     pool (an executor) made with PoolOptions::spin = 50 us (hot mode: workers and the waiting
//     caller poll that long before they sleep); against the blocking floor, target <= 0.5x.
//   - mp_pool_apply_async_throughput: 100,000 apply_async(inc, i) (chunksize 1, all in flight),
//     then get() on each; the time is per 100,000 tasks, tasks_per_s the rate.
//   - mp_pool_map_1M: pool.map(inc, 1,000,000 ints) with the automatic chunksize; items_per_s.
//   - mp_pool_workerlost_latency: 100 times, a task that blocks for ever (it first writes its
//     pid to a FIFO, so the parent knows it runs without sleeping) has its worker SIGKILLed;
//     the time from kill() to the moment get() throws mp::WorkerLost: median_ms and max_ms.
//     After each kill a trivial apply checks the pool still serves. replaced_first: the share
//     of kills after which the replacement worker was already in worker_pids() when get()
//     threw (the replacement's start was on the path from the death to the error). This case
//     has a pool of its own, and reports its apply round trip before and after the kills.
//   - mp_pool_idle_cpu, mp_pool_idle_cpu_hot: the CPU the workers and the parent's dispatcher
//     thread use while the pool (the hot pool) sits idle for 2 s (/proc/<pid>/schedstat, ns), in
//     us per second of idle: the spin must cost nothing once idle.
//
// Round trips are in real time, median of 5 repetitions of 0.1 s, interleaved at random
// (--benchmark_enable_random_interleaving=true; a later flag may turn it off) so that a change
// of load on the machine hits every case alike. One pool serves every mp case. At the end: each
// mp case against its floor and the targets.
//
// The same round trips and submit throughput for ProcessPoolExecutor (one engine under both).
//
//   pool [--benchmark_* flags]
#include <mp/mp.hpp>

#include <benchmark/benchmark.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <mp/executor.hpp>

#include "collector.hpp"
#include "repetitions.hpp"
#include "socketpair_floor.hpp"

namespace {

constexpr int kWorkers = 2;
constexpr std::size_t kAsyncTasks = 100'000;
constexpr std::size_t kMapItems = 1'000'000;
constexpr int kKills = 100;
constexpr auto kIdle = std::chrono::seconds(2);
constexpr long kSpinNs = 20'000;
constexpr auto kHotSpin = std::chrono::microseconds(50);  // PoolOptions::spin of the hot cases

// ---- the tasks

int inc(int x) {
  return x + 1;
}

// Says it runs (its pid, into the FIFO the parent holds open), then blocks until killed.
int block_forever(std::string fifo) {
  const int fd = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  const int pid = ::getpid();
  if (::write(fd, &pid, sizeof pid) != sizeof pid) return -1;
  ::close(fd);
  for (;;) ::pause();
}

// The pool every mp case uses (made in main, after mp::init), and the hot one (spin on).
mp::Pool* g_pool = nullptr;
mp::Pool* g_hot_pool = nullptr;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- mp

void run_mp_apply_roundtrip(benchmark::State& state, mp::Pool* pool) {
  try {
    int x = 0;
    for (auto _ : state) x = pool->apply(inc, x);
    if (x != static_cast<int>(state.iterations())) state.SkipWithError("wrong results");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// window 0: the shared pool (PoolOptions' default, automatic window); else a pool of its own with
// that fixed window (for information: how much of the rate the window decides).
void run_mp_apply_async_throughput(benchmark::State& state, int window) {
  try {
    std::optional<mp::Pool> own;
    if (window != 0) own.emplace(mp::PoolOptions{.processes = kWorkers, .window = window});
    mp::Pool* pool = own ? &*own : g_pool;
    double busy = 0;
    std::vector<mp::AsyncResult<int>> rs;
    rs.reserve(kAsyncTasks);
    for (auto _ : state) {
      rs.clear();
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < kAsyncTasks; ++i)
        rs.push_back(pool->apply_async(inc, static_cast<int>(i)));
      long long sum = 0;
      for (auto& r : rs) sum += r.get();
      busy += seconds_since(t0);
      const long long n = static_cast<long long>(kAsyncTasks);
      if (sum != n * (n + 1) / 2) state.SkipWithError("wrong results");
    }
    state.counters["tasks_per_s"] =
        static_cast<double>(kAsyncTasks) * static_cast<double>(state.iterations()) / busy;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void run_mp_map_1M(benchmark::State& state) {
  try {
    std::vector<int> items(kMapItems);
    for (std::size_t i = 0; i < kMapItems; ++i) items[i] = static_cast<int>(i);
    double busy = 0;
    for (auto _ : state) {
      const auto t0 = Clock::now();
      auto out = g_pool->map(inc, items);
      busy += seconds_since(t0);
      if (out.size() != kMapItems || out.back() != static_cast<int>(kMapItems))
        state.SkipWithError("wrong results");
      benchmark::DoNotOptimize(out.data());
    }
    state.counters["items_per_s"] =
        static_cast<double>(kMapItems) * static_cast<double>(state.iterations()) / busy;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// The mean apply round trip (us) over 2,000 calls, for the before/after of the kills.
double apply_us(mp::Pool& pool) {
  int x = 0;
  const auto t0 = Clock::now();
  for (int i = 0; i < 2000; ++i) x = pool.apply(inc, x);
  if (x != 2000) throw std::runtime_error("wrong results");
  return seconds_since(t0) / 2000 * 1e6;
}

void run_mp_workerlost_latency(benchmark::State& state) {
  char dir[] = "/tmp/mp-bench-pool-XXXXXX";
  if (!::mkdtemp(dir)) {
    state.SkipWithError("mkdtemp failed");
    return;
  }
  const std::string fifo = std::string(dir) + "/running";
  // O_RDWR: the open does not wait for a writer, and a task's close() is no EOF.
  int fd = -1;
  if (::mkfifo(fifo.c_str(), 0600) != 0 || (fd = ::open(fifo.c_str(), O_RDWR | O_CLOEXEC)) < 0) {
    state.SkipWithError("mkfifo/open failed");
    ::rmdir(dir);
    return;
  }
  std::vector<double> ms;
  int replaced_first = 0;
  try {
    // A pool of its own: the shared one's round trips are not to pay for what 100 kills leave.
    mp::Pool pool(kWorkers);
    const double before_us = apply_us(pool);
    for (auto _ : state) {
      ms.clear();
      for (int k = 0; k < kKills; ++k) {
        auto r = pool.apply_async(block_forever, fifo);
        // Its pid, once it runs; or its error, if it fails without running (a broken pool).
        pollfd p{fd, POLLIN, 0};
        while (::poll(&p, 1, 100) == 0 || (p.revents & POLLIN) == 0)
          if (r.ready()) {
            r.get();  // throws what failed it
            throw std::runtime_error("the blocking task returned (it could not open the FIFO)");
          }
        int pid = 0;
        ssize_t got;
        do got = ::read(fd, &pid, sizeof pid);
        while (got < 0 && errno == EINTR);
        if (got != sizeof pid) throw std::runtime_error("no pid from the blocking task");
        const auto pids = pool.worker_pids();
        if (std::find(pids.begin(), pids.end(), pid) == pids.end())
          throw std::runtime_error("the task's pid is not in pool.worker_pids()");
        const auto t0 = Clock::now();
        ::kill(pid, SIGKILL);
        try {
          r.get();
          throw std::runtime_error("the killed task returned");
        } catch (const mp::WorkerLost& e) {
          ms.push_back(seconds_since(t0) * 1e3);
          if (e.pid() != pid) throw std::runtime_error("WorkerLost names another pid");
        }
        // Was the replacement already started when get() threw? (It is on the path from the
        // death to the error when it was.)
        const auto after = pool.worker_pids();
        if (after.size() == kWorkers && std::find(after.begin(), after.end(), pid) == after.end())
          ++replaced_first;
        // The pool still serves (and a finished task is what tells the engine the replaced
        // workers are not crashing at start-up).
        if (pool.apply(inc, k) != k + 1) throw std::runtime_error("wrong result after a kill");
      }
    }
    std::sort(ms.begin(), ms.end());
    state.counters["median_ms"] = (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]) / 2;
    state.counters["max_ms"] = ms.back();
    state.counters["min_ms"] = ms.front();
    state.counters["replaced_first"] = replaced_first / static_cast<double>(ms.size());
    // For information: the same pool's apply round trip before and after the kills.
    state.counters["apply_us_before"] = before_us;
    const auto pids_before = pool.worker_pids();
    state.counters["apply_us_after"] = apply_us(pool);
    state.counters["pids_same_after"] = pool.worker_pids() == pids_before;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
  ::close(fd);
  ::unlink(fifo.c_str());
  ::rmdir(dir);
}

// CPU time (ns) a thread or process has run: the first field of its schedstat.
std::optional<std::uint64_t> schedstat_ns(const std::string& path) {
  std::ifstream in(path);
  std::uint64_t ns = 0;
  if (!(in >> ns)) return std::nullopt;
  return ns;
}

// This process's threads but the calling one: the pool's dispatcher (and any other).
std::optional<std::uint64_t> other_threads_ns() {
  const long self = ::syscall(SYS_gettid);
  DIR* d = ::opendir("/proc/self/task");
  if (!d) return std::nullopt;
  std::uint64_t sum = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.' || std::atol(e->d_name) == self) continue;
    auto ns = schedstat_ns(std::string("/proc/self/task/") + e->d_name + "/schedstat");
    if (ns) sum += *ns;
  }
  ::closedir(d);
  return sum;
}

std::optional<std::uint64_t> workers_ns(const std::vector<int>& pids) {
  std::uint64_t sum = 0;
  for (int pid : pids) {
    auto ns = schedstat_ns("/proc/" + std::to_string(pid) + "/schedstat");
    if (!ns) return std::nullopt;
    sum += *ns;
  }
  return sum;
}

void run_mp_idle_cpu(benchmark::State& state, mp::Pool* pool) {
  try {
    double workers_us = 0, dispatcher_us = 0;
    for (auto _ : state) {
      pool->apply(inc, 0);  // every worker up, nothing in flight
      const auto pids = pool->worker_pids();
      const auto w0 = workers_ns(pids), d0 = other_threads_ns();
      const auto t0 = Clock::now();
      std::this_thread::sleep_for(kIdle);  // the measurement window, not a synchronisation
      const auto w1 = workers_ns(pids), d1 = other_threads_ns();
      const double s = seconds_since(t0);
      if (!w0 || !w1 || !d0 || !d1 || pool->worker_pids() != pids) {
        state.SkipWithError("cannot read /proc/<pid>/schedstat, or a worker changed");
        return;
      }
      workers_us = static_cast<double>(*w1 - *w0) / 1e3 / s;
      dispatcher_us = static_cast<double>(*d1 - *d0) / 1e3 / s;
    }
    state.counters["workers_us_per_s"] = workers_us;
    state.counters["dispatcher_us_per_s"] = dispatcher_us;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// ProcessPoolExecutor on the same engine: the same trivial task.
void run_mp_executor_submit_roundtrip(benchmark::State& state, mp::Duration spin) {
  try {
    mp::ProcessPoolExecutor ex({.max_workers = kWorkers, .spin = spin});
    int x = 0;
    for (auto _ : state) x = ex.submit(inc, x).result();
    if (x != static_cast<int>(state.iterations())) state.SkipWithError("wrong results");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void run_mp_executor_submit_throughput(benchmark::State& state) {
  try {
    mp::ProcessPoolExecutor ex({.max_workers = kWorkers});
    double busy = 0;
    for (auto _ : state) {
      std::vector<decltype(ex.submit(inc, 0))> fs;
      fs.reserve(kAsyncTasks);
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < kAsyncTasks; ++i)
        fs.push_back(ex.submit(inc, static_cast<int>(i)));
      long long sum = 0;
      for (auto& f : fs) sum += f.result();
      busy += seconds_since(t0);
      const long long n = static_cast<long long>(kAsyncTasks);
      if (sum != n * (n + 1) / 2) state.SkipWithError("wrong results");
    }
    state.counters["tasks_per_s"] =
        static_cast<double>(kAsyncTasks) * static_cast<double>(state.iterations()) / busy;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// ---- registration

void register_all() {
  using benchmark::kMicrosecond;
  using benchmark::kMillisecond;
  using S = benchmark::State;
  auto roundtrip = [](const char* name, auto f) {
    bench::repeat(benchmark::RegisterBenchmark(name, f)->UseRealTime()->Unit(kMicrosecond), 0.1, 5);
  };
  roundtrip("mp_pool_apply_roundtrip", [](S& s) { run_mp_apply_roundtrip(s, g_pool); });
  roundtrip("mp_pool_apply_roundtrip_hot", [](S& s) { run_mp_apply_roundtrip(s, g_hot_pool); });
  roundtrip("floor_socketpair_roundtrip", [](S& s) { bench::run_floor_roundtrip(s, 0); });
  roundtrip("floor_socketpair_busypoll20us_roundtrip",
            [](S& s) { bench::run_floor_roundtrip(s, kSpinNs); });
  roundtrip("mp_executor_submit_roundtrip",
            [](S& s) { run_mp_executor_submit_roundtrip(s, mp::Duration(0)); });
  roundtrip("mp_executor_submit_roundtrip_hot",
            [](S& s) { run_mp_executor_submit_roundtrip(s, kHotSpin); });
  bench::repeat_iterations(
      benchmark::RegisterBenchmark("mp_pool_apply_async_throughput",
                                   [](S& s) { run_mp_apply_async_throughput(s, 0); })
          ->UseRealTime()
          ->Unit(kMillisecond),
      1, 5);
  bench::repeat_iterations(
      benchmark::RegisterBenchmark("mp_pool_apply_async_throughput_window4",
                                   [](S& s) { run_mp_apply_async_throughput(s, 4); })
          ->UseRealTime()
          ->Unit(kMillisecond),
      1, 3);
  bench::repeat_iterations(benchmark::RegisterBenchmark("mp_executor_submit_throughput",
                                                        run_mp_executor_submit_throughput)
                               ->UseRealTime()
                               ->Unit(kMillisecond),
                           1, 5);
  bench::repeat(benchmark::RegisterBenchmark("mp_pool_map_1M", run_mp_map_1M)
                    ->UseRealTime()
                    ->Unit(kMillisecond),
                0.2, 5);
  benchmark::RegisterBenchmark("mp_pool_workerlost_latency", run_mp_workerlost_latency)
      ->UseRealTime()
      ->Unit(kMillisecond)
      ->Iterations(1);
  benchmark::RegisterBenchmark("mp_pool_idle_cpu", [](S& s) { run_mp_idle_cpu(s, g_pool); })
      ->UseRealTime()
      ->Unit(kMillisecond)
      ->Iterations(1);
  benchmark::RegisterBenchmark("mp_pool_idle_cpu_hot", [](S& s) { run_mp_idle_cpu(s, g_hot_pool); })
      ->UseRealTime()
      ->Unit(kMillisecond)
      ->Iterations(1);
}

void print_summary(const bench::Collector& c, const std::string& load_before) {
  const auto& t = c.median;
  auto counter = [&](const std::string& name, const std::string& k) -> std::optional<double> {
    auto i = c.counters.find(name);
    if (i == c.counters.end()) return std::nullopt;
    auto j = i->second.find(k);
    if (j == i->second.end()) return std::nullopt;
    return j->second;
  };
  auto verdict = [](bool ok) { return ok ? "ok" : "MISSED"; };

  std::printf("\nload average (1, 5, 15 min) before: %s, after: %s; %u CPUs\n", load_before.c_str(),
              bench::loadavg().c_str(), std::thread::hardware_concurrency());
  std::printf("\n%-70s %9s %9s %8s  %s\n", "round trips: ratio of medians (us, real time)", "num",
              "den", "ratio", "target");
  struct Row {
    const char* num;
    const char* den;
    double limit;  // num/den <= limit; 0: for information
    const char* note;
  };
  const Row rows[] = {
      {"mp_pool_apply_roundtrip", "floor_socketpair_roundtrip", 1.5, ""},
      {"mp_pool_apply_roundtrip_hot", "floor_socketpair_roundtrip", 0.5,
       "(hot: PoolOptions::spin 50 us)"},
      {"mp_pool_apply_roundtrip_hot", "floor_socketpair_busypoll20us_roundtrip", 0,
       "hot, against the 20 us busy-poll floor"},
      {"floor_socketpair_busypoll20us_roundtrip", "floor_socketpair_roundtrip", 0,
       "what a 20 us spin buys the floor (issue: ~0.33x)"},
      {"mp_executor_submit_roundtrip", "floor_socketpair_roundtrip", 1.5, ""},
      {"mp_executor_submit_roundtrip_hot", "floor_socketpair_roundtrip", 0.5,
       "(hot: ExecutorOptions::spin 50 us)"},
  };
  for (const Row& r : rows) {
    auto n = t.find(r.num), d = t.find(r.den);
    if (n == t.end() || d == t.end()) continue;  // filtered out, failed or compiled out
    const double ratio = n->second / d->second;
    char target[128];
    if (r.limit > 0)
      std::snprintf(target, sizeof target, "<= %.1fx %s %s", r.limit, verdict(ratio <= r.limit),
                    r.note);
    else
      std::snprintf(target, sizeof target, "%s", r.note);
    const std::string name = std::string(r.num) + " / " + r.den;
    std::printf("%-70s %9.2f %9.2f %7.2fx  %s\n", name.c_str(), n->second / 1e3, d->second / 1e3,
                ratio, target);
  }

  std::printf("\nthroughput (median of 5)\n");
  if (auto v = counter("mp_pool_apply_async_throughput", "tasks_per_s"))
    std::printf("  %-58s %9.0f k tasks/s  >= 300 k %s\n",
                "apply_async, chunksize 1, 100k in flight", *v / 1e3, verdict(*v >= 300e3));
  if (auto v = counter("mp_pool_apply_async_throughput_window4", "tasks_per_s"))
    std::printf("  %-58s %9.0f k tasks/s  (information: a fixed PoolOptions::window 4)\n",
                "the same, window 4", *v / 1e3);
  if (auto v = counter("mp_executor_submit_throughput", "tasks_per_s"))
    std::printf("  %-58s %9.0f k tasks/s  >= 300 k %s\n", "executor submit, 100k in flight",
                *v / 1e3, verdict(*v >= 300e3));
  if (auto v = counter("mp_pool_map_1M", "items_per_s"))
    std::printf("  %-58s %9.1f M items/s  >= 50 M %s\n", "map of 1M ints, automatic chunksize",
                *v / 1e6, verdict(*v >= 50e6));

  auto med = counter("mp_pool_workerlost_latency", "median_ms");
  auto max = counter("mp_pool_workerlost_latency", "max_ms");
  if (med && max)
    std::printf(
        "\nSIGKILL of a worker -> its task's get() throws WorkerLost, %d kills: median "
        "%.3f ms, max %.3f ms  (<= 100 ms %s)\n",
        kKills, *med, *max, verdict(*max <= 100));
  auto ab = counter("mp_pool_workerlost_latency", "apply_us_before");
  auto aa = counter("mp_pool_workerlost_latency", "apply_us_after");
  auto same = counter("mp_pool_workerlost_latency", "pids_same_after");
  if (ab && aa && same)
    std::printf(
        "  that pool's apply round trip (mean of 2000) before the kills %.1f us, after "
        "%.1f us (%.2fx; the same workers throughout: %s)\n",
        *ab, *aa, *aa / *ab, *same != 0 ? "yes" : "no");
  if (auto v = counter("mp_pool_workerlost_latency", "replaced_first"))
    std::printf(
        "  the replacement worker was already started when get() threw: %.0f%% of the "
        "kills\n",
        *v * 100);
  for (const char* name : {"mp_pool_idle_cpu", "mp_pool_idle_cpu_hot"}) {
    auto w = counter(name, "workers_us_per_s");
    auto d = counter(name, "dispatcher_us_per_s");
    if (w && d)
      std::printf(
          "idle pool%s over %lld s: workers %.1f us/s, dispatcher thread %.1f us/s of CPU "
          "(%.4f%% of a CPU; ~0 %s)\n",
          std::string(name).ends_with("_hot") ? " (hot: spin 50 us)" : "",
          static_cast<long long>(kIdle.count()), *w, *d, (*w + *d) / 1e4, verdict(*w + *d < 100));
  }
}

// ---- how throughput grows with the work: map(inc, n ints) for n = 100 to 1M with the automatic
// chunksize (mp_pool_map_tasks/tasks:N), and map of 20,000 ints for chunksize 1 to 1024
// (mp_pool_map_chunksize/chunksize:C); items_per_s as in mp_pool_map_1M. bench/python_pool.py
// sweeps CPython's Pool the same way.

constexpr std::size_t kSweepTasks[] = {100, 1'000, 10'000, 100'000, 1'000'000};
constexpr std::size_t kSweepChunkItems = 20'000;
constexpr std::size_t kSweepChunksizes[] = {1, 4, 16, 64, 256, 1024};

void run_mp_map_sized(benchmark::State& state, std::size_t n, std::optional<std::size_t> chunk) {
  try {
    std::vector<int> items(n);
    for (std::size_t i = 0; i < n; ++i) items[i] = static_cast<int>(i);
    double busy = 0;
    for (auto _ : state) {
      const auto t0 = Clock::now();
      auto out = g_pool->map(inc, items, chunk);
      busy += seconds_since(t0);
      if (out.size() != n || out.back() != static_cast<int>(n))
        state.SkipWithError("wrong results");
      benchmark::DoNotOptimize(out.data());
    }
    state.counters["items_per_s"] =
        static_cast<double>(n) * static_cast<double>(state.iterations()) / busy;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void register_map_sweeps() {
  std::size_t i = 0;
  for (const std::size_t n : kSweepTasks) {
    if (!bench::in_sweep(i++)) break;
    const std::string name = "mp_pool_map_tasks/tasks:" + std::to_string(n);
    bench::repeat(
        benchmark::RegisterBenchmark(
            name.c_str(), [n](benchmark::State& s) { run_mp_map_sized(s, n, std::nullopt); })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond),
        0.1, 5);
  }
  i = 0;
  for (const std::size_t c : kSweepChunksizes) {
    if (!bench::in_sweep(i++)) break;
    const std::string name = "mp_pool_map_chunksize/chunksize:" + std::to_string(c);
    bench::repeat(
        benchmark::RegisterBenchmark(
            name.c_str(), [c](benchmark::State& s) { run_mp_map_sized(s, kSweepChunkItems, c); })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond),
        0.1, 5);
  }
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);  // a worker is started by the forkserver: this same program

  // Interleaved repetitions by default; the caller's flags come after, so they can say no.
  std::vector<char*> args(argv, argv + argc);
  char interleave[] = "--benchmark_enable_random_interleaving=true";
  args.insert(args.begin() + 1, interleave);
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);

  register_all();
  register_map_sweeps();
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  bench::Collector reporter;
  const std::string load_before =
      bench::loadavg();  // the machine may be shared: say how busy it was
  {
    mp::Pool pool(kWorkers);
    mp::Pool hot({.processes = kWorkers, .spin = kHotSpin});
    g_pool = &pool;
    g_hot_pool = &hot;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    g_pool = g_hot_pool = nullptr;
    for (mp::Pool* p : {&pool, &hot}) {
      p->close();
      p->join();
    }
  }
  benchmark::Shutdown();
  print_summary(reporter, load_before);
}
