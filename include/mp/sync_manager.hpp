// The SyncManager (Python's multiprocessing.Manager()): a manager that serves the standard
// shared objects, dict, list, Namespace, Value, Array, Queue and the locks, with proxies whose
// member functions have the local types' names and meanings.
//
//   mp::SyncManager manager = mp::Manager();           // started: the server is a child
//   auto d = manager.dict<std::string, int>();         // mp::DictProxy<std::string, int>
//   d.set("hits", 0);
//   d.update_with("hits", [](int n) { return n + 1; });  // one call, run on the server
//   auto lock = manager.Lock();                        // released if its holder dies
//
// Included by <mp/managers.hpp>.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mp/errors.hpp"
#include "mp/managers.hpp"
#include "mp/reduction.hpp"

#include <cereal/types/utility.hpp>

namespace mp {

/// A dict proxy's missing key (Python's KeyError): what() names the key when it prints.
class KeyError : public std::out_of_range {
 public:
  using std::out_of_range::out_of_range;
};

namespace detail {
std::string this_build_id();
// Throws PicklingError unless `build` is this program's build-id.
void check_same_build(const std::string& build);

}  // namespace detail

/// A function of this build, by reference: what update_with() sends the server to run there.
/// Crosses only to a process of the same build (build-id checked); a plain function or a
/// captureless lambda converts to it.
template <class Signature>
class FunctionRef;
template <class R, class... A>
class FunctionRef<R(A...)> {
 public:
  FunctionRef() = default;
  FunctionRef(R (*f)(A...)) : f_(f) {}  // NOLINT: converts like a function pointer
  template <class F>
  requires(std::is_empty_v<F>&& std::is_convertible_v<F, R (*)(A...)>) FunctionRef(F f)
      : f_(static_cast<R (*)(A...)>(f)) {}  // NOLINT
  R operator()(A... a) const { return f_(std::move(a)...); }

  template <class Archive>
  void save(Archive& ar) const {
    ar(detail::this_build_id());
    reduction::save_code(ar, reinterpret_cast<const void*>(f_));
  }
  template <class Archive>
  void load(Archive& ar) {
    std::string build;
    ar(build);
    detail::check_same_build(build);
    f_ = reinterpret_cast<R (*)(A...)>(const_cast<void*>(reduction::load_code(ar)));
  }

 private:
  R (*f_)(A...) = nullptr;
};

namespace detail {
// A served standard type's timeout on the wire: seconds, negative for none.
inline double wire_timeout(std::optional<Duration> t) {
  return t ? std::max(t->count(), 0.0) : -1;
}
}  // namespace detail

namespace managed {

// The served objects: each lives on the server, its methods run there. Proxies below.

template <class K, class V>
class Dict {
 public:
  static constexpr bool mp_standard = true;
  V get(const K& key) const {
    auto it = map_.find(key);
    if (it == map_.end()) throw KeyError("KeyError: the key is not in the dict");
    return it->second;
  }
  V get_or(const K& key, const V& otherwise) const {
    auto it = map_.find(key);
    return it == map_.end() ? otherwise : it->second;
  }
  void set(const K& key, const V& value) { map_[key] = value; }
  bool contains(const K& key) const { return map_.count(key) != 0; }
  void erase(const K& key) {
    if (!map_.erase(key)) throw KeyError("KeyError: the key is not in the dict");
  }
  V pop(const K& key) {
    V v = get(key);
    map_.erase(key);
    return v;
  }
  std::vector<K> keys() const {
    std::vector<K> out;
    for (const auto& kv : map_) out.push_back(kv.first);
    return out;
  }
  std::vector<V> values() const {
    std::vector<V> out;
    for (const auto& kv : map_) out.push_back(kv.second);
    return out;
  }
  std::vector<std::pair<K, V>> items() const { return {map_.begin(), map_.end()}; }
  void update(const std::vector<std::pair<K, V>>& items) {
    for (const auto& [k, v] : items) map_[k] = v;
  }
  std::size_t size() const { return map_.size(); }
  void clear() { map_.clear(); }
  V update_with(const K& key, FunctionRef<V(V)> f) {
    auto it = map_.try_emplace(key).first;
    it->second = f(std::move(it->second));
    return it->second;
  }
  MP_METHODS_TABLE(Dict, get, get_or, set, contains, erase, pop, keys, values, items, update, size,
                   clear, update_with)
  template <class P>
  struct mp_proxy_methods {
    /// d[key]; mp::KeyError if absent.
    V get(const K& key) const { return self().template call<&Dict::get>("get", key); }
    /// d.get(key, otherwise).
    V get_or(const K& key, const V& otherwise) const {
      return self().template call<&Dict::get_or>("get_or", key, otherwise);
    }
    void set(const K& key, const V& value) const {
      self().template call<&Dict::set>("set", key, value);
    }
    bool contains(const K& key) const {
      return self().template call<&Dict::contains>("contains", key);
    }
    /// del d[key]; mp::KeyError if absent.
    void erase(const K& key) const { self().template call<&Dict::erase>("erase", key); }
    V pop(const K& key) const { return self().template call<&Dict::pop>("pop", key); }
    std::vector<K> keys() const { return self().template call<&Dict::keys>("keys"); }
    std::vector<V> values() const { return self().template call<&Dict::values>("values"); }
    std::vector<std::pair<K, V>> items() const {
      return self().template call<&Dict::items>("items");
    }
    void update(const std::vector<std::pair<K, V>>& items) const {
      self().template call<&Dict::update>("update", items);
    }
    std::size_t size() const { return self().template call<&Dict::size>("size"); }
    void clear() const { self().template call<&Dict::clear>("clear"); }
    /// d[key] = f(d[key]) (from V{} when absent) in one call on the server; the new value.
    V update_with(const K& key, FunctionRef<V(V)> f) const {
      return self().template call<&Dict::update_with>("update_with", key, f);
    }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  std::map<K, V> map_;
};

template <class T>
class List {
 public:
  static constexpr bool mp_standard = true;
  List() = default;
  explicit List(std::vector<T> items) : items_(std::move(items)) {}
  void append(const T& item) { items_.push_back(item); }
  void extend(const std::vector<T>& items) {
    items_.insert(items_.end(), items.begin(), items.end());
  }
  T get(std::int64_t index) const { return items_[at(index)]; }
  void set(std::int64_t index, const T& item) { items_[at(index)] = item; }
  void insert(std::int64_t index, const T& item) {
    const auto n = static_cast<std::int64_t>(items_.size());
    index = std::clamp(index < 0 ? index + n : index, std::int64_t{0}, n);
    items_.insert(items_.begin() + index, item);
  }
  T pop(std::int64_t index) {
    if (items_.empty()) throw std::out_of_range("pop from empty list");
    const std::size_t i = at(index);
    T item = std::move(items_[i]);
    items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(i));
    return item;
  }
  std::vector<T> items() const { return items_; }
  std::size_t size() const { return items_.size(); }
  void clear() { items_.clear(); }
  MP_METHODS_TABLE(List, append, extend, get, set, insert, pop, items, size, clear)
  template <class P>
  struct mp_proxy_methods {
    void append(const T& item) const { self().template call<&List::append>("append", item); }
    void extend(const std::vector<T>& items) const {
      self().template call<&List::extend>("extend", items);
    }
    T get(std::int64_t i) const { return self().template call<&List::get>("get", i); }
    void set(std::int64_t i, const T& item) const {
      self().template call<&List::set>("set", i, item);
    }
    void insert(std::int64_t i, const T& item) const {
      self().template call<&List::insert>("insert", i, item);
    }
    /// The item at `i` (default: the last), removed.
    T pop(std::int64_t i = -1) const { return self().template call<&List::pop>("pop", i); }
    std::vector<T> items() const { return self().template call<&List::items>("items"); }
    std::size_t size() const { return self().template call<&List::size>("size"); }
    void clear() const { self().template call<&List::clear>("clear"); }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  std::size_t at(std::int64_t index) const {
    const auto n = static_cast<std::int64_t>(items_.size());
    if (index < 0) index += n;
    if (index < 0 || index >= n) throw std::out_of_range("list index out of range");
    return static_cast<std::size_t>(index);
  }
  std::vector<T> items_;
};

template <class T>
class Value {
 public:
  static constexpr bool mp_standard = true;
  Value() = default;
  explicit Value(T value) : value_(std::move(value)) {}
  T get() const { return value_; }
  void set(const T& value) { value_ = value; }
  T update_with(FunctionRef<T(T)> f) { return value_ = f(std::move(value_)); }
  MP_METHODS(Value, get, set, update_with)

 private:
  T value_{};
};

template <class T>
class Array {
 public:
  static constexpr bool mp_standard = true;
  Array() = default;
  explicit Array(std::vector<T> items) : items_(std::move(items)) {}
  T get(std::size_t i) const { return items_.at(check(i)); }
  void set(std::size_t i, const T& v) { items_.at(check(i)) = v; }
  std::size_t size() const { return items_.size(); }
  std::vector<T> items() const { return items_; }
  MP_METHODS(Array, get, set, size, items)

 private:
  std::size_t check(std::size_t i) const {
    if (i >= items_.size()) throw std::out_of_range("array index out of range");
    return i;
  }
  std::vector<T> items_;
};

// A Namespace's attributes: each value kept as its bytes and its type's name (the server
// decodes neither).
class Namespace {
 public:
  static constexpr bool mp_standard = true;
  void set_raw(const std::string& name, const std::string& type, const std::string& bytes);
  std::pair<std::string, std::string> get_raw(const std::string& name) const;
  bool contains(const std::string& name) const;
  void erase(const std::string& name);
  std::vector<std::string> names() const;
  MP_METHODS_TABLE(Namespace, set_raw, get_raw, contains, erase, names)
  template <class P>
  struct mp_proxy_methods {
    template <class V>
    void set(const std::string& name, const V& value) const {
      std::string bytes;
      {
        reduction::OutArchive ar(bytes);
        ar(value);
      }
      self().template call<&Namespace::set_raw>("set_raw", name, reduction::type_name<V>(), bytes);
    }
    /// The attribute as a V: std::logic_error if it holds another type; mp::KeyError if absent.
    template <class V>
    V get(const std::string& name) const {
      auto [type, bytes] = self().template call<&Namespace::get_raw>("get_raw", name);
      if (type != reduction::type_name<V>())
        throw std::logic_error("Namespace: '" + name + "' holds a " + type + ", not a " +
                               reduction::type_name<V>());
      V v{};
      reduction::InArchive in(bytes);
      in(v);
      return v;
    }
    bool contains(const std::string& name) const {
      return self().template call<&Namespace::contains>("contains", name);
    }
    void erase(const std::string& name) const {
      self().template call<&Namespace::erase>("erase", name);
    }
    std::vector<std::string> names() const {
      return self().template call<&Namespace::names>("names");
    }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  std::map<std::string, std::pair<std::string, std::string>> attributes_;
};

// What the blocking types share: a mutex and a condition that the end of a caller's client
// also wakes (its wait then gives up, taking nothing).
class Waitable {
 public:
  static constexpr bool mp_concurrent = true;
  static constexpr bool mp_standard = true;

 protected:
  using Guard = std::unique_lock<std::mutex>;
  // Waits until ready() or the timeout (seconds, negative: none); false on timeout. Throws
  // CancelledError when the caller's client has gone.
  template <class Ready>
  bool wait(Guard& l, double timeout, Ready ready) {
    const auto& call = detail::current_call();
    auto done = [&] { return ready() || call.client_gone(); };
    bool ok = true;
    if (timeout < 0)
      cv_.wait(l, done);
    else
      ok = cv_.wait_for(l, std::chrono::duration<double>(timeout), done);
    if (call.client_gone()) throw CancelledError();
    return ok && ready();
  }
  void wake_all() { cv_.notify_all(); }
  mutable std::mutex mu_;

 private:
  std::condition_variable cv_;
};

template <class T>
class Queue : public Waitable {
 public:
  explicit Queue(std::int64_t maxsize = 0) : maxsize_(maxsize) {}
  void put(const T& item, bool block, double timeout) {
    Guard l(mu_);
    if (!wait(l, block ? timeout : 0, [&] { return !is_full(); })) throw Full();
    items_.push_back(item);
    ++unfinished_;
    wake_all();
  }
  T get(bool block, double timeout) {
    Guard l(mu_);
    if (!wait(l, block ? timeout : 0, [&] { return !items_.empty(); })) throw Empty();
    T item = std::move(items_.front());
    items_.pop_front();
    wake_all();
    return item;
  }
  std::size_t qsize() const {
    Guard l(mu_);
    return items_.size();
  }
  bool empty() const { return qsize() == 0; }
  bool full() const {
    Guard l(mu_);
    return is_full();
  }
  void task_done() {
    Guard l(mu_);
    if (unfinished_ == 0) throw std::logic_error("task_done() called too many times");
    if (--unfinished_ == 0) wake_all();
  }
  bool join(double timeout) {
    Guard l(mu_);
    return wait(l, timeout, [&] { return unfinished_ == 0; });
  }
  void mp_client_gone(std::uint64_t) {
    Guard l(mu_);
    wake_all();
  }
  MP_METHODS_TABLE(Queue, put, get, qsize, empty, full, task_done, join)
  template <class P>
  struct mp_proxy_methods {
    void put(const T& item) const { self().template call<&Queue::put>("put", item, true, -1.0); }
    void put(const T& item, Duration timeout) const {
      self().template call<&Queue::put>("put", item, true, detail::wire_timeout(timeout));
    }
    void put_nowait(const T& item) const {
      self().template call<&Queue::put>("put", item, false, 0.0);
    }
    T get() const { return self().template call<&Queue::get>("get", true, -1.0); }
    T get(Duration timeout) const {
      return self().template call<&Queue::get>("get", true, detail::wire_timeout(timeout));
    }
    T get_nowait() const { return self().template call<&Queue::get>("get", false, 0.0); }
    std::size_t qsize() const { return self().template call<&Queue::qsize>("qsize"); }
    bool empty() const { return self().template call<&Queue::empty>("empty"); }
    bool full() const { return self().template call<&Queue::full>("full"); }
    /// JoinableQueue: one get()'s item is done.
    void task_done() const { self().template call<&Queue::task_done>("task_done"); }
    /// JoinableQueue: waits until every item put has been task_done(); false on timeout.
    bool join(std::optional<Duration> timeout = std::nullopt) const {
      return self().template call<&Queue::join>("join", detail::wire_timeout(timeout));
    }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  bool is_full() const {
    return maxsize_ > 0 && items_.size() >= static_cast<std::size_t>(maxsize_);
  }
  std::int64_t maxsize_;
  std::deque<T> items_;
  std::size_t unfinished_ = 0;
};

// Lock and RLock: the holder is a thread of a client; a client that dies holding it releases
// it, and the next holder's owner_died() is true.
class Lock : public Waitable {
 public:
  explicit Lock(bool recursive = false) : recursive_(recursive) {}
  bool acquire(bool block, double timeout);
  void release();
  bool locked() const;
  bool owner_died() const;
  void mp_client_gone(std::uint64_t client);
  MP_METHODS_TABLE(Lock, acquire, release, locked, owner_died)
  template <class P>
  struct mp_proxy_methods {
    /// As mp::Lock::acquire: false when not acquired within the timeout (or at once).
    bool acquire(bool block = true, std::optional<Duration> timeout = std::nullopt) const {
      return self().template call<&Lock::acquire>("acquire", block, detail::wire_timeout(timeout));
    }
    void release() const { self().template call<&Lock::release>("release"); }
    void lock() const { acquire(); }
    bool try_lock() const { return acquire(false); }
    void unlock() const { release(); }
    bool locked() const { return self().template call<&Lock::locked>("locked"); }
    /// True while the caller holds it after taking it from a client that died holding it.
    bool owner_died() const { return self().template call<&Lock::owner_died>("owner_died"); }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  friend class Condition;
  bool mine() const;
  bool recursive_;
  std::uint64_t client_ = 0, thread_ = 0;  // the holder (client 0: none)
  std::size_t count_ = 0;
  bool died_ = false;        // the last holder died holding it
  bool owner_died_ = false;  // the present holder took it from a dead one
};

class Semaphore : public Waitable {
 public:
  explicit Semaphore(std::int64_t value = 1, bool bounded = false);
  bool acquire(bool block, double timeout);
  void release();
  std::int64_t get_value() const;
  void mp_client_gone(std::uint64_t);
  MP_METHODS_TABLE(Semaphore, acquire, release, get_value)
  template <class P>
  struct mp_proxy_methods {
    bool acquire(bool block = true, std::optional<Duration> timeout = std::nullopt) const {
      return self().template call<&Semaphore::acquire>("acquire", block,
                                                       detail::wire_timeout(timeout));
    }
    /// A BoundedSemaphore's release past its initial value: std::logic_error.
    void release() const { self().template call<&Semaphore::release>("release"); }
    std::int64_t get_value() const {
      return self().template call<&Semaphore::get_value>("get_value");
    }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  std::int64_t value_, initial_;
  bool bounded_;
};

// Over its own RLock, as Python's threading.Condition() (what Manager().Condition() serves).
class Condition : public Waitable {
 public:
  bool acquire(bool block, double timeout);
  void release();
  bool wait(double timeout);
  void notify(std::size_t n);
  void notify_all();
  void mp_client_gone(std::uint64_t client);
  MP_METHODS_TABLE(Condition, acquire, release, wait, notify, notify_all)
  template <class P>
  struct mp_proxy_methods {
    bool acquire(bool block = true, std::optional<Duration> timeout = std::nullopt) const {
      return self().template call<&Condition::acquire>("acquire", block,
                                                       detail::wire_timeout(timeout));
    }
    void release() const { self().template call<&Condition::release>("release"); }
    void lock() const { acquire(); }
    void unlock() const { release(); }
    /// Releases the lock, waits for a notify or the timeout, takes the lock back; false on
    /// timeout. Without the lock: std::logic_error, as mp::Condition.
    bool wait(std::optional<Duration> timeout = std::nullopt) const {
      return self().template call<&Condition::wait>("wait", detail::wire_timeout(timeout));
    }
    void notify(std::size_t n = 1) const { self().template call<&Condition::notify>("notify", n); }
    void notify_all() const { self().template call<&Condition::notify_all>("notify_all"); }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  bool take(Guard& l, bool block, double timeout, std::size_t count);
  bool mine() const;
  std::uint64_t client_ = 0, thread_ = 0;
  std::size_t count_ = 0;
  std::uint64_t next_ticket_ = 0;
  std::deque<std::uint64_t> waiting_;  // tickets not yet notified, oldest first
};

class Event : public Waitable {
 public:
  void set();
  void clear();
  bool is_set() const;
  bool wait(double timeout);
  void mp_client_gone(std::uint64_t);
  MP_METHODS_TABLE(Event, set, clear, is_set, wait)
  template <class P>
  struct mp_proxy_methods {
    void set() const { self().template call<&Event::set>("set"); }
    void clear() const { self().template call<&Event::clear>("clear"); }
    bool is_set() const { return self().template call<&Event::is_set>("is_set"); }
    /// True once set; false when the timeout ran out first.
    bool wait(std::optional<Duration> timeout = std::nullopt) const {
      return self().template call<&Event::wait>("wait", detail::wire_timeout(timeout));
    }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  bool set_ = false;
};

// A client that dies waiting breaks the round, as a timeout does.
class Barrier : public Waitable {
 public:
  explicit Barrier(std::size_t parties = 1);
  std::size_t wait(double timeout);
  void reset();
  void abort();
  std::size_t parties() const;
  std::size_t n_waiting() const;
  bool broken() const;
  void mp_client_gone(std::uint64_t);
  MP_METHODS_TABLE(Barrier, wait, reset, abort, parties, n_waiting, broken)
  template <class P>
  struct mp_proxy_methods {
    /// This party's arrival index, 0 .. parties-1; mp::BrokenBarrierError if the round breaks.
    std::size_t wait(std::optional<Duration> timeout = std::nullopt) const {
      return self().template call<&Barrier::wait>("wait", detail::wire_timeout(timeout));
    }
    void reset() const { self().template call<&Barrier::reset>("reset"); }
    void abort() const { self().template call<&Barrier::abort>("abort"); }
    std::size_t parties() const { return self().template call<&Barrier::parties>("parties"); }
    std::size_t n_waiting() const { return self().template call<&Barrier::n_waiting>("n_waiting"); }
    bool broken() const { return self().template call<&Barrier::broken>("broken"); }

   private:
    const P& self() const { return static_cast<const P&>(*this); }
  };

 private:
  void break_round(Guard& l);
  // A round's outcome, which its waiters read once it is over.
  struct Round {
    bool released = false;
    bool broken = false;
  };
  std::size_t parties_;
  std::size_t count_ = 0;  // arrived in this round
  std::shared_ptr<Round> round_ = std::make_shared<Round>();
  bool broken_ = false;  // until reset()
};

}  // namespace managed

template <class K, class V>
using DictProxy = Proxy<managed::Dict<K, V>>;
template <class T>
using ListProxy = Proxy<managed::List<T>>;
template <class T>
using ValueProxy = Proxy<managed::Value<T>>;
template <class T>
using ArrayProxy = Proxy<managed::Array<T>>;
using NamespaceProxy = Proxy<managed::Namespace>;
template <class T>
using QueueProxy = Proxy<managed::Queue<T>>;
using LockProxy = Proxy<managed::Lock>;
using SemaphoreProxy = Proxy<managed::Semaphore>;
using ConditionProxy = Proxy<managed::Condition>;
using EventProxy = Proxy<managed::Event>;
using BarrierProxy = Proxy<managed::Barrier>;

/// Python's SyncManager: a BaseManager that also serves the standard objects (no
/// register_type needed for them). Its types are served by any program of this build; a
/// server in another program serves a dict<K, V> once that program uses the same one.
class SyncManager : public BaseManager {
 public:
  using BaseManager::BaseManager;

  template <class K, class V>
  DictProxy<K, V> dict() {
    return create<managed::Dict<K, V>>();
  }
  template <class T>
  ListProxy<T> list(std::vector<T> items = {}) {
    return create<managed::List<T>>(std::move(items));
  }
  NamespaceProxy Namespace() { return create<managed::Namespace>(); }
  template <class T>
  ValueProxy<T> Value(T value = T{}) {
    return create<managed::Value<T>>(std::move(value));
  }
  template <class T>
  ArrayProxy<T> Array(std::vector<T> items) {
    return create<managed::Array<T>>(std::move(items));
  }
  template <class T>
  ArrayProxy<T> Array(std::size_t n) {
    return create<managed::Array<T>>(std::vector<T>(n));
  }
  /// maxsize 0 or less: unbounded. Its get_nowait()/put_nowait() throw mp::Empty / mp::Full.
  template <class T>
  QueueProxy<T> Queue(std::int64_t maxsize = 0) {
    return create<managed::Queue<T>>(maxsize);
  }
  template <class T>
  QueueProxy<T> JoinableQueue(std::int64_t maxsize = 0) {
    return create<managed::Queue<T>>(maxsize);
  }
  LockProxy Lock() { return create<managed::Lock>(false); }
  LockProxy RLock() { return create<managed::Lock>(true); }
  SemaphoreProxy Semaphore(std::int64_t value = 1) {
    return create<managed::Semaphore>(value, false);
  }
  SemaphoreProxy BoundedSemaphore(std::int64_t value = 1) {
    return create<managed::Semaphore>(value, true);
  }
  ConditionProxy Condition() { return create<managed::Condition>(); }
  EventProxy Event() { return create<managed::Event>(); }
  BarrierProxy Barrier(std::size_t parties) { return create<managed::Barrier>(parties); }
};

/// A started SyncManager (Python's multiprocessing.Manager()).
SyncManager Manager(ManagerOptions options = {});

}  // namespace mp
