// The queues' shared ring (CPython queues.py, which has a pipe, a feeder thread and two locks).
//
// One memfd per queue: a page of state, then a 1 MiB ring of records (16-byte header: magic,
// kind, length; payload padded to 16), then, beyond, the pages of large items (> 32 KiB), each
// reserved whole, mapped only while copied and punched out once read. One mp::Lock (taken over
// from a dead holder) guards the state; it is held for short copies only, never across a wait.
//
// Every step under the lock first writes a journal (what it is about to do, and the counters as
// they were), then publishes with one store (tail for a put, head for a get). Whoever takes the
// lock over from a dead holder reads the journal: a step not yet published is undone, one
// published is finished, and an item that died with its mover is counted in `lost`. Large items
// are copied outside the lock; who is copying one is written in an in-flight slot, so that a
// survivor finds a dead copier's pages and gives them back. Waiters sleep on futex words that
// change with every put (put_seq) or get (get_seq); bit 0 says someone sleeps, so a wake-up is
// one futex call, and none when nobody waits. A sleeper looks again every kRecheck anyway: a
// peer killed between publishing and waking must not leave it asleep.
#include "mp/queues.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <new>

#include "posix/futex.hpp"
#include "posix/memfd.hpp"
#include "queue_faults.hpp"

namespace mp::detail {

using posix::Clock;
using Deadline = std::optional<Clock::time_point>;
using namespace std::chrono_literals;

void (*g_queue_fault)(QueueStep step) = nullptr;

namespace {

constexpr std::uint64_t kMagic = 0x6575657571706d00;  // "\0mpqueue"
constexpr std::uint32_t kVersion = 1;
constexpr std::size_t kStateBytes = 4096;
constexpr std::uint64_t kRingBytes = 1 << 20;  // a power of two
constexpr std::size_t kInlineMax = 32 * 1024;
constexpr std::uint32_t kRecordMagic = 0x7265636d;  // "mcer"
constexpr std::uint32_t kInline = 1, kExtent = 2;
constexpr std::size_t kSlots = 64;
constexpr std::uint32_t kNoSlot = UINT32_MAX;
constexpr auto kRecheck = 200ms;  // a sleeper looks again this often (a peer may have died)
constexpr auto kLockGrace = 1s;   // the longest a try waits for the ring's lock
constexpr int kSpin = 100;        // looks at the futex word before sleeping on it

enum Op : std::uint32_t { kNone, kPut, kGet, kReserve, kFinish };

void fault(QueueStep step) {
  if (g_queue_fault) g_queue_fault(step);
}

}  // namespace

struct RecordHeader {
  std::uint32_t magic;
  std::uint32_t kind;
  std::uint64_t len;  // payload bytes
};
static_assert(sizeof(RecordHeader) == 16);

struct Extent {
  std::uint64_t off;  // in the memfd, page-aligned, at or beyond heap_base
  std::uint64_t len;  // the item's bytes (its pages: len rounded up to a page)
};

// A large item being copied outside the lock, and the thread copying it (tid 0: free).
struct InFlight {
  std::atomic<std::uint32_t> tid{0};
  std::int32_t pid = 0;
  std::uint64_t start = 0;
  Extent extent{};
};

struct Journal {
  std::atomic<std::uint32_t> op{kNone};
  std::uint64_t head = 0, tail = 0, heap_top = 0;
  std::int64_t count = 0, unfinished = 0, live = 0;
  Extent extent{};  // the large item the step moves (off 0: none)
};

struct QueueState {
  std::uint64_t magic = kMagic;
  std::uint32_t version = kVersion;
  std::uint32_t joinable = 0;
  std::uint64_t capacity = kRingBytes;
  std::int64_t maxsize = 0;
  std::uint64_t heap_base = kStateBytes + kRingBytes;
  char name[40] = {};
  alignas(64) std::atomic<std::uint64_t> head{0};  // byte positions; the ring holds [head, tail)
  std::atomic<std::uint64_t> tail{0};
  std::atomic<std::int64_t> count{0};  // records in the ring
  std::atomic<std::int64_t> unfinished{0};
  std::atomic<std::uint64_t> lost{0};
  std::uint64_t heap_top = kStateBytes + kRingBytes;  // large items' pages lie below
  std::int64_t live = 0;                              // large items not yet read
  Journal journal;
  InFlight slots[kSlots];
  alignas(64) std::atomic<std::uint32_t> put_seq{0};   // +2 every put; bit 0: a getter sleeps
  alignas(64) std::atomic<std::uint32_t> get_seq{0};   // +2 every get; bit 0: a putter sleeps
  alignas(64) std::atomic<std::uint32_t> done_seq{0};  // +1 when unfinished reaches 0
};
static_assert(sizeof(QueueState) <= kStateBytes);

const std::size_t kQueueRingOffset = kStateBytes;
const std::size_t kQueueHeadOffset = offsetof(QueueState, head);
const std::size_t kQueueTailOffset = offsetof(QueueState, tail);

namespace {

Deadline deadline_after(std::optional<std::chrono::duration<double>> timeout) {
  if (!timeout) return std::nullopt;
  auto t = std::max(*timeout, std::chrono::duration<double>::zero());
  if (t > std::chrono::hours(24 * 365 * 100)) return std::nullopt;  // forever
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(t);
}

bool past(const Deadline& d) {
  return d && Clock::now() >= *d;
}

std::uint64_t record_bytes(std::uint64_t len) {
  return sizeof(RecordHeader) + (len + 15) / 16 * 16;
}

std::uint64_t pages(std::uint64_t len) {
  const std::uint64_t p = posix::page_size();
  return std::max<std::uint64_t>((len + p - 1) / p * p, p);
}

std::string name_of(const QueueState& s) {
  return std::string(s.name, strnlen(s.name, sizeof s.name));
}

[[noreturn]] void corrupted(const QueueState& s, const std::string& what) {
  throw ProcessError("mp::Queue '" + name_of(s) + "': corrupted shared state: " + what);
}

std::byte* ring(QueueState& s) {
  return reinterpret_cast<std::byte*>(&s) + kStateBytes;
}

void ring_write(QueueState& s, std::uint64_t pos, const void* src, std::size_t n) {
  const std::size_t i = pos & (kRingBytes - 1);
  const std::size_t first = std::min<std::size_t>(n, kRingBytes - i);
  std::memcpy(ring(s) + i, src, first);
  std::memcpy(ring(s), static_cast<const std::byte*>(src) + first, n - first);
}

void ring_read(QueueState& s, std::uint64_t pos, void* dst, std::size_t n) {
  const std::size_t i = pos & (kRingBytes - 1);
  const std::size_t first = std::min<std::size_t>(n, kRingBytes - i);
  std::memcpy(dst, ring(s) + i, first);
  std::memcpy(static_cast<std::byte*>(dst) + first, ring(s), n - first);
}

// Head and tail as a reader may trust them.
void check_positions(const QueueState& s, std::uint64_t h, std::uint64_t t) {
  if (t < h || t - h > kRingBytes || ((h | t) & 15) != 0)
    corrupted(s, "head " + std::to_string(h) + ", tail " + std::to_string(t));
}

// The journal is written before a step changes anything, and cleared after it: the exchange
// keeps the step's stores after the journal, the release store keeps them before its end (what
// a survivor relies on). No fences: ThreadSanitizer does not model them.
void begin(Journal& j, Op op) {
  j.op.exchange(op, std::memory_order_acq_rel);
}
void end(Journal& j) {
  j.op.store(kNone, std::memory_order_release);
}

void free_slot(QueueState& s, std::uint32_t i) {
  if (i < kSlots) s.slots[i].tid.store(0, std::memory_order_release);
}

// Frees the slots of the large item at `off`, whoever claimed them (a survivor finishing a
// dead holder's step: it may have claimed one without having said so yet).
void free_slots_of(QueueState& s, std::uint64_t off) {
  if (off == 0) return;
  for (auto& slot : s.slots)
    if (slot.tid.load(std::memory_order_relaxed) != 0 && slot.extent.off == off)
      slot.tid.store(0, std::memory_order_release);
}

// A large item's pages are given back; when none is left the heap starts again at its base.
void drop_extent(QueueState& s, int fd, const Extent& e) {
  posix::memfd_release(fd, e.off, pages(e.len));
  if (--s.live <= 0) {
    s.live = 0;
    s.heap_top = s.heap_base;
  }
}

// Under the lock: large items whose copier died are given back and counted lost.
void reap_dead(QueueState& s, int fd) {
  const auto my_pid = posix::this_thread_identity().pid;
  for (auto& slot : s.slots) {
    const std::uint32_t tid = slot.tid.load(std::memory_order_acquire);
    if (tid == 0 || slot.pid == my_pid || posix::thread_alive(tid, slot.start)) continue;
    drop_extent(s, fd, slot.extent);
    s.lost.fetch_add(1, std::memory_order_relaxed);
    slot.tid.store(0, std::memory_order_release);
  }
}

bool has_free_slot(QueueState& s, int fd) {
  for (int round = 0; round < 2; ++round) {
    for (auto& slot : s.slots)
      if (slot.tid.load(std::memory_order_relaxed) == 0) return true;
    reap_dead(s, fd);
  }
  return false;
}

std::uint32_t claim_slot(QueueState& s, int fd, const Extent& e) {
  for (int round = 0; round < 2; ++round) {
    for (std::uint32_t i = 0; i < kSlots; ++i) {
      InFlight& slot = s.slots[i];
      if (slot.tid.load(std::memory_order_relaxed) != 0) continue;
      const auto& me = posix::this_thread_identity();
      slot.pid = me.pid;
      slot.start = me.start;
      slot.extent = e;
      slot.tid.store(me.tid, std::memory_order_release);
      return i;
    }
    reap_dead(s, fd);
  }
  throw ProcessError("mp::Queue '" + name_of(s) + "': more than 64 large items in flight");
}

void wake_seq(std::atomic<std::uint32_t>& seq, std::uint32_t old) {
  if (old & 1) {
    seq.fetch_and(~1u, std::memory_order_relaxed);
    posix::futex_wake(seq, INT_MAX);
  }
}

void wake_all(QueueState& s) {
  wake_seq(s.put_seq, s.put_seq.fetch_add(2) | 1);
  wake_seq(s.get_seq, s.get_seq.fetch_add(2) | 1);
  s.done_seq.fetch_add(1);
  posix::futex_wake(s.done_seq, INT_MAX);
}

// The previous holder of the lock died inside a step: undo it or finish it (its journal says
// which and how), then give back what dead copiers held.
void recover(QueueState& s, int fd) {
  Journal& j = s.journal;
  switch (j.op.load(std::memory_order_acquire)) {
    case kPut:
      if (s.tail.load() == j.tail) {  // never published: the item died with its producer
        s.count = j.count;
        s.unfinished = j.unfinished;
        s.lost.fetch_add(1);
        if (j.extent.off) drop_extent(s, fd, j.extent);
      } else {
        s.count = j.count + 1;
        s.unfinished = j.unfinished + (s.joinable ? 1 : 0);
      }
      free_slots_of(s, j.extent.off);
      break;
    case kGet:
      if (s.head.load() == j.head) {  // not taken: the item is still there
        s.count = j.count;
      } else {  // taken and never delivered
        s.count = j.count - 1;
        s.lost.fetch_add(1);
        if (j.extent.off) drop_extent(s, fd, j.extent);
      }
      free_slots_of(s, j.extent.off);
      break;
    case kReserve:  // a large put that had only begun
      s.heap_top = j.heap_top;
      s.live = j.live;
      s.lost.fetch_add(1);
      free_slots_of(s, j.extent.off);
      break;
    case kFinish:  // a large get giving its pages back
      posix::memfd_release(fd, j.extent.off, pages(j.extent.len));
      s.live = std::max<std::int64_t>(j.live - 1, 0);
      if (s.live == 0) s.heap_top = s.heap_base;
      free_slots_of(s, j.extent.off);
      break;
    default:
      break;
  }
  end(j);
  reap_dead(s, fd);
  wake_all(s);
}

// The ring's lock for one step. A try (no deadline given by the caller) still waits kLockGrace
// for it: it is held only for short copies, and a dead holder is taken over within ~50 ms.
class RingLock {
 public:
  RingLock(Lock& lock, QueueState& s, int fd, const Deadline& deadline) : lock_(lock) {
    auto bound = Clock::now() + kLockGrace;
    if (deadline && *deadline > bound) bound = *deadline;
    held_ = deadline ? lock.acquire(true, bound - Clock::now()) : lock.acquire();
    if (held_ && lock.owner_died()) recover(s, fd);
  }
  ~RingLock() {
    if (held_) lock_.release();
  }
  RingLock(const RingLock&) = delete;
  RingLock& operator=(const RingLock&) = delete;
  explicit operator bool() const { return held_; }

 private:
  Lock& lock_;
  bool held_ = false;
};

// Sleeps while `seq` still reads `seen` (briefly spinning first), at most until the deadline
// or kRecheck. Spurious returns are the caller's to handle.
void sleep_on(std::atomic<std::uint32_t>& seq, std::uint32_t seen, const Deadline& deadline) {
  for (int i = 0; i < kSpin; ++i) {
    if (seq.load(std::memory_order_relaxed) != seen) return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  std::uint32_t v = seen;
  if (!(v & 1)) {
    if (!seq.compare_exchange_strong(v, v | 1)) return;
    v |= 1;
  }
  auto until = Clock::now() + kRecheck;
  if (deadline && *deadline < until) until = *deadline;
  posix::futex_wait(seq, v, until);
}

bool has_room(const QueueState& s, std::uint64_t need) {
  if (s.maxsize > 0 && s.count.load(std::memory_order_relaxed) >= s.maxsize) return false;
  return kRingBytes -
             (s.tail.load(std::memory_order_relaxed) - s.head.load(std::memory_order_relaxed)) >=
         need;
}

}  // namespace

QueueCore::QueueCore(long maxsize, bool joinable) {
  void* p = nullptr;
  block_ = make_data_block(kStateBytes + kRingBytes, "mp-queue", p);
  s_ = new (p) QueueState();
  s_->maxsize = maxsize;
  s_->joinable = joinable;
  static std::atomic<unsigned> counter{0};
  std::snprintf(s_->name, sizeof s_->name, "mp-queue-%d-%u", posix::this_thread_identity().pid,
                ++counter);
}

void QueueCore::adopt(const BlockRef& ref) {
  void* p = nullptr;
  block_ = load_block(ref, p);
  s_ = static_cast<QueueState*>(p);
  if (s_->magic != kMagic || s_->version != kVersion || s_->capacity != kRingBytes ||
      s_->heap_base != kStateBytes + kRingBytes)
    throw ProcessError("mp::Queue: the shared segment handed over is not a queue's");
}

std::string QueueCore::name() const {
  return name_of(*s_);
}

long QueueCore::qsize() const {
  return static_cast<long>(std::max<std::int64_t>(s_->count.load(), 0));
}

bool QueueCore::full() const {
  return s_->maxsize > 0 && s_->count.load() >= s_->maxsize;
}

std::uint64_t QueueCore::lost() const {
  // A large item's copier that died outside the lock is found here (or by the next large put).
  QueueState& s = *s_;
  const bool in_flight = std::any_of(std::begin(s.slots), std::end(s.slots), [](const auto& slot) {
    return slot.tid.load(std::memory_order_relaxed) != 0;
  });
  if (in_flight) {
    const int fd = block_descriptor(block_);
    RingLock g(lock_, s, fd, std::nullopt);
    reap_dead(s, fd);
  }
  return s.lost.load();
}

bool QueueCore::put(const void* data, std::size_t len, bool block,
                    std::optional<Duration> timeout) {
  QueueState& s = *s_;
  const int fd = block_descriptor(block_);
  // Not blocking: at once, whatever the timeout (CPython ignores it then).
  const Deadline deadline = block ? deadline_after(timeout) : Deadline(Clock::now());
  const bool large = len > kInlineMax;
  if (large && !block && s.maxsize > 0 && s.count.load() >= s.maxsize) return false;

  // A large item first gets pages of its own and is copied there without the lock.
  std::uint32_t slot = kNoSlot;
  Extent extent{};
  if (large) {
    {
      RingLock g(lock_, s, fd, deadline);
      if (!g) return false;
      Journal& j = s.journal;
      j.heap_top = s.heap_top;
      j.live = s.live;
      extent = {s.live == 0 ? s.heap_base : s.heap_top, len};
      j.extent = extent;
      begin(j, kReserve);
      s.heap_top = extent.off;
      slot = claim_slot(s, fd, extent);
      s.heap_top += pages(len);
      ++s.live;
      end(j);
    }
    auto give_back = [&] {
      RingLock g(lock_, s, fd, std::nullopt);
      drop_extent(s, fd, extent);
      free_slot(s, slot);
    };
    try {
      posix::memfd_reserve(fd, extent.off, pages(len));
      void* dst = posix::memfd_map_range(fd, extent.off, pages(len));
      std::memcpy(dst, data, len / 2);
      fault(QueueStep::put_large_copying);
      std::memcpy(static_cast<std::byte*>(dst) + len / 2,
                  static_cast<const std::byte*>(data) + len / 2, len - len / 2);
      posix::memfd_unmap_range(dst, pages(len));
    } catch (...) {
      give_back();
      throw;
    }
    data = &extent;
    len = sizeof extent;
    // Not published in time: its pages go back.
    struct GiveBack {
      decltype(give_back)& f;
      bool armed = true;
      ~GiveBack() {
        if (armed) f();
      }
    } guard{give_back};
    const bool done = put_record(data, len, kExtent, extent, deadline);
    guard.armed = !done;
    return done;
  }
  return put_record(data, len, kInline, extent, deadline);
}

bool QueueCore::put_record(const void* data, std::size_t len, std::uint32_t kind,
                           const Extent& extent, const Deadline& deadline) {
  QueueState& s = *s_;
  const int fd = block_descriptor(block_);
  const std::uint64_t need = record_bytes(len);
  for (;;) {
    std::uint32_t seen = 0;
    std::uint32_t old_seq = 0;
    bool done = false;
    {
      RingLock g(lock_, s, fd, deadline);
      if (!g) return false;
      const std::uint64_t h = s.head.load(std::memory_order_relaxed);
      const std::uint64_t t = s.tail.load(std::memory_order_relaxed);
      check_positions(s, h, t);
      if (has_room(s, need)) {
        Journal& j = s.journal;
        j.tail = t;
        j.count = s.count.load(std::memory_order_relaxed);
        j.unfinished = s.unfinished.load(std::memory_order_relaxed);
        j.extent = extent;
        begin(j, kPut);
        const RecordHeader rh{kRecordMagic, kind, len};
        ring_write(s, t, &rh, sizeof rh);
        ring_write(s, t + sizeof rh, data, len / 2);
        fault(QueueStep::put_half_written);
        ring_write(s, t + sizeof rh + len / 2, static_cast<const std::byte*>(data) + len / 2,
                   len - len / 2);
        s.tail.store(t + need, std::memory_order_release);  // published
        s.count.store(j.count + 1, std::memory_order_relaxed);
        if (s.joinable) s.unfinished.store(j.unfinished + 1, std::memory_order_relaxed);
        free_slots_of(s, extent.off);  // the ring owns the large item's pages now
        end(j);
        old_seq = s.put_seq.fetch_add(2, std::memory_order_release);
        done = true;
      } else {
        seen = s.get_seq.load(std::memory_order_acquire);
      }
    }
    if (done) {
      wake_seq(s.put_seq, old_seq);
      return true;
    }
    if (past(deadline)) return false;
    sleep_on(s.get_seq, seen, deadline);
  }
}

bool QueueCore::get(ItemSink sink, void* ctx, bool block, std::optional<Duration> timeout) {
  QueueState& s = *s_;
  const int fd = block_descriptor(block_);
  const Deadline deadline = block ? deadline_after(timeout) : Deadline(Clock::now());
  for (;;) {
    std::uint32_t seen = 0;
    std::uint32_t old_seq = 0;
    std::uint32_t slot = kNoSlot;
    Extent extent{};
    void* dst = nullptr;
    bool done = false;
    {
      RingLock g(lock_, s, fd, deadline);
      if (!g) return false;
      const std::uint64_t h = s.head.load(std::memory_order_relaxed);
      const std::uint64_t t = s.tail.load(std::memory_order_acquire);
      check_positions(s, h, t);
      if (s.count.load(std::memory_order_relaxed) > 0) {
        if (t == h) corrupted(s, "items counted in an empty ring");
        RecordHeader rh;
        ring_read(s, h, &rh, sizeof rh);
        if (rh.magic != kRecordMagic || (rh.kind != kInline && rh.kind != kExtent))
          corrupted(s, "a bad record header at " + std::to_string(h));
        if (rh.len > t - h || record_bytes(rh.len) > t - h)
          corrupted(s, "a record of " + std::to_string(rh.len) + " bytes at " + std::to_string(h) +
                           " overruns the ring's " + std::to_string(t - h));
        Journal& j = s.journal;
        j.head = h;
        j.count = s.count.load(std::memory_order_relaxed);
        j.extent = {};
        if (rh.kind == kInline) {
          dst = sink(ctx, rh.len);
          ring_read(s, h + sizeof rh, dst, rh.len);
          fault(QueueStep::get_copied);
        } else {
          if (rh.len != sizeof extent) corrupted(s, "a large item's record of the wrong size");
          ring_read(s, h + sizeof rh, &extent, sizeof extent);
          if (extent.off < s.heap_base || extent.off >= s.heap_top ||
              extent.len > s.heap_top - extent.off || (extent.off & (posix::page_size() - 1)))
            corrupted(s, "a large item outside the queue's pages");
          if (!has_free_slot(s, fd))
            throw ProcessError("mp::Queue '" + name_of(s) +
                               "': more than 64 large items in flight");
          dst = sink(ctx, extent.len);
          j.extent = extent;
        }
        begin(j, kGet);
        s.head.store(h + record_bytes(rh.len), std::memory_order_release);  // taken
        s.count.store(j.count - 1, std::memory_order_relaxed);
        // The slot after the publication: the journal covers a death in between.
        if (rh.kind == kExtent) slot = claim_slot(s, fd, extent);
        end(j);
        old_seq = s.get_seq.fetch_add(2, std::memory_order_release);
        done = true;
      } else {
        seen = s.put_seq.load(std::memory_order_acquire);
      }
    }
    if (done) {
      wake_seq(s.get_seq, old_seq);
      if (slot != kNoSlot) {
        // The large item is ours (the slot says so): copy it out, then give its pages back.
        const std::uint64_t n = pages(extent.len);
        void* src = posix::memfd_map_range(fd, extent.off, n);
        std::memcpy(dst, src, extent.len / 2);
        fault(QueueStep::get_large_copying);
        std::memcpy(static_cast<std::byte*>(dst) + extent.len / 2,
                    static_cast<const std::byte*>(src) + extent.len / 2,
                    extent.len - extent.len / 2);
        posix::memfd_unmap_range(src, n);
        RingLock g(lock_, s, fd, std::nullopt);
        Journal& j = s.journal;
        j.extent = extent;
        j.live = s.live;
        begin(j, kFinish);
        drop_extent(s, fd, extent);
        free_slot(s, slot);
        end(j);
      }
      return true;
    }
    if (past(deadline)) return false;
    sleep_on(s.put_seq, seen, deadline);
  }
}

void QueueCore::task_done() {
  QueueState& s = *s_;
  {
    RingLock g(lock_, s, block_descriptor(block_), std::nullopt);
    const std::int64_t u = s.unfinished.load(std::memory_order_relaxed);
    if (u <= 0) throw std::logic_error("task_done() called too many times");
    s.unfinished.store(u - 1);
    if (u > 1) return;
    s.done_seq.fetch_add(1);
  }
  posix::futex_wake(s.done_seq, INT_MAX);
}

void QueueCore::join() {
  QueueState& s = *s_;
  for (;;) {
    const std::uint32_t seen = s.done_seq.load();
    if (s.unfinished.load() <= 0) return;
    posix::futex_wait(s.done_seq, seen, Clock::now() + kRecheck);
  }
}

}  // namespace mp::detail
