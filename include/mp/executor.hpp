// concurrent.futures over worker processes: ProcessPoolExecutor, Future, as_completed, wait.
// The same engine as mp::Pool (<mp/tasks.hpp>): a task is a plain function or a captureless
// lambda with serializable arguments and result, checked at compile time.
//
// Unlike CPython's executor, a worker that dies (a signal, an exit, mp::exit in a task) fails
// only the future it was running, with mp::WorkerLost (a BrokenProcessPool), and the executor
// goes on; CPython breaks the whole executor, and returns SystemExit for sys.exit in a task.
// A throwing initializer breaks it, as CPython's does.
// Its futures, mp::wait and mp::as_completed are in <mp/future.hpp>.
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
#include "mp/future.hpp"
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
  std::atomic<bool> shutdown_{false};  // atomic: any thread may submit while another shuts down
};

}  // namespace mp
