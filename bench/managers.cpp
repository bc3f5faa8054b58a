// mp::Manager() (a SyncManager, its server a child process) side by side with the floor the
// operating system sets, in one run (bench/python_managers.py then times CPython's
// multiprocessing.Manager() the same way and compares):
//
//   - floor_socketpair_roundtrip: 8 bytes to a fork()ed child on a socketpair and back, blocking
//     (bench/socketpair_floor.hpp, as bench/pool.cpp's floor).
//   - floor_socketpair_busypoll30us_roundtrip: the same, each end looking for its message 30 us
//     before it sleeps, as the manager's client and server threads do: the like-for-like floor.
//   - mp_manager_dict_get, mp_manager_dict_set: one DictProxy<std::string, int> get("k") or
//     set("k", i) from this process: a request on the process's connection, the call on the
//     server, its reply. Target <= 1.2x the floor (CPython ~1.5-2x, ~41 us).
//   - mp_manager_proxy_create: manager.dict<std::string, int>() and the proxy dropped (its
//     release goes without a reply). Target <= 3x one get (CPython ~7 ms). After the loop the
//     server must be back to the objects it had, or the case fails.
//   - mp_manager_calls/clients:N, N = 1, 2, 4: N children (mp::Process, the default start
//     method), each given the dict's proxy as its argument, call d.get("k") in a loop for
//     kWindow once all are connected (a manager Barrier); calls_per_s is their calls in all over
//     the window. Target >= 10x CPython's at the same N (CPython 12-17 k calls/s, flat).
//   - mp_manager_pipelined_calls/clients:N: the same with async_call, kPipeline gets in
//     flight per client (CPython has no pipelined call: compared with its blocking calls).
//   - floor_socketpair_calls/clients:N: the ceiling for it, N client processes making blocking
//     socketpair round trips with an echo process each for the same window.
//   - mp_manager_update_with: d.update_with("n", add_one), a counter in one call run on the
//     server (CPython: `with lock: d[k] += 1`, four round trips).
//   - mp_manager_dead_holder_release: a child holding a manager Lock SIGKILLed, to the acquire
//     this process had waiting for it returning (owner_died() then checked). Target <= 100 ms.
//   - mp_manager_dead_server_reported: a fresh manager's server SIGKILLed, to a call blocked
//     in it (a Queue get) failing with "is gone"; a later call must fail too. Target <= 100 ms.
//   - mp_manager_update_with_2clients: two children racing kRace update_with calls each;
//     increments_per_s from the barrier that starts them to the last one's report. The final
//     count must be exactly 2 * kRace, or the case fails.
//
// Round trips are real time, median of 5 repetitions of 0.1 s, interleaved at random
// (--benchmark_enable_random_interleaving=true; a later flag may turn it off) so that a change
// of load hits every case alike. One manager serves every case. At the end: the ratios against
// the floor and the targets.
//
//   managers [--benchmark_* flags]
#include <mp/managers.hpp>
#include <mp/mp.hpp>

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "collector.hpp"
#include "repetitions.hpp"
#include "socketpair_floor.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Dict = mp::DictProxy<std::string, int>;

constexpr int kClients[] = {1, 2, 4};
constexpr int kRace = 10'000;     // update_with calls per racing client
constexpr auto kHang = 60s;       // a child that never reports: fail, do not hang the run
constexpr long kSpinNs = 30'000;  // as long as the manager's ends look before they sleep

// How long the clients call for: long enough that their start-up skew does not count.
double window_s() {
  return bench::smoke() ? 0.02 : 0.3;
}
int race_calls() {
  return bench::smoke() ? 100 : kRace;
}

int add_one(int n) {
  return n + 1;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Made in main, after mp::init: the manager every case uses, and its dict ({"k": 1}).
mp::SyncManager* g_manager = nullptr;
Dict* g_dict = nullptr;

// ---- the children

// A client process: connects (its first call), waits for the others, then calls get for
// `window` seconds; says how many it made.
void get_loop(Dict d, mp::BarrierProxy start, mp::QueueProxy<std::int64_t> done, double window) {
  (void)d.get("k");
  start.wait(kHang);
  const auto end = Clock::now() + std::chrono::duration<double>(window);
  std::int64_t n = 0;
  int sink = 0;
  // The clock is a vDSO read, ~1000x cheaper than a call: checked every call.
  while (Clock::now() < end) {
    sink += d.get("k");
    ++n;
  }
  done.put(sink == n ? n : -1);  // -1: a wrong value came back
}

// As get_loop, with kPipeline async_call gets in flight at a time (a batch sent, then its
// results read): what a client that does not need each reply before the next call makes.
constexpr int kPipeline = 32;
void pipelined_get_loop(Dict d, mp::BarrierProxy start, mp::QueueProxy<std::int64_t> done,
                        double window) {
  using Get = mp::managed::Dict<std::string, int>;
  (void)d.get("k");
  start.wait(kHang);
  const auto end = Clock::now() + std::chrono::duration<double>(window);
  std::int64_t n = 0;
  int sink = 0;
  std::vector<mp::Future<int>> batch;
  while (Clock::now() < end) {
    for (int i = 0; i < kPipeline; ++i) batch.push_back(d.async_call<&Get::get>(std::string("k")));
    for (auto& f : batch) sink += f.result();
    n += kPipeline;
    batch.clear();
  }
  done.put(sink == n ? n : -1);
}

// A racing client: `calls` increments once both are connected.
void race(Dict d, mp::BarrierProxy start, mp::QueueProxy<std::int64_t> done, int calls) {
  (void)d.get("k");
  start.wait(kHang);
  for (int i = 0; i < calls; ++i) d.update_with("race", add_one);
  done.put(calls);
}

// ---- the cases

void run_dict_get(benchmark::State& state) {
  try {
    long long sum = 0;
    for (auto _ : state) sum += g_dict->get("k");
    if (sum != static_cast<long long>(state.iterations())) state.SkipWithError("wrong results");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void run_dict_set(benchmark::State& state) {
  try {
    int i = 0;
    for (auto _ : state) g_dict->set("s", ++i);
    if (g_dict->get("s") != i) state.SkipWithError("wrong results");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void run_proxy_create(benchmark::State& state) {
  try {
    const std::size_t before = g_manager->number_of_objects();
    for (auto _ : state) {
      auto d = g_manager->dict<std::string, int>();
      benchmark::DoNotOptimize(d.id());
    }
    // The releases go without replies: the server may still be on the last ones.
    const auto deadline = Clock::now() + kHang;
    std::size_t now = 0;
    while ((now = g_manager->number_of_objects()) != before && Clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    if (now != before)
      state.SkipWithError(("the server holds " + std::to_string(now) + " objects, not " +
                           std::to_string(before) + ": dropped proxies kept their objects")
                              .c_str());
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void run_update_with(benchmark::State& state) {
  try {
    g_dict->set("n", 0);
    for (auto _ : state) g_dict->update_with("n", add_one);
    if (g_dict->get("n") != static_cast<int>(state.iterations()))
      state.SkipWithError("wrong count");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// Starts `n` children running f(the dict, start, done, arg); they wait on `start` once connected.
template <class F, class A>
std::vector<mp::Process> start_clients(int n, F f, mp::BarrierProxy& start,
                                       mp::QueueProxy<std::int64_t>& done, A arg) {
  std::vector<mp::Process> ps;
  for (int i = 0; i < n; ++i) {
    ps.emplace_back(f, *g_dict, start, done, arg);
    ps.back().start();
  }
  return ps;
}

// The children's reports, and that each ended well.
std::int64_t collect(std::vector<mp::Process>& ps, mp::QueueProxy<std::int64_t>& done) {
  std::int64_t sum = 0;
  for (std::size_t i = 0; i < ps.size(); ++i) {
    const std::int64_t n = done.get(kHang);
    if (n < 0) throw std::runtime_error("a client got a wrong value");
    sum += n;
  }
  for (auto& p : ps) {
    p.join(kHang);
    if (p.exitcode() != 0) throw std::runtime_error("a client process failed");
  }
  return sum;
}

template <auto Loop>
void run_calls(benchmark::State& state, int clients) {
  try {
    auto done = g_manager->Queue<std::int64_t>();
    const double window = window_s();
    double rate = 0;
    for (auto _ : state) {
      auto start = g_manager->Barrier(static_cast<std::size_t>(clients));
      auto ps = start_clients(clients, Loop, start, done, window);
      rate = static_cast<double>(collect(ps, done)) / window;
    }
    state.counters["calls_per_s"] = rate;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void run_update_with_2clients(benchmark::State& state) {
  try {
    auto done = g_manager->Queue<std::int64_t>();
    const int calls = race_calls();
    double busy = 0;
    for (auto _ : state) {
      g_dict->set("race", 0);
      // This process is the third party: its wait returns when both children are connected.
      auto start = g_manager->Barrier(3);
      auto ps = start_clients(2, race, start, done, calls);
      start.wait(kHang);
      const auto t0 = Clock::now();
      const std::int64_t reported = collect(ps, done);
      busy += seconds_since(t0);
      const int count = g_dict->get("race");
      if (reported != 2 * calls || count != 2 * calls) {
        state.SkipWithError(("two clients racing " + std::to_string(calls) +
                             " update_with calls each: count " + std::to_string(count) + ", not " +
                             std::to_string(2 * calls))
                                .c_str());
        return;
      }
    }
    state.counters["increments_per_s"] =
        2.0 * calls * static_cast<double>(state.iterations()) / busy;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// A lock's holder, a child: takes it, says so, and waits to be killed.
void hold_lock(mp::LockProxy lock, mp::QueueProxy<std::int64_t> said) {
  lock.acquire();
  said.put(1);
  for (;;) ::pause();
}

// The holder SIGKILLed to the next acquire (blocked since before the kill) returning, with
// owner_died(): the server's release of a dead client's Lock (target <= 100 ms).
void run_dead_holder_release(benchmark::State& state) {
  try {
    auto lock = g_manager->Lock();
    auto said = g_manager->Queue<std::int64_t>();
    for (auto _ : state) {
      mp::Process p(hold_lock, lock, said);
      p.start();
      if (said.get(kHang) != 1) throw std::runtime_error("the holder did not report");
      auto next = lock.async_call<&mp::managed::Lock::acquire>(true, -1.0);  // waits for it
      const auto t0 = Clock::now();
      p.kill();
      if (!next.result(kHang)) throw std::runtime_error("the dead holder's lock stayed held");
      state.SetIterationTime(seconds_since(t0));
      const bool told = lock.owner_died();
      lock.release();
      p.join(kHang);
      if (!told) throw std::runtime_error("the next holder was not told owner_died()");
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void block_in_get(mp::QueueProxy<int> q, std::string* error) {
  try {
    q.get();
  } catch (const mp::ManagerError& e) {
    *error = e.what();
  }
}

// A manager's server SIGKILLed to a call blocked in it (a Queue get) failing with the server's
// end, and to a later call failing the same way (target <= 100 ms for each).
void run_dead_server_reported(benchmark::State& state) {
  try {
    for (auto _ : state) {
      auto before = mp::active_children();
      mp::SyncManager m = mp::Manager();
      auto q = m.Queue<int>();
      auto v = m.Value<int>(0);
      int server = -1;
      for (auto& c : mp::active_children()) {
        bool old = false;
        for (auto& b : before) old = old || b->pid() == c->pid();
        if (!old) server = c->pid().value_or(-1);
      }
      if (server < 0) throw std::runtime_error("the new manager's server not found");
      std::string error;
      std::thread waiter(block_in_get, q, &error);
      // The get is in the server before the kill: a call made after it was sent is answered
      // after it.
      (void)v.get();
      const auto t0 = Clock::now();
      ::kill(server, SIGKILL);
      waiter.join();
      state.SetIterationTime(seconds_since(t0));
      bool later = false;
      try {
        (void)v.get();
      } catch (const mp::ManagerError&) {
        later = true;
      }
      if (error.find("is gone") == std::string::npos || !later)
        throw std::runtime_error("the server's death was not reported: '" + error + "'");
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// The ceiling for the calls/s cases: `clients` client processes, each making blocking round
// trips on a socketpair to an echo process of its own for the window, as the manager's clients do
// to their connection's thread on the server; their round trips in all over the window. Between
// fork and _exit the children make system calls only: this process has threads.
void run_floor_calls(benchmark::State& state, int clients) {
  const long window_ns = static_cast<long>(window_s() * 1e9);
  double rate = 0;
  for (auto _ : state) {
    int go[2], counts[2];
    if (pipe2(go, O_CLOEXEC) != 0 || pipe2(counts, O_CLOEXEC) != 0) {
      state.SkipWithError("pipe2 failed");
      return;
    }
    std::vector<pid_t> pids;
    for (int i = 0; i < clients; ++i) {
      int sv[2];
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) break;
      const pid_t echo = fork();
      if (echo == 0) {
        close(sv[0]);
        char buf[bench::kFloorMessage];
        for (;;) {
          const ssize_t r = bench::recv_full(sv[1], buf, sizeof buf, 0);
          if (r == 0) _exit(0);
          if (r < 0 || bench::send_full(sv[1], buf, sizeof buf) != 0) _exit(1);
        }
      }
      const pid_t client = echo < 0 ? -1 : fork();
      if (client == 0) {
        close(sv[1]);
        char c;
        if (read(go[0], &c, 1) != 1) _exit(1);  // all start together
        const long end = bench::now_ns() + window_ns;
        long long n = 0;
        char buf[bench::kFloorMessage] = {0};
        while (bench::now_ns() < end) {
          if (bench::send_full(sv[0], buf, sizeof buf) != 0 ||
              bench::recv_full(sv[0], buf, sizeof buf, 0) != (ssize_t)sizeof buf)
            _exit(1);
          ++n;
        }
        // 8 bytes, less than PIPE_BUF: the clients' reports do not interleave.
        _exit(write(counts[1], &n, sizeof n) == (ssize_t)sizeof n ? 0 : 1);
      }
      // Ours closed: a client's exit is its echo's EOF.
      close(sv[0]);
      close(sv[1]);
      if (echo > 0) pids.push_back(echo);
      if (client > 0) pids.push_back(client);
    }
    close(go[0]);
    close(counts[1]);
    const std::string start(static_cast<std::size_t>(clients), 'g');
    const bool started = write(go[1], start.data(), start.size()) == (ssize_t)start.size();
    close(go[1]);
    long long total = 0;
    int reports = 0;
    for (long long n = 0; reports < clients && read(counts[0], &n, sizeof n) == sizeof n; ++reports)
      total += n;
    close(counts[0]);
    bool ok = started && reports == clients && static_cast<int>(pids.size()) == 2 * clients;
    for (const pid_t pid : pids) {
      int status = 0;
      ok = waitpid(pid, &status, 0) == pid && status == 0 && ok;
    }
    if (!ok) {
      state.SkipWithError("a floor client or echo process failed");
      return;
    }
    rate = static_cast<double>(total) / window_s();
  }
  state.counters["calls_per_s"] = rate;
}

// ---- registration

void register_all() {
  using S = benchmark::State;
  auto roundtrip = [](const char* name, auto f) {
    bench::repeat(
        benchmark::RegisterBenchmark(name, f)->UseRealTime()->Unit(benchmark::kMicrosecond), 0.1,
        5);
  };
  roundtrip("floor_socketpair_roundtrip", [](S& s) { bench::run_floor_roundtrip(s, 0); });
  roundtrip("floor_socketpair_busypoll30us_roundtrip",
            [](S& s) { bench::run_floor_roundtrip(s, kSpinNs); });
  roundtrip("mp_manager_dict_get", run_dict_get);
  roundtrip("mp_manager_dict_set", run_dict_set);
  roundtrip("mp_manager_proxy_create", run_proxy_create);
  roundtrip("mp_manager_update_with", run_update_with);
  for (const int n : kClients) {
    const std::string name = "mp_manager_calls/clients:" + std::to_string(n);
    bench::repeat_iterations(
        benchmark::RegisterBenchmark(name.c_str(), [n](S& s) { run_calls<get_loop>(s, n); })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond),
        1, 5);
    const std::string piped = "mp_manager_pipelined_calls/clients:" + std::to_string(n);
    bench::repeat_iterations(benchmark::RegisterBenchmark(
                                 piped.c_str(), [n](S& s) { run_calls<pipelined_get_loop>(s, n); })
                                 ->UseRealTime()
                                 ->Unit(benchmark::kMillisecond),
                             1, 5);
    const std::string floor = "floor_socketpair_calls/clients:" + std::to_string(n);
    bench::repeat_iterations(
        benchmark::RegisterBenchmark(floor.c_str(), [n](S& s) { run_floor_calls(s, n); })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond),
        1, 5);
  }
  using Case = std::pair<const char*, void (*)(S&)>;
  for (auto [name, f] : {Case{"mp_manager_dead_holder_release", run_dead_holder_release},
                         Case{"mp_manager_dead_server_reported", run_dead_server_reported}})
    bench::repeat_iterations(
        benchmark::RegisterBenchmark(name, f)->UseManualTime()->Unit(benchmark::kMillisecond), 1,
        5);
  bench::repeat_iterations(
      benchmark::RegisterBenchmark("mp_manager_update_with_2clients", run_update_with_2clients)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond),
      1, 5);
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
  std::printf("\n%-62s %9s %9s %8s  %s\n", "manager calls: ratio of medians (us, real time)", "num",
              "den", "ratio", "target");
  struct Row {
    const char* num;
    const char* den;
    double limit;  // num/den <= limit; 0: for information
    const char* note;
  };
  const Row rows[] = {
      {"mp_manager_dict_get", "floor_socketpair_roundtrip", 1.2, "(CPython ~1.5-2x)"},
      {"mp_manager_dict_set", "floor_socketpair_roundtrip", 1.2, "(CPython ~1.5-2x)"},
      {"mp_manager_dict_get", "floor_socketpair_busypoll30us_roundtrip", 0,
       "like for like: each end looks 30 us before it sleeps, as mp's do"},
      {"mp_manager_proxy_create", "mp_manager_dict_get", 3, "(create + drop against one call)"},
      {"mp_manager_update_with", "mp_manager_dict_get", 0, "a counter in one call, against a get"},
  };
  for (const Row& r : rows) {
    auto n = t.find(r.num), d = t.find(r.den);
    if (n == t.end() || d == t.end()) continue;  // filtered out or failed
    const double ratio = n->second / d->second;
    char target[128];
    if (r.limit > 0)
      std::snprintf(target, sizeof target, "<= %.1fx %s %s", r.limit, verdict(ratio <= r.limit),
                    r.note);
    else
      std::snprintf(target, sizeof target, "%s", r.note);
    const std::string name = std::string(r.num) + " / " + r.den;
    std::printf("%-62s %9.2f %9.2f %7.2fx  %s\n", name.c_str(), n->second / 1e3, d->second / 1e3,
                ratio, target);
  }

  std::printf("\nclient processes calling d.get for %.2f s each (median of %d)\n", window_s(),
              bench::smoke() ? 2 : 5);
  std::optional<double> one;
  for (const int n : kClients) {
    auto v = counter("mp_manager_calls/clients:" + std::to_string(n), "calls_per_s");
    if (!v) continue;
    if (n == 1) one = v;
    std::printf("  %d client%s %9.1f k calls/s", n, n == 1 ? " " : "s", *v / 1e3);
    if (one && n > 1) std::printf("  (%.2fx one client's)", *v / *one);
    if (auto f = counter("floor_socketpair_calls/clients:" + std::to_string(n), "calls_per_s"))
      std::printf("  floor %9.1f k round trips/s (mp %.2fx of it)", *f / 1e3, *v / *f);
    std::printf("  >= 10x CPython's: bench/python_managers.py compares\n");
    if (auto p = counter("mp_manager_pipelined_calls/clients:" + std::to_string(n), "calls_per_s"))
      std::printf("    pipelined (async_call, %d in flight): %9.1f k calls/s (%.2fx blocking)\n",
                  kPipeline, *p / 1e3, *p / *v);
  }
  using Fault = std::pair<const char*, const char*>;
  for (auto [name, what] :
       {Fault{"mp_manager_dead_holder_release", "a SIGKILLed holder's Lock to the next"},
        Fault{"mp_manager_dead_server_reported", "a SIGKILLed server to its calls' error"}}) {
    auto v = t.find(name);
    if (v == t.end()) continue;
    std::printf("%-62s %9.2f ms (median)  <= 100 ms %s\n", what, v->second / 1e6,
                verdict(v->second <= 100e6));
  }
  if (auto v = counter("mp_manager_update_with_2clients", "increments_per_s"))
    std::printf(
        "  2 clients racing update_with, %d each: %9.1f k increments/s, final count exact\n",
        race_calls(), *v / 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);  // the server and the clients are started by the forkserver: this program

  // Interleaved repetitions by default; the caller's flags come after, so they can say no.
  std::vector<char*> args(argv, argv + argc);
  char interleave[] = "--benchmark_enable_random_interleaving=true";
  args.insert(args.begin() + 1, interleave);
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);

  register_all();
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  bench::Collector reporter;
  const std::string load_before =
      bench::loadavg();  // the machine may be shared: say how busy it was
  {
    mp::SyncManager manager = mp::Manager();
    auto d = manager.dict<std::string, int>();
    d.set("k", 1);
    g_manager = &manager;
    g_dict = &d;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    g_manager = nullptr;
    g_dict = nullptr;
  }
  benchmark::Shutdown();
  print_summary(reporter, load_before);
}
