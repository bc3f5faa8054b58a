// Process-shared primitives on shared futexes (CPython synchronize.py, which uses POSIX
// semaphores). Every primitive is a small struct at the start of its own memfd mapping.
//
// Lock and RLock keep the holder's thread id in the futex word and publish its start time
// beside it. A waiter that has slept kDeadHolderCheck without progress looks the holder up in
// /proc: if it has ended (or is a zombie, or its id now names a later thread), the waiter takes
// the lock over and marks it owner-died. Nothing is paid for this on the uncontended path but
// two plain stores.
#include "mp/synchronize.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <system_error>

#include "mp/errors.hpp"
#include "mp/process.hpp"
#include "posix/futex.hpp"
#include "runtime.hpp"

namespace mp {
namespace detail {

using posix::Clock;
using Deadline = std::optional<Clock::time_point>;

// Primitives live in shared arenas, many to a memfd, so that a program with a thousand locks
// holds a few descriptors, not a thousand. An arena is unmapped and closed with its last block.
struct Arena {
  posix::SharedMapping mapping;
  ~Arena() { posix::unmap_shared(mapping); }
};

struct SharedBlock {
  std::shared_ptr<Arena> arena;
  std::size_t offset = 0;
  void* address() const { return static_cast<char*>(arena->mapping.addr) + offset; }
};

namespace {

constexpr std::size_t kArenaSize = 64 * 1024;
constexpr std::size_t kAlign = 64;  // a cache line each: no false sharing between primitives

// This process's arena being filled. Blocks are never reused: a new block is fresh, zeroed
// memory. A fork child starts its own (the parent goes on filling the one they share). Held
// weakly: an arena whose primitives are all gone closes, even the one being filled.
struct Allocator {
  std::mutex mu;
  std::weak_ptr<Arena> current;
  std::size_t used = 0;
  std::map<int, std::shared_ptr<Arena>> mapped;  // in a spawned child: the arenas handed over
};

Allocator& allocator() {
  static Allocator* a = new Allocator;  // never destroyed: blocks may be made until the end
  return *a;
}

std::shared_ptr<SharedBlock> allocate(std::size_t size, const char* name) {
  size = std::max<std::size_t>((size + kAlign - 1) / kAlign * kAlign, kAlign);
  auto block = std::make_shared<SharedBlock>();
  if (size > kArenaSize / 4) {  // big (a Condition's waiter slots, a large Array): its own
    block->arena = std::make_shared<Arena>();
    block->arena->mapping = posix::create_shared_mapping(size, name);
    return block;
  }
  Allocator& a = allocator();
  std::lock_guard l(a.mu);
  block->arena = a.current.lock();
  if (!block->arena || a.used + size > kArenaSize) {
    block->arena = std::make_shared<Arena>();
    block->arena->mapping = posix::create_shared_mapping(kArenaSize, "mp-shared-arena");
    a.current = block->arena;
    a.used = 0;
  }
  block->offset = a.used;
  a.used += size;
  return block;
}

constexpr std::uint32_t kWaiters = 0x80000000u;
constexpr std::uint32_t kTidMask = 0x3fffffffu;

// A fresh block holding a T built in place (the memfd is zero-filled; T's constructor runs).
template <class T, class... Args>
std::pair<std::shared_ptr<SharedBlock>, T*> make_block(const char* name, Args&&... args) {
  static_assert(std::is_trivially_destructible_v<T>);
  static_assert(alignof(T) <= kAlign);
  auto block = allocate(sizeof(T), name);
  T* state = new (block->address()) T(std::forward<Args>(args)...);
  return {block, state};
}

// "Wait for up to timeout" as an absolute deadline; none: forever. Negative counts as zero.
Deadline deadline_after(std::optional<std::chrono::duration<double>> timeout) {
  if (!timeout) return std::nullopt;
  auto t = std::max(*timeout, std::chrono::duration<double>::zero());
  // Beyond a century is forever (and would overflow the clock).
  if (t > std::chrono::hours(24 * 365 * 100)) return std::nullopt;
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(t);
}

bool past(const Deadline& d) {
  return d && Clock::now() >= *d;
}

std::string holder_name(std::uint32_t tid) {
  const auto& me = posix::this_thread_identity();
  if (tid == me.tid) {
    std::string name = current_process().name();
    if (static_cast<std::int32_t>(tid) != me.pid) name += "|Thread-" + std::to_string(tid);
    return name;
  }
  if (posix::is_own_thread(tid)) return "SomeOtherThread";
  return "SomeOtherProcess";
}

}  // namespace

// ---- Lock and RLock ----

struct MutexState {
  std::atomic<std::uint32_t> word{0};  // 0: free; else the holder's tid, | kWaiters
  std::uint32_t recursive = 0;
  std::atomic<std::uint32_t> published_tid{0};  // the holder whose start time is below
  std::uint32_t count = 0;                      // RLock depth: touched by the holder only
  std::atomic<std::uint64_t> published_start{0};
  std::atomic<std::uint32_t> owner_died{0};
  explicit MutexState(bool r) : recursive(r) {}
};

namespace {

void publish_holder(MutexState& s, const posix::ThreadIdentity& me) {
  s.published_start.store(me.start, std::memory_order_relaxed);
  s.published_tid.store(me.tid, std::memory_order_release);
}

// Whether the holder in word `v` has ended. Its start time is used only when it was published
// for this very thread id (a holder may not have published it yet).
bool holder_dead(const MutexState& s, std::uint32_t v) {
  const std::uint32_t tid = v & kTidMask;
  if (tid == 0) return false;
  std::uint64_t start = 0;
  if (s.published_tid.load(std::memory_order_acquire) == tid)
    start = s.published_start.load(std::memory_order_relaxed);
  return !posix::thread_alive(tid, start);
}

// Takes the lock held in word `v` by a dead holder; false if someone else changed it first.
bool take_over(MutexState& s, std::uint32_t v, const posix::ThreadIdentity& me) {
  if (!s.word.compare_exchange_strong(v, me.tid | kWaiters, std::memory_order_acquire))
    return false;
  publish_holder(s, me);
  s.count = 1;
  s.owner_died.store(1, std::memory_order_relaxed);
  return true;
}

bool mutex_acquire(MutexState& s, bool block, Deadline deadline) {
  const auto& me = posix::this_thread_identity();
  if (s.recursive && (s.word.load(std::memory_order_relaxed) & kTidMask) == me.tid) {
    ++s.count;
    return true;
  }
  std::uint32_t expected = 0;
  if (s.word.compare_exchange_strong(expected, me.tid, std::memory_order_acquire)) {
    publish_holder(s, me);
    s.count = 1;
    return true;
  }
  if (!block || (deadline && past(deadline))) {
    // Only a try: still, a dead holder does not keep the lock.
    return holder_dead(s, expected) && take_over(s, expected, me);
  }
  // No deadline: the end of time. One plain value, because GCC 12 at -O3 takes the optional's
  // payload for uninitialised where this is inlined with nullopt (a false -Wmaybe-uninitialized).
  const Clock::time_point until = deadline ? *deadline : Clock::time_point::max();
  // The holder is looked up every kDeadHolderCheck of waiting (signals do not postpone it).
  auto next_check = Clock::now() + kDeadHolderCheck;
  for (;;) {
    std::uint32_t v = s.word.load(std::memory_order_relaxed);
    if (v == 0) {
      // Others may be asleep too: keep the waiters bit so our release wakes one.
      if (s.word.compare_exchange_weak(v, me.tid | kWaiters, std::memory_order_acquire)) {
        publish_holder(s, me);
        s.count = 1;
        return true;
      }
      continue;
    }
    if (!(v & kWaiters)) {
      if (!s.word.compare_exchange_weak(v, v | kWaiters, std::memory_order_relaxed)) continue;
      v |= kWaiters;
    }
    const bool last = until <= next_check;
    if (posix::futex_wait(s.word, v, last ? until : next_check)) continue;  // woken: look again
    if (Clock::now() >= next_check) {
      // A whole period without the lock changing hands: is the holder still there?
      if (s.word.load(std::memory_order_relaxed) == v && holder_dead(s, v) && take_over(s, v, me))
        return true;
      next_check = Clock::now() + kDeadHolderCheck;
    }
    if (last) {
      std::uint32_t zero = 0;  // a last chance, as sem_timedwait gives
      if (s.word.compare_exchange_strong(zero, me.tid | kWaiters, std::memory_order_acquire)) {
        publish_holder(s, me);
        s.count = 1;
        return true;
      }
      return false;
    }
  }
}

void mutex_release(MutexState& s) {
  if (s.recursive) {
    const auto& me = posix::this_thread_identity();
    if ((s.word.load(std::memory_order_relaxed) & kTidMask) != me.tid)
      throw std::logic_error("attempt to release recursive lock not owned by thread");
    if (--s.count > 0) return;
  }
  // Cleared while still held, so it cannot wipe the flag of whoever takes the lock next.
  if (s.owner_died.load(std::memory_order_relaxed))
    s.owner_died.store(0, std::memory_order_relaxed);
  // One atomic exchange: a free lock stays free (0 for 0), and is reported.
  const std::uint32_t v = s.word.exchange(0, std::memory_order_release);
  if (v == 0) throw std::logic_error("semaphore or lock released too many times");
  if (v & kWaiters) posix::futex_wake(s.word, 1);
}

bool mutex_is_mine(const MutexState& s) {
  return (s.word.load(std::memory_order_relaxed) & kTidMask) == posix::this_thread_identity().tid;
}

}  // namespace

MutexHandle::MutexHandle(bool recursive) {
  auto [block, state] = make_block<MutexState>(recursive ? "mp-rlock" : "mp-lock", recursive);
  block_ = std::move(block);
  s_ = state;
}

bool MutexHandle::acquire_blocking() {
  // The uncontended case first, without the general path's call.
  MutexState& s = *s_;
  const auto& me = posix::this_thread_identity();
  std::uint32_t expected = 0;
  if (s.word.compare_exchange_strong(expected, me.tid, std::memory_order_acquire)) {
    publish_holder(s, me);
    s.count = 1;
    return true;
  }
  return mutex_acquire(s, true, std::nullopt);
}

bool MutexHandle::acquire_timed(bool block, std::optional<Duration> timeout) {
  return mutex_acquire(*s_, block, deadline_after(timeout));
}

void MutexHandle::release() {
  mutex_release(*s_);
}

bool MutexHandle::owner_died() const {
  return mutex_is_mine(*s_) && s_->owner_died.load(std::memory_order_relaxed) != 0;
}

bool MutexHandle::recursive() const {
  return s_->recursive != 0;
}

bool MutexHandle::is_mine() const {
  return mutex_is_mine(*s_);
}

// ---- crossing to a child ----

BlockRef save_block(const std::shared_ptr<SharedBlock>& block, const char* kind) {
  if (!reduction::spawning())
    throw std::runtime_error(std::string(kind) +
                             " objects should only be shared between processes through "
                             "inheritance");
  return {reduction::duplicate_for_child_once(block->arena->mapping.fd), block->offset};
}

std::shared_ptr<SharedBlock> load_block(const BlockRef& ref, void*& state) {
  // In a spawned child: each arena handed over is mapped once, however many of the child's
  // primitives live in it (kept for the child's life: its descriptor is used up).
  Allocator& a = allocator();
  std::lock_guard l(a.mu);
  auto& arena = a.mapped[ref.index];
  if (!arena) {
    auto fresh = std::make_shared<Arena>();
    fresh->mapping = posix::map_shared(reduction::passed_fd(ref.index));
    arena = std::move(fresh);
  }
  if (ref.offset >= arena->mapping.size)
    throw PicklingError("a shared primitive's offset lies outside its arena");
  auto block = std::make_shared<SharedBlock>();
  block->arena = arena;
  block->offset = static_cast<std::size_t>(ref.offset);
  state = block->address();
  return block;
}

void arenas_before_fork() {
  allocator().mu.lock();
}
void arenas_after_fork(bool in_child) {
  Allocator& a = allocator();
  if (in_child) {
    // A fork child starts an arena of its own: the parent goes on filling the one they share.
    a.current.reset();
    a.used = 0;
  }
  a.mu.unlock();
}

std::shared_ptr<SharedBlock> make_data_block(std::size_t bytes, const char* name, void*& data) {
  auto block = allocate(std::max<std::size_t>(bytes, 1), name);
  data = block->address();
  return block;
}

int block_descriptor(const std::shared_ptr<SharedBlock>& block) {
  return block->arena->mapping.fd;
}

// ---- Semaphore ----

struct SemaphoreState {
  std::atomic<std::uint32_t> value{0};
  std::atomic<std::uint32_t> waiters{0};
  std::int32_t maxvalue = -1;  // -1: unbounded
  SemaphoreState(int v, int m) : value(static_cast<std::uint32_t>(v)), maxvalue(m) {}
};

// ---- Condition ----

// A waiter's place: the notifier picks the oldest live ones and wakes exactly them.
struct WaiterSlot {
  static constexpr std::uint32_t kFree = 0, kWaiting = 1, kNotified = 2;
  std::atomic<std::uint32_t> state{kFree};
  std::uint32_t tid = 0;
  std::int32_t pid = 0;
  std::uint32_t pad = 0;
  std::uint64_t start = 0;
  std::uint64_t ticket = 0;
};

struct ConditionState {
  static constexpr std::size_t kSlots = 4096;  // the memfd is sparse: untouched pages cost nothing
  std::uint32_t high = 0;                      // slots in use lie below; guarded by the lock
  std::uint64_t next_ticket = 0;               // guarded by the lock
  WaiterSlot slots[kSlots];
};

// ---- Event ----

struct EventState {
  std::atomic<std::uint32_t> flag{0};
  std::atomic<std::uint32_t> sets{0};  // the futex word: changes with every set()
  std::atomic<std::uint32_t> waiters{0};
};

// ---- Barrier ----

struct BarrierState {
  static constexpr std::uint32_t kPassed = 1, kBroken = 2;
  MutexState mu{false};
  std::atomic<std::uint32_t> epoch{0};  // changes with every round's end, break or reset
  std::int32_t parties = 0;
  // Changed under mu; atomic so that n_waiting() and broken() read them without it (the action
  // runs under mu and may ask).
  std::atomic<std::int32_t> count{0};  // arrived in this round
  std::uint32_t gen = 0;               // the round; under mu
  std::atomic<std::uint32_t> broken{0};
  std::uint32_t outcome[64] = {};  // how round g ended, at g % 64
  explicit BarrierState(int p) : parties(p) {}
};

}  // namespace detail

using detail::Clock;
using detail::deadline_after;

// ---- Lock / RLock printing ----

namespace detail {
namespace {
void print_mutex(std::ostream& os, const MutexState& s) {
  const std::uint32_t tid = s.word.load() & kTidMask;
  if (!s.recursive) {
    os << "<Lock(owner=" << (tid == 0 ? "None" : holder_name(tid)) << ")>";
  } else if (tid == 0) {
    os << "<RLock(None, 0)>";
  } else if (tid == posix::this_thread_identity().tid) {
    os << "<RLock(" << holder_name(tid) << ", " << s.count << ")>";
  } else {
    os << "<RLock(" << holder_name(tid) << ", nonzero)>";
  }
}
}  // namespace
}  // namespace detail

std::ostream& operator<<(std::ostream& os, const Lock& l) {
  detail::print_mutex(os, *l.s_);
  return os;
}

std::ostream& operator<<(std::ostream& os, const RLock& l) {
  detail::print_mutex(os, *l.s_);
  return os;
}

// ---- Semaphore ----

Semaphore::Semaphore(int value) : Semaphore(value, -1) {}

Semaphore::Semaphore(int value, int maxvalue) {
  if (value < 0) throw std::invalid_argument("semaphore initial value must be >= 0");
  auto [block, state] = detail::make_block<detail::SemaphoreState>(
      maxvalue < 0 ? "mp-semaphore" : "mp-bounded-semaphore", value, maxvalue);
  block_ = std::move(block);
  s_ = state;
}

bool Semaphore::bounded() const {
  return s_->maxvalue >= 0;
}

namespace {
// The timeout by reference: a std::optional<double> passed by value is spilled and reloaded
// through the stack at a stall on the way (see Semaphore::acquire in the header).
bool semaphore_acquire(detail::SemaphoreState& s, bool block,
                       const std::optional<std::chrono::duration<double>>& timeout) {
  auto try_take = [&] {
    std::uint32_t v = s.value.load(std::memory_order_relaxed);
    while (v > 0)
      if (s.value.compare_exchange_weak(v, v - 1, std::memory_order_acquire)) return true;
    return false;
  };
  if (try_take()) return true;
  const auto deadline = deadline_after(timeout);
  if (!block || detail::past(deadline)) return false;
  s.waiters.fetch_add(1);
  bool got = false;
  for (;;) {
    if ((got = try_take())) break;
    if (!posix::futex_wait(s.value, 0, deadline)) {
      got = try_take();
      break;
    }
  }
  s.waiters.fetch_sub(1);
  return got;
}
}  // namespace

bool Semaphore::acquire_blocking() {
  return semaphore_acquire(*s_, true, std::nullopt);
}

bool Semaphore::acquire_timed(bool block, std::optional<Duration> timeout) {
  return semaphore_acquire(*s_, block, timeout);
}

void Semaphore::release() {
  auto& s = *s_;
  std::uint32_t v = s.value.load(std::memory_order_relaxed);
  do {
    if ((s.maxvalue >= 0 && v >= static_cast<std::uint32_t>(s.maxvalue)) || v >= INT_MAX)
      throw std::logic_error("semaphore or lock released too many times");
  } while (!s.value.compare_exchange_weak(v, v + 1, std::memory_order_seq_cst));
  if (s.waiters.load() > 0) posix::futex_wake(s.value, 1);
}

int Semaphore::get_value() const {
  return static_cast<int>(s_->value.load());
}

std::ostream& operator<<(std::ostream& os, const Semaphore& s) {
  if (s.bounded())
    return os << "<BoundedSemaphore(value=" << s.get_value() << ", maxvalue=" << s.s_->maxvalue
              << ")>";
  return os << "<Semaphore(value=" << s.get_value() << ")>";
}

// ---- Condition ----

Condition::Condition() : Condition(RLock()) {}

Condition::Condition(const Lock& lock) : lock_(lock), recursive_(false) {
  auto [block, state] = detail::make_block<detail::ConditionState>("mp-condition");
  block_ = std::move(block);
  s_ = state;
}

Condition::Condition(const RLock& lock) : lock_(lock), recursive_(true) {
  auto [block, state] = detail::make_block<detail::ConditionState>("mp-condition");
  block_ = std::move(block);
  s_ = state;
}

bool Condition::wait(std::optional<Duration> timeout) {
  using Slot = detail::WaiterSlot;
  auto& m = *lock_.s_;
  if (!detail::mutex_is_mine(m))
    throw std::logic_error("must acquire() condition before using wait()");
  const auto deadline = deadline_after(timeout);
  const auto& me = posix::this_thread_identity();
  // Take a slot (under the lock: no other waiter registers meanwhile).
  auto& c = *s_;
  std::size_t i = 0;
  while (i < detail::ConditionState::kSlots &&
         c.slots[i].state.load(std::memory_order_acquire) != Slot::kFree)
    ++i;
  if (i == detail::ConditionState::kSlots)
    throw std::runtime_error("Condition: more than 4096 waiters");
  Slot& slot = c.slots[i];
  slot.tid = me.tid;
  slot.pid = me.pid;
  slot.start = me.start;
  slot.ticket = c.next_ticket++;
  slot.state.store(Slot::kWaiting, std::memory_order_release);
  if (i + 1 > c.high) c.high = static_cast<std::uint32_t>(i + 1);
  // Release every level of the lock, wait, then take them all back.
  const std::uint32_t depth = m.recursive ? m.count : 1;
  if (m.recursive) m.count = 1;
  detail::mutex_release(m);
  bool notified = false;
  for (;;) {
    if (slot.state.load(std::memory_order_acquire) == Slot::kNotified) {
      notified = true;
      break;
    }
    if (!posix::futex_wait(slot.state, Slot::kWaiting, deadline)) {
      std::uint32_t waiting = Slot::kWaiting;
      // Timed out, unless a notify got there first.
      notified = !slot.state.compare_exchange_strong(waiting, Slot::kFree);
      break;
    }
  }
  if (notified) slot.state.store(Slot::kFree, std::memory_order_release);
  detail::mutex_acquire(m, true, std::nullopt);
  if (m.recursive) m.count = depth;
  return notified;
}

void Condition::notify(int n) {
  using Slot = detail::WaiterSlot;
  if (!detail::mutex_is_mine(*lock_.s_)) throw std::logic_error("lock is not owned");
  auto& c = *s_;
  const auto my_pid = posix::this_thread_identity().pid;
  while (n > 0) {
    // The oldest waiter still waiting.
    Slot* oldest = nullptr;
    for (std::uint32_t i = 0; i < c.high; ++i) {
      Slot& s = c.slots[i];
      if (s.state.load(std::memory_order_acquire) == Slot::kWaiting &&
          (!oldest || s.ticket < oldest->ticket))
        oldest = &s;
    }
    if (!oldest) break;
    std::uint32_t waiting = Slot::kWaiting;
    if (oldest->pid != my_pid && !posix::thread_alive(oldest->tid, oldest->start)) {
      oldest->state.compare_exchange_strong(waiting, Slot::kFree);  // died waiting: drop it
      continue;
    }
    if (oldest->state.compare_exchange_strong(waiting, Slot::kNotified)) {
      posix::futex_wake(oldest->state, 1);
      --n;
    }
  }
}

void Condition::notify_all() {
  notify(INT_MAX);
}

std::ostream& operator<<(std::ostream& os, const Condition& c) {
  int waiting = 0;
  for (std::uint32_t i = 0; i < c.s_->high; ++i)
    waiting += c.s_->slots[i].state.load() == detail::WaiterSlot::kWaiting;
  os << "<Condition(";
  detail::print_mutex(os, *c.lock_.state());
  return os << ", " << waiting << ")>";
}

// ---- Event ----

Event::Event() {
  auto [block, state] = detail::make_block<detail::EventState>("mp-event");
  block_ = std::move(block);
  s_ = state;
}

bool Event::is_set() const {
  return s_->flag.load() != 0;
}

void Event::set() {
  s_->flag.store(1);
  s_->sets.fetch_add(1);
  if (s_->waiters.load() > 0) posix::futex_wake(s_->sets, INT_MAX);
}

void Event::clear() {
  s_->flag.store(0);
}

bool Event::wait(std::optional<Duration> timeout) {
  if (is_set()) return true;
  const auto deadline = deadline_after(timeout);
  if (detail::past(deadline)) return false;
  s_->waiters.fetch_add(1);
  // Waits for a set(), not for the flag: a set() at once undone by clear() still ends the
  // wait (with the flag as it is then: false, as CPython's Event.wait answers).
  const std::uint32_t sets = s_->sets.load();
  bool set = is_set();
  while (!set && s_->sets.load() == sets) {
    if (!posix::futex_wait(s_->sets, sets, deadline)) break;  // timed out
  }
  set = is_set();
  s_->waiters.fetch_sub(1);
  return set;
}

std::ostream& operator<<(std::ostream& os, const Event& e) {
  return os << "<Event at " << static_cast<const void*>(e.s_) << " "
            << (e.is_set() ? "set" : "unset") << ">";
}

// ---- Barrier ----

namespace {
// The barrier's own lock; a party that died holding it leaves the state suspect: broken.
void barrier_lock(detail::BarrierState& b) {
  detail::mutex_acquire(b.mu, true, std::nullopt);
  if (b.mu.owner_died.load(std::memory_order_relaxed)) {
    b.broken = 1;
    b.mu.owner_died.store(0, std::memory_order_relaxed);
  }
}
void barrier_unlock(detail::BarrierState& b) {
  detail::mutex_release(b.mu);
}
void barrier_wake(detail::BarrierState& b) {
  b.epoch.fetch_add(1);
  posix::futex_wake(b.epoch, INT_MAX);
}
}  // namespace

Barrier::Barrier(int parties, void (*action)(), std::optional<Duration> timeout) : action_(action) {
  if (parties < 1) throw std::invalid_argument("parties must be >= 1");
  if (timeout) timeout_ = std::max(timeout->count(), 0.0);
  auto [block, state] = detail::make_block<detail::BarrierState>("mp-barrier", parties);
  block_ = std::move(block);
  s_ = state;
}

int Barrier::wait(std::optional<Duration> timeout) {
  auto& b = *s_;
  if (!timeout && timeout_ >= 0) timeout = Duration(timeout_);
  const auto deadline = deadline_after(timeout);
  barrier_lock(b);
  if (b.broken) {
    barrier_unlock(b);
    throw BrokenBarrierError();
  }
  const std::uint32_t gen = b.gen;
  const int index = b.count++;
  if (index == b.parties - 1) {
    // The last to arrive: the action, then everyone goes.
    if (action_) {
      try {
        action_();
      } catch (...) {
        b.broken = 1;
        barrier_wake(b);
        barrier_unlock(b);
        throw;
      }
    }
    b.outcome[gen % 64] = detail::BarrierState::kPassed;
    b.count = 0;
    ++b.gen;
    barrier_wake(b);
    barrier_unlock(b);
    return index;
  }
  for (;;) {
    const std::uint32_t epoch = b.epoch.load();
    if (b.gen != gen) {
      const bool passed = b.outcome[gen % 64] == detail::BarrierState::kPassed;
      barrier_unlock(b);
      if (passed) return index;
      throw BrokenBarrierError();
    }
    if (b.broken) {
      barrier_unlock(b);
      throw BrokenBarrierError();
    }
    barrier_unlock(b);
    const bool woken = posix::futex_wait(b.epoch, epoch, deadline);
    barrier_lock(b);
    if (!woken && b.gen == gen && !b.broken) {
      // Out of time: this round is broken for every party.
      b.broken = 1;
      barrier_wake(b);
      barrier_unlock(b);
      throw BrokenBarrierError();
    }
  }
}

void Barrier::reset() {
  auto& b = *s_;
  barrier_lock(b);
  if (b.count > 0 || b.broken) {
    b.outcome[b.gen % 64] = detail::BarrierState::kBroken;
    ++b.gen;
  }
  b.count = 0;
  b.broken = 0;
  barrier_wake(b);
  barrier_unlock(b);
}

void Barrier::abort() {
  auto& b = *s_;
  barrier_lock(b);
  b.broken = 1;
  barrier_wake(b);
  barrier_unlock(b);
}

int Barrier::parties() const {
  return s_->parties;
}

int Barrier::n_waiting() const {
  return s_->broken.load() ? 0 : s_->count.load();
}

bool Barrier::broken() const {
  return s_->broken.load() != 0;
}

}  // namespace mp
