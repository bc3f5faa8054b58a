// Start methods and contexts (Python's multiprocessing.context).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mp/process.hpp"

namespace mp {

/// "fork", "spawn" or "forkserver".
std::string_view to_string(StartMethod method);

/// A start method fixed at run time: its Process() objects start that way and are named
/// "SpawnProcess-N", "ForkProcess-N", ... as in Python.
class Context {
 public:
  constexpr explicit Context(StartMethod method) : method_(method) {}
  virtual ~Context() = default;
  StartMethod start_method() const { return method_; }
  std::string get_start_method() const { return std::string(to_string(method_)); }
  const Context& get_context() const { return *this; }
  /// Throws std::logic_error("cannot set start method of concrete context"), as in Python.
  [[noreturn]] void set_start_method(std::string_view method, bool force = false) const;

  /// A process object bound to this context. Under spawn an unpicklable target or argument
  /// makes start() throw mp::PicklingError (a typed context refuses it at compile time).
  template <class F, class... Args>
  mp::Process Process(F&& f, Args&&... args) const {
    return bind(mp::Process(std::forward<F>(f), std::forward<Args>(args)...));
  }
  template <class F, class... Args>
  mp::Process Process(Options options, F&& f, Args&&... args) const {
    return bind(mp::Process(std::move(options), std::forward<F>(f), std::forward<Args>(args)...));
  }
  /// Makes `p` (e.g. a subclass object) start with this context's method.
  void bind_to(mp::Process& p) const;

 private:
  mp::Process bind(mp::Process p) const;
  StartMethod method_;
};

/// A context whose start method is known at compile time: what cannot cross to a spawned
/// child is a compile-time error, not a run-time PicklingError.
template <StartMethod M>
class TypedContext : public Context {
 public:
  constexpr TypedContext() : Context(M) {}
  template <class F, class... Args>
  mp::Process Process(F&& f, Args&&... args) const {
    check<F, Args...>();
    return Context::Process(std::forward<F>(f), std::forward<Args>(args)...);
  }
  template <class F, class... Args>
  mp::Process Process(Options options, F&& f, Args&&... args) const {
    check<F, Args...>();
    return Context::Process(std::move(options), std::forward<F>(f), std::forward<Args>(args)...);
  }

 private:
  template <class F, class... Args>
  static constexpr void check() {
    // One static_assert per method: its message must be a literal, and it names the method.
    if constexpr (M == StartMethod::spawn) {
      static_assert(reduction::Callable<std::decay_t<F>>,
                    "mp: this target cannot cross to a spawned child: a capturing lambda or a "
                    "function object without a serializer. Use a plain function or a captureless "
                    "lambda and pass data as arguments, or use fork_context");
    } else if constexpr (M == StartMethod::forkserver) {
      static_assert(reduction::Callable<std::decay_t<F>>,
                    "mp: this target cannot cross to a forkserver child: a capturing lambda or a "
                    "function object without a serializer. Use a plain function or a captureless "
                    "lambda and pass data as arguments, or use fork_context");
    }
    if constexpr (M != StartMethod::fork) {
      static_assert((reduction::Value<detail::Stored<Args>> && ...),
                    "mp: an argument type has no serializer; for std::map, std::optional, "
                    "std::variant, ... #include <mp/types.hpp>; give a type of your own "
                    "serialize(Archive&) (cereal), or use fork_context");
    }
  }
};

inline const TypedContext<StartMethod::fork> fork_context;
inline const TypedContext<StartMethod::spawn> spawn_context;
inline const TypedContext<StartMethod::forkserver> forkserver_context;

/// The context for `method` ("fork", "spawn", "forkserver"); with no method, the default context's,
/// which fixes the default. Throws std::logic_error("cannot find context for 'bogus'").
const Context& get_context(std::optional<std::string_view> method = std::nullopt);
/// Set the default start method once; again throws std::runtime_error("context has already
/// been set") unless force. std::nullopt with force unsets it.
void set_start_method(std::optional<std::string_view> method, bool force = false);
/// The default start method (fixing it to "forkserver" if unset).
std::string get_start_method();
/// With allow_none, empty while no default has been fixed.
std::optional<std::string> get_start_method(bool allow_none);
/// The start methods available here, the default first.
std::vector<std::string> get_all_start_methods();
/// Functions the fork server runs once, in order, before it forks any child (CPython's
/// set_forkserver_preload takes module names; here: plain functions, e.g. to warm caches).
/// Takes effect when the server next starts.
void set_forkserver_preload(std::vector<void (*)()> hooks);

}  // namespace mp
