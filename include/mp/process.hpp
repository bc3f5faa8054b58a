// The process object (Python's multiprocessing.process.BaseProcess) and the functions around it.
#pragma once

#include <chrono>
#include <concepts>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <cereal/types/tuple.hpp>  // a target's arguments
#include "mp/errors.hpp"
#include "mp/reduction.hpp"

namespace mp {

using pid_t = int;  // the platform's pid_t (checked in the sources)
/// Timeouts: any std::chrono duration converts to this.
using Duration = std::chrono::duration<double>;

/// How a child is made: a fork of the caller, a fresh exec of the program, or a fork of the
/// fork server (a fresh exec of the program started once, the default).
enum class StartMethod { fork, spawn, forkserver };

class Context;
class Process;

namespace detail {
struct ProcessState;

// What a target-style Process runs: a callable and its arguments, type-erased.
struct TargetBase {
  virtual ~TargetBase() = default;
  virtual void call() = 0;
  // Writes the loader reference and the data; throws PicklingError naming what cannot cross
  // to `child` ("a spawned child", "a forkserver child").
  virtual void pickle(reduction::OutArchive& ar, std::string_view child) const = 0;
};

// Arguments are stored decayed; C strings and string_views are stored as std::string, so they
// can cross to a spawned child and cannot dangle.
template <class T>
using Stored = std::conditional_t<std::is_same_v<std::decay_t<T>, const char*> ||
                                      std::is_same_v<std::decay_t<T>, char*> ||
                                      std::is_same_v<std::decay_t<T>, std::string_view>,
                                  std::string, std::decay_t<T>>;

template <class F, class... Args>
std::unique_ptr<Process> load_target(reduction::InArchive& ar);

template <class F, class... Args>
class Target final : public TargetBase {
 public:
  Target(F f, std::tuple<Args...> args) : f_(std::move(f)), args_(std::move(args)) {}
  // Once, in the child: the arguments are moved in, so move-only ones (a Connection) work.
  void call() override { std::apply(f_, std::move(args_)); }
  void pickle(reduction::OutArchive& ar, std::string_view child) const override {
    if constexpr (!reduction::Callable<F>) {
      throw PicklingError(
          "Can't pickle the target '" + reduction::type_name<F>() + "' for " + std::string(child) +
          ": a capturing lambda or a function object without a serializer "
          "cannot cross. Use a plain function or a captureless lambda and pass the data as "
          "arguments, give the type a serialize(Archive&) function, or use the fork start method");
    } else if constexpr (!(reduction::Value<Args> && ...)) {
      std::string bad;
      ((reduction::Value<Args>
            ? void()
            : void(bad += (bad.empty() ? "" : "', '") + reduction::type_name<Args>())),
       ...);
      throw PicklingError("Can't pickle argument type '" + bad + "' for " + std::string(child) +
                          ": it has no serializer. For std::map, std::optional, std::variant, "
                          "... #include <mp/types.hpp>; give a type of your own a cereal "
                          "serialize(Archive&) function (or MP_FIELDS for a Process subclass); "
                          "or use the fork start method");
    } else {
      reduction::save_code(ar, reinterpret_cast<const void*>(&load_target<F, Args...>));
      reduction::save_callable(ar, f_);
      ar(args_);
    }
  }

 private:
  F f_;
  std::tuple<Args...> args_;
};

template <class T>
std::unique_ptr<Process> load_subclass(reduction::InArchive& ar);

template <class T>
inline constexpr bool is_process_v = std::derived_from<std::remove_cvref_t<T>, Process>;

// MP_FIELDS' check, ahead of cereal's own: instantiated once for each field's type, so the
// error's "In instantiation of" line names it. (A type that is not default-constructible is
// left to cereal: it may load in place.)
template <class FieldType>
struct MP_FIELDS_field_has_no_serializer {
  static constexpr bool ok =
      !std::is_default_constructible_v<FieldType> || reduction::Value<FieldType>;
  static_assert(ok,
                "mp: MP_FIELDS: a field's type (the FieldType in the line above) has no "
                "serializer. Give it a cereal serialize(Archive&) function, leave the field out "
                "of MP_FIELDS, or use the fork start method");
};
template <class Archive, class... Fields>
void fields(Archive& ar, Fields&... f) {
  if constexpr ((MP_FIELDS_field_has_no_serializer<std::remove_cvref_t<Fields>>::ok && ...))
    reduction::fields(ar, f...);
}
}  // namespace detail

/// Construction options (Python's name= and daemon= keywords).
struct Options {
  std::optional<std::string> name =
      std::nullopt;                           ///< default: "<Class>-<identity>", e.g. "Process-1:2"
  std::optional<bool> daemon = std::nullopt;  ///< default: the creating process's own daemon flag
};

/// A process object: run() in a child process. Construct it from a callable and its arguments,
/// or derive from it and override run() (declare the fields a spawned child needs with
/// MP_FIELDS). Movable, not copyable. Destroying it never blocks or kills the child.
class Process {
 public:
  /// For subclasses that override run().
  Process();
  explicit Process(Options options);
  /// Runs f(args...) in the child. Under spawn, f must be a plain function or captureless
  /// lambda and the arguments serializable (else start() throws PicklingError).
  template <class F, class... Args>
  requires(!std::same_as<std::remove_cvref_t<F>, Options> && !detail::is_process_v<F> &&
           std::is_invocable_v<std::decay_t<F>&,
                               detail::Stored<Args>&&...>) explicit Process(F&& f, Args&&... args)
      : Process(Options{}, std::forward<F>(f), std::forward<Args>(args)...) {}
  template <class F, class... Args>
  requires(std::is_invocable_v<std::decay_t<F>&, detail::Stored<Args>&&...>)
      Process(Options options, F&& f, Args&&... args)
      : Process(std::move(options),
                std::make_unique<detail::Target<std::decay_t<F>, detail::Stored<Args>...>>(
                    std::forward<F>(f),
                    std::tuple<detail::Stored<Args>...>(std::forward<Args>(args)...))) {}
  Process(Process&&) noexcept;
  Process& operator=(Process&&) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  virtual ~Process();

  /// The child's work: calls the target; override it in a subclass.
  virtual void run();

  /// Start the child. Throws std::logic_error on misuse (CPython's texts), PicklingError when
  /// the object cannot cross to a spawned child (no child is made), std::system_error when a
  /// system call fails.
  void start();
  /// Wait for the child to end. Throws std::logic_error("can only join a started process",
  /// "can only join a child process", "process object is closed"), as CPython.
  void join();
  /// Wait at most `timeout` (negative: 0); exitcode() is still empty if the child runs on.
  /// Never throws TimeoutError; misuse as join().
  void join(Duration timeout);
  /// True from start() until the child has ended (reaps it when it has).
  bool is_alive() const;
  /// SIGTERM / SIGKILL the child; no-ops once it has ended.
  void terminate();
  void kill();
  /// Release the child's resources; throws std::logic_error while it runs. Idempotent.
  void close();

  std::string name() const;
  void set_name(std::string name);
  bool daemon() const;
  /// Throws std::logic_error("process has already started") after start().
  void set_daemon(bool daemonic);
  const AuthenticationString& authkey() const;
  void set_authkey(AuthenticationString key);
  /// Empty until the child has ended; -N when a signal N killed it.
  std::optional<int> exitcode() const;
  /// Empty before start().
  std::optional<pid_t> pid() const;
  std::optional<pid_t> ident() const { return pid(); }
  /// A descriptor that becomes readable when the child ends (std::logic_error before start).
  int sentinel() const;
  /// The start method this object uses: its context's, else the default context's.
  StartMethod start_method() const;

  /// CPython's repr: <Process name='Process-1' pid=123 parent=100 started daemon>.
  std::string repr() const;
  friend std::ostream& operator<<(std::ostream& os, const Process& p);

  // Hooks written by MP_FIELDS; not for direct use.
  virtual std::string_view mp_class_name() const;
  virtual const std::type_info& mp_declared_type() const { return typeid(Process); }
  virtual void mp_save(reduction::OutArchive&) const {}
  virtual void mp_load(reduction::InArchive&) {}
  virtual reduction::ProcessLoader mp_loader() const { return nullptr; }

 private:
  friend class Context;
  friend struct detail::ProcessState;
  template <class F, class... Args>
  friend std::unique_ptr<Process> detail::load_target(reduction::InArchive& ar);
  Process(Options options, std::unique_ptr<detail::TargetBase> target);
  struct MainTag {};
  explicit Process(MainTag);
  friend Process& current_process();
  std::unique_ptr<detail::ProcessState> s_;
};

/// Declares a Process subclass's class name and the fields a spawned child receives:
/// `MP_FIELDS(MyProc, n, text)` inside `struct MyProc : mp::Process`. Leaves access public.
#define MP_FIELDS(Type, ...)                                        \
 public:                                                            \
  std::string_view mp_class_name() const override {                 \
    return #Type;                                                   \
  }                                                                 \
  const std::type_info& mp_declared_type() const override {         \
    return typeid(Type);                                            \
  }                                                                 \
  void mp_save(::mp::reduction::OutArchive& mp_ar) const override { \
    ::mp::detail::fields(mp_ar __VA_OPT__(, ) __VA_ARGS__);         \
  }                                                                 \
  void mp_load(::mp::reduction::InArchive& mp_ar) override {        \
    ::mp::detail::fields(mp_ar __VA_OPT__(, ) __VA_ARGS__);         \
  }                                                                 \
  ::mp::reduction::ProcessLoader mp_loader() const override {       \
    return &::mp::detail::load_subclass<Type>;                      \
  }

/// The parent of a child process, as seen from the child (Python's _ParentProcess).
class ParentProcess {
 public:
  ParentProcess(std::string name, pid_t pid, int sentinel)
      : name_(std::move(name)), pid_(pid), sentinel_(sentinel) {}
  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }
  pid_t ident() const { return pid_; }
  /// Readable once the parent has ended.
  int sentinel() const { return sentinel_; }
  bool is_alive() const;
  /// Wait until the parent ends (at most `timeout`).
  void join() const;
  void join(Duration timeout) const;
  friend std::ostream& operator<<(std::ostream& os, const ParentProcess& p);

 private:
  std::string name_;
  pid_t pid_;
  int sentinel_;
};

/// The process object of this process ("MainProcess" in the main program).
Process& current_process();
/// This process's parent; nullptr in the main process.
const ParentProcess* parent_process();
/// Running children of this process (reaps those that have ended).
std::vector<Process*> active_children();
/// Number of CPUs usable by this process (at least 1).
int cpu_count();
/// "-SIGTERM" for -15, "3" for 3: exit codes as the repr prints them.
std::string exitcode_to_name(int exitcode);

namespace detail {
template <class F, class... Args>
std::unique_ptr<Process> load_target(reduction::InArchive& ar) {
  F f = reduction::load_callable<F>(ar);
  std::tuple<Args...> args;
  ar(args);
  return std::unique_ptr<Process>(
      new Process(Options{}, std::make_unique<Target<F, Args...>>(std::move(f), std::move(args))));
}

template <class T>
std::unique_ptr<Process> load_subclass(reduction::InArchive& ar) {
  static_assert(std::is_default_constructible_v<T>,
                "mp: a Process subclass started by spawn needs a public default constructor; "
                "its MP_FIELDS are filled in after construction");
  auto p = std::make_unique<T>();
  p->mp_load(ar);
  return p;
}
}  // namespace detail

}  // namespace mp
