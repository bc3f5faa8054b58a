// mp::Future<R> (concurrent.futures.Future) and waiting on many (mp::wait, mp::as_completed):
// the one result type of ProcessPoolExecutor::submit and of a manager proxy's async_call. What
// finishes a future (a pool's engine, a manager's session) is its FutureSource.
//
// mp::Future<R> is to std::future what std::shared_future is: a copyable handle on one result,
// which never blocks when destroyed; beyond it, cancel(), running(), done(), callbacks, and
// waiting on many.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "mp/errors.hpp"
#include "mp/reduction.hpp"

namespace mp {

using Duration = std::chrono::duration<double>;  // as in <mp/process.hpp>

namespace detail {
// void results travel as this.
struct NoResult {
  template <class Archive>
  void serialize(Archive&) {}
};
template <class R>
using Wire = std::conditional_t<std::is_void_v<R>, NoResult, R>;

// Receives the outcome of each task of one call (a Pool's AsyncResult, an imap iterator, a
// Future), in a thread of the pool, never under the engine's lock.
class Job {
 public:
  virtual ~Job() = default;
  virtual void task_done(std::size_t task, std::string_view result) = 0;
  virtual void task_failed(std::size_t task, std::exception_ptr error) = 0;
  // Taken off the queue before it was sent (shutdown(cancel_futures)).
  virtual void task_cancelled(std::size_t task) {
    task_failed(task, std::make_exception_ptr(CancelledError()));
  }
  // Sent to a worker (a Future is running from then on, as in CPython). Under the engine's
  // lock: it must only record it.
  virtual void task_sent(std::size_t) {}
  // Whether its outcomes may be delivered in any thread of the parent, a caller's waiting in
  // Engine::wait() included (no callback that must run in a pool thread).
  virtual bool any_thread() const { return false; }
};

// What delivers the outcomes of a Future's Job and can be waited in: a pool's engine, a
// manager's session.
class FutureSource {
 public:
  virtual ~FutureSource() = default;
  /// Takes `job`'s task `task` off the queue if it has not been sent; true if it was.
  virtual bool cancel(const Job* job, std::size_t task) = 0;
  /// Waits until done() (within `timeout`; false if not), delivering outcomes in this thread
  /// meanwhile where it can.
  virtual bool wait(const Job* job, const std::function<bool()>& done,
                    std::optional<Duration> timeout) = 0;
  /// Tells the callers in wait() to look at their jobs again.
  virtual void notify_waiters() = 0;
};

// Prints a callback's exception (it runs in a pool thread; nothing else could catch it).
void report_callback_error(std::exception_ptr e);
[[noreturn]] void throw_timeout();

// An input iterator over owner->next() until it gives nullopt (imap, the executor's map,
// as_completed).
template <class Owner, class T>
class PullIterator {
 public:
  using value_type = T;
  using difference_type = std::ptrdiff_t;
  PullIterator() = default;
  explicit PullIterator(Owner* owner) : owner_(owner) { ++*this; }
  const T& operator*() const { return *current_; }
  PullIterator& operator++() {
    current_ = owner_->next();
    return *this;
  }
  void operator++(int) { ++*this; }
  bool operator==(std::default_sentinel_t) const { return !current_; }

 private:
  Owner* owner_ = nullptr;
  std::optional<T> current_;
};
}  // namespace detail

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
  // `one_value`: a result arrives as one encoded value (a manager's reply), not as a task's
  // list of results (a pool's).
  explicit FutureState(std::weak_ptr<FutureSource> source, bool one_value = false)
      : source_(std::move(source)), one_value_(one_value) {}

  void task_sent(std::size_t) override {
    std::lock_guard l(m_);
    if (phase_ == kPending) phase_ = kRunning;
  }
  void task_done(std::size_t, std::string_view bytes) override {
    try {
      reduction::InArchive ar(bytes);
      if (one_value_) {
        if constexpr (!std::is_void_v<R>) ar(value_);
      } else {
        std::vector<Wire<R>> one;
        ar(one);
        if (one.size() != 1) throw ProcessError("a task's result is missing");
        value_ = std::move(one[0]);
      }
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
    auto source = source_.lock();
    if (!source || !source->cancel(this, 0)) return false;  // sent meanwhile: running
    finish(kCancelled, nullptr);
    source->notify_waiters();  // a thread in result() may be reading the sockets for it
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
    if (auto source = source_.lock())
      return source->wait(
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

  std::weak_ptr<FutureSource> source_;
  bool one_value_ = false;
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
  static Future<T> make(std::shared_ptr<detail::FutureState<T>> s) {
    return Future<T>(std::move(s));
  }
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

}  // namespace mp
