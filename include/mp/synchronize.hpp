// Process-shared synchronisation (Python's multiprocessing.synchronize): Lock, RLock,
// Semaphore, BoundedSemaphore, Condition, Event, Barrier. Each object is a handle to state in
// shared memory: copies, and the copy a child gets as a Process argument (under fork, spawn
// and forkserver), refer to the same primitive. Timeouts are std::chrono durations; zero or
// negative means "just try", none means "wait as long as it takes".
//
// Unlike CPython, a Lock or RLock whose holder dies (a crash, SIGKILL) is not lost: the next
// blocking acquire takes it over within kDeadHolderCheck and owner_died() then tells the new
// holder that what the lock guarded may be half-updated.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>
#include <stdexcept>

#include "mp/reduction.hpp"

namespace mp {

/// A Barrier was aborted, reset, or a party timed out (threading.BrokenBarrierError).
class BrokenBarrierError : public std::runtime_error {
 public:
  BrokenBarrierError() : std::runtime_error("BrokenBarrierError") {}
};

/// How often a blocked acquire looks whether the holder of a Lock or RLock is still alive.
inline constexpr std::chrono::milliseconds kDeadHolderCheck{50};

class Condition;

namespace detail {
struct SharedBlock;  // a piece of a shared arena (a memfd), the same in every process
struct MutexState;
struct SemaphoreState;
struct ConditionState;
struct EventState;
struct BarrierState;
// Where a primitive lives, as a spawned child finds it: the descriptor of the shared arena
// holding it (handed over) and its offset there.
struct BlockRef {
  int index = -1;
  std::uint64_t offset = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(index, offset);
  }
};
// Outside spawning: CPython's RuntimeError("<kind> objects should only be shared between
// processes through inheritance").
BlockRef save_block(const std::shared_ptr<SharedBlock>& block, const char* kind);
std::shared_ptr<SharedBlock> load_block(const BlockRef& ref, void*& state);
// Reads a BlockRef and maps what it names: a handle's block and its typed state.
template <class State, class Archive>
void load_state(Archive& ar, std::shared_ptr<SharedBlock>& block, State*& state) {
  BlockRef ref;
  ar(ref);
  void* p = nullptr;
  block = load_block(ref, p);
  state = static_cast<State*>(p);
}
// A zero-filled block of `bytes` for data (Value, Array); `data` points at it.
std::shared_ptr<SharedBlock> make_data_block(std::size_t bytes, const char* name, void*& data);
// The memfd holding `block` (a queue places its large items in that file, beyond the block).
int block_descriptor(const std::shared_ptr<SharedBlock>& block);

// What Lock and RLock have in common (Condition works with either).
class MutexHandle {
 public:
  using Duration = std::chrono::duration<double>;
  /// Blocks (or not) until acquired; false when not acquired within the timeout.
  // Inline, so that the usual call (blocking, no timeout) passes no std::optional<double>:
  // GCC passes one through the stack and reloads it at a store-forwarding stall, which cost
  // more than the uncontended acquire itself (bench/sync: 19 ns against 7 ns a lock+unlock).
  bool acquire(bool block = true, std::optional<Duration> timeout = std::nullopt) {
    return block && !timeout ? acquire_blocking() : acquire_timed(block, timeout);
  }
  void release();
  /// std::lock_guard / std::unique_lock / std::scoped_lock use.
  void lock() { acquire(); }
  bool try_lock() { return acquire(false); }
  void unlock() { release(); }
  /// True while the caller holds a lock it took over from a holder that died holding it.
  bool owner_died() const;
  /// Whether the calling thread holds it (CPython's _is_mine).
  bool is_mine() const;
  const MutexState* state() const { return s_; }
  /// Crossing to a spawned child: the same lock there.
  template <class Archive>
  void save(Archive& ar) const {
    ar(save_block(block_, recursive() ? "RLock" : "Lock"));
  }
  template <class Archive>
  void load(Archive& ar) {
    load_state(ar, block_, s_);
  }

 protected:
  MutexHandle(bool recursive);
  MutexHandle() = default;
  bool acquire_blocking();
  bool acquire_timed(bool block, std::optional<Duration> timeout);
  bool recursive() const;
  std::shared_ptr<SharedBlock> block_;
  MutexState* s_ = nullptr;
  friend class mp::Condition;
};
}  // namespace detail

/// A non-recursive lock (multiprocessing.Lock). Any thread or process may release it, as in
/// CPython; releasing it when free throws std::logic_error("semaphore or lock released too
/// many times").
class Lock : public detail::MutexHandle {
 public:
  Lock() : MutexHandle(false) {}
  /// <Lock(owner=None)>, <Lock(owner=MainProcess)>, <Lock(owner=SomeOtherProcess)>, ...
  friend std::ostream& operator<<(std::ostream& os, const Lock& l);
};

/// A recursive lock (multiprocessing.RLock): the holding thread may acquire it again; only it
/// may release it (else std::logic_error("attempt to release recursive lock not owned by
/// thread")).
class RLock : public detail::MutexHandle {
 public:
  RLock() : MutexHandle(true) {}
  /// <RLock(None, 0)>, <RLock(MainProcess, 2)>, <RLock(SomeOtherProcess, nonzero)>
  friend std::ostream& operator<<(std::ostream& os, const RLock& l);
};

/// A counting semaphore (multiprocessing.Semaphore); bounded: BoundedSemaphore.
class Semaphore {
 public:
  using Duration = std::chrono::duration<double>;
  /// Throws std::invalid_argument("semaphore initial value must be >= 0") for a negative value.
  explicit Semaphore(int value = 1);
  // Inline for the same reason as MutexHandle::acquire.
  bool acquire(bool block = true, std::optional<Duration> timeout = std::nullopt) {
    return block && !timeout ? acquire_blocking() : acquire_timed(block, timeout);
  }
  /// Over the bound of a BoundedSemaphore: std::logic_error("semaphore or lock released too
  /// many times").
  void release();
  void lock() { acquire(); }
  bool try_lock() { return acquire(false); }
  void unlock() { release(); }
  int get_value() const;
  /// <Semaphore(value=0)>, <BoundedSemaphore(value=2, maxvalue=2)>
  friend std::ostream& operator<<(std::ostream& os, const Semaphore& s);
  template <class Archive>
  void save(Archive& ar) const {
    ar(detail::save_block(block_, bounded() ? "BoundedSemaphore" : "Semaphore"));
  }
  template <class Archive>
  void load(Archive& ar) {
    detail::load_state(ar, block_, s_);
  }

 protected:
  Semaphore(int value, int maxvalue);
  bool bounded() const;

 private:
  bool acquire_blocking();
  bool acquire_timed(bool block, std::optional<Duration> timeout);

 private:
  std::shared_ptr<detail::SharedBlock> block_;
  detail::SemaphoreState* s_ = nullptr;
};

/// A semaphore that may not be released above its initial value.
class BoundedSemaphore : public Semaphore {
 public:
  explicit BoundedSemaphore(int value = 1) : Semaphore(value, value) {}
};

/// A condition variable over a Lock or RLock (multiprocessing.Condition). notify(n) wakes n
/// waiters that are still alive (a waiter that died does not swallow a notification).
class Condition {
 public:
  using Duration = std::chrono::duration<double>;
  /// Over a new RLock.
  Condition();
  explicit Condition(const Lock& lock);
  explicit Condition(const RLock& lock);

  bool acquire(bool block = true, std::optional<Duration> timeout = std::nullopt) {
    return lock_.acquire(block, timeout);
  }
  void release() { lock_.release(); }
  void lock() { lock_.acquire(); }
  bool try_lock() { return lock_.acquire(false); }
  void unlock() { lock_.release(); }
  /// The lock's owner_died(): true while this process holds it after taking it over from a
  /// holder that died (the state it guarded may be half-changed).
  bool owner_died() const { return lock_.owner_died(); }

  /// Releases the lock (every level of an RLock), waits for a notify or the timeout, takes the
  /// lock back. False on timeout. Without the lock: std::logic_error("must acquire()
  /// condition before using wait()").
  bool wait(std::optional<Duration> timeout = std::nullopt);
  /// Waits until pred() is true; false if the timeout ran out first.
  template <class Pred>
  bool wait_for(Pred pred, std::optional<Duration> timeout = std::nullopt);
  /// Wakes up to n waiters. Without the lock: std::logic_error("lock is not owned").
  void notify(int n = 1);
  void notify_all();
  /// <Condition(<RLock(None, 0)>, 0)>: the lock and the number of waiters.
  friend std::ostream& operator<<(std::ostream& os, const Condition& c);

  template <class Archive>
  void save(Archive& ar) const {
    ar(detail::save_block(block_, "Condition"), recursive_);
    ar(detail::save_block(lock_.block_, "Condition"));
  }
  template <class Archive>
  void load(Archive& ar) {
    detail::load_state(ar, block_, s_);
    ar(recursive_);
    detail::load_state(ar, lock_.block_, lock_.s_);
  }

 private:
  std::shared_ptr<detail::SharedBlock> block_;
  detail::ConditionState* s_ = nullptr;
  detail::MutexHandle lock_;  // a Lock or an RLock, as recursive_ says
  bool recursive_ = true;
};

template <class Pred>
bool Condition::wait_for(Pred pred, std::optional<Duration> timeout) {
  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> deadline;
  if (timeout) deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(*timeout);
  bool result = pred();
  while (!result) {
    std::optional<Duration> left;
    if (deadline) {
      left = *deadline - Clock::now();
      if (*left <= Duration::zero()) break;
    }
    wait(left);
    result = pred();
  }
  return result;
}

/// A flag processes wait for (multiprocessing.Event).
class Event {
 public:
  using Duration = std::chrono::duration<double>;
  Event();
  bool is_set() const;
  void set();
  void clear();
  /// True once set (at once if it is); false when the timeout ran out first.
  bool wait(std::optional<Duration> timeout = std::nullopt);
  /// <Event at 0x... unset>
  friend std::ostream& operator<<(std::ostream& os, const Event& e);
  template <class Archive>
  void save(Archive& ar) const {
    ar(detail::save_block(block_, "Event"));
  }
  template <class Archive>
  void load(Archive& ar) {
    detail::load_state(ar, block_, s_);
  }

 private:
  std::shared_ptr<detail::SharedBlock> block_;
  detail::EventState* s_ = nullptr;
};

/// `parties` processes (or threads) meet (multiprocessing.Barrier). The action, a plain
/// function (it must be found in a spawned child too), runs once per round in the last party
/// to arrive, before any is released. A timeout, abort() or reset() breaks the round: its
/// waiters get mp::BrokenBarrierError.
class Barrier {
 public:
  using Duration = std::chrono::duration<double>;
  explicit Barrier(int parties, void (*action)() = nullptr,
                   std::optional<Duration> timeout = std::nullopt);
  /// A one-party barrier (what a child's argument is built as before it is loaded).
  Barrier() : Barrier(1) {}
  /// This party's arrival index, 0 .. parties-1 (exactly one party gets each).
  int wait(std::optional<Duration> timeout = std::nullopt);
  /// Breaks the current round (its waiters throw), then makes the barrier usable again.
  void reset();
  /// Breaks the barrier until reset().
  void abort();
  int parties() const;
  int n_waiting() const;
  bool broken() const;
  template <class Archive>
  void save(Archive& ar) const {
    ar(detail::save_block(block_, "Barrier"), action_ != nullptr);
    if (action_) ar(reduction::code_ref(reinterpret_cast<const void*>(action_)));
    ar(timeout_);
  }
  template <class Archive>
  void load(Archive& ar) {
    detail::load_state(ar, block_, s_);
    bool has_action = false;
    ar(has_action);
    action_ = nullptr;
    if (has_action) {
      reduction::CodeRef ref;
      ar(ref);
      action_ = reinterpret_cast<void (*)()>(const_cast<void*>(reduction::resolve(ref)));
    }
    ar(timeout_);
  }

 private:
  std::shared_ptr<detail::SharedBlock> block_;
  detail::BarrierState* s_ = nullptr;
  void (*action_)() = nullptr;
  double timeout_ = -1;  // the default timeout in seconds; negative: none
};

}  // namespace mp
