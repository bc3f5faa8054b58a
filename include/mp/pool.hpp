// A pool of worker processes (Python's multiprocessing.pool): apply, map, starmap, imap and
// their async forms, over workers that are already running (under every start method, fork
// included, tasks travel to them serialized: a task is a plain function or a captureless
// lambda, its arguments and result serializable, all checked at compile time).
//
// Unlike CPython, a pool never hangs: a worker that dies (a signal, an exit, mp::exit in a
// task) fails only the task it was running, with mp::WorkerLost, at once; the tasks it had
// been sent and not begun go to other workers; it is replaced and the pool goes on. A throwing
// initializer breaks the pool (mp::BrokenProcessPool on every task) instead of respawning for
// ever; workers that keep dying before finishing any task do the same after
// PoolOptions::max_startup_failures. terminate() fails every outstanding result at once.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "mp/errors.hpp"
#include "mp/tasks.hpp"

namespace mp {

/// How a Pool is made; every field has CPython's default.
struct PoolOptions {
  std::optional<int> processes = std::nullopt;         ///< default: cpu_count(); at least 1
  Initializer initializer = {};                        ///< run once in each worker before any task
  std::optional<int> maxtasksperchild = std::nullopt;  ///< a worker is replaced after this many
  const Context* context = nullptr;  ///< start method (default: the default context)
  int window = 0;  ///< tasks sent to a worker ahead of its results (1-256; 0: automatic,
                   ///< 4, growing to 256 while tasks take well under a millisecond)
  Duration spin = Duration(0);  ///< hot mode: a worker waiting for a task, and a caller waiting
                                ///< in get(), poll this long before sleeping (at most 50 us is
                                ///< useful; it costs CPU only while the pool is busy, none idle)
  std::optional<Duration> task_timeout =
      std::nullopt;              ///< a task past it fails with mp::TimeoutError and
                                 ///< its worker is killed and replaced
  int max_startup_failures = 0;  ///< workers dying before finishing a task, in a row, that
                                 ///< break the pool (0: max(5, 2 * processes))
};

namespace detail {
template <class V>
using CallbackFor =
    std::conditional_t<std::is_void_v<V>, std::function<void()>, std::function<void(const V&)>>;
using ErrorCallback = std::function<void(std::exception_ptr)>;

std::string object_address(const void* p);
[[noreturn]] void throw_not_ready(const char* kind, const void* self);

// What an AsyncResult<V> reads.
template <class V>
class ResultSource : public Job {
 public:
  virtual void wait() = 0;
  virtual bool wait(Duration timeout) = 0;
  virtual bool ready() = 0;
  virtual bool successful() = 0;
  // After wait(): the value (a copy, or the items themselves when `take`), or the error.
  virtual V value(bool take) = 0;
};

// The state of one call: its tasks' results placed at their items' positions. V is what the
// call returns (R, std::vector<R>, or void); R what the function returns.
template <class V, class R>
class ResultState final : public ResultSource<V> {
 public:
  ResultState(std::size_t items, std::vector<std::size_t> offsets, CallbackFor<V> callback,
              ErrorCallback error_callback, std::weak_ptr<Engine> engine = {})
      : engine_(std::move(engine)),
        items_(items),
        offsets_(std::move(offsets)),
        left_(offsets_.size()),
        callback_(std::move(callback)),
        error_callback_(std::move(error_callback)) {
    if (left_ == 0) finish();
  }

  void task_done(std::size_t task, std::string_view bytes) override {
    try {
      const std::size_t first = offsets_[task];
      const std::size_t end = task + 1 < offsets_.size() ? offsets_[task + 1] : items_.size();
      using W = Wire<R>;
      if constexpr (std::is_arithmetic_v<W> && !std::is_same_v<W, bool>) {
        // cereal writes such a vector as its size (u64) and the items' bytes: copied into
        // place, without a vector in between (a map's chunk is megabytes).
        std::uint64_t n = 0;
        if (bytes.size() >= sizeof n) std::memcpy(&n, bytes.data(), sizeof n);
        if (bytes.size() < sizeof n || n != end - first || bytes.size() - sizeof n != n * sizeof(W))
          throw ProcessError("a task's results do not match its items");
        if (n > 0) std::memcpy(items_.data() + first, bytes.data() + sizeof n, n * sizeof(W));
      } else {
        std::vector<W> chunk;
        reduction::InArchive ar(bytes);
        ar(chunk);
        if (chunk.size() != end - first)
          throw ProcessError("a task's results do not match its items");
        std::move(chunk.begin(), chunk.end(), items_.begin() + static_cast<std::ptrdiff_t>(first));
      }
    } catch (...) {
      return task_failed(task, std::current_exception());
    }
    settle();
  }
  void task_failed(std::size_t task, std::exception_ptr error) override {
    {
      std::lock_guard l(m_);
      // The error of the earliest task wins, whatever order they finish in.
      if (!error_ || task < error_task_) error_ = std::move(error), error_task_ = task;
    }
    settle();
  }

  bool any_thread() const override { return !callback_ && !error_callback_; }
  void wait() override { wait_for(std::nullopt); }
  bool wait(Duration timeout) override { return wait_for(timeout); }
  bool wait_for(std::optional<Duration> timeout) {
    if (done_flag_.load(std::memory_order_acquire)) return true;
    // One task (apply): this thread reads its result itself, a wake-up less. A call of many
    // tasks (map) streams its results through the engine's thread: two readers would take
    // turns on every piece of a large result.
    if (any_thread() && offsets_.size() == 1)
      if (auto engine = engine_.lock())
        return engine->wait(
            this, [&] { return done_flag_.load(std::memory_order_acquire); }, timeout);
    std::unique_lock l(m_);
    if (!timeout) {
      cv_.wait(l, [&] { return done_; });
      return true;
    }
    return cv_.wait_for(l, *timeout, [&] { return done_; });
  }
  bool ready() override {
    std::lock_guard l(m_);
    return done_;
  }
  bool successful() override {
    std::lock_guard l(m_);
    if (!done_) throw_not_ready("AsyncResult", this);
    return !error_;
  }
  V value(bool take) override {
    if (error_) std::rethrow_exception(error_);
    if constexpr (std::is_void_v<V>) {
      return;
    } else if constexpr (std::is_same_v<V, std::vector<R>>) {
      if (take) return std::move(items_);
      return items_;
    } else {
      return items_.at(0);
    }
  }

 private:
  void settle() {
    {
      std::lock_guard l(m_);
      if (--left_ > 0) return;
    }
    finish();
  }
  void finish() {
    {
      std::lock_guard l(m_);
      done_ = true;
      done_flag_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
    try {
      if (error_) {
        if (error_callback_) error_callback_(error_);
      } else if (callback_) {
        if constexpr (std::is_void_v<V>)
          callback_();
        else if constexpr (std::is_same_v<V, std::vector<R>>)
          callback_(items_);
        else
          callback_(items_.at(0));
      }
    } catch (...) {
      report_callback_error(std::current_exception());
    }
  }

  std::weak_ptr<Engine> engine_;
  std::atomic<bool> done_flag_{false};  // done_, read without the lock
  std::vector<Wire<R>> items_;
  std::vector<std::size_t> offsets_;  // each task's first item
  std::size_t left_;
  CallbackFor<V> callback_;
  ErrorCallback error_callback_;
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  std::size_t error_task_ = 0;
};

// A view that stays valid while an imap iterator pulls from it (owning for rvalues).
template <class Range>
using HeldView = decltype(std::views::all(std::declval<Range>()));

template <class T>
inline constexpr bool is_tuple_v = reduction::detail::is_instance_v<T, std::tuple>;

template <class R>
using MapValue = std::conditional_t<std::is_void_v<R>, void, std::vector<R>>;
template <class T>
struct StarTupleOf {
  using type = T;
};
template <class A, class B>
struct StarTupleOf<std::pair<A, B>> {
  using type = std::tuple<A, B>;
};
template <class T>
using StarTuple = typename StarTupleOf<T>::type;

template <class R>
class LazySource {
 public:
  virtual ~LazySource() = default;
  virtual std::optional<R> next(std::optional<Duration> timeout) = 0;
};

// Queues a call's tasks, numbered from `first_task`; a pool that is not running fails them
// ("Pool not running").
void submit_tasks(Engine& engine, const std::shared_ptr<Job>& job, std::size_t first_task,
                  std::vector<std::string> payloads, const std::vector<std::size_t>& offsets);
}  // namespace detail

/// The result of an *_async call (multiprocessing.pool.AsyncResult). V is what get() returns.
template <class V>
class AsyncResult {
 public:
  /// Waits, then returns the value (a copy) or throws the task's error (mp::RemoteError,
  /// mp::WorkerLost, mp::MaybeEncodingError, mp::BrokenProcessPool, ...).
  V get() {
    s_->wait();
    return s_->value(false);
  }
  /// As get(), but mp::TimeoutError if not ready within `timeout`.
  V get(Duration timeout) {
    if (!s_->wait(timeout)) detail::throw_timeout();
    return s_->value(false);
  }
  void wait() { s_->wait(); }
  /// True when ready within `timeout`.
  bool wait(Duration timeout) { return s_->wait(timeout); }
  bool ready() const { return s_->ready(); }
  /// Whether it succeeded; std::logic_error("<mp.AsyncResult object at 0x...> not ready")
  /// before it is ready (CPython's ValueError).
  bool successful() const { return s_->successful(); }

 private:
  friend class Pool;
  explicit AsyncResult(std::shared_ptr<detail::ResultSource<V>> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::ResultSource<V>> s_;
};

/// The lazy result of imap / imap_unordered: an input range you iterate (results in input
/// order, or as they finish). It pulls from the input only as far as a bounded look-ahead,
/// so an endless input works, and results parked out of order are bounded too.
template <class R>
class IMapIterator {
 public:
  /// The next result, or nullopt after the last; mp::TimeoutError if none is ready within
  /// `timeout`; a task's error (or the input's own exception) in its place.
  std::optional<R> next(std::optional<Duration> timeout = std::nullopt) {
    return s_->next(timeout);
  }

  using iterator = detail::PullIterator<IMapIterator, R>;
  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  friend class Pool;
  explicit IMapIterator(std::shared_ptr<detail::LazySource<R>> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::LazySource<R>> s_;
};

/// A pool of worker processes (multiprocessing.Pool). Not copyable; cannot cross to a child.
/// Leaving its scope terminates it (as CPython's `with Pool(...)`); close() + join() waits.
class Pool {
 public:
  /// Pool(processes): std::invalid_argument("Number of processes must be at least 1") below 1.
  explicit Pool(std::optional<int> processes = std::nullopt);
  explicit Pool(PoolOptions options);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// f(args...) in a worker; waits for the result.
  template <class F, class... Args>
  auto apply(F f, Args&&... args) {
    return apply_async(f, std::forward<Args>(args)...).get();
  }
  template <class F, class... Args>
  auto apply_async(F f, Args&&... args) {
    return apply_async_with(f, {}, {}, std::forward<Args>(args)...);
  }
  /// apply_async with a callback (given the value) and an error callback (given the error),
  /// called in a thread of the pool.
  template <class F, class... Args>
  auto apply_async_with(
      F f, detail::CallbackFor<std::invoke_result_t<F&, detail::Stored<Args>&&...>> callback,
      detail::ErrorCallback error_callback, Args&&... args) {
    using R = std::invoke_result_t<F&, detail::Stored<Args>&&...>;
    using Tuple = std::tuple<detail::Stored<Args>...>;
    detail::check_task<F, R, detail::Stored<Args>...>();
    if constexpr (!detail::task_ok<F, R, detail::Stored<Args>...>) {
      return AsyncResult<R>(nullptr);  // only the static_assert above is reported
    } else {
      std::vector<Tuple> one;
      one.emplace_back(std::forward<Args>(args)...);
      std::vector<std::string> payloads;
      std::exception_ptr encoding;  // an argument that failed to serialize: the result's error
      try {
        payloads.push_back(detail::task_payload<&detail::run_starmap<F, Tuple>>(f, one));
      } catch (const std::exception&) {
        encoding = std::current_exception();
      }
      return launch<R, R>(std::move(payloads), {0}, 1, std::move(callback),
                          std::move(error_callback), encoding);
    }
  }

  /// f(item) for each item, results in input order. chunksize: items per task (default:
  /// CPython's, len / (4 * processes) rounded up); 0 is std::invalid_argument("Chunksize must
  /// be 1+, not 0"). An input that throws while being read throws that same exception.
  template <class F, std::ranges::input_range Range>
  auto map(F f, Range&& items, std::optional<std::size_t> chunksize = std::nullopt) {
    return take(map_async(f, std::forward<Range>(items), chunksize));
  }
  template <class F, std::ranges::input_range Range>
  auto map_async(F f, Range&& items, std::optional<std::size_t> chunksize = std::nullopt,
                 detail::ErrorCallback error_callback = {}) {
    using Item = std::ranges::range_value_t<Range>;
    using R = std::invoke_result_t<F&, Item&&>;
    return map_async_with(f, std::forward<Range>(items), chunksize,
                          detail::CallbackFor<detail::MapValue<R>>{}, std::move(error_callback));
  }
  template <class F, std::ranges::input_range Range>
  auto map_async_with(
      F f, Range&& items, std::optional<std::size_t> chunksize,
      detail::CallbackFor<
          detail::MapValue<std::invoke_result_t<F&, std::ranges::range_value_t<Range>&&>>>
          callback,
      detail::ErrorCallback error_callback) {
    using Item = std::ranges::range_value_t<Range>;
    using R = std::invoke_result_t<F&, Item&&>;
    detail::check_task<F, R, Item>();
    if constexpr (!detail::task_ok<F, R, Item>) {
      return AsyncResult<detail::MapValue<R>>(nullptr);
    } else {
      return chunked<&detail::run_map<F, Item>, R, Item>(
          f, std::forward<Range>(items), chunksize, std::move(callback), std::move(error_callback));
    }
  }

  /// f(args...) for each tuple of arguments (std::tuple or std::pair of them).
  template <class F, std::ranges::input_range Range>
  auto starmap(F f, Range&& items, std::optional<std::size_t> chunksize = std::nullopt) {
    return take(starmap_async(f, std::forward<Range>(items), chunksize));
  }
  template <class F, std::ranges::input_range Range>
  auto starmap_async(F f, Range&& items, std::optional<std::size_t> chunksize = std::nullopt,
                     detail::ErrorCallback error_callback = {}) {
    using Tuple = detail::StarTuple<std::ranges::range_value_t<Range>>;
    using R = decltype(std::apply(std::declval<F&>(), std::declval<Tuple&&>()));
    check_star<F, Tuple, R>();
    return chunked<&detail::run_starmap<F, Tuple>, R, Tuple>(
        f, std::forward<Range>(items), chunksize, detail::CallbackFor<detail::MapValue<R>>{},
        std::move(error_callback));
  }

  /// Lazy map: results in input order as you iterate (chunksize default 1).
  template <class F, std::ranges::input_range Range>
  auto imap(F f, Range&& items, std::size_t chunksize = 1) {
    return lazy<false>(f, std::forward<Range>(items), chunksize);
  }
  /// Lazy map: results in the order they finish.
  template <class F, std::ranges::input_range Range>
  auto imap_unordered(F f, Range&& items, std::size_t chunksize = 1) {
    return lazy<true>(f, std::forward<Range>(items), chunksize);
  }

  /// No more tasks; the workers end once the queued ones are done. Idempotent.
  void close();
  /// Fails every outstanding result with mp::BrokenProcessPool("pool terminated") and ends
  /// the workers now (SIGTERM). Returns once they are gone. Idempotent.
  void terminate();
  /// Waits for the workers to end; std::logic_error("Pool is still running") before close()
  /// or terminate().
  void join();

  /// The live workers' pids (CPython's pool._pool), e.g. to watch maxtasksperchild work.
  std::vector<int> worker_pids() const;
  int processes() const;
  /// <mp.Pool state=RUN pool_size=4>
  std::string repr() const;

 protected:
  // The same pool on other workers (mp::mpi::Pool: MPI ranks).
  Pool(PoolOptions options, std::shared_ptr<detail::Transport> transport);

 private:
  template <class F, class Tuple, class R>
  static constexpr void check_star() {
    static_assert(detail::is_tuple_v<Tuple>,
                  "mp::Pool::starmap: the items must be std::tuple or std::pair of arguments");
    [&]<class... Ts>(std::tuple<Ts...>*) {
      detail::check_task<F, R, Ts...>();
    }(static_cast<Tuple*>(nullptr));
  }

  void check_running() const;
  std::size_t default_chunksize(std::size_t n) const;
  static void check_chunksize(std::size_t chunksize);

  template <class V>
  static V take(AsyncResult<V> r) {
    r.s_->wait();
    return r.s_->value(true);
  }

  template <class V, class R>
  AsyncResult<V> launch(std::vector<std::string> payloads, std::vector<std::size_t> offsets,
                        std::size_t n, detail::CallbackFor<V> callback,
                        detail::ErrorCallback error_callback, std::exception_ptr encoding) {
    check_running();
    auto state = std::make_shared<detail::ResultState<V, R>>(n, offsets, std::move(callback),
                                                             std::move(error_callback), engine_);
    if (encoding) {
      for (std::size_t k = 0; k < offsets.size(); ++k) state->task_failed(k, encoding);
    } else {
      detail::submit_tasks(*engine_, state, 0, std::move(payloads), offsets);
    }
    return AsyncResult<V>(std::move(state));
  }

  // map and starmap: the whole input read here, in chunks, before anything is sent.
  template <detail::TaskRunner Runner, class R, class Item, class F, class Range>
  AsyncResult<detail::MapValue<R>> chunked(F f, Range&& items, std::optional<std::size_t> chunksize,
                                           detail::CallbackFor<detail::MapValue<R>> callback,
                                           detail::ErrorCallback error_callback) {
    check_running();
    if (chunksize) check_chunksize(*chunksize);
    std::vector<Item> all;
    if constexpr (std::ranges::sized_range<Range>) all.reserve(std::ranges::size(items));
    for (auto&& item : items) all.push_back(static_cast<Item>(item));
    const std::size_t n = all.size();
    const std::size_t size = chunksize ? *chunksize : default_chunksize(n);
    std::vector<std::string> payloads;
    std::vector<std::size_t> offsets;
    std::vector<Item> chunk;
    std::exception_ptr encoding;
    for (std::size_t first = 0; first < n; first += size) {
      const std::size_t last = std::min(n, first + size);
      chunk.assign(std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(first)),
                   std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(last)));
      offsets.push_back(first);
      try {
        payloads.push_back(detail::task_payload<Runner>(f, chunk));
      } catch (const std::exception&) {
        encoding = std::current_exception();  // the whole call fails with it (CPython #19425)
        payloads.emplace_back();
      }
    }
    return launch<detail::MapValue<R>, R>(std::move(payloads), std::move(offsets), n,
                                          std::move(callback), std::move(error_callback), encoding);
  }

  // imap and imap_unordered: the input is read by the iterating thread, a bounded look-ahead
  // at a time.
  template <bool Unordered, class F, class Range>
  auto lazy(F f, Range&& items, std::size_t chunksize);

  std::shared_ptr<detail::Engine> engine_;
  std::atomic<bool> closed_{false};  // atomic: any thread may submit while another closes
  std::atomic<bool> terminated_{false};
};

namespace detail {
// The lazy state of one imap call. Task k holds items [k * chunksize, ...).
template <class R, class Item, TaskRunner Runner, class F, class View>
class LazyMap final : public Job,
                      public LazySource<R>,
                      public std::enable_shared_from_this<LazyMap<R, Item, Runner, F, View>> {
 public:
  LazyMap(F f, View view, std::size_t chunksize, bool unordered, std::size_t lookahead,
          std::shared_ptr<Engine> engine)
      : f_(f),
        view_(std::move(view)),
        it_(std::ranges::begin(view_)),
        chunksize_(chunksize),
        unordered_(unordered),
        lookahead_(lookahead),
        engine_(std::move(engine)) {}

  bool any_thread() const override { return true; }  // no callbacks: it only parks results
  void task_done(std::size_t task, std::string_view bytes) override {
    std::vector<Wire<R>> chunk;
    try {
      reduction::InArchive ar(bytes);
      ar(chunk);
    } catch (...) {
      return task_failed(task, std::current_exception());
    }
    {
      std::lock_guard l(m_);
      ready_.emplace(task, Outcome{std::move(chunk), nullptr});
    }
    cv_.notify_all();
  }
  void task_failed(std::size_t task, std::exception_ptr error) override {
    {
      std::lock_guard l(m_);
      ready_.emplace(task, Outcome{{}, std::move(error)});
    }
    cv_.notify_all();
  }

  // In the iterating thread.
  std::optional<R> next(std::optional<Duration> timeout) override {
    for (;;) {
      if (pos_ < current_.size()) return std::move(current_[pos_++]);
      refill();
      std::unique_lock l(m_);
      if (finished_ && yielded_ == submitted_) {
        if (input_error_) {
          auto e = std::exchange(input_error_, nullptr);
          std::rethrow_exception(e);
        }
        return std::nullopt;
      }
      auto has_next = [&] { return unordered_ ? !ready_.empty() : ready_.count(next_task_) > 0; };
      if (timeout) {
        if (!cv_.wait_for(l, *timeout, has_next)) throw_timeout();
      } else {
        cv_.wait(l, has_next);
      }
      auto at = unordered_ ? ready_.begin() : ready_.find(next_task_);
      Outcome o = std::move(at->second);
      ready_.erase(at);
      ++yielded_;
      ++next_task_;
      l.unlock();
      if (o.error) std::rethrow_exception(o.error);
      current_ = std::move(o.items);
      pos_ = 0;
    }
  }

  // Sends chunks until `lookahead_` tasks are out and not yet yielded.
  void refill() {
    std::vector<std::string> payloads;
    std::vector<std::size_t> offsets;
    std::size_t out;
    {
      std::lock_guard l(m_);
      out = submitted_ - yielded_;
    }
    std::vector<Item> chunk;
    while (!finished_ && out + payloads.size() < lookahead_) {
      chunk.clear();
      try {
        for (; it_ != std::ranges::end(view_) && chunk.size() < chunksize_; ++it_)
          chunk.push_back(static_cast<Item>(*it_));
      } catch (...) {
        // CPython: the results before the failing chunk, then the input's exception.
        input_error_ = std::current_exception();
        finished_ = true;
        break;
      }
      if (chunk.empty()) {
        finished_ = true;
        break;
      }
      try {
        payloads.push_back(task_payload<Runner>(f_, chunk));
      } catch (const std::exception&) {
        input_error_ = std::current_exception();  // an item that cannot be sent: as the input
        finished_ = true;
        break;
      }
      offsets.push_back(items_read_);
      items_read_ += chunk.size();
      if (chunk.size() < chunksize_) finished_ = true;
    }
    if (payloads.empty()) return;
    std::size_t first;
    {
      std::lock_guard l(m_);
      first = submitted_;
      submitted_ += payloads.size();
    }
    submit_tasks(*engine_, this->shared_from_this(), first, std::move(payloads), offsets);
  }

 private:
  struct Outcome {
    std::vector<Wire<R>> items;
    std::exception_ptr error;
  };
  F f_;
  View view_;
  std::ranges::iterator_t<View> it_;
  std::size_t chunksize_;
  bool unordered_;
  std::size_t lookahead_;
  std::shared_ptr<Engine> engine_;
  // The iterating thread's own.
  bool finished_ = false;
  std::exception_ptr input_error_;
  std::size_t items_read_ = 0;
  std::vector<Wire<R>> current_;
  std::size_t pos_ = 0;
  std::size_t next_task_ = 0;
  // Shared with the pool's thread.
  std::mutex m_;
  std::condition_variable cv_;
  std::map<std::size_t, Outcome> ready_;
  std::size_t submitted_ = 0, yielded_ = 0;
};
}  // namespace detail

template <bool Unordered, class F, class Range>
auto Pool::lazy(F f, Range&& items, std::size_t chunksize) {
  using Item = std::ranges::range_value_t<Range>;
  using R = std::invoke_result_t<F&, Item&&>;
  static_assert(!std::is_void_v<R>, "mp::Pool::imap: the function must return a value");
  detail::check_task<F, R, Item>();
  check_running();
  check_chunksize(chunksize);
  using View = detail::HeldView<Range>;
  using State = detail::LazyMap<R, Item, &detail::run_map<F, Item>, F, View>;
  const auto lookahead = static_cast<std::size_t>(std::max(4, 2 * processes()));
  auto state = std::make_shared<State>(f, std::views::all(std::forward<Range>(items)), chunksize,
                                       Unordered, lookahead, engine_);
  state->refill();
  return IMapIterator<R>(std::move(state));
}

}  // namespace mp
