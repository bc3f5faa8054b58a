// concurrent.futures over worker processes: ProcessPoolExecutor, Future, as_completed, wait.
// The same engine as mp::Pool (<mp/tasks.hpp>): a task is a plain function or a captureless
// lambda with serializable arguments and result, checked at compile time.
//
// Unlike CPython's executor, a worker that dies (a signal, an exit, mp::exit in a task) fails
// only the future it was running, with mp::WorkerLost (a BrokenProcessPool), and the executor
// goes on; CPython breaks the whole executor, and returns SystemExit for sys.exit in a task.
// A throwing initializer breaks it, as CPython's does.
//
// mp::Future<R> is to std::future what std::shared_future is: a copyable handle on one result,
// which never blocks when destroyed; beyond it, cancel(), running(), done(), callbacks, and
// waiting on many (mp::wait, mp::as_completed).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mp/errors.hpp"
#include "mp/pool.hpp"
#include "mp/tasks.hpp"

namespace mp {

/// How a ProcessPoolExecutor is made (CPython's constructor arguments).
struct ExecutorOptions {
  std::optional<int> max_workers = std::nullopt;  ///< default: cpu_count(); at least 1
  const Context* mp_context = nullptr;            ///< default: the default context (spawn when
                                                  ///< max_tasks_per_child is given, as CPython)
  Initializer initializer = {};
  std::optional<int> max_tasks_per_child = std::nullopt;
  std::optional<Duration> task_timeout = std::nullopt;  ///< as PoolOptions::task_timeout
  int max_startup_failures = 0;                         ///< as PoolOptions
  Duration spin = Duration(0);                          ///< as PoolOptions::spin
};

template <class R>
class Future;

namespace detail {
// Told of every future of a wait() or as_completed() that finishes: its position.
struct FutureWaiter {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::size_t> finished;
};

template <class R>
class FutureState final : public Job, public std::enable_shared_from_this<FutureState<R>> {
 public:
  enum Phase { kPending, kRunning, kCancelled, kFinished };
  explicit FutureState(std::weak_ptr<Engine> engine) : engine_(std::move(engine)) {}

  void task_sent(std::size_t) override {
    std::lock_guard l(m_);
    if (phase_ == kPending) phase_ = kRunning;
  }
  void task_done(std::size_t, std::string_view bytes) override {
    try {
      std::vector<Wire<R>> one;
      reduction::InArchive ar(bytes);
      ar(one);
      if (one.size() != 1) throw ProcessError("a task's result is missing");
      value_ = std::move(one[0]);
    } catch (...) {
      return finish(kFinished, std::current_exception());
    }
    finish(kFinished, nullptr);
  }
  void task_failed(std::size_t, std::exception_ptr error) override {
    finish(kFinished, std::move(error));
  }
  void task_cancelled(std::size_t) override { finish(kCancelled, nullptr); }
  // Done callbacks run in the thread that finishes the future: CPython's promise is only a
  // thread of the process that added them.
  bool any_thread() const override { return true; }

  bool cancel() {
    {
      std::lock_guard l(m_);
      if (phase_ == kCancelled) return true;
      if (phase_ != kPending) return false;
    }
    auto engine = engine_.lock();
    if (!engine || !engine->cancel(this, 0)) return false;  // sent meanwhile: running
    finish(kCancelled, nullptr);
    engine->notify_waiters();  // a thread in result() may be reading the sockets for it
    return true;
  }
  Phase phase() {
    std::lock_guard l(m_);
    return phase_;
  }
  // Waits (at most `timeout`); false if not done by then.
  bool wait(std::optional<Duration> timeout) {
    if (done_flag_.load(std::memory_order_acquire)) return true;
    // This thread reads its result itself (a done callback then runs here: CPython runs them
    // in a thread of the process that added them).
    if (auto engine = engine_.lock())
      return engine->wait(
          this, [&] { return done_flag_.load(std::memory_order_acquire); }, timeout);
    std::unique_lock l(m_);
    auto done = [&] { return phase_ >= kCancelled; };
    if (!timeout) {
      cv_.wait(l, done);
      return true;
    }
    return cv_.wait_for(l, *timeout, done);
  }
  // After wait().
  std::exception_ptr error() {
    std::lock_guard l(m_);
    if (phase_ == kCancelled) return std::make_exception_ptr(CancelledError());
    return error_;
  }
  Wire<R>& value() { return value_; }

  // fn runs when done: at once (in the caller) if it is already.
  void on_done(std::function<void()> fn) {
    {
      std::lock_guard l(m_);
      if (phase_ < kCancelled) return callbacks_.push_back(std::move(fn));
    }
    run_callback(fn);
  }
  void add_waiter(const std::shared_ptr<FutureWaiter>& w, std::size_t position) {
    {
      std::lock_guard l(m_);
      if (phase_ < kCancelled) {
        waiters_.emplace_back(w, position);
        return;
      }
    }
    std::lock_guard l(w->m);
    w->finished.push_back(position);
    w->cv.notify_all();
  }
  void remove_waiter(const std::shared_ptr<FutureWaiter>& w) {
    std::lock_guard l(m_);
    std::erase_if(waiters_, [&](const auto& e) { return e.first == w; });
  }

 private:
  static void run_callback(const std::function<void()>& fn) {
    try {
      fn();
    } catch (...) {
      report_callback_error(std::current_exception());
    }
  }
  void finish(Phase phase, std::exception_ptr error) {
    std::vector<std::function<void()>> callbacks;
    std::vector<std::pair<std::shared_ptr<FutureWaiter>, std::size_t>> waiters;
    {
      std::lock_guard l(m_);
      if (phase_ >= kCancelled) return;
      phase_ = phase;
      error_ = std::move(error);
      done_flag_.store(true, std::memory_order_release);
      callbacks.swap(callbacks_);
      waiters.swap(waiters_);
    }
    cv_.notify_all();
    for (auto& [w, position] : waiters) {
      std::lock_guard l(w->m);
      w->finished.push_back(position);
      w->cv.notify_all();
    }
    for (auto& fn : callbacks) run_callback(fn);
  }

  std::weak_ptr<Engine> engine_;
  std::atomic<bool> done_flag_{false};  // phase_ >= kCancelled, read without the lock
  std::mutex m_;
  std::condition_variable cv_;
  Phase phase_ = kPending;
  Wire<R> value_{};
  std::exception_ptr error_;
  std::vector<std::function<void()>> callbacks_;
  std::vector<std::pair<std::shared_ptr<FutureWaiter>, std::size_t>> waiters_;
};
}  // namespace detail

/// The eventual result of one submit() (concurrent.futures.Future). Copies share it.
template <class R>
class Future {
 public:
  /// Waits (at most `timeout`: then mp::TimeoutError) and returns the value, or throws the
  /// task's error, or mp::CancelledError.
  R result(std::optional<Duration> timeout = std::nullopt) const {
    if (!s_->wait(timeout)) detail::throw_timeout();
    if (auto e = s_->error()) std::rethrow_exception(e);
    if constexpr (!std::is_void_v<R>) return s_->value();
  }
  /// The task's error (null if it succeeded); waits as result(); mp::CancelledError if cancelled.
  std::exception_ptr exception(std::optional<Duration> timeout = std::nullopt) const {
    if (!s_->wait(timeout)) detail::throw_timeout();
    if (cancelled()) throw CancelledError();
    return s_->error();
  }
  /// Cancels it if it has not been sent to a worker; true if it is cancelled.
  bool cancel() { return s_->cancel(); }
  bool cancelled() const { return s_->phase() == detail::FutureState<R>::kCancelled; }
  /// Sent to a worker and not finished.
  bool running() const { return s_->phase() == detail::FutureState<R>::kRunning; }
  /// Finished or cancelled.
  bool done() const { return s_->phase() >= detail::FutureState<R>::kCancelled; }
  /// fn(*this) once done: in a thread of the executor, or at once if it already is.
  void add_done_callback(std::function<void(const Future&)> fn) {
    s_->on_done([self = *this, fn = std::move(fn)] { fn(self); });
  }

 private:
  friend class ProcessPoolExecutor;
  template <class T>
  friend struct FuturesAccess;
  explicit Future(std::shared_ptr<detail::FutureState<R>> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::FutureState<R>> s_;
};

template <class T>
struct FuturesAccess {
  static const std::shared_ptr<detail::FutureState<T>>& state(const Future<T>& f) { return f.s_; }
};

enum class ReturnWhen { FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED };
inline constexpr ReturnWhen FIRST_COMPLETED = ReturnWhen::FIRST_COMPLETED;
inline constexpr ReturnWhen FIRST_EXCEPTION = ReturnWhen::FIRST_EXCEPTION;
inline constexpr ReturnWhen ALL_COMPLETED = ReturnWhen::ALL_COMPLETED;

template <class R>
struct DoneAndNotDone {
  std::vector<Future<R>> done, not_done;
};

/// concurrent.futures.wait: returns when `return_when` holds or `timeout` has passed (no error
/// then: the unfinished ones are in not_done).
template <class R>
DoneAndNotDone<R> wait(const std::vector<Future<R>>& futures,
                       std::optional<Duration> timeout = std::nullopt,
                       ReturnWhen return_when = ALL_COMPLETED) {
  auto w = std::make_shared<detail::FutureWaiter>();
  for (std::size_t i = 0; i < futures.size(); ++i)
    FuturesAccess<R>::state(futures[i])->add_waiter(w, i);
  const auto deadline =
      timeout ? std::optional(std::chrono::steady_clock::now() +
                              std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                  std::max(*timeout, Duration::zero())))
              : std::nullopt;
  {
    std::unique_lock l(w->m);
    auto satisfied = [&] {
      if (w->finished.size() == futures.size()) return true;
      if (return_when == FIRST_COMPLETED) return !w->finished.empty();
      if (return_when == FIRST_EXCEPTION)
        for (auto i : w->finished)
          if (FuturesAccess<R>::state(futures[i])->error()) return true;
      return false;
    };
    if (deadline)
      w->cv.wait_until(l, *deadline, satisfied);
    else
      w->cv.wait(l, satisfied);
  }
  DoneAndNotDone<R> out;
  for (std::size_t i = 0; i < futures.size(); ++i) {
    FuturesAccess<R>::state(futures[i])->remove_waiter(w);
    (futures[i].done() ? out.done : out.not_done).push_back(futures[i]);
  }
  return out;
}

/// concurrent.futures.as_completed: the futures as they finish (those already done first).
/// Past `timeout` (from the call), mp::TimeoutError("N (of M) futures unfinished").
template <class R>
class AsCompleted {
 public:
  AsCompleted(std::vector<Future<R>> futures, std::optional<Duration> timeout)
      : futures_(std::move(futures)), w_(std::make_shared<detail::FutureWaiter>()) {
    if (timeout)
      deadline_ = std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      std::max(*timeout, Duration::zero()));
    for (std::size_t i = 0; i < futures_.size(); ++i)
      FuturesAccess<R>::state(futures_[i])->add_waiter(w_, i);
  }
  ~AsCompleted() {
    for (auto& f : futures_) FuturesAccess<R>::state(f)->remove_waiter(w_);
  }
  AsCompleted(const AsCompleted&) = delete;
  AsCompleted& operator=(const AsCompleted&) = delete;

  /// The next finished future; nullopt once all have been given.
  std::optional<Future<R>> next() {
    if (given_ == futures_.size()) return std::nullopt;
    std::unique_lock l(w_->m);
    auto any = [&] { return !w_->finished.empty(); };
    if (deadline_) {
      if (!w_->cv.wait_until(l, *deadline_, any))
        throw TimeoutError(std::to_string(futures_.size() - given_) + " (of " +
                           std::to_string(futures_.size()) + ") futures unfinished");
    } else {
      w_->cv.wait(l, any);
    }
    const std::size_t i = w_->finished.front();
    w_->finished.pop_front();
    ++given_;
    return futures_[i];
  }

  using iterator = detail::PullIterator<AsCompleted, Future<R>>;
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  std::vector<Future<R>> futures_;
  std::shared_ptr<detail::FutureWaiter> w_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  std::size_t given_ = 0;
};

template <class R>
AsCompleted<R> as_completed(std::vector<Future<R>> futures,
                            std::optional<Duration> timeout = std::nullopt) {
  return AsCompleted<R>(std::move(futures), timeout);
}

/// The results of ProcessPoolExecutor::map, in input order as you iterate; the call's timeout
/// counts from the map() call (mp::TimeoutError when it passes).
template <class R>
class ExecutorMap {
 public:
  std::optional<R> next() {
    std::optional<Duration> left;
    if (deadline_)
      left = std::max(Duration(*deadline_ - std::chrono::steady_clock::now()), Duration::zero());
    return s_->next(left);
  }
  using iterator = detail::PullIterator<ExecutorMap, R>;
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  friend class ProcessPoolExecutor;
  ExecutorMap(std::shared_ptr<detail::LazySource<R>> s,
              std::optional<std::chrono::steady_clock::time_point> deadline)
      : s_(std::move(s)), deadline_(deadline) {}
  std::shared_ptr<detail::LazySource<R>> s_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
};

/// concurrent.futures.ProcessPoolExecutor. Workers start as tasks need them, up to
/// max_workers, and are reused. Leaving its scope is shutdown(true).
class ProcessPoolExecutor {
 public:
  /// CPython's checks and texts: std::invalid_argument("max_workers must be greater than 0"),
  /// ("max_tasks_per_child must be >= 1"), ("max_tasks_per_child is incompatible with the
  /// 'fork' multiprocessing start method; supply a different mp_context.").
  explicit ProcessPoolExecutor(ExecutorOptions options = {});
  ~ProcessPoolExecutor();
  ProcessPoolExecutor(const ProcessPoolExecutor&) = delete;
  ProcessPoolExecutor& operator=(const ProcessPoolExecutor&) = delete;

  /// f(args...) in a worker. After shutdown: std::runtime_error("cannot schedule new futures
  /// after shutdown"); a broken executor: its mp::BrokenProcessPool.
  template <class F, class... Args>
  auto submit(F f, Args&&... args) {
    using R = std::invoke_result_t<F&, detail::Stored<Args>&&...>;
    using Tuple = std::tuple<detail::Stored<Args>...>;
    detail::check_task<F, R, detail::Stored<Args>...>();
    auto state = std::make_shared<detail::FutureState<R>>(engine_);
    if constexpr (detail::task_ok<F, R, detail::Stored<Args>...>) {
      std::vector<Tuple> one;
      one.emplace_back(std::forward<Args>(args)...);
      std::vector<detail::Task> task(1);
      try {
        task[0] = {state, 0, 0, detail::task_payload<&detail::run_starmap<F, Tuple>>(f, one)};
      } catch (const std::exception&) {
        // An argument that fails to serialize: the future's error; the executor goes on.
        state->task_failed(0, std::current_exception());
        return Future<R>(std::move(state));
      }
      submit_tasks(std::move(task));
    }
    return Future<R>(std::move(state));
  }

  /// f(item) for each item, results in input order as you iterate. chunksize: items per task
  /// (std::invalid_argument("chunksize must be >= 1.")); buffersize (3.14): at most this many
  /// tasks submitted ahead of the results taken (std::invalid_argument("buffersize must be None
  /// or > 0")); without it the whole input is read and submitted at once, as CPython.
  template <class F, std::ranges::input_range Range>
  auto map(F f, Range&& items, std::optional<Duration> timeout = std::nullopt,
           std::size_t chunksize = 1, std::optional<std::size_t> buffersize = std::nullopt) {
    using Item = std::ranges::range_value_t<Range>;
    using R = std::invoke_result_t<F&, Item&&>;
    static_assert(!std::is_void_v<R>, "mp::ProcessPoolExecutor::map: f must return a value");
    detail::check_task<F, R, Item>();
    check_map(chunksize, buffersize);
    const auto deadline =
        timeout ? std::optional(std::chrono::steady_clock::now() +
                                std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                    std::max(*timeout, Duration::zero())))
                : std::nullopt;
    using View = detail::HeldView<Range>;
    using State = detail::LazyMap<R, Item, &detail::run_map<F, Item>, F, View>;
    auto state = std::make_shared<State>(
        f, std::views::all(std::forward<Range>(items)), chunksize, false,
        buffersize.value_or(std::numeric_limits<std::size_t>::max()), engine_);
    state->refill();
    return ExecutorMap<R>(std::move(state), deadline);
  }

  /// No more submits; with `wait`, returns once every submitted task has finished and the
  /// workers are gone; with `cancel_futures`, what was not yet sent is cancelled. Idempotent.
  void shutdown(bool wait = true, bool cancel_futures = false);
  /// 3.14: ends every worker now (SIGTERM / SIGKILL); what was outstanding fails with
  /// mp::BrokenProcessPool("pool terminated").
  void terminate_workers();
  void kill_workers();

  std::vector<int> worker_pids() const;

 protected:
  // The same executor on other workers (mp::mpi::Executor: MPI ranks).
  ProcessPoolExecutor(ExecutorOptions options, std::shared_ptr<detail::Transport> transport);

 private:
  void submit_tasks(std::vector<detail::Task> tasks);
  static void check_map(std::size_t chunksize, std::optional<std::size_t> buffersize);
  std::shared_ptr<detail::Engine> engine_;
  bool shutdown_ = false;
};

}  // namespace mp
