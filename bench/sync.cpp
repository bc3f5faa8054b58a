// mp's process-shared synchronisation and shared memory, side by side with the floors the C
// library sets, in one run:
//
//   - *_acquire_release: an uncontended acquire + release in one process. mp's Lock, RLock and
//     Semaphore against a sem_t (sem_init pshared=1) in MAP_SHARED memory, sem_wait + sem_post:
//     what CPython's multiprocessing locks are made of. A PTHREAD_PROCESS_SHARED mutex, plain
//     and robust (robust: what mp's owner_died() is to a dead holder), for information.
//   - *_pingpong: a hand-off between the parent and a fork()ed child, each waking the other in
//     turn: the parent releases `ping` and acquires `pong`, the child the other way round; the
//     time reported is one round trip (two wake-ups). With two mp Semaphores, with two mp Locks
//     used as binary semaphores (mp's Lock, like CPython's, may be released by another process),
//     and with two sem_t in shared memory. Each runs unpinned, with both processes on one CPU
//     (*_1core: every hand-off is a context switch) and on a CPU each (*_2cores: every hand-off
//     wakes the other CPU), as bench/connection does.
//   - *_increment: mp::Value<int64_t> incremented under its lock (std::lock_guard on
//     get_lock(), ++get_obj()) against a std::atomic<int64_t> fetch_add in shared memory. For
//     information: the Value with a Lock instead of its default RLock, and a sem_t-guarded plain
//     increment (CPython's Value: a lock around a plain word; any lock costs two atomic
//     read-modify-writes where fetch_add costs one). *_2procs: the same while a fork()ed child on
//     the other CPU increments the same counter as fast as it can; the time is per increment of the
//     parent.
//   - *_shm_cycle: create a 4 KiB segment, attach to it by name, close both, unlink: mp's
//     SharedMemory against shm_open(O_CREAT|O_EXCL) + ftruncate + mmap, a second shm_open +
//     mmap, munmap + close twice and shm_unlink. mp reserves the pages at create
//     (posix_fallocate, so that a full /dev/shm is ENOSPC there rather than SIGBUS at a later
//     write): floor_shm_cycle_fallocate is the raw floor plus that call, to show what the
//     reservation costs. mp also draws its name from getrandom and fstats each mapping for its
//     size (an attacher does not know it); the floor makes its names from a counter.
//     *_touched: mp and the floor without the reservation again, but the creator writes the page
//     and the attacher reads it, as any use of a segment does: the floor then allocates at its
//     first write the page that mp allocated at create.
//
// Cases within one process are timed in the CPU time of their thread, cases of two processes in
// real time (see Timing below). Repetitions are interleaved at random
// (--benchmark_enable_random_interleaving=true, which a later flag may turn off) so that a change
// of load on the machine hits every case alike. At the end: every mp case over its floor, with the
// issue's targets.
//
//   sync [--benchmark_* flags]
#include <mp/mp.hpp>

#include <benchmark/benchmark.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "pinning.hpp"
#include "repetitions.hpp"

namespace {

constexpr std::int64_t kShmSize = 4096;  // bytes per segment of the *_shm_cycle cases
constexpr std::size_t kPage = 4096;      // the stride of the *_touched cases

using bench::Pin;
using bench::pin_child;
using bench::Pinning;

// ---- mp

template <class Primitive>
void run_mp_acquire_release(benchmark::State& state) {
  try {
    Primitive p;
    for (auto _ : state) {
      p.acquire();
      p.release();
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// The child's half of a ping-pong: take `ping`, give `pong`, until told to stop. Semaphore or
// Lock: both release from either process.
template <class Primitive>
void mp_pong(Primitive ping, Primitive pong, mp::Event stop, int cpu) {
  pin_child(cpu);
  for (;;) {
    ping.acquire();
    if (stop.is_set()) return;
    pong.release();
  }
}

// A Semaphore at 0, or a Lock taken (by the parent): a binary semaphore at 0 either way.
template <class Primitive>
Primitive closed() {
  if constexpr (std::is_same_v<Primitive, mp::Semaphore>) {
    return mp::Semaphore(0);
  } else {
    Primitive l;
    l.acquire();
    return l;
  }
}

// The parent's half.
template <class Primitive>
void run_mp_pingpong(benchmark::State& state, Pin where) {
  Pinning pin(where);
  if (!pin.ok()) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  try {
    Primitive ping = closed<Primitive>(), pong = closed<Primitive>();
    mp::Event stop;
    auto p = mp::fork_context.Process(mp_pong<Primitive>, ping, pong, stop, pin.child_cpu());
    p.start();
    for (auto _ : state) {
      ping.release();
      pong.acquire();
    }
    stop.set();
    ping.release();
    p.join();
    if (p.exitcode() != 0) state.SkipWithError("pong child did not exit with 0");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// mp::Value's benchmarks. L: the lock, RLock by default as in CPython; mp::Lock for information.
template <class L>
void run_mp_value_increment(benchmark::State& state) {
  try {
    mp::Value<std::int64_t, L> v(0);
    for (auto _ : state) {
      std::lock_guard g(v.get_lock());
      ++v.get_obj();
    }
    if (v.load() != static_cast<std::int64_t>(state.iterations()))
      state.SkipWithError("lost increments");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void mp_value_incrementer(mp::Value<std::int64_t> v, mp::Semaphore ready, mp::Event stop, int cpu) {
  pin_child(cpu);
  ready.release();
  while (!stop.is_set()) {
    std::lock_guard g(v.get_lock());
    ++v.get_obj();
  }
}

void run_mp_value_increment_2procs(benchmark::State& state) {
  Pinning pin(Pin::split);
  if (!pin.ok()) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  try {
    mp::Value<std::int64_t> v(0);
    mp::Semaphore ready(0);
    mp::Event stop;
    auto p = mp::fork_context.Process(mp_value_incrementer, v, ready, stop, pin.child_cpu());
    p.start();
    ready.acquire();  // time only while the child competes
    for (auto _ : state) {
      std::lock_guard g(v.get_lock());
      ++v.get_obj();
    }
    stop.set();
    p.join();
    if (p.exitcode() != 0) state.SkipWithError("incrementing child did not exit with 0");
    if (v.load() < static_cast<std::int64_t>(state.iterations()))
      state.SkipWithError("lost increments");
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// touch: the creator writes a byte to every page and the attacher reads them back.
void run_mp_shm_cycle(benchmark::State& state, bool touch) {
  try {
    for (auto _ : state) {
      mp::SharedMemory shm(std::nullopt, true, kShmSize);
      mp::SharedMemory other(shm.name());
      if (touch) {
        for (std::size_t i = 0; i < shm.size(); i += kPage) shm.buf()[i] = std::byte{1};
        for (std::size_t i = 0; i < other.size(); i += kPage)
          if (other.buf()[i] != std::byte{1}) throw std::runtime_error("attacher reads no write");
      }
      other.close();
      shm.close();
      shm.unlink();
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// ---- floors, in plain C style

// What the floors share with their fork()ed children: one MAP_SHARED anonymous mapping. The two
// ping-pong semaphores and the counter sit on cache lines of their own, as mp's primitives sit
// in mappings of their own.
struct Shared {
  alignas(64) sem_t ping;
  alignas(64) sem_t pong;
  alignas(64) pthread_mutex_t mutex;
  alignas(64) std::atomic<std::int64_t> counter;
  std::int64_t plain;
  alignas(64) std::atomic<int> stop;
  std::atomic<int> ready;
};

Shared* map_shared(void) {
  void* p = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  return new (p) Shared();  // zeroed by the kernel; the atomics' constructors run
}

void unmap_shared(Shared* sh) {
  munmap(sh, sizeof(Shared));
}

void sem_wait_eintr(sem_t* s) {
  while (sem_wait(s) != 0 && errno == EINTR) {
  }
}

void run_floor_sem_acquire_release(benchmark::State& state) {
  Shared* sh = map_shared();
  if (!sh || sem_init(&sh->ping, 1, 1) != 0) {
    state.SkipWithError("sem_init failed");
    return;
  }
  for (auto _ : state) {
    sem_wait_eintr(&sh->ping);
    sem_post(&sh->ping);
  }
  sem_destroy(&sh->ping);
  unmap_shared(sh);
}

void run_floor_mutex(benchmark::State& state, bool robust) {
  Shared* sh = map_shared();
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  if (robust) pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  if (!sh || pthread_mutex_init(&sh->mutex, &attr) != 0) {
    state.SkipWithError("pthread_mutex_init failed");
    return;
  }
  pthread_mutexattr_destroy(&attr);
  for (auto _ : state) {
    pthread_mutex_lock(&sh->mutex);
    pthread_mutex_unlock(&sh->mutex);
  }
  pthread_mutex_destroy(&sh->mutex);
  unmap_shared(sh);
}

void run_floor_pingpong(benchmark::State& state, Pin where) {
  Pinning pin(where);
  if (!pin.ok()) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  Shared* sh = map_shared();
  if (!sh || sem_init(&sh->ping, 1, 0) != 0 || sem_init(&sh->pong, 1, 0) != 0) {
    state.SkipWithError("sem_init failed");
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    pin_child(pin.child_cpu());
    for (;;) {
      sem_wait_eintr(&sh->ping);
      if (sh->stop.load(std::memory_order_relaxed)) _exit(0);
      sem_post(&sh->pong);
    }
  }
  if (pid < 0) {
    state.SkipWithError("fork failed");
    return;
  }
  for (auto _ : state) {
    sem_post(&sh->ping);
    sem_wait_eintr(&sh->pong);
  }
  sh->stop.store(1, std::memory_order_relaxed);
  sem_post(&sh->ping);  // its wake-up orders the store above for the child
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || status != 0) state.SkipWithError("floor child failed");
  sem_destroy(&sh->ping);
  sem_destroy(&sh->pong);
  unmap_shared(sh);
}

void run_floor_atomic_increment(benchmark::State& state) {
  Shared* sh = map_shared();
  if (!sh) {
    state.SkipWithError("mmap failed");
    return;
  }
  for (auto _ : state) sh->counter.fetch_add(1);
  if (sh->counter.load() != (std::int64_t)state.iterations())
    state.SkipWithError("lost increments");
  unmap_shared(sh);
}

// A plain increment under a sem_t: CPython's Value, with the interpreter taken away.
void run_floor_sem_increment(benchmark::State& state) {
  Shared* sh = map_shared();
  if (!sh || sem_init(&sh->ping, 1, 1) != 0) {
    state.SkipWithError("sem_init failed");
    return;
  }
  for (auto _ : state) {
    sem_wait_eintr(&sh->ping);
    ++sh->plain;
    sem_post(&sh->ping);
  }
  if (sh->plain != (std::int64_t)state.iterations()) state.SkipWithError("lost increments");
  sem_destroy(&sh->ping);
  unmap_shared(sh);
}

void run_floor_atomic_increment_2procs(benchmark::State& state) {
  Pinning pin(Pin::split);
  if (!pin.ok()) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  Shared* sh = map_shared();
  if (!sh) {
    state.SkipWithError("mmap failed");
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    pin_child(pin.child_cpu());
    sh->ready.store(1);
    while (!sh->stop.load(std::memory_order_relaxed)) sh->counter.fetch_add(1);
    _exit(0);
  }
  if (pid < 0) {
    state.SkipWithError("fork failed");
    return;
  }
  // Time only while the child competes. A spin, not a sleep: the child is on the other CPU
  // and gets there within a fork's time.
  while (!sh->ready.load()) sched_yield();
  for (auto _ : state) sh->counter.fetch_add(1);
  sh->stop.store(1);
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || status != 0) state.SkipWithError("floor child failed");
  if (sh->counter.load() < (std::int64_t)state.iterations()) state.SkipWithError("lost increments");
  unmap_shared(sh);
}

// One create + attach + close + unlink cycle of `size` bytes named `name`; 0 or -1. reserve:
// posix_fallocate after ftruncate, as mp does; touch: as run_mp_shm_cycle's.
int floor_shm_cycle(const char* name, size_t size, int reserve, int touch) {
  int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  int ok =
      ftruncate(fd, (off_t)size) == 0 && (!reserve || posix_fallocate(fd, 0, (off_t)size) == 0);
  void* mine = ok ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  int fd2 = mine != MAP_FAILED ? shm_open(name, O_RDWR | O_CLOEXEC, 0600) : -1;
  void* theirs =
      fd2 >= 0 ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, 0) : MAP_FAILED;
  ok = theirs != MAP_FAILED;
  if (ok && touch) {
    for (size_t i = 0; i < size; i += kPage) ((volatile char*)mine)[i] = 1;
    for (size_t i = 0; i < size; i += kPage) ok &= ((volatile char*)theirs)[i] == 1;
  }
  if (theirs != MAP_FAILED) munmap(theirs, size);
  if (fd2 >= 0) close(fd2);
  if (mine != MAP_FAILED) munmap(mine, size);
  close(fd);
  if (shm_unlink(name) != 0) ok = 0;
  return ok ? 0 : -1;
}

void run_floor_shm_cycle(benchmark::State& state, int reserve, int touch) {
  char name[64];
  long n = 0;
  for (auto _ : state) {
    snprintf(name, sizeof name, "/mp-bench-sync-%d-%ld", (int)getpid(), n++);
    if (floor_shm_cycle(name, (size_t)kShmSize, reserve, touch) != 0) {
      state.SkipWithError("floor shm cycle failed");
      break;
    }
  }
}

// ---- registration

// What a case is timed in. A case within one process: the CPU time of its thread, because on a
// shared 2-core machine its real time also counts whoever else ran meanwhile, and these are a
// few nanoseconds. A case of two processes: real time, as one of them always waits for the
// other.
enum class Timing { cpu, real };
std::set<std::string> cpu_timed;  // the names of the cases timed in CPU time

template <class F>
void add(const std::string& name, F f, Timing timing,
         benchmark::TimeUnit unit = benchmark::kNanosecond) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), f);
  if (timing == Timing::real)
    b->UseRealTime();
  else
    cpu_timed.insert(name);
  // Median of 5 repetitions of 0.1 s: on 2 cores a single run is at the mercy of the scheduler.
  bench::repeat(b->Unit(unit), 0.1, 5);
}

void register_all() {
  using benchmark::kMicrosecond;
  using S = benchmark::State;
  const Timing cpu = Timing::cpu, real = Timing::real;

  add("mp_lock_acquire_release", run_mp_acquire_release<mp::Lock>, cpu);
  add("mp_rlock_acquire_release", run_mp_acquire_release<mp::RLock>, cpu);
  add("mp_semaphore_acquire_release", run_mp_acquire_release<mp::Semaphore>, cpu);
  add("floor_sem_t_acquire_release", run_floor_sem_acquire_release, cpu);
  add(
      "floor_pthread_mutex_acquire_release", [](S& s) { run_floor_mutex(s, false); }, cpu);
  add(
      "floor_pthread_mutex_robust_acquire_release", [](S& s) { run_floor_mutex(s, true); }, cpu);

  struct Placement {
    Pin pin;
    const char* suffix;
  };
  const Placement placements[] = {{Pin::none, ""}, {Pin::same, "_1core"}, {Pin::split, "_2cores"}};
  for (const Placement& w : placements) {
    const Pin pin = w.pin;
    const std::string x = w.suffix;
    add(
        "mp_semaphore_pingpong" + x, [pin](S& s) { run_mp_pingpong<mp::Semaphore>(s, pin); }, real,
        kMicrosecond);
    add(
        "mp_lock_pingpong" + x, [pin](S& s) { run_mp_pingpong<mp::Lock>(s, pin); }, real,
        kMicrosecond);
    add(
        "floor_sem_t_pingpong" + x, [pin](S& s) { run_floor_pingpong(s, pin); }, real,
        kMicrosecond);
  }

  add("mp_value_locked_increment", run_mp_value_increment<mp::RLock>, cpu);
  add("mp_value_with_lock_locked_increment", run_mp_value_increment<mp::Lock>, cpu);
  add("floor_atomic_fetch_add_increment", run_floor_atomic_increment, cpu);
  add("floor_sem_t_guarded_increment", run_floor_sem_increment, cpu);
  add("mp_value_locked_increment_2procs", run_mp_value_increment_2procs, real);
  add("floor_atomic_fetch_add_increment_2procs", run_floor_atomic_increment_2procs, real);

  add(
      "mp_shm_cycle", [](S& s) { run_mp_shm_cycle(s, false); }, cpu, kMicrosecond);
  add(
      "floor_shm_cycle", [](S& s) { run_floor_shm_cycle(s, 0, 0); }, cpu, kMicrosecond);
  add(
      "floor_shm_cycle_fallocate", [](S& s) { run_floor_shm_cycle(s, 1, 0); }, cpu, kMicrosecond);
  add(
      "mp_shm_cycle_touched", [](S& s) { run_mp_shm_cycle(s, true); }, cpu, kMicrosecond);
  add(
      "floor_shm_cycle_touched", [](S& s) { run_floor_shm_cycle(s, 0, 1); }, cpu, kMicrosecond);
}

// The console output, plus the median time of each benchmark (ns; CPU or real time, as it was
// registered) for the ratio table.
class Collector : public benchmark::ConsoleReporter {
 public:
  Collector() : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_ColorTabular : OO_Tabular) {}
  std::map<std::string, double> median;
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

void print_ratios(const std::map<std::string, double>& t) {
  struct Row {
    std::string num, den;
    double limit;  // the target: num/den <= limit; 0: none, for information
    std::string note;
  };
  std::vector<std::vector<Row>> groups = {
      {
          {"mp_lock_acquire_release", "floor_sem_t_acquire_release", 2, ""},
          {"mp_rlock_acquire_release", "floor_sem_t_acquire_release", 2, ""},
          {"mp_semaphore_acquire_release", "floor_sem_t_acquire_release", 2, ""},
          {"mp_lock_acquire_release", "floor_pthread_mutex_robust_acquire_release", 0,
           "against a robust pshared mutex"},
          {"floor_pthread_mutex_acquire_release", "floor_sem_t_acquire_release", 0,
           "pshared mutex vs sem_t"},
      },
  };
  std::vector<Row> handoff;
  for (const char* sfx : {"", "_1core", "_2cores"}) {
    const std::string x = sfx;
    const char* luck = x.empty() ? "placement left to the scheduler" : "";
    handoff.push_back({"mp_semaphore_pingpong" + x, "floor_sem_t_pingpong" + x, 0, luck});
    handoff.push_back({"mp_lock_pingpong" + x, "floor_sem_t_pingpong" + x, 0, luck});
  }
  groups.push_back(handoff);
  groups.push_back({
      {"mp_value_locked_increment", "floor_atomic_fetch_add_increment", 3, ""},
      {"mp_value_locked_increment", "floor_sem_t_guarded_increment", 0,
       "against a lock + plain increment"},
      {"mp_value_with_lock_locked_increment", "floor_atomic_fetch_add_increment", 0,
       "Value<int64_t, mp::Lock>"},
      {"floor_sem_t_guarded_increment", "floor_atomic_fetch_add_increment", 0,
       "any lock's two atomics vs one"},
      {"mp_value_locked_increment_2procs", "floor_atomic_fetch_add_increment_2procs", 0,
       "a child incrementing on the other CPU"},
  });
  groups.push_back({
      {"mp_shm_cycle", "floor_shm_cycle", 1.2, ""},
      {"mp_shm_cycle", "floor_shm_cycle_fallocate", 0, "against the floor that reserves too"},
      {"floor_shm_cycle_fallocate", "floor_shm_cycle", 0, "what reserving the pages costs"},
      {"mp_shm_cycle_touched", "floor_shm_cycle_touched", 0, "the page written and read"},
  });
  std::printf("\n%-78s %9s %9s %8s  %s\n",
              "ratio of medians (ns; CPU time in one process, real time in two)", "num", "den",
              "ratio", "target");
  for (const auto& rows : groups) {
    bool first = true;
    for (const Row& r : rows) {
      auto n = t.find(r.num), d = t.find(r.den);
      if (n == t.end() || d == t.end()) continue;  // filtered out or failed
      const double ratio = n->second / d->second;
      std::string name = r.num + " / " + r.den, target = r.note;
      if (r.limit > 0) {
        char buf[48];
        std::snprintf(buf, sizeof buf, "<= %.1fx %s", r.limit, ratio <= r.limit ? "ok" : "MISSED");
        target = buf;
      }
      if (first) std::printf("\n");
      first = false;
      std::printf("%-78s %9.1f %9.1f %7.2fx  %s\n", name.c_str(), n->second, d->second, ratio,
                  target.c_str());
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
  print_ratios(reporter.median);
}
