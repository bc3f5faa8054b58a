// mp's queues side by side with their floors, in one run (bench/python_queue.py adds CPython's
// Queue and SimpleQueue):
//
//   - *_1p1c_u64: one producer (a fork()ed child) and one consumer (this process) moving 8-byte
//     items: mp::Queue<std::uint64_t>; a plain single-producer single-consumer ring in MAP_SHARED
//     memory written for this benchmark (the floor: two indices on their own cache lines, each
//     side caching the other's); Boost.Interprocess message_queue (when its headers are there).
//   - mp_queue_1p1c_string100: the same with 100-byte std::string items.
//   - mp_queue_1p1c_1MiB / floor_memcpy_1MiB: 1 MiB std::string items against one memcpy of
//     1 MiB in one thread (the bandwidth an item's copy is made at).
//   - mp_queue_2p2c_u64: two producer children, a consumer child and this process consuming;
//     the time is per item moved.
//   - *_pingpong: a round trip between this process and a child: through two mp::Queue<int>,
//     against two futex words in shared memory (wake, wait; no spinning) as the floor.
//   - mp_queue_put_get_one_thread: put + get in one thread (CPU time).
//
// Cases of two processes are timed in real time, the one-thread case in CPU time. At the end:
// every mp case over its floor, with the targets, and items/s.
//
//   queue [--benchmark_* flags]
#include <mp/mp.hpp>

#include <benchmark/benchmark.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#if MP_BENCH_BOOST
#include <boost/interprocess/ipc/message_queue.hpp>
#endif

#include "repetitions.hpp"

namespace {

// A page of MAP_SHARED memory that fork()ed children see.
template <class T>
T* shared_new() {
  void* p = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("mmap");
  return new (p) T();
}
template <class T>
void shared_delete(T* p) {
  p->~T();
  munmap(p, sizeof(T));
}

struct Go {
  std::atomic<int> go{0};
};

// Children that start together with the timed loop of the parent.
class Children {
 public:
  Children() : go_(shared_new<Go>()) {}
  ~Children() {
    join();
    shared_delete(go_);
  }
  template <class F>
  void spawn(F f) {
    const pid_t pid = fork();
    if (pid == 0) {
      while (go_->go.load(std::memory_order_acquire) == 0) {
      }
      f();
      _exit(0);
    }
    pids_.push_back(pid);
  }
  void go() { go_->go.store(1, std::memory_order_release); }
  bool join() {
    bool ok = true;
    for (pid_t p : pids_) {
      int st = 0;
      waitpid(p, &st, 0);
      ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    pids_.clear();
    return ok;
  }

 private:
  Go* go_;
  std::vector<pid_t> pids_;
};

// ---- mp

template <class T>
T item_of(std::uint64_t i);
template <>
std::uint64_t item_of<std::uint64_t>(std::uint64_t i) {
  return i;
}
template <>
std::string item_of<std::string>(std::uint64_t) {
  return std::string(100, 'x');
}

template <class T>
void run_mp_1p1c(benchmark::State& state) {
  mp::Queue<T> q;
  const auto n = static_cast<std::uint64_t>(state.max_iterations);
  Children kids;
  kids.spawn([&] {
    const T one = item_of<T>(1);
    for (std::uint64_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<T, std::uint64_t>)
        q.put(i);
      else
        q.put(one);
    }
  });
  kids.go();
  for (auto _ : state) benchmark::DoNotOptimize(q.get());
  if (!kids.join()) state.SkipWithError("producer failed");
  state.SetItemsProcessed(state.iterations());
}

void run_mp_1p1c_1mib(benchmark::State& state) {
  mp::Queue<std::string> q;
  const auto n = static_cast<std::uint64_t>(state.max_iterations);
  Children kids;
  kids.spawn([&] {
    const std::string one(1 << 20, 'x');
    for (std::uint64_t i = 0; i < n; ++i) q.put(one);
  });
  kids.go();
  for (auto _ : state) {
    auto s = q.get();
    benchmark::DoNotOptimize(s.data());
  }
  if (!kids.join()) state.SkipWithError("producer failed");
  state.SetBytesProcessed(state.iterations() << 20);
}

void run_floor_memcpy_1mib(benchmark::State& state) {
  std::vector<char> a(1 << 20, 'x'), b(1 << 20);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), a.size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() << 20);
}

void run_mp_2p2c(benchmark::State& state) {
  mp::Queue<std::uint64_t> q;
  // Each iteration of this process is one item got here, and one by the consumer child.
  const auto n = static_cast<std::uint64_t>(state.max_iterations);
  Children kids;
  for (int p = 0; p < 2; ++p)
    kids.spawn([&] {
      for (std::uint64_t i = 0; i < n; ++i) q.put(i);
    });
  kids.spawn([&] {
    for (std::uint64_t i = 0; i < n; ++i) q.get();
  });
  kids.go();
  for (auto _ : state) benchmark::DoNotOptimize(q.get());
  if (!kids.join()) state.SkipWithError("a child failed");
  state.SetItemsProcessed(2 * state.iterations());
}

void run_mp_pingpong(benchmark::State& state) {
  mp::Queue<int> ping, pong;
  const auto n = static_cast<std::uint64_t>(state.max_iterations);
  Children kids;
  kids.spawn([&] {
    for (std::uint64_t i = 0; i < n; ++i) pong.put(ping.get());
  });
  kids.go();
  for (auto _ : state) {
    ping.put(1);
    benchmark::DoNotOptimize(pong.get());
  }
  if (!kids.join()) state.SkipWithError("child failed");
}

void run_mp_put_get(benchmark::State& state) {
  mp::Queue<std::uint64_t> q;
  std::uint64_t i = 0;
  for (auto _ : state) {
    q.put(i++);
    benchmark::DoNotOptimize(q.get());
  }
}

// ---- floors

// A single-producer single-consumer ring of 8-byte items, each side caching the other's index.
struct SpscRing {
  static constexpr std::uint64_t kSize = 1 << 16;
  alignas(64) std::atomic<std::uint64_t> head{0};
  alignas(64) std::atomic<std::uint64_t> tail{0};
  alignas(64) std::uint64_t items[kSize];
};

void run_floor_spsc(benchmark::State& state) {
  auto* r = shared_new<SpscRing>();
  const auto n = static_cast<std::uint64_t>(state.max_iterations);
  Children kids;
  kids.spawn([&] {
    std::uint64_t head_seen = 0;
    for (std::uint64_t t = 0; t < n; ++t) {
      while (t - head_seen >= SpscRing::kSize) head_seen = r->head.load(std::memory_order_acquire);
      r->items[t % SpscRing::kSize] = t;
      r->tail.store(t + 1, std::memory_order_release);
    }
  });
  kids.go();
  std::uint64_t h = 0, tail_seen = 0;
  for (auto _ : state) {
    while (h == tail_seen) tail_seen = r->tail.load(std::memory_order_acquire);
    benchmark::DoNotOptimize(r->items[h % SpscRing::kSize]);
    r->head.store(++h, std::memory_order_release);
  }
  if (!kids.join()) state.SkipWithError("producer failed");
  state.SetItemsProcessed(state.iterations());
  shared_delete(r);
}

long futex(std::atomic<std::uint32_t>* w, int op, std::uint32_t v) {
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), op, v, nullptr, nullptr, 0);
}

struct Words {
  alignas(64) std::atomic<std::uint32_t> ping{0};
  alignas(64) std::atomic<std::uint32_t> pong{0};
};

// Waits for *w to leave `seen`, sleeping on the futex (no spinning), and wakes the other side.
void futex_await(std::atomic<std::uint32_t>* w, std::uint32_t seen) {
  while (w->load(std::memory_order_acquire) == seen) futex(w, FUTEX_WAIT, seen);
}
void futex_bump(std::atomic<std::uint32_t>* w) {
  w->fetch_add(1, std::memory_order_release);
  futex(w, FUTEX_WAKE, INT_MAX);
}

void run_floor_futex_pingpong(benchmark::State& state) {
  auto* w = shared_new<Words>();
  const auto n = static_cast<std::uint32_t>(state.max_iterations);
  Children kids;
  kids.spawn([&] {
    for (std::uint32_t i = 0; i < n; ++i) {
      futex_await(&w->ping, i);
      futex_bump(&w->pong);
    }
  });
  kids.go();
  std::uint32_t i = 0;
  for (auto _ : state) {
    futex_bump(&w->ping);
    futex_await(&w->pong, i++);
  }
  if (!kids.join()) state.SkipWithError("child failed");
  shared_delete(w);
}

#if MP_BENCH_BOOST
void run_boost_1p1c(benchmark::State& state) {
  namespace bip = boost::interprocess;
  const std::string name = "mp_bench_queue_" + std::to_string(getpid());
  bip::message_queue::remove(name.c_str());
  bip::message_queue mq(bip::create_only, name.c_str(), 1024, sizeof(std::uint64_t));
  const auto n = static_cast<std::uint64_t>(state.max_iterations);
  Children kids;
  kids.spawn([&] {
    bip::message_queue child(bip::open_only, name.c_str());
    for (std::uint64_t i = 0; i < n; ++i) child.send(&i, sizeof i, 0);
  });
  kids.go();
  for (auto _ : state) {
    std::uint64_t v = 0;
    bip::message_queue::size_type got = 0;
    unsigned prio = 0;
    mq.receive(&v, sizeof v, got, prio);
    benchmark::DoNotOptimize(v);
  }
  if (!kids.join()) state.SkipWithError("producer failed");
  state.SetItemsProcessed(state.iterations());
  bip::message_queue::remove(name.c_str());
}
#endif

// ---- registration

std::set<std::string> cpu_timed;

template <class F>
void add(const std::string& name, F f, bool real,
         benchmark::TimeUnit unit = benchmark::kNanosecond) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), f);
  if (real)
    b->UseRealTime();
  else
    cpu_timed.insert(name);
  bench::repeat(b->Unit(unit), 0.2, 5);
}

void register_all() {
  add("mp_queue_1p1c_u64", run_mp_1p1c<std::uint64_t>, true);
  add("floor_spsc_ring_1p1c_u64", run_floor_spsc, true);
#if MP_BENCH_BOOST
  add("boost_message_queue_1p1c_u64", run_boost_1p1c, true);
#endif
  add("mp_queue_1p1c_string100", run_mp_1p1c<std::string>, true);
  add("mp_queue_1p1c_1MiB", run_mp_1p1c_1mib, true, benchmark::kMicrosecond);
  add("floor_memcpy_1MiB", run_floor_memcpy_1mib, false, benchmark::kMicrosecond);
  add("mp_queue_2p2c_u64", run_mp_2p2c, true);
  add("mp_queue_pingpong", run_mp_pingpong, true, benchmark::kMicrosecond);
  add("floor_futex_pingpong", run_floor_futex_pingpong, true, benchmark::kMicrosecond);
  add("mp_queue_put_get_one_thread", run_mp_put_get, false);
}

class Collector : public benchmark::ConsoleReporter {
 public:
  Collector() : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_ColorTabular : OO_Tabular) {}
  std::map<std::string, double> median;  // ns per iteration
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs)
      if (!r.error_occurred && (r.run_type == Run::RT_Iteration || r.aggregate_name == "median"))
        median[r.run_name.function_name] =
            (cpu_timed.count(r.run_name.function_name) ? r.GetAdjustedCPUTime()
                                                       : r.GetAdjustedRealTime()) *
            1e9 / benchmark::GetTimeUnitMultiplier(r.time_unit);
  }
};

void print_ratios(std::map<std::string, double> t) {
  // Per item: 2p2c iterations move two items each.
  if (t.count("mp_queue_2p2c_u64")) t["mp_queue_2p2c_u64"] /= 2;
  std::printf("\n%-40s %10s %14s\n", "case (median)", "ns/item", "items/s");
  for (const auto& [name, ns] : t) std::printf("%-40s %10.1f %14.3g\n", name.c_str(), ns, 1e9 / ns);

  struct Row {
    std::string num, den;
    double limit;  // the target, as a ratio of throughputs num/den >= limit; 0: none
  };
  const Row rows[] = {
      {"mp_queue_1p1c_u64", "floor_spsc_ring_1p1c_u64", 0.25},
      {"mp_queue_1p1c_u64", "boost_message_queue_1p1c_u64", 5},
      {"mp_queue_1p1c_1MiB", "floor_memcpy_1MiB", 0.5},
      {"mp_queue_2p2c_u64", "mp_queue_1p1c_u64", 0},
  };
  std::printf("\n%-64s %8s  %s\n", "throughput ratio (items/s or bytes/s)", "ratio", "target");
  for (const Row& r : rows) {
    auto n = t.find(r.num), d = t.find(r.den);
    if (n == t.end() || d == t.end()) continue;
    const double ratio = d->second / n->second;
    char target[48] = "";
    if (r.limit > 0)
      std::snprintf(target, sizeof target, ">= %.2fx %s", r.limit,
                    ratio >= r.limit ? "ok" : "MISSED");
    std::printf("%-64s %7.2fx  %s\n", (r.num + " / " + r.den).c_str(), ratio, target);
  }
  auto show_abs = [&](const char* name, double limit_ns, const char* what) {
    auto it = t.find(name);
    if (it == t.end()) return;
    std::printf("%-64s %7.1f   <= %.0f ns %s (%s)\n", name, it->second, limit_ns,
                it->second <= limit_ns ? "ok" : "MISSED", what);
  };
  show_abs("mp_queue_1p1c_u64", 50, ">= 20 M items/s");
  show_abs("mp_queue_1p1c_string100", 200, ">= 5 M items/s");
  show_abs("mp_queue_put_get_one_thread", 50, "put + get in one thread");
  auto p = t.find("mp_queue_pingpong"), f = t.find("floor_futex_pingpong");
  if (p != t.end() && f != t.end())
    std::printf("%-64s %7.2fx  <= 1.20x %s (round trip, time ratio)\n",
                "mp_queue_pingpong / floor_futex_pingpong", p->second / f->second,
                p->second / f->second <= 1.2 ? "ok" : "MISSED");
}

// ---- how throughput grows with the item: std::string items of 8 B to 64 MiB, 1 producer child
// and this process consuming, against one memcpy of the same size in one thread (CPU time).
// Items over 32 KiB go through pages of their own; the queue is bounded there (256 MiB of items
// at most, 2 items at least) so that a producer running ahead cannot fill the machine's memory
// with 64 MiB items. Registered by name (mp_queue_1p1c_bytes/bytes:N), not by Arg, so that the
// ratio table's per-name medians keep one line per size.

constexpr std::size_t kSweepBytes[] = {8,
                                       64,
                                       512,
                                       4096,
                                       32768,
                                       262144,
                                       std::size_t{2} << 20,
                                       std::size_t{16} << 20,
                                       std::size_t{64} << 20};

void run_mp_1p1c_sized(benchmark::State& state, std::size_t bytes) {
  const long maxsize =
      bytes > 32768 ? static_cast<long>(std::max<std::size_t>(2, (std::size_t{256} << 20) / bytes))
                    : 0;
  mp::Queue<std::string> q(maxsize);
  const auto n = static_cast<std::uint64_t>(state.max_iterations);
  Children kids;
  kids.spawn([&] {
    const std::string one(bytes, 'x');
    for (std::uint64_t i = 0; i < n; ++i) q.put(one);
  });
  kids.go();
  for (auto _ : state) {
    auto s = q.get();
    benchmark::DoNotOptimize(s.data());
  }
  if (!kids.join()) state.SkipWithError("producer failed");
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes));
}

void run_floor_memcpy_sized(benchmark::State& state, std::size_t bytes) {
  std::vector<char> a(bytes, 'x'), b(bytes);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), a.size());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(bytes));
}

void register_item_size_sweep() {
  std::size_t i = 0;
  for (const std::size_t bytes : kSweepBytes) {
    if (!bench::in_sweep(i++)) break;
    const std::string arg = "/bytes:" + std::to_string(bytes);
    add(
        "mp_queue_1p1c_bytes" + arg, [bytes](benchmark::State& s) { run_mp_1p1c_sized(s, bytes); },
        true);
    add(
        "floor_memcpy_bytes" + arg,
        [bytes](benchmark::State& s) { run_floor_memcpy_sized(s, bytes); }, false);
  }
}

}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  std::vector<char*> args(argv, argv + argc);
  char interleave[] = "--benchmark_enable_random_interleaving=true";
  args.insert(args.begin() + 1, interleave);
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);
  register_all();
  register_item_size_sweep();
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  print_ratios(reporter.median);
}
