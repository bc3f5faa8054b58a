// ProcessPoolExecutor (CPython's concurrent/futures/process.py) on the pool's engine
// (src/pool.cpp): workers on demand, finished work kept at exit.
#include "mp/executor.hpp"

#include "mp/context.hpp"

namespace mp {

namespace {
detail::EngineOptions engine_options(ExecutorOptions o) {
  const int n = o.max_workers.value_or(cpu_count());
  if (n <= 0) throw std::invalid_argument("max_workers must be greater than 0");
  const Context* ctx = o.mp_context;
  if (o.max_tasks_per_child) {
    if (*o.max_tasks_per_child <= 0)
      throw std::invalid_argument("max_tasks_per_child must be >= 1");
    if (!ctx) ctx = &get_context("spawn");  // CPython: a fork worker could not be replaced safely
    if (ctx->start_method() == StartMethod::fork)
      throw std::invalid_argument(
          "max_tasks_per_child is incompatible with the 'fork' multiprocessing start method; "
          "supply a different mp_context.");
  }
  detail::EngineOptions e;
  e.processes = n;
  e.maxtasksperchild = o.max_tasks_per_child;
  e.context = ctx;
  e.task_timeout = o.task_timeout;
  e.max_startup_failures = o.max_startup_failures;
  e.spin = o.spin;
  e.initializer = o.initializer.payload();
  e.on_demand = true;
  e.finish_at_exit = true;
  return e;
}
}  // namespace

ProcessPoolExecutor::ProcessPoolExecutor(ExecutorOptions options)
    : ProcessPoolExecutor(std::move(options), nullptr) {}

ProcessPoolExecutor::ProcessPoolExecutor(ExecutorOptions options,
                                         std::shared_ptr<detail::Transport> transport) {
  detail::EngineOptions e = engine_options(std::move(options));
  e.transport = std::move(transport);
  engine_ = std::make_shared<detail::Engine>(std::move(e));
}

ProcessPoolExecutor::~ProcessPoolExecutor() {
  shutdown(true);
}

void ProcessPoolExecutor::submit_tasks(std::vector<detail::Task> tasks) {
  if (shutdown_) throw std::runtime_error("cannot schedule new futures after shutdown");
  const detail::SubmitResult r = engine_->submit(std::move(tasks));
  if (r.accepted) return;
  if (r.broken) std::rethrow_exception(r.broken);
  throw std::runtime_error("cannot schedule new futures after shutdown");
}

void ProcessPoolExecutor::check_map(std::size_t chunksize, std::optional<std::size_t> buffersize) {
  if (chunksize < 1) throw std::invalid_argument("chunksize must be >= 1.");
  if (buffersize && *buffersize < 1) throw std::invalid_argument("buffersize must be None or > 0");
}

void ProcessPoolExecutor::shutdown(bool wait, bool cancel_futures) {
  shutdown_ = true;
  if (cancel_futures) engine_->cancel_pending();
  engine_->close();
  if (wait) engine_->join();
}

void ProcessPoolExecutor::terminate_workers() {
  shutdown_ = true;
  engine_->terminate(false);
}

void ProcessPoolExecutor::kill_workers() {
  shutdown_ = true;
  engine_->terminate(true);
}

std::vector<int> ProcessPoolExecutor::worker_pids() const {
  return engine_->worker_pids();
}

}  // namespace mp
