// The pool engine (CPython pool.py's worker, task and result handlers, in one thread) and the
// worker's loop (pool.py's worker()).
//
// Every worker has a socket of its own, owned by the parent, and is sent at most `window`
// tasks ahead of its results; it runs them in order. Before running a task it writes the
// task's id in its slot of a shared array, so when it dies the parent, having read every
// result it sent, knows exactly what it held: the task in its slot failed (WorkerLost), the
// ones behind it never began (sent again, to any worker). No lock is shared with a worker,
// and the parent never blocks on one: it writes without waiting and polls every socket and
// every worker's sentinel in one call. A local worker's results come back through a ring in
// shared memory (src/result_ring.hpp), no system call each while the parent is busy reading;
// what it published before it died is read before its death is handled.
#include "mp/pool.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iostream>
#include <thread>
#include <unordered_map>

#include "exception_info.hpp"
#include "frames.hpp"
#include "mp/connection.hpp"
#include "mp/context.hpp"
#include "mp/shared.hpp"
#include "pool_transport.hpp"
#include "posix/posix.hpp"
#include "result_ring.hpp"
#include "runtime.hpp"

namespace mp {
namespace detail {
namespace {

using Clock = std::chrono::steady_clock;

// Frames (frames.hpp), both ways; their codes:
enum Status : std::uint8_t {
  kOk = 0,
  kTaskError = 1,
  kEncodingError = 2,
  kInitError = 3,
  kStop = 4,   // to a worker: leave (the pool is closing)
  kReady = 5,  // from a worker: initialized, taking tasks (a task's timeout starts from here)
};
constexpr std::uint64_t kMaxFrame = std::uint64_t{1} << 40;

// A task's error as it crosses back: where it happened, its type and what().
struct ErrorInfo {
  std::uint64_t item = 0;
  std::string type, what, result_type;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(item, type, what, result_type);
  }
};

// The runners a worker has resolved (a task names its runner by a code reference).
class RunnerCache {
 public:
  TaskRunner get(reduction::InArchive& in) {
    reduction::CodeRef ref;
    in(ref);
    for (const auto& [r, f] : cache_)
      if (r.offset == ref.offset && r.module == ref.module) return f;
    auto f = reinterpret_cast<TaskRunner>(const_cast<void*>(reduction::resolve(ref)));
    cache_.emplace_back(std::move(ref), f);
    return f;
  }

 private:
  std::vector<std::pair<reduction::CodeRef, TaskRunner>> cache_;
};

// Runs one payload; the result's bytes or the error's go to `out`.
Status run_payload(std::string_view payload, std::string& out, RunnerCache& runners) {
  TaskProgress p;
  try {
    reduction::InArchive in(payload);
    TaskRunner runner = runners.get(in);
    runner(in, out, p);
    return kOk;
  } catch (const std::exception&) {
    // SystemExit (mp::exit in a task) is not a std::exception: it ends the worker.
    ErrorInfo e{p.item, exception_type(), exception_what(),
                p.result_type ? reduction::demangle(*p.result_type) : std::string()};
    out.clear();
    reduction::OutArchive ar(out);
    ar(e);
    return p.encoding ? kEncodingError : kTaskError;
  }
}

// Slot `slot`'s result ring in the shared array of them (ResultRing::kWords a slot).
ResultRing ring_of(const RawArray<std::uint64_t>& rings, std::uint32_t slot) {
  return ResultRing(&rings[std::size_t(slot) * ResultRing::kWords]);
}

}  // namespace

// A worker process: its socket, its slot in the shared array of running task ids and its
// ring in the shared array of result rings.
struct PoolWorker : Process {
  Connection conn;
  RawArray<std::uint64_t> slots;
  RawArray<std::uint64_t> rings;
  std::uint32_t slot = 0;
  std::string initializer;
  std::int64_t maxtasks = 0;
  std::int64_t spin_ns = 0;  // EngineOptions::spin

  PoolWorker() = default;
  PoolWorker(Connection c, RawArray<std::uint64_t> s, RawArray<std::uint64_t> r, std::uint32_t i,
             std::string init, std::int64_t m, std::int64_t spin)
      : Process(Options{.daemon = true}),
        conn(std::move(c)),
        slots(std::move(s)),
        rings(std::move(r)),
        slot(i),
        initializer(std::move(init)),
        maxtasks(m),
        spin_ns(spin) {}

  void run() override;
  MP_FIELDS(PoolWorker, conn, slots, rings, slot, initializer, maxtasks, spin_ns)
};

void PoolWorker::run() {
  std::atomic_ref<std::uint64_t> running(slots[slot]);
  const int parent = parent_process() ? parent_process()->sentinel() : -1;
  ResultRing ring = ring_of(rings, slot);
  serve_tasks(conn.fileno(), parent, &running, initializer, maxtasks, spin_ns, &ring);
}

void serve_tasks(int fd, int parent, std::atomic_ref<std::uint64_t>* running,
                 const std::string& initializer, std::int64_t maxtasks, std::int64_t spin_ns,
                 ResultRing* ring) {
  RunnerCache runners;
  std::string out, frame;
  auto send = [&](std::uint64_t id, Status status) {
    frame.clear();
    append_frame(frame, id, status, {});  // the header; the result's bytes go as they are
    const std::uint64_t len = 9 + out.size();
    std::memcpy(frame.data(), &len, 8);
    const std::span<const std::byte> parts[] = {std::as_bytes(std::span(frame)),
                                                std::as_bytes(std::span(out))};
    if (ring)
      ring->write(parts, fd, parent);
    else
      posix::write_all(fd, parts, true);
  };
  try {
    if (!initializer.empty()) {
      if (Status s = run_payload(initializer, out, runners); s != kOk) {
        send(0, kInitError);
        return;
      }
    }
    out.clear();
    send(0, kReady);
    FrameReader reader(kMaxFrame, "mp::Pool");
    std::int64_t done = 0;
    for (;;) {
      std::optional<Frame> f = reader.next();
      if (!f) {
        // Hot: the next task often comes within microseconds of the last result; polling for
        // it a bounded time saves the sleep and the wake-up (the idle worker then sleeps).
        if (spin_ns > 0) {
          const auto n =
              posix::recv_spinning(fd, reader.space(), std::chrono::nanoseconds(spin_ns));
          if (n) {
            reader.commit(*n);
            if (*n == 0) return;
            continue;
          }
        }
        // Nothing whole yet: wait for more, or for the parent's end (an orphan leaves).
        posix::PollFd p[2] = {{fd}, {parent}};
        if (posix::poll_fds(std::span(p, parent >= 0 ? 2 : 1), std::nullopt) == 0) continue;
        if (!p[0].readable) return;
        auto space = reader.space();
        const std::size_t n = posix::recv_some(fd, space);
        reader.commit(n);
        if (n == 0) return;  // the pool closed our socket: done
        continue;
      }
      if (f->code == kStop) return;
      if (running) running->store(f->id, std::memory_order_release);
      out.clear();
      const Status s = run_payload(f->payload, out, runners);
      send(f->id, s);
      if (maxtasks > 0 && ++done >= maxtasks) return;
    }
  } catch (const std::system_error&) {
    // The parent has gone (EPIPE): nobody wants our results.
  }
}

namespace {

struct Worker {
  std::unique_ptr<WorkerLink> link;  // how it is reached (a local process, an MPI rank)
  std::uint32_t slot = 0;
  int pid = 0;
  std::deque<std::uint64_t> inflight;  // sent, in order; the first is running or next
  std::string outbox;
  std::size_t sent = 0;       // of the outbox
  std::size_t unflushed = 0;  // tasks of `inflight` whose frames are still (partly) in the outbox
  std::size_t answered = 0;   // results read since `started`
  // How long its tasks take, as the parent sees results come back (automatic window).
  Clock::time_point started;  // when the first of `inflight` began, as far as we can tell
  double service_s = 0;       // moving average; 0: nothing measured yet
  FrameReader inbox{kMaxFrame, "mp::Pool"};
  std::int64_t completed = 0;
  bool init_failed = false;
  bool ready = false;                         // it said so (kReady)
  bool eof = false;                           // its end is closed: nothing more to read
  bool retiring = false;                      // told to stop (task timeout, close): no more tasks
  std::optional<Clock::time_point> deadline;  // the running task's (task_timeout)
  std::optional<Clock::time_point> kill_at;   // terminated: killed if still there then
};

// An outcome to hand to its job once the engine's lock is released.
struct Outcome {
  std::shared_ptr<Job> job;
  std::size_t index;
  std::string result;
  std::exception_ptr error;
};

std::string method_prefix(StartMethod m) {
  switch (m) {
    case StartMethod::fork:
      return "Fork";
    case StartMethod::spawn:
      return "Spawn";
    case StartMethod::forkserver:
      return "ForkServer";
  }
  return "";
}

// The local transport: a worker is a daemon process with a socket (Pipe) of its own; the
// task it began is in its slot of a shared array, read when it has died.
class LocalLink final : public WorkerLink {
 public:
  LocalLink(std::unique_ptr<PoolWorker> proc, Connection conn, RawArray<std::uint64_t> slots,
            RawArray<std::uint64_t> rings, std::uint32_t slot)
      : proc_(std::move(proc)),
        conn_(std::move(conn)),
        slots_(std::move(slots)),
        rings_(std::move(rings)),
        ring_(ring_of(rings_, slot)),
        slot_(slot),
        pid_(proc_->pid().value_or(0)) {}
  ~LocalLink() override {
    try {
      if (proc_->exitcode()) proc_->close();
    } catch (const std::exception&) {
    }
  }
  int fd() const override { return conn_.fileno(); }
  int sentinel() const override { return proc_->sentinel(); }
  int pid() const override { return pid_; }
  std::uint64_t running() const override {
    return std::atomic_ref<std::uint64_t>(slots_[slot_]).load(std::memory_order_acquire);
  }
  void terminate() override { proc_->terminate(); }
  void kill() override { proc_->kill(); }
  void join(std::optional<Duration> timeout) override {
    if (timeout)
      proc_->join(*timeout);
    else
      proc_->join();
  }
  std::optional<int> exitcode() const override { return proc_->exitcode(); }
  ResultRing* ring() override { return &ring_; }

 private:
  std::unique_ptr<PoolWorker> proc_;  // the parent's copy of the process object
  Connection conn_;                   // the parent's end
  mutable RawArray<std::uint64_t> slots_;
  RawArray<std::uint64_t> rings_;
  ResultRing ring_;
  std::uint32_t slot_;
  int pid_;
};

class LocalTransport final : public Transport {
 public:
  explicit LocalTransport(std::size_t processes)
      : slots_(processes), rings_(processes * ResultRing::kWords) {}
  std::unique_ptr<WorkerLink> start(const WorkerSpec& spec) override {
    auto [ours, theirs] = Pipe(true);
    auto proc = std::make_unique<PoolWorker>(std::move(theirs), slots_, rings_, spec.slot,
                                             spec.initializer, spec.maxtasks, spec.spin_ns);
    const Context& ctx = spec.context ? *spec.context : get_context();
    ctx.bind_to(*proc);
    proc->set_name(method_prefix(ctx.start_method()) + proc->name());
    std::atomic_ref<std::uint64_t>(slots_[spec.slot]).store(0, std::memory_order_relaxed);
    ring_of(rings_, spec.slot).reset();
    proc->start();
    proc->conn.close();  // the worker's end is the worker's alone now
    return std::make_unique<LocalLink>(std::move(proc), std::move(ours), slots_, rings_, spec.slot);
  }

 private:
  RawArray<std::uint64_t> slots_;
  RawArray<std::uint64_t> rings_;
};

}  // namespace

struct Engine::Impl {
  EngineOptions o;
  int owner_pid = posix::getpid();
  mutable std::mutex m;
  // Tasks submitted while another thread held `m` (the engine's thread reading results, a
  // caller waiting for one): taken into `pending` by whoever holds it next. A submitter never
  // waits for `m`: on 2 cores, one that blocked behind the thread writing to the workers slept
  // for every task or two (apply_async of 100 k trivial tasks: 100-200 k/s; with this,
  // 0.8-0.9 M/s). Taken after `m`, never before; `state` and the refusal are written under
  // both, so a submitter reads them under this one alone.
  std::mutex intake_m;
  std::vector<Task> intake;
  std::exception_ptr intake_refusal;  // `broken`, as submitters see it
  bool engine_asleep = false;         // the engine's thread polls: a submitter wakes it
  // The engine's thread sleeps "light" while nothing is in flight or a caller in wait() polls
  // the workers: on its wake socket, the hand-over timer and the workers' sentinels, not on
  // their sockets. Otherwise a worker's result woke both that caller and the engine's thread,
  // and the two fought for `m` (a futex or two on every round trip: apply 41-61 us against
  // the socketpair's 25). Written under `m`.
  bool engine_light = false;
  // A submitter that sent tasks itself while the engine's thread slept light arms this, so
  // the thread watches the workers from kHandOver on if no caller has come to wait() by then
  // (a result polled with ready() or given a callback later comes that much later); a caller
  // in wait() disarms it. Jobs with callbacks wake the thread at once. Under `m`.
  posix::unique_fd hand_over = posix::make_timer();
  bool hand_over_armed = false;
  // A hot pool (its callers spin) does without the timer, whose two system calls cost a
  // spinning caller more than half its round trip (apply 16-18 us against 10): while callers
  // were active in the last kActive, the engine's light sleep lasts kHandOver at most, so it
  // looks by itself. Under `m`.
  bool engine_timed = false;
  Clock::time_point last_active{};
  static constexpr Duration kActive = std::chrono::milliseconds(5);
  static constexpr Duration kHandOver = std::chrono::milliseconds(1);
  std::unordered_map<std::uint64_t, Task> tasks;
  std::deque<std::uint64_t> pending;
  std::uint64_t next_id = 1;
  std::vector<std::unique_ptr<Worker>> workers;  // one per slot; null: to be started
  std::shared_ptr<Transport> transport;
  enum State { kRun, kClose, kTerminate } state = kRun;
  bool kill_now = false;  // terminate with SIGKILL (kill_workers)
  std::exception_ptr broken;
  int startup_failures = 0;
  posix::unique_fd wake_r, wake_w;
  std::atomic<bool> wake_pending{false};
  std::thread thread;
  std::once_flag joined;
  std::vector<Outcome> outcomes;
  // Callers blocked in Engine::wait() on the workers' sockets: their wake-up sockets, and the
  // sockets of workers gone meanwhile, kept open (not reused for another file) until they leave.
  std::vector<int> waiters;
  int pollers = 0;
  int readers = 0;  // callers in wait(), spinning or polling: they read every worker
  std::vector<std::unique_ptr<WorkerLink>> gone_links;
  std::vector<std::pair<posix::unique_fd, posix::unique_fd>> bells;  // the idle ones

  explicit Impl(EngineOptions opts)
      : o(std::move(opts)),
        transport(o.transport ? o.transport
                              : std::make_shared<LocalTransport>(std::size_t(o.processes))) {
    auto [r, w] = posix::make_socketpair();
    wake_r = std::move(r);
    wake_w = std::move(w);
    workers.resize(std::size_t(o.processes));
  }

  bool in_flight() const {
    return std::any_of(workers.begin(), workers.end(),
                       [](auto& w) { return w && !w->inflight.empty(); });
  }

  // Under the lock, before the engine's thread sleeps: whether it may leave the workers'
  // sockets to the callers in wait(). Not with a task timeout to watch or a send to finish.
  bool may_sleep_light() const {
    if (o.task_timeout) return false;
    for (auto& w : workers)
      if (w && !w->outbox.empty()) return false;
    return readers > 0 || !in_flight();
  }

  // Under the lock, when tasks went out or a caller stops waiting: the engine's thread is
  // made to watch the workers if nobody else does. Asleep on their sockets, it must be rung
  // for what comes (a caller may have read the byte that woke it, and left: its poll slept
  // on); asleep light, it is woken at once or (`soon`: a caller is likely to come and wait)
  // after kHandOver.
  void hand_over_results(bool soon) {
    if (readers > 0 || !in_flight()) return;
    if (!engine_light) {
      if (!arm_rings()) wake();  // one came unrung: read it now
    } else if (!soon || (o.spin.count() > 0 && !engine_timed)) {
      wake();
    } else if (o.spin.count() > 0) {
      // It looks within kHandOver by itself.
    } else if (!hand_over_armed) {
      posix::arm_timer(hand_over.get(), kHandOver);
      hand_over_armed = true;
    }
  }

  void wake() {
    if (!wake_pending.exchange(true)) {
      const std::byte b{1};
      posix::send_nowait(wake_w.get(), std::span(&b, 1));
    }
  }

  // Under the lock.
  void start_worker(std::uint32_t slot) {
    auto w = std::make_unique<Worker>();
    w->link = transport->start(
        {slot, o.initializer, o.maxtasksperchild.value_or(0),
         std::chrono::duration_cast<std::chrono::nanoseconds>(o.spin).count(), o.context});
    w->slot = slot;
    w->pid = w->link->pid();
    workers[slot] = std::move(w);
    wake_waiters();  // the callers polling look again, at the new worker's socket too
  }

  // Drops a worker's record; its socket outlives it while a caller polls it.
  void drop_worker(std::unique_ptr<Worker>& w) {
    if (pollers > 0) gone_links.push_back(std::move(w->link));
    w.reset();
  }

  // Under the lock, after outcomes were handed out: a caller polling the sockets whose result
  // another thread read is told to look at its state again.
  void wake_waiters() {
    const std::byte b{1};
    for (int fd : waiters) posix::send_nowait(fd, std::span(&b, 1));
  }

  // Under the lock: sends what can go now (the calling thread writes it); true if the engine's
  // thread must be woken for the rest (a worker to start, a send that would block, a timeout to
  // watch, a broken pool). Tasks waiting for room need no wake: the results that make room do.
  bool send_now() {
    dispatch();
    bool left = o.task_timeout.has_value() || broken != nullptr;
    if (!pending.empty())
      for (auto& w : workers) left = left || !w || has_room(*w);
    for (auto& w : workers) {
      if (!w || w->outbox.empty()) continue;
      // A worker with two tasks or more in hand gets the rest with the write that follows its
      // next result (one write for many tasks): it has work until then.
      if (w->inflight.size() - w->unflushed >= 2) continue;
      flush(*w);
      left = left || !w->outbox.empty();
    }
    return left;
  }

  bool wait(const Job* job, const std::function<bool()>& done, std::optional<Duration> timeout);

  void fail(std::uint64_t id, std::exception_ptr error) {
    auto it = tasks.find(id);
    if (it == tasks.end()) return;
    outcomes.push_back({std::move(it->second.job), it->second.index, {}, std::move(error)});
    tasks.erase(it);
  }

  // Under the lock: the submitted tasks join the queue, in order.
  void absorb() {
    std::lock_guard g(intake_m);
    if (!intake.empty() && o.spin.count() > 0) last_active = Clock::now();
    for (auto& t : intake) {
      const std::uint64_t id = next_id++;
      pending.push_back(id);
      tasks.emplace(id, std::move(t));
    }
    intake.clear();
  }

  // Under the lock: the pool is broken by `error` (the first cause stays); submitters are
  // refused with it from now on.
  void break_pool(std::exception_ptr error) {
    if (broken) return;
    broken = std::move(error);
    std::lock_guard g(intake_m);
    intake_refusal = broken;
  }

  void set_state(State s) {
    std::lock_guard g(intake_m);
    state = s;
  }

  void fail_all(const std::exception_ptr& error) {
    absorb();
    for (auto& w : workers)
      if (w) w->inflight.clear();
    pending.clear();
    std::vector<std::uint64_t> ids;
    for (auto& [id, rec] : tasks) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    for (auto id : ids) fail(id, error);
  }

  bool work_left() const { return !tasks.empty(); }

  void set_deadline(Worker& w) {
    if (o.task_timeout && w.ready && !w.inflight.empty() && !w.deadline)
      w.deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(*o.task_timeout);
  }

  // How many tasks a worker may hold. Automatic: 4, and more while its tasks are short, up to
  // about kQueued of work queued in it, so that a stream of tiny tasks is sent (and answered)
  // many to a write and a worker rarely sleeps between them, while slow tasks keep the small
  // window that balances them. What a dead worker held is known whatever the size. (A 64
  // cap left the workers idle between a result's read and the refill that followed it:
  // apply_async of 100 k trivial tasks ~210 k/s against ~320-340 k/s at 256, 2 workers.)
  static constexpr std::size_t kMinWindow = 4, kMaxWindow = 256;
  static constexpr double kQueued = 1e-3;  // seconds
  std::size_t window(const Worker& w) const {
    if (o.window > 0) return std::size_t(std::clamp(o.window, 1, int(kMaxWindow)));
    if (w.service_s <= 0) return kMinWindow;
    return std::size_t(std::clamp(kQueued / w.service_s, double(kMinWindow), double(kMaxWindow)));
  }

  bool has_room(const Worker& w) const {
    return !w.retiring && !w.init_failed && w.inflight.size() < window(w);
  }

  // Each task to the worker with the fewest in flight (an idle one first), up to its window.
  void dispatch() {
    while (!pending.empty()) {
      Worker* best = nullptr;
      for (auto& w : workers)
        if (w && has_room(*w) && (!best || w->inflight.size() < best->inflight.size()))
          best = w.get();
      if (!best) break;
      const std::uint64_t id = pending.front();
      pending.pop_front();
      Task& t = tasks.at(id);
      append_frame(best->outbox, id, kOk, t.payload);
      if (best->inflight.empty()) best->started = Clock::now();
      best->inflight.push_back(id);
      ++best->unflushed;
      t.job->task_sent(t.index);
      set_deadline(*best);
    }
  }

  // How many workers the queue asks for: all of them, or (on demand) one per task waiting
  // beyond the idle ones.
  bool wants_worker() const {
    if (!o.on_demand) return true;
    std::size_t idle = 0;
    for (auto& w : workers)
      if (w && !w->retiring && w->inflight.empty()) ++idle;
    return pending.size() > idle;
  }

  void flush(Worker& w) {
    while (w.sent < w.outbox.size()) {
      const auto n =
          posix::send_nowait(w.link->fd(), std::as_bytes(std::span(w.outbox)).subspan(w.sent));
      if (n == 0) break;  // full (or the worker has gone: its sentinel says so)
      w.sent += n;
    }
    if (w.sent == w.outbox.size()) {
      w.outbox.clear();
      w.sent = 0;
      w.unflushed = 0;
    }
  }

  void on_frame(Worker& w, const Frame& f) {
    if (f.code == kReady) {
      w.ready = true;
      w.started = Clock::now();  // its start-up is not a task's time
      set_deadline(w);
      return;
    }
    if (f.code == kInitError) {
      w.init_failed = true;
      ErrorInfo e;
      reduction::InArchive(f.payload)(e);
      break_pool(std::make_exception_ptr(
          BrokenProcessPool("the pool's initializer failed in worker pid " + std::to_string(w.pid) +
                            ": " + e.type + ": " + e.what)));
      return;
    }
    if (w.inflight.empty() || w.inflight.front() != f.id)
      throw ProcessError("mp::Pool: a worker answered a task it was not running");
    w.inflight.pop_front();
    w.deadline.reset();
    set_deadline(w);
    ++w.completed;
    ++w.answered;
    startup_failures = 0;
    auto it = tasks.find(f.id);
    if (it == tasks.end()) return;  // failed already (timed out)
    Task& t = it->second;
    if (f.code == kOk) {
      outcomes.push_back({std::move(t.job), t.index, result_buffer(f.payload), nullptr});
    } else {
      ErrorInfo e;
      reduction::InArchive(f.payload)(e);
      std::exception_ptr error =
          f.code == kEncodingError
              ? std::make_exception_ptr(MaybeEncodingError(e.result_type, e.type + ": " + e.what))
              : std::make_exception_ptr(
                    RemoteError(e.type, e.what, w.pid, t.first_item + std::size_t(e.item)));
      outcomes.push_back({std::move(t.job), t.index, {}, std::move(error)});
    }
    tasks.erase(it);
  }

  // Under the lock, before a thread sleeps: every live worker's ring rings from here on; false
  // if one already has something to read.
  bool arm_rings() {
    bool empty = true;
    for (auto& w : workers)
      if (w && !w->eof && w->link->ring() && !w->link->ring()->arm()) empty = false;
    return empty;
  }

  // The results read in one go share the time since the last read (the next task began when
  // one ended, or when it arrived, if later: then its trip is counted, which errs towards the
  // small window). Each result its own sample made the first of a batch look slow and the rest
  // free. A worker left with nothing in flight may have sat idle since it answered: its time
  // only bounds the tasks' from above, so it may lower the estimate, never raise it (else a
  // window too small starves the worker, which makes its tasks look slower, which shrinks the
  // window further).
  void measure_service(Worker& w) {
    if (w.answered == 0) return;
    const auto now = Clock::now();
    double took = std::chrono::duration<double>(now - w.started).count() / double(w.answered);
    if (w.inflight.empty() && w.service_s > 0) took = std::min(took, w.service_s);
    w.service_s = w.service_s > 0 ? w.service_s + (took - w.service_s) / 8 : took;
    w.started = now;
    w.answered = 0;
  }

  // Reads what the worker sent; false once it has closed its end. With a ring, its socket is
  // read (for the bytes that ring, and the end) only when `socket`: when it is readable.
  bool drain(Worker& w, bool socket = true) {
    const bool open = read_frames(w, socket);
    measure_service(w);
    return open;
  }
  bool read_frames(Worker& w, bool socket) {
    if (ResultRing* ring = w.link->ring()) {
      bool ended = false;
      while (socket) {
        std::byte bells[256];
        const auto n = posix::recv_nowait(w.link->fd(), bells);
        if (!n) break;
        if (*n == 0) ended = true;  // what it published before it ended is read below
        if (*n < sizeof bells) break;
      }
      for (;;) {
        auto space = w.inbox.space();
        const std::size_t n = ring->read(space);
        w.inbox.commit(n);
        while (auto f = w.inbox.next()) on_frame(w, *f);
        if (n < space.size()) break;
      }
      if (ended) w.eof = true;
      return !ended;
    }
    for (;;) {
      auto space = w.inbox.space();
      auto n = posix::recv_nowait(w.link->fd(), space);
      w.inbox.commit(n.value_or(0));
      while (auto f = w.inbox.next()) on_frame(w, *f);
      if (!n) return true;
      if (*n == 0) {
        w.eof = true;
        return false;
      }
    }
  }

  // The worker's sentinel is readable: it has ended.
  void on_death(std::uint32_t slot) {
    Worker& w = *workers[slot];
    try {
      drain(w);
    } catch (const std::exception&) {
      // A half-written result: that task is lost with the worker, below.
    }
    w.link->join(std::nullopt);
    const int code = w.link->exitcode().value_or(-1);
    const std::uint64_t running = w.link->running();
    if (!w.inflight.empty() && w.inflight.front() == running) {
      const std::uint64_t id = w.inflight.front();
      w.inflight.pop_front();
      auto it = tasks.find(id);
      if (it != tasks.end())
        fail(id, std::make_exception_ptr(WorkerLost(w.pid, code, it->second.first_item)));
    }
    // Sent and never begun: first in line again, in their order.
    for (auto it = w.inflight.rbegin(); it != w.inflight.rend(); ++it)
      if (tasks.count(*it)) pending.push_front(*it);
    // A crash at start-up: it never began a task (its slot is still 0). One killed while
    // running its first task is not counted: a storm of kills must never break the pool.
    if (running == 0 && w.completed == 0 && !w.init_failed && !w.retiring && state != kTerminate) {
      const int limit =
          o.max_startup_failures > 0 ? o.max_startup_failures : std::max(5, 2 * o.processes);
      if (++startup_failures >= limit)
        break_pool(std::make_exception_ptr(BrokenProcessPool(
            std::to_string(startup_failures) +
            " workers in a row died before finishing a task; the last (pid " +
            std::to_string(w.pid) + ") ended with exit code " + std::to_string(code))));
    }
    drop_worker(workers[slot]);
  }

  // Ends every worker: SIGTERM (or SIGKILL), then SIGKILL after a grace period; reaps them.
  void stop_workers() {
    for (auto& w : workers)
      if (w) kill_now ? w->link->kill() : w->link->terminate();
    for (auto& w : workers) {
      if (!w) continue;
      w->link->join(std::chrono::seconds(1));
      if (!w->link->exitcode()) {
        w->link->kill();
        w->link->join(std::nullopt);
      }
      drop_worker(w);
    }
  }

  // Without the lock; then delivered() with it.
  void deliver(std::vector<Outcome>& batch) {
    for (auto& out : batch) {
      if (out.error)
        out.job->task_failed(out.index, out.error);
      else
        out.job->task_done(out.index, out.result);
      out.job.reset();
    }
  }
  // Under the lock: the large result buffers are kept for the next results (a fresh one of a
  // megabyte costs its page faults every time: slow on some VMs), and the callers polling the
  // sockets are told to look at their states again.
  void delivered(std::vector<Outcome>& batch) {
    for (auto& out : batch)
      if (out.result.capacity() >= kKeepMin && out.result.capacity() <= kKeepMax &&
          spare.size() < kSpares)
        spare.push_back(std::move(out.result));
    batch.clear();
    wake_waiters();
  }
  std::string result_buffer(std::string_view bytes) {
    std::string buf;
    if (bytes.size() >= kKeepMin) {
      auto it = std::find_if(spare.begin(), spare.end(),
                             [&](const std::string& b) { return b.capacity() >= bytes.size(); });
      if (it != spare.end()) {
        buf = std::move(*it);
        spare.erase(it);
      }
    }
    buf.assign(bytes);
    return buf;
  }
  static constexpr std::size_t kKeepMin = 64 << 10, kKeepMax = 16 << 20, kSpares = 8;
  std::vector<std::string> spare;

  void loop();
};

void Engine::Impl::loop() {
  std::vector<Outcome> batch;
  std::vector<posix::PollFd> fds;
  std::vector<std::uint32_t> owner;  // fds[i] belongs to workers[owner[i]] (wake: none)
  std::unique_lock l(m);
  for (;;) {
    if (!outcomes.empty()) {
      // Delivered before anything else (a replacement worker's start takes milliseconds):
      // a dead worker's task fails at once.
      batch.swap(outcomes);
      l.unlock();
      deliver(batch);
      l.lock();
      delivered(batch);
    }
    // From here to the decision to close, the lock is held: `state` cannot change meanwhile,
    // and what is submitted after this runs in a pool that is not closing.
    absorb();
    if (state == kTerminate) {
      fail_all(std::make_exception_ptr(BrokenProcessPool("pool terminated")));
      break;
    }
    if (broken) {
      fail_all(broken);
      break;
    }
    const bool closing = state == kClose && !work_left();
    // Workers: one per slot while there is work or the pool runs; retire the rest.
    for (std::uint32_t i = 0; i < workers.size(); ++i) {
      if (!workers[i] && !closing && wants_worker()) {
        try {
          start_worker(i);
        } catch (...) {
          break_pool(std::current_exception());
          break;
        }
      } else if (workers[i] && closing && !workers[i]->retiring) {
        // Told, not shown EOF: under fork the other workers hold copies of our end.
        workers[i]->retiring = true;
        append_frame(workers[i]->outbox, 0, kStop, {});
      }
    }
    if (broken) continue;
    if (closing && std::none_of(workers.begin(), workers.end(), [](auto& w) { return bool(w); }))
      break;
    dispatch();
    // Timed-out tasks: failed now; their workers terminated, then killed, then replaced.
    const auto now = Clock::now();
    std::optional<Clock::time_point> next_deadline;
    for (auto& w : workers) {
      if (!w) continue;
      if (w->deadline && now >= *w->deadline && !w->inflight.empty()) {
        const std::uint64_t id = w->inflight.front();
        w->inflight.pop_front();
        w->deadline.reset();
        fail(id, std::make_exception_ptr(
                     TimeoutError("the task ran longer than its timeout of " +
                                  std::to_string(o.task_timeout->count()) + " s; its worker (pid " +
                                  std::to_string(w->pid) + ") was terminated")));
        w->retiring = true;
        w->link->terminate();
        w->kill_at = now + std::chrono::milliseconds(20);
        // What it had not begun goes to the others now.
        for (auto it = w->inflight.rbegin(); it != w->inflight.rend(); ++it)
          pending.push_front(*it);
        w->inflight.clear();
        w->outbox.clear();
        w->sent = 0;
        w->unflushed = 0;
      }
      if (w->kill_at && now >= *w->kill_at) {
        w->link->kill();
        w->kill_at.reset();
      }
      for (auto t : {w->deadline, w->kill_at})
        if (t && (!next_deadline || *t < *next_deadline)) next_deadline = t;
    }
    if (!pending.empty()) dispatch();
    for (auto& w : workers)
      if (w && !w->eof) flush(*w);
    batch.swap(outcomes);
    if (!batch.empty()) {
      l.unlock();
      deliver(batch);
      l.lock();
      delivered(batch);
    }
    // Decided, and the set built, under the lock up to the sleep (callers come and go while
    // the outcomes are delivered above). The rings are armed for a light sleep too while a
    // caller polls: this thread may have read the byte that woke its poll, which then sleeps
    // on, and must be rung for what comes next.
    std::optional<Duration> timeout;
    if (next_deadline) timeout = std::max(Duration(*next_deadline - Clock::now()), Duration(0));
    bool light = may_sleep_light();
    if ((!light || pollers > 0) && !arm_rings()) {  // one came since the last look: read it now
      light = false;
      timeout = Duration(0);
    }
    fds.clear();
    owner.clear();
    fds.push_back({wake_r.get()});
    fds.push_back({hand_over.get()});
    owner.insert(owner.end(), 2, UINT32_MAX);
    for (std::uint32_t i = 0; i < workers.size(); ++i) {
      auto& w = workers[i];
      if (!w) continue;
      if (!w->eof && !light) {
        fds.push_back({w->link->fd(), !w->outbox.empty()});
        owner.push_back(i);
      }
      fds.push_back({w->link->sentinel()});
      owner.push_back(i | 0x80000000u);
    }
    {
      std::lock_guard g(intake_m);
      if (!intake.empty()) timeout = Duration(0);  // submitted meanwhile: sent first
      engine_asleep = true;
    }
    engine_light = light;
    engine_timed = false;
    if (light && o.spin.count() > 0 && Clock::now() - last_active < kActive && !timeout) {
      engine_timed = true;
      timeout = kHandOver;
    }
    l.unlock();
    for (;;) {
      for (auto& f : fds) f.readable = f.writable = false;
      const int ready = posix::poll_fds(fds, timeout);
      // A timed look while a caller holds the lock: the callers are busy reading the
      // workers; look again later rather than queue behind them (queued on a lock that a
      // caller takes and drops a few times a round trip, this thread would wait long and cost
      // every release a futex wake).
      if (engine_timed && ready == 0 && !l.try_lock()) continue;
      if (!l.owns_lock()) l.lock();
      break;
    }
    engine_light = false;
    engine_timed = false;
    {
      std::lock_guard g(intake_m);
      engine_asleep = false;
    }
    if (fds[1].readable) {
      posix::clear_timer(hand_over.get());
      hand_over_armed = false;
    }
    if (fds[0].readable) {
      // Drained before the flag is cleared: a wake() in between finds it set and skips its
      // byte, but what it announced is already in the state this loop reads next.
      std::byte drainbuf[64];
      while (posix::recv_nowait(wake_r.get(), drainbuf).value_or(0) > 0) {
      }
      wake_pending = false;
    }
    for (std::size_t k = 2; k < fds.size(); ++k) {
      const std::uint32_t i = owner[k] & 0x7fffffffu;
      if (!workers[i]) continue;
      Worker& w = *workers[i];
      if (owner[k] & 0x80000000u) {
        if (fds[k].readable) on_death(i);
      } else if ((fds[k].readable || w.link->ring()) && !w.eof) {
        try {
          drain(w, fds[k].readable);
        } catch (const std::exception&) {
          w.link->kill();  // it sent garbage: it goes, as a dead worker does
        }
      }
    }
  }
  // Broken or terminated: everything outstanding has failed; the workers go.
  stop_workers();
  batch.swap(outcomes);
  l.unlock();
  deliver(batch);
  l.lock();
  delivered(batch);
}

// The waiting caller reads the workers' sockets itself, as the engine's thread does (both
// are woken by a result; whoever takes the lock first reads it): its own job's outcomes are
// delivered here, so a result reaches it without the hand-off from the engine's thread (one
// wake-up less on every round trip), and so are those of other jobs without callbacks (no
// wake-up of that thread for them). The rest are left to that thread.
bool Engine::Impl::wait(const Job* job, const std::function<bool()>& done,
                        std::optional<Duration> timeout) {
  // A wake-up socket of the engine's, this thread's while it waits: written by whoever hands
  // out outcomes while it polls.
  std::pair<posix::unique_fd, posix::unique_fd> bell;
  {
    std::lock_guard l(m);
    if (!bells.empty()) {
      bell = std::move(bells.back());
      bells.pop_back();
    } else {
      bell = posix::make_socketpair();  // rare: one per thread waiting at once
    }
    ++readers;  // until GiveBack
    if (o.spin.count() > 0) last_active = Clock::now();
    if (hand_over_armed) {  // this thread reads the results (it tells the engine's, leaving)
      posix::disarm_timer(hand_over.get());
      hand_over_armed = false;
    }
  }
  struct GiveBack {
    Impl& e;
    std::pair<posix::unique_fd, posix::unique_fd>& bell;
    ~GiveBack() {
      std::lock_guard l(e.m);
      e.bells.push_back(std::move(bell));
      --e.readers;
      // This thread may have read the byte that rang for the others polling the workers, who
      // sleep on: they look again, and so does the engine's thread if nobody else watches.
      e.wake_waiters();
      e.hand_over_results(false);
    }
  } give_back{*this, bell};
  const auto start = Clock::now();
  const auto spin_until = start + std::chrono::duration_cast<Clock::duration>(o.spin);
  const auto deadline =
      timeout
          ? start + std::chrono::duration_cast<Clock::duration>(std::min(*timeout, Duration(1e9)))
          : Clock::time_point::max();
  std::vector<Outcome> mine;
  std::vector<posix::PollFd> fds;
  for (;;) {
    if (done()) return true;
    const auto now = Clock::now();
    if (now >= deadline) return false;
    const bool spinning = now < spin_until;
    bool more = false;
    {
      std::lock_guard l(m);
      absorb();
      for (auto& w : workers) {
        if (!w || w->eof) continue;
        try {
          drain(*w);
        } catch (const std::exception&) {
          w->link->kill();  // it sent garbage: it goes, as a dead worker does
        }
      }
      // Delivered here when their jobs allow it (ours does); the others by the engine's thread.
      auto others = std::stable_partition(
          outcomes.begin(), outcomes.end(),
          [&](const Outcome& out) { return out.job.get() == job || out.job->any_thread(); });
      std::move(outcomes.begin(), others, std::back_inserter(mine));
      outcomes.erase(outcomes.begin(), others);
      if (send_now() || !outcomes.empty()) wake();
      more = mine.empty() && !spinning && !arm_rings();  // one came: read it, no sleep
      if (!mine.empty()) {
        // Delivered below; a caller polling for this same job is told then.
      } else if (!more && !spinning) {
        fds.clear();
        fds.push_back({bell.first.get()});
        for (auto& w : workers)
          if (w && !w->eof) fds.push_back({w->link->fd()});
        waiters.push_back(bell.second.get());
        ++pollers;
      }
    }
    if (!mine.empty()) {
      deliver(mine);
      std::lock_guard l(m);
      delivered(mine);
      continue;
    }
    if (spinning || more) continue;
    // Checked again now that we are registered: the result may have been handed out between
    // the check above and the registration.
    if (!done()) {
      std::optional<Duration> left;
      if (deadline != Clock::time_point::max())
        left = std::max(Duration(deadline - Clock::now()), Duration(0));
      posix::poll_fds(fds, left);
    }
    std::lock_guard l(m);
    std::erase(waiters, bell.second.get());
    if (--pollers == 0) gone_links.clear();
    std::byte drainbuf[64];
    while (posix::recv_nowait(bell.first.get(), drainbuf).value_or(0) > 0) {
    }
  }
}

bool Engine::wait(const Job* job, const std::function<bool()>& done,
                  std::optional<Duration> timeout) {
  return impl_->wait(job, done, timeout);
}

namespace {
// Engines of this process, stopped at exit before the children are reaped (a pool left
// unclosed: its workers are terminated, its results failed, nothing printed).
std::mutex g_engines_mu;
std::vector<std::weak_ptr<Engine::Impl>> g_engines;
int g_engines_pid = 0;

void stop_engines_at_exit() {
  if (g_engines_pid != posix::getpid()) return;  // a fork child: the parent's pools are not ours
  std::vector<std::shared_ptr<Engine::Impl>> live;
  {
    std::lock_guard l(g_engines_mu);
    for (auto& w : g_engines)
      if (auto e = w.lock()) live.push_back(std::move(e));
    g_engines.clear();
  }
  for (auto& e : live) {
    {
      std::lock_guard l(e->m);
      // An executor finishes what was submitted (CPython joins it at exit); a Pool is ended.
      if (e->o.finish_at_exit) {
        if (e->state == Engine::Impl::kRun) e->set_state(Engine::Impl::kClose);
      } else {
        e->set_state(Engine::Impl::kTerminate);
      }
    }
    e->wake();
    std::call_once(e->joined, [&] { e->thread.join(); });
  }
}
}  // namespace

Engine::Engine(EngineOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {
  auto& e = *impl_;
  {
    std::lock_guard l(e.m);
    try {
      if (!e.o.on_demand)
        for (std::uint32_t i = 0; i < e.workers.size(); ++i) e.start_worker(i);
    } catch (...) {
      e.stop_workers();  // CPython #19675: the ones started are terminated and joined
      throw;
    }
  }
  {
    std::lock_guard l(g_engines_mu);
    const int pid = posix::getpid();
    if (g_engines_pid != pid) g_engines.clear();
    g_engines_pid = pid;
    std::erase_if(g_engines, [](auto& w) { return w.expired(); });
    g_engines.push_back(impl_);
    stop_pools_at_exit = &stop_engines_at_exit;
  }
  e.thread = std::thread([impl = impl_.get()] { impl->loop(); });
}

Engine::~Engine() {
  terminate();
}

SubmitResult Engine::submit(std::vector<Task> tasks) {
  auto& e = *impl_;
  bool asleep = false;
  // Their results are likely waited for (they need no thread of ours to deliver them).
  const bool waited =
      std::all_of(tasks.begin(), tasks.end(), [](const Task& t) { return t.job->any_thread(); });
  {
    std::lock_guard g(e.intake_m);
    if (e.intake_refusal) return {false, e.intake_refusal};
    if (e.state != Impl::kRun) return {false, nullptr};
    for (auto& t : tasks) e.intake.push_back(std::move(t));
    asleep = e.engine_asleep;
  }
  if (e.m.try_lock()) {
    // Sent from here when a worker has room: the engine's thread is woken only for the rest.
    std::lock_guard l(e.m, std::adopt_lock);
    e.absorb();
    if (!e.send_now()) {
      e.hand_over_results(waited);
      return {true, nullptr};
    }
  } else if (!asleep) {
    return {true, nullptr};  // the engine's thread takes them before it sleeps
  }
  e.wake();
  return {true, nullptr};
}

void Engine::close() {
  {
    std::lock_guard l(impl_->m);
    if (impl_->state == Impl::kRun) impl_->set_state(Impl::kClose);
  }
  impl_->wake();
}

void Engine::terminate(bool kill) {
  {
    std::lock_guard l(impl_->m);
    if (impl_->state != Impl::kTerminate) impl_->kill_now = kill;
    impl_->set_state(Impl::kTerminate);
  }
  impl_->wake();
  join();
}

bool Engine::cancel(const Job* job, std::size_t task) {
  std::lock_guard l(impl_->m);
  auto& e = *impl_;
  e.absorb();
  for (auto it = e.pending.begin(); it != e.pending.end(); ++it) {
    auto t = e.tasks.find(*it);
    if (t == e.tasks.end() || t->second.job.get() != job || t->second.index != task) continue;
    e.tasks.erase(t);
    e.pending.erase(it);
    return true;
  }
  return false;
}

void Engine::cancel_pending() {
  std::vector<Task> cancelled;
  {
    std::lock_guard l(impl_->m);
    auto& e = *impl_;
    e.absorb();
    for (auto id : e.pending) {
      auto t = e.tasks.find(id);
      if (t == e.tasks.end()) continue;
      cancelled.push_back(std::move(t->second));
      e.tasks.erase(t);
    }
    e.pending.clear();
  }
  impl_->wake();
  for (auto& t : cancelled) t.job->task_cancelled(t.index);
  notify_waiters();
}

void Engine::notify_waiters() {
  std::lock_guard l(impl_->m);
  impl_->wake_waiters();
}

std::exception_ptr Engine::broken() const {
  std::lock_guard l(impl_->m);
  return impl_->broken;
}

void Engine::join() {
  if (impl_->thread.get_id() == std::this_thread::get_id()) return;  // from a callback
  std::call_once(impl_->joined, [&] { impl_->thread.join(); });
}

bool Engine::running() const {
  std::lock_guard l(impl_->m);
  return impl_->state == Impl::kRun && !impl_->broken;
}

std::vector<int> Engine::worker_pids() const {
  std::lock_guard l(impl_->m);
  std::vector<int> pids;
  for (auto& w : impl_->workers)
    if (w) pids.push_back(w->pid);
  return pids;
}

int Engine::processes() const {
  return impl_->o.processes;
}

void submit_tasks(Engine& engine, const std::shared_ptr<Job>& job, std::size_t first_task,
                  std::vector<std::string> payloads, const std::vector<std::size_t>& offsets) {
  std::vector<Task> tasks;
  tasks.reserve(payloads.size());
  for (std::size_t k = 0; k < payloads.size(); ++k)
    tasks.push_back({job, first_task + k, offsets[k], std::move(payloads[k])});
  const SubmitResult r = engine.submit(std::move(tasks));
  if (r.accepted) return;
  const std::exception_ptr e =
      r.broken ? r.broken : std::make_exception_ptr(std::logic_error("Pool not running"));
  for (std::size_t k = 0; k < payloads.size(); ++k) job->task_failed(first_task + k, e);
}

std::string object_address(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

void report_callback_error(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (...) {
    std::cerr << "Exception in a pool callback: " << exception_type() << ": " << exception_what()
              << std::endl;
  }
}

void throw_not_ready(const char* kind, const void* self) {
  throw std::logic_error("<mp." + std::string(kind) + " object at " + object_address(self) +
                         "> not ready");
}

void throw_timeout() {
  throw TimeoutError("the result is not ready within the timeout");
}

}  // namespace detail

// ---- Pool ----

namespace {
detail::EngineOptions engine_options(PoolOptions o) {
  const int n = o.processes.value_or(cpu_count());
  if (n < 1) throw std::invalid_argument("Number of processes must be at least 1");
  if (o.maxtasksperchild && *o.maxtasksperchild <= 0)
    throw std::invalid_argument("maxtasksperchild must be a positive int or None");
  detail::EngineOptions e;
  e.processes = n;
  e.maxtasksperchild = o.maxtasksperchild;
  e.context = o.context;
  e.window = o.window;
  e.spin = o.spin;
  e.task_timeout = o.task_timeout;
  e.max_startup_failures = o.max_startup_failures;
  e.initializer = o.initializer.payload();
  return e;
}
}  // namespace

Pool::Pool(std::optional<int> processes) : Pool(PoolOptions{.processes = processes}) {}

Pool::Pool(PoolOptions options) : Pool(std::move(options), nullptr) {}

Pool::Pool(PoolOptions options, std::shared_ptr<detail::Transport> transport) {
  detail::EngineOptions e = engine_options(std::move(options));
  e.transport = std::move(transport);
  engine_ = std::make_shared<detail::Engine>(std::move(e));
}

Pool::~Pool() {
  terminate();
}

void Pool::check_running() const {
  if (closed_ || terminated_) throw std::logic_error("Pool not running");
}

void Pool::check_chunksize(std::size_t chunksize) {
  if (chunksize < 1) throw std::invalid_argument("Chunksize must be 1+, not 0");
}

std::size_t Pool::default_chunksize(std::size_t n) const {
  const std::size_t per = std::size_t(processes()) * 4;
  return std::max<std::size_t>(1, n / per + (n % per ? 1 : 0));
}

void Pool::close() {
  closed_ = true;
  engine_->close();
}

void Pool::terminate() {
  terminated_ = true;
  engine_->terminate();
}

void Pool::join() {
  if (!closed_ && !terminated_) throw std::logic_error("Pool is still running");
  engine_->join();
}

std::vector<int> Pool::worker_pids() const {
  return engine_->worker_pids();
}

int Pool::processes() const {
  return engine_->processes();
}

std::string Pool::repr() const {
  const char* state = terminated_ ? "TERMINATE" : closed_ ? "CLOSE" : "RUN";
  return "<mp.Pool state=" + std::string(state) + " pool_size=" + std::to_string(processes()) + ">";
}

}  // namespace mp
