// The task layer under mp::Pool and mp::ProcessPoolExecutor: how a call crosses to a worker
// that is already running, and its result back. One engine (src/pool.cpp) owns the workers:
// one channel per worker, owned by the parent, with a small window of tasks in flight, so the
// parent knows at every instant what a dead worker held. Not for direct use, but for
// mp::Initializer.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "mp/errors.hpp"
#include "mp/future.hpp"
#include "mp/process.hpp"
#include "mp/reduction.hpp"

namespace mp {

class Context;

namespace detail {
// What a worker runs: reads its callable and arguments from `in`, writes its results to `out`
// and says how far it got (which item threw; whether encoding the results threw).
struct TaskProgress {
  std::size_t item = 0;
  bool encoding = false;
  const std::type_info* result_type = nullptr;  // for MaybeEncodingError (named only then)
};
using TaskRunner = void (*)(reduction::InArchive& in, std::string& out, TaskProgress& progress);

// A runner's reference into the program, computed once per runner.
template <TaskRunner Runner>
const reduction::CodeRef& runner_ref() {
  static const reduction::CodeRef ref = reduction::code_ref(reinterpret_cast<const void*>(Runner));
  return ref;
}

template <class F, class... Args>
Wire<std::invoke_result_t<F&, Args&&...>> invoke_task(F& f, Args&&... args) {
  if constexpr (std::is_void_v<std::invoke_result_t<F&, Args&&...>>) {
    std::invoke(f, std::forward<Args>(args)...);
    return {};
  } else {
    return std::invoke(f, std::forward<Args>(args)...);
  }
}

template <class F, class R, class... Args>
inline constexpr bool task_ok = reduction::Callable<F> &&
                                (reduction::Value<Args> && ...) && reduction::Value<Wire<R>>;

// The compile-time checks every task passes: a callable a worker can rebuild, and arguments
// and a result that can cross.
template <class F, class R, class... Args>
constexpr void check_task() {
  static_assert(reduction::Callable<F>,
                "mp: a pool task must be a plain function or a captureless lambda (its workers "
                "are already running, under every start method, fork included): pass the data "
                "as arguments instead of capturing it");
  static_assert((reduction::Value<Args> && ...),
                "mp: a pool task's argument type has no serializer; for std::map, "
                "std::optional, ... #include <mp/types.hpp>; give a type of your own a cereal "
                "serialize(Archive&) function");
  static_assert(reduction::Value<Wire<R>>,
                "mp: a pool task's result type has no serializer; for std::map, std::optional, "
                "... #include <mp/types.hpp>; give a type of your own a cereal "
                "serialize(Archive&) function");
}

template <class R>
void encode_results(std::string& out, TaskProgress& p, const R& results) {
  p.encoding = true;
  p.result_type = &typeid(typename R::value_type);
  reduction::OutArchive ar(out);
  ar(results);
}

// map: f(item) for each item of a chunk. starmap: std::apply(f, item).
template <class F, class Item>
void run_map(reduction::InArchive& in, std::string& out, TaskProgress& p) {
  F f = reduction::load_callable<F>(in);
  std::vector<Item> items;
  in(items);
  std::vector<Wire<std::invoke_result_t<F&, Item&&>>> results;
  results.reserve(items.size());
  for (p.item = 0; p.item < items.size(); ++p.item)
    results.push_back(invoke_task(f, std::move(items[p.item])));
  encode_results(out, p, results);
}

template <class F, class Tuple>
void run_starmap(reduction::InArchive& in, std::string& out, TaskProgress& p) {
  F f = reduction::load_callable<F>(in);
  std::vector<Tuple> items;
  in(items);
  using R = decltype(std::apply([&f](auto&&... a) { return invoke_task(f, std::move(a)...); },
                                std::move(items[0])));
  std::vector<R> results;
  results.reserve(items.size());
  for (p.item = 0; p.item < items.size(); ++p.item)
    results.push_back(
        std::apply([&f](auto&... a) { return invoke_task(f, std::move(a)...); }, items[p.item]));
  encode_results(out, p, results);
}

// The bytes a worker receives for one task.
template <TaskRunner Runner, class F, class Items>
std::string task_payload(const F& f, const Items& items) {
  std::string out;
  reduction::OutArchive ar(out);
  ar(runner_ref<Runner>());
  reduction::save_callable(ar, f);
  ar(items);
  return out;
}

struct Task {
  std::shared_ptr<Job> job;
  std::size_t index = 0;       // the task's number within its job
  std::size_t first_item = 0;  // the input position of its first item (named in errors)
  std::string payload;         // runner, callable, arguments (task_payload)
};

class Transport;  // how the engine reaches its workers (src/pool_transport.hpp)

struct EngineOptions {
  int processes = 1;
  std::shared_ptr<Transport> transport;  // null: local worker processes
  std::optional<int> maxtasksperchild;
  const Context* context = nullptr;  // nullptr: the default context
  int window = 0;               // tasks sent to a worker ahead of its results (0: automatic, 4-64)
  Duration spin = Duration(0);  // how long a worker or a waiting caller polls before sleeping
  std::optional<Duration> task_timeout;
  int max_startup_failures = 0;  // 0: max(5, 2 * processes)
  std::string initializer;       // an Initializer's payload (empty: none)
  bool on_demand = false;        // start workers as tasks need them (the executor), not at once
  bool finish_at_exit = false;   // at exit: let queued tasks finish (the executor), not terminate
};

struct SubmitResult {
  bool accepted = false;
  std::exception_ptr broken;  // not accepted: why (null: closed or terminated)
};

// The workers and the thread that feeds them and reads their results.
class Engine final : public FutureSource {
 public:
  explicit Engine(EngineOptions options);
  ~Engine() override;  // terminate()
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  /// Queues tasks (in order); nothing is queued when the pool is closed, terminated or broken.
  SubmitResult submit(std::vector<Task> tasks);
  /// No more tasks; workers end once the queued ones are done.
  void close();
  /// Fails every queued and running task with BrokenProcessPool("pool terminated"), ends the
  /// workers (SIGTERM, or SIGKILL with `kill`), and returns once they are gone.
  void terminate(bool kill = false);
  /// Takes `job`'s task `task` off the queue if it has not been sent; true if it was.
  bool cancel(const Job* job, std::size_t task) override;
  /// Takes every queued task off the queue (each job is told: task_cancelled).
  void cancel_pending();
  /// Waits until done() (within `timeout`; false if not), reading the workers' results in
  /// this thread meanwhile: those of jobs that allow it (Job::any_thread) are delivered here,
  /// the others are left to the engine's thread.
  bool wait(const Job* job, const std::function<bool()>& done,
            std::optional<Duration> timeout) override;
  /// Tells the callers in wait() to look at their jobs again (one was finished outside the
  /// engine: a Future cancelled).
  void notify_waiters() override;
  /// Why the pool is broken (null: it is not).
  std::exception_ptr broken() const;
  /// Waits for the workers to end (after close() or terminate()).
  void join();
  bool running() const;
  /// The pids of the live workers (tests, and Pool::_pool's counterpart).
  std::vector<int> worker_pids() const;
  int processes() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};
}  // namespace detail

/// A function run once in each worker before its first task (CPython's initializer and
/// initargs): a plain function or a captureless lambda with serializable arguments (checked
/// at compile time). If it throws, the pool is broken: every task fails with
/// mp::BrokenProcessPool naming the error, and no worker is started again.
class Initializer {
 public:
  Initializer() = default;
  template <class F, class... Args>
  explicit Initializer(F f, Args&&... args) {
    using Tuple = std::tuple<detail::Stored<Args>...>;
    detail::check_task<F, void, detail::Stored<Args>...>();
    payload_ = detail::task_payload<&detail::run_starmap<F, Tuple>>(
        f, std::vector<Tuple>{Tuple(std::forward<Args>(args)...)});
  }
  bool empty() const { return payload_.empty(); }
  const std::string& payload() const { return payload_; }

 private:
  std::string payload_;
};

}  // namespace mp
