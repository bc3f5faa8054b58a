// Queues between processes (Python's multiprocessing.queues): Queue, SimpleQueue,
// JoinableQueue. An item goes straight into a ring in shared memory (a memfd); there is no
// feeder thread and no pipe. Small items (up to 32 KiB) take no lock: a put claims its record
// and a get takes one by a compare-and-swap that names the thread. A queue is a handle: copies,
// and the copy a child gets as a Process argument (fork, spawn, forkserver, and on to
// grandchildren), are the same queue. Sending one through a Connection, or putting one in a
// queue, throws std::runtime_error("Queue objects should only be shared between processes
// through inheritance"), as CPython.
//
// Unlike CPython: once put() returns, the item is in the queue (empty() is false, get_nowait()
// finds it); a child that exits with items queued exits at once and they stay readable; a
// process SIGKILLed at any instant of a put or get loses at most the item it was moving, counted
// by lost(), and holds the others up for at most ~200 ms (its records name it: a survivor sees
// it gone and frees them). Items of any serializable type (cereal), trivially copyable ones by
// memcpy, std::string as its bytes; items over 32 KiB are copied whole through pages of the same
// memfd, given back once read. A blocked put or get spins 30 us, then sleeps on a futex; one put
// wakes at most one getter. Bounded queues (maxsize > 0) count exactly, under a lock.
#pragma once

#include <bit>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "mp/errors.hpp"
#include "mp/reduction.hpp"
#include "mp/synchronize.hpp"

namespace mp {

namespace detail {
struct QueueState;
struct QueueAccess;
struct QueueAccessImpl;
// get() hands an item's bytes to a sink: called once with the length, it returns where to write.
using ItemSink = void* (*)(void* ctx, std::size_t len);
// Or, for a large item when given, a piece at a time (`len`: the whole item's): a std::string
// then takes its bytes by append, without resize's zero-filling of a MiB first.
using ItemAppend = void (*)(void* ctx, std::size_t len, const void* piece, std::size_t n);

// The shared ring and its waiting, without the item type.
class QueueCore {
 public:
  using Duration = std::chrono::duration<double>;
  QueueCore(long maxsize, bool joinable);
  QueueCore() = default;  // a handle being loaded in a child
  // False when not done: full / empty (at once, or when the timeout ran out).
  // (The timeout by reference: an optional passed by value is written a byte at a time and
  // read whole, a store-forwarding stall on every call.)
  bool put(const void* data, std::size_t len, bool block, const std::optional<Duration>& timeout);
  bool get(ItemSink sink, void* ctx, bool block, const std::optional<Duration>& timeout,
           ItemAppend append = nullptr);
  long qsize() const;
  bool full() const;
  std::uint64_t lost() const;
  void task_done();
  void join();
  std::string name() const;
  const QueueState* state() const { return s_; }

  template <class Archive>
  void save(Archive& ar, const char* kind) const {
    ar(save_block(block_, kind), lock_);
  }
  template <class Archive>
  void load(Archive& ar) {
    BlockRef ref;
    ar(ref, lock_);
    adopt(ref);
  }

 private:
  void adopt(const BlockRef& ref);
  bool put_large(const void* data, std::size_t len,
                 const std::optional<std::chrono::steady_clock::time_point>& deadline);
  void map_window();
  std::byte* window(std::uint64_t off, std::uint64_t len) const;
  std::shared_ptr<SharedBlock> block_;
  QueueState* s_ = nullptr;
  // Large items' pages near the heap's base, mapped once in this process (their extents are
  // reused: no mapping, no page fault per item); nullptr when it could not be mapped.
  std::shared_ptr<std::byte> window_;
  mutable Lock lock_;  // large items' pages, bounded puts: short steps only, never a wait
  friend struct QueueAccess;
  friend struct QueueAccessImpl;
};

// An item as bytes: trivially copyable types as themselves, the rest through cereal.
template <class T>
inline constexpr bool kQueueMemcpy = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T>;

// std::string goes as its bytes: no archive, and a large one is copied once each way.
template <class T>
inline constexpr bool kQueueBytes = std::is_same_v<T, std::string>;

// An item's bytes into a std::string (ctx): at once, or by pieces.
inline void* string_sink(void* ctx, std::size_t len) {
  auto& b = *static_cast<std::string*>(ctx);
  b.resize(len);
  return b.data();
}
inline void string_append(void* ctx, std::size_t len, const void* piece, std::size_t n) {
  auto& b = *static_cast<std::string*>(ctx);
  if (b.capacity() < len) b.reserve(len);
  b.append(static_cast<const char*>(piece), n);
}

template <class T>
void check_queue_item() {
  static_assert(kQueueMemcpy<T> || reduction::Value<T>,
                "mp::Queue: the item type has no serializer; give it a cereal "
                "serialize(Archive&) function (or MP_FIELDS), or make it trivially copyable");
}
}  // namespace detail

/// A FIFO queue between processes and threads (multiprocessing.Queue), FIFO per producer.
/// maxsize <= 0: bounded only by the ring's 1 MiB (put blocks, never fails, while it is full).
template <class T>
class Queue {
 public:
  using Duration = std::chrono::duration<double>;
  explicit Queue(long maxsize = 0) : Queue(maxsize, false) {}

  /// Blocks while full (as long as it takes, or up to `timeout`: then mp::Full).
  void put(const T& item) { put(item, true, std::nullopt); }
  void put(const T& item, Duration timeout) { put(item, true, timeout); }
  /// CPython's put(item, block, timeout): not blocking, the timeout is ignored (mp::Full at once).
  void put(const T& item, bool block, std::optional<Duration> timeout = std::nullopt);
  void put_nowait(const T& item) { put(item, false); }
  /// Blocks while empty (up to `timeout`: then mp::Empty). FIFO per producer.
  T get() { return get(true, std::nullopt); }
  T get(Duration timeout) { return get(true, timeout); }
  T get(bool block, std::optional<Duration> timeout = std::nullopt);
  T get_nowait() { return get(false); }

  /// Items put and not yet got: exact while nobody is in the middle of a put or get (one being
  /// got counts until it is copied out).
  long qsize() const { return core_.qsize(); }
  bool empty() const { return qsize() == 0; }
  bool full() const { return core_.full(); }
  /// Items lost because a process died while moving them (mid-put or mid-get), or that could
  /// not be delivered (a get whose item could not be allocated). Looks for dead movers first:
  /// their records and a large item's pages are given back here.
  std::uint64_t lost() const { return core_.lost(); }

  /// This handle will put and get no more: both then throw std::logic_error("Queue <...> is
  /// closed"). Nothing is flushed: a returned put() is already in the queue. Idempotent.
  void close() { closed_ = true; }
  /// Returns at once after close() (there is no feeder thread to wait for); before it,
  /// std::logic_error("Queue <...> not closed").
  void join_thread() const {
    if (!closed_) throw std::logic_error("Queue " + repr() + " not closed");
  }
  /// Does nothing: a process never waits at exit for what it put.
  void cancel_join_thread() {}

  /// <mp.Queue 'mp-queue-PID-N'> (the name is the memfd's, as /proc/PID/fd shows it).
  std::string repr() const { return "<mp." + std::string(kind_) + " '" + core_.name() + "'>"; }

  template <class Archive>
  void save(Archive& ar) const {
    core_.save(ar, kind_);
  }
  template <class Archive>
  void load(Archive& ar) {
    core_.load(ar);
    closed_ = false;
  }

 protected:
  Queue(long maxsize, bool joinable, const char* kind = "Queue")
      : core_(maxsize, joinable), kind_(kind) {
    detail::check_queue_item<T>();
  }
  void check_open() const {
    if (closed_) throw std::logic_error("Queue " + repr() + " is closed");
  }
  detail::QueueCore core_;
  const char* kind_ = "Queue";
  bool closed_ = false;
  friend struct detail::QueueAccess;
};

/// A Queue whose consumers report each item done (multiprocessing.JoinableQueue).
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  explicit JoinableQueue(long maxsize = 0) : Queue<T>(maxsize, true, "JoinableQueue") {}
  /// One got item is processed. More calls than items put: std::logic_error("task_done() called
  /// too many times").
  void task_done() { this->core_.task_done(); }
  /// Blocks until every item put has been task_done().
  void join() { this->core_.join(); }
};

/// An unbounded queue with only put, get, empty and close (multiprocessing.SimpleQueue). After
/// close(), every call throws std::logic_error("handle is closed"), as CPython's OSError.
template <class T>
class SimpleQueue {
 public:
  SimpleQueue() : q_(0) {}
  void put(const T& item) { check_open(), q_.put(item); }
  T get() { return check_open(), q_.get(); }
  bool empty() const { return check_open(), q_.empty(); }
  void close() { closed_ = true; }

  template <class Archive>
  void save(Archive& ar) const {
    q_.save(ar);
  }
  template <class Archive>
  void load(Archive& ar) {
    q_.load(ar);
    closed_ = false;
  }

 private:
  struct Inner : Queue<T> {
    explicit Inner(long maxsize) : Queue<T>(maxsize, false, "SimpleQueue") {}
  };
  void check_open() const {
    if (closed_) throw std::logic_error("handle is closed");
  }
  Inner q_;
  bool closed_ = false;
};

// ---- implementation ----

template <class T>
void Queue<T>::put(const T& item, bool block, std::optional<Duration> timeout) {
  check_open();
  bool done;
  if constexpr (detail::kQueueMemcpy<T>) {
    done = core_.put(&item, sizeof(T), block, timeout);
  } else if constexpr (detail::kQueueBytes<T>) {
    done = core_.put(item.data(), item.size(), block, timeout);
  } else {
    std::string bytes;
    {
      reduction::OutArchive ar(bytes);
      ar(item);
    }
    done = core_.put(bytes.data(), bytes.size(), block, timeout);
  }
  if (!done) throw Full();
}

template <class T>
T Queue<T>::get(bool block, std::optional<Duration> timeout) {
  check_open();
  if constexpr (detail::kQueueMemcpy<T>) {
    struct Slot {
      alignas(T) unsigned char bytes[sizeof(T)];
    } slot;
    detail::ItemSink sink = [](void* ctx, std::size_t len) -> void* {
      if (len != sizeof(T)) throw ProcessError("mp::Queue: an item of the wrong size");
      return ctx;
    };
    if (!core_.get(sink, slot.bytes, block, timeout)) throw Empty();
    return std::bit_cast<T>(slot);
  } else if constexpr (detail::kQueueBytes<T>) {
    T item;
    if (!core_.get(detail::string_sink, &item, block, timeout, detail::string_append))
      throw Empty();
    return item;
  } else {
    std::string bytes;
    if (!core_.get(detail::string_sink, &bytes, block, timeout, detail::string_append))
      throw Empty();
    // The pickle layer checks every length against the record's bytes: a corrupted record is
    // a PicklingError, never a giant allocation.
    reduction::InArchive ar{std::string_view(bytes)};
    T item{};
    ar(item);
    return item;
  }
}

}  // namespace mp
