// Managers (Python's multiprocessing.managers): a server process owns objects; other processes,
// on this machine or others, call their methods through proxies.
//
//   struct Counter {
//     int n = 0;
//     int increment(int by) { return n += by; }
//     int get() const { return n; }
//     MP_METHODS(Counter, increment, get)  // what a proxy may call, by name
//   };
//   mp::BaseManager manager;                 // a private Unix socket, this process's authkey
//   manager.register_type<Counter>("Counter");
//   manager.start();                         // the server, in a child process
//   mp::Proxy<Counter> c = manager.create<Counter>();
//   c.increment(5);                          // a call on the server; wrong types do not compile
//
// The server decodes only what the declared methods take: their parameter types, nothing else
// (no code crosses). A client process keeps one connection per server, shared by its proxies.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "mp/context.hpp"
#include "mp/errors.hpp"
#include "mp/future.hpp"
#include "mp/listener.hpp"
#include "mp/process.hpp"
#include "mp/reduction.hpp"

namespace mp {

/// The manager's server cannot be reached or has gone (its state with it): every pending and
/// later call through its proxies fails with this, naming the address and the cause.
class ManagerError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

namespace detail {

// One served method: its name, and how the server runs it on an object (the arguments decoded as
// the method's declared parameter types, the result encoded).
struct MethodEntry {
  const char* name;
  void (*invoke)(void* object, reduction::InArchive& in, std::string& out);
};

template <class M>
struct MethodTraits;
#define MP_METHOD_TRAITS_(Qualifiers)                             \
  template <class R, class C, class... P>                         \
  struct MethodTraits<R (C::*)(P...) Qualifiers> {                \
    using Result = R;                                             \
    using Class = C;                                              \
    using Args = std::tuple<std::decay_t<P>...>;                  \
    template <class... A>                                         \
    static constexpr bool callable_with =                         \
        std::is_invocable_v<R (C::*)(P...) Qualifiers, C&, A...>; \
  };
MP_METHOD_TRAITS_()
MP_METHOD_TRAITS_(const)
MP_METHOD_TRAITS_(noexcept)
MP_METHOD_TRAITS_(const noexcept)
#undef MP_METHOD_TRAITS_

template <auto M>
void invoke_method(void* object, reduction::InArchive& in, std::string& out) {
  using T = MethodTraits<decltype(M)>;
  typename T::Args args;
  std::apply([&](auto&... a) { (in(a), ...); }, args);
  auto* self = static_cast<typename T::Class*>(object);
  auto call = [&](auto&... a) -> typename T::Result { return (self->*M)(std::move(a)...); };
  if constexpr (std::is_void_v<typename T::Result>) {
    std::apply(call, args);
  } else {
    reduction::OutArchive ar(out);
    ar(std::apply(call, args));
  }
}

// What the server knows of a registered type, found by its key (typeid name) in a table every
// process of this build fills at start-up (so a spawned server has it without main()).
struct TypeOps {
  const char* key;
  std::string display;  // "Counter"
  void (*destroy)(void*);
  const MethodEntry* methods;
  std::size_t method_count;
  // A concurrent type's methods may block (a Lock's acquire): they run on server threads of
  // their own, at once, without the per-object mutex; the type does its own locking.
  bool concurrent;
  // Called when a client's connection ends (how a Lock it held is released), or null.
  void (*client_gone)(void*, std::uint64_t client);
  // One of the SyncManager's types: served without register_type.
  bool standard;
};
bool register_type_ops(const TypeOps* ops);
// A constructor of a registered type with these (decayed) argument types.
bool register_constructor(const char* key, const char* type_key,
                          void* (*make)(reduction::InArchive&));

template <class T>
struct Served {
  static void destroy(void* p) { delete static_cast<T*>(p); }
  static void client_gone(void* p, std::uint64_t client) {
    static_cast<T*>(p)->mp_client_gone(client);
  }
  static constexpr bool concurrent() {
    if constexpr (requires { T::mp_concurrent; })
      return T::mp_concurrent;
    else
      return false;
  }
  static constexpr bool standard() {
    if constexpr (requires { T::mp_standard; })
      return T::mp_standard;
    else
      return false;
  }
  static constexpr auto gone_hook() {
    if constexpr (requires(T & t) { t.mp_client_gone(std::uint64_t{}); })
      return &client_gone;
    else
      return static_cast<void (*)(void*, std::uint64_t)>(nullptr);
  }
  // A function's static, not a static member: `registered` is initialized at start-up in an
  // order the language leaves open for templates, and must find the table built.
  static const TypeOps& ops() {
    static const TypeOps o{typeid(T).name(),
                           reduction::type_name<T>(),
                           &destroy,
                           T::mp_methods().data(),
                           T::mp_methods().size(),
                           concurrent(),
                           gone_hook(),
                           standard()};
    return o;
  }
  static inline const bool registered = register_type_ops(&ops());
};

// On the server, inside a served method: who is calling. `client` numbers the connection (one
// per client process), `thread` the calling thread in it; `gone` turns true once the client's
// connection has ended (a concurrent type's blocking wait gives up then, taking nothing).
struct CallContext {
  std::uint64_t client = 0;
  std::uint64_t thread = 0;
  const std::atomic<bool>* gone = nullptr;
  int fd = -1;
  // Also true once the client's process has died but its connection's end is not yet read
  // (a getter must not take an item for a dead client).
  bool client_gone() const;
};
const CallContext& current_call();

template <class T, class... A>
struct Constructor {
  static void* make(reduction::InArchive& in) {
    std::tuple<A...> args;
    std::apply([&](auto&... a) { (in(a), ...); }, args);
    return std::apply([](auto&... a) { return new T(std::move(a)...); }, args);
  }
  static const char* key() { return typeid(Constructor).name(); }
  static inline const bool registered = register_constructor(key(), typeid(T).name(), &make);
};

class Session;

// One reference to an object on a server, shared by the copies of a Proxy: the last one gone
// tells the server.
struct ObjectRef {
  std::shared_ptr<Session> session;
  std::uint64_t id = 0;
  std::mutex mu;  // guards session: a fork child's copy connects again on first use
  ~ObjectRef();
};

// A call: the request's bytes out, the reply's bytes back (mp::RemoteError for a method's
// exception, mp::ManagerError once the server is gone).
std::string call_method(ObjectRef& ref, const char* method, const std::string& args);
// The same call without waiting: its reply finishes `job` (read by whichever thread of this
// process waits next on the server); source_of is what the job's waiters wait in.
std::shared_ptr<FutureSource> source_of(ObjectRef& ref);
void call_method_async(ObjectRef& ref, const char* method, const std::string& args,
                       std::shared_ptr<Job> job);
// The served name of T's method M (found in T's MP_METHODS table).
template <class T, auto M>
const char* method_name() {
  static const char* const name = [] {
    for (const auto& e : T::mp_methods())
      if (e.invoke == &invoke_method<M>) return e.name;
    return static_cast<const char*>(nullptr);
  }();
  if (!name) throw std::logic_error("mp: async_call: not one of the type's MP_METHODS");
  return name;
}
// A proxy crossing to another process: the server's address, the object and a reference held
// for the receiver until it attaches (with the authkey only while spawning, as CPython).
void save_ref(reduction::OutArchive& ar, ObjectRef& ref, const char* type_key);
std::shared_ptr<ObjectRef> load_ref(reduction::InArchive& ar, const char* type_key);
std::shared_ptr<ObjectRef> create_object(const std::shared_ptr<Session>& session,
                                         const std::string& name, const char* type_key,
                                         const char* constructor_key, const std::string& args);

template <class... A>
std::string encode_args(const A&... a) {
  std::string out;
  reduction::OutArchive ar(out);
  (ar(a), ...);
  return out;
}
}  // namespace detail

/// A handle on an object of type T owned by a manager's server: T's MP_METHODS are its member
/// functions, each a call on the server (arguments converted to the declared parameter types
/// here, so a wrong type does not compile). Copies share the object; the last one gone releases
/// it on the server.
template <class T>
class Proxy : public T::template mp_proxy_methods<Proxy<T>> {
 public:
  /// An empty proxy, what one received is loaded into; calling it throws std::logic_error.
  Proxy() = default;
  std::uint64_t id() const { return ref_ ? ref_->id : 0; }

  /// A proxy crosses to a child as a Process argument (every start method) or through a
  /// Connection; the receiver connects to the server (once per process) and holds its own
  /// reference.
  template <class Archive>
  void save(Archive& ar) const {
    detail::save_ref(ar, *checked(), typeid(T).name());
  }
  template <class Archive>
  void load(Archive& ar) {
    ref_ = detail::load_ref(ar, typeid(T).name());
  }

  /// The method M of the object, called on the server (what the named member functions use).
  template <auto M, class... A>
  auto call(const char* name, A&&... a) const {
    using Traits = detail::MethodTraits<decltype(M)>;
    static_assert(Traits::template callable_with<A...>,
                  "mp: Proxy: these arguments do not match the method's parameters");
    // Converted here to the declared types: the server decodes exactly those.
    std::string args = std::apply([](const auto&... p) { return detail::encode_args(p...); },
                                  typename Traits::Args(std::forward<A>(a)...));
    std::string reply = detail::call_method(*checked(), name, args);
    if constexpr (!std::is_void_v<typename Traits::Result>) {
      std::decay_t<typename Traits::Result> r{};
      reduction::InArchive in(reply);
      in(r);
      return r;
    }
  }

  /// M called on the server without waiting for it: the reply becomes the future's result or
  /// its error (as call()'s). Calls made by one thread run in the order made; up to 64 per
  /// process are in flight, then async_call first waits for the oldest. A waiting result()
  /// reads the replies of every call in flight, so they need no thread of their own.
  ///   mp::Future<int> f = counter.async_call<&Counter::increment>(5);
  template <auto M, class... A>
  auto async_call(A&&... a) const {
    using Traits = detail::MethodTraits<decltype(M)>;
    using R = std::decay_t<typename Traits::Result>;
    static_assert(Traits::template callable_with<A...>,
                  "mp: Proxy: these arguments do not match the method's parameters");
    std::string args = std::apply([](const auto&... p) { return detail::encode_args(p...); },
                                  typename Traits::Args(std::forward<A>(a)...));
    detail::ObjectRef& ref = *checked();
    const char* name = detail::method_name<T, M>();
    auto state = std::make_shared<detail::FutureState<R>>(detail::source_of(ref), true);
    state->task_sent(0);  // sent at once: running, as a future a worker has
    detail::call_method_async(ref, name, args, state);
    return FuturesAccess<R>::make(std::move(state));
  }

 private:
  friend class BaseManager;
  explicit Proxy(std::shared_ptr<detail::ObjectRef> ref) : ref_(std::move(ref)) {}
  detail::ObjectRef* checked() const {
    if (!ref_) throw std::logic_error("an empty proxy (default-constructed, not loaded)");
    return ref_.get();
  }
  std::shared_ptr<detail::ObjectRef> ref_;
};

/// The argument types of a constructor a server serves (see BaseManager::register_type).
template <class... A>
struct Args {
  template <class T>
  using constructor = detail::Constructor<T, A...>;
};

/// Construction options: `mp::BaseManager({.address = {{"127.0.0.1", 0}}, .authkey = key})`.
struct ManagerOptions {
  std::optional<Address> address = std::nullopt;  ///< default: a private Unix socket path
  /// default: current_process().authkey(); over TCP an empty key is refused
  std::optional<AuthenticationString> authkey = std::nullopt;
  const Context* context = nullptr;  ///< the server's start method (default: the default one)
};

/// A server of registered types (Python's BaseManager): start() runs it in a child process,
/// connect() uses one started elsewhere, serve_forever() runs it here. Leaving the scope of a
/// manager that started its server shuts the server down.
class BaseManager {
 public:
  explicit BaseManager(ManagerOptions options = {});
  BaseManager(std::optional<Address> address, std::optional<AuthenticationString> authkey)
      : BaseManager(ManagerOptions{std::move(address), std::move(authkey)}) {}
  ~BaseManager();
  BaseManager(BaseManager&&) noexcept;
  BaseManager& operator=(BaseManager&&) = delete;

  /// Serves T under `name` (Python's register(typeid, callable)); before start() or
  /// serve_forever(). A client that connect()s registers the same names. `Ctors` are the
  /// constructors a client of another program may call, e.g. `register_type<Counter,
  /// mp::Args<>, mp::Args<int>>("Counter")` (default: T() when it exists); within one build
  /// every create<T>(args...) of the program registers its own.
  template <class T, class... Ctors>
  void register_type(std::string name) {
    (void)detail::Served<T>::registered;
    if constexpr (sizeof...(Ctors) == 0) {
      if constexpr (std::is_default_constructible_v<T>) (void)detail::Constructor<T>::registered;
    } else {
      ((void)Ctors::template constructor<T>::registered, ...);
    }
    register_key(std::move(name), typeid(T).name());
  }

  /// Starts the server in a child process and connects to it; returns once it accepts.
  void start();
  /// Connects to a server already running at the address.
  void connect();
  /// Serves in this process until a client's shutdown() (Python's get_server().serve_forever()).
  void serve_forever();
  /// Stops the server this manager started (its objects go with it); idempotent, and nothing
  /// for a manager moved from.
  void shutdown();

  /// How many objects the server holds (CPython's _number_of_objects()).
  std::size_t number_of_objects();

  /// The server's address (known once started or connected).
  const Address& address() const;

  /// A new T on the server, constructed from `args` (as T(args...)); T must be registered.
  template <class T, class... A>
  Proxy<T> create(A&&... args) {
    using Ctor = detail::Constructor<T, std::decay_t<A>...>;
    (void)Ctor::registered;
    (void)detail::Served<T>::registered;
    static_assert(std::is_constructible_v<T, std::decay_t<A>...>,
                  "mp: create<T>(args...): T cannot be constructed from these arguments");
    const std::string& name = detail::Served<T>::standard() ? detail::Served<T>::ops().display
                                                            : name_of(typeid(T).name());
    return Proxy<T>(detail::create_object(session(), name, typeid(T).name(), Ctor::key(),
                                          detail::encode_args(args...)));
  }

 private:
  void register_key(std::string name, const char* key);
  const std::string& name_of(const char* key) const;
  std::shared_ptr<detail::Session> session();
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace mp

// The pieces of MP_METHODS: a table entry and a proxy member function per method name.
#define MP_METHODS_ENTRY_(Type, name) \
  ::mp::detail::MethodEntry{#name, &::mp::detail::invoke_method<&Type::name>},
#define MP_METHODS_PROXY_(Type, name)                                  \
  template <class... mp_A>                                             \
  auto name(mp_A&&... mp_a) const {                                    \
    return static_cast<const mp_P*>(this)->template call<&Type::name>( \
        #name, std::forward<mp_A>(mp_a)...);                           \
  }
#define MP_PARENS_ ()
#define MP_EXPAND_(...) MP_EXPAND3_(MP_EXPAND3_(MP_EXPAND3_(MP_EXPAND3_(__VA_ARGS__))))
#define MP_EXPAND3_(...) MP_EXPAND2_(MP_EXPAND2_(MP_EXPAND2_(MP_EXPAND2_(__VA_ARGS__))))
#define MP_EXPAND2_(...) MP_EXPAND1_(MP_EXPAND1_(MP_EXPAND1_(MP_EXPAND1_(__VA_ARGS__))))
#define MP_EXPAND1_(...) __VA_ARGS__
#define MP_FOR_EACH_(macro, Type, ...) \
  __VA_OPT__(MP_EXPAND_(MP_FOR_EACH_STEP_(macro, Type, __VA_ARGS__)))
#define MP_FOR_EACH_STEP_(macro, Type, first, ...) \
  macro(Type, first) __VA_OPT__(MP_FOR_EACH_AGAIN_ MP_PARENS_(macro, Type, __VA_ARGS__))
#define MP_FOR_EACH_AGAIN_() MP_FOR_EACH_STEP_

/// Inside a class served by a manager: `MP_METHODS(Counter, increment, get)` names the member
/// functions a Proxy<Counter> may call (one overload each). Leaves access public.
#define MP_METHODS(Type, ...)                          \
  MP_METHODS_TABLE(Type, __VA_ARGS__)                  \
  template <class mp_P>                                \
  struct mp_proxy_methods {                            \
    MP_FOR_EACH_(MP_METHODS_PROXY_, Type, __VA_ARGS__) \
  };

/// The served half of MP_METHODS alone, for a class that writes its proxy's member functions
/// itself (a nested `template <class P> struct mp_proxy_methods`, calling P::call<&Type::f>).
#define MP_METHODS_TABLE(Type, ...)                                                       \
 public:                                                                                  \
  static const auto& mp_methods() {                                                       \
    static const std::array mp_table{MP_FOR_EACH_(MP_METHODS_ENTRY_, Type, __VA_ARGS__)}; \
    return mp_table;                                                                      \
  }

#include "mp/shared_memory_manager.hpp"
#include "mp/sync_manager.hpp"
