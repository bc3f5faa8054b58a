// The queues' shared ring (CPython queues.py, which has a pipe, a feeder thread and two locks).
//
// One memfd per queue: a state area (a journal, a registry of the threads that use the queue and
// what each has put and got), an array of 64-bit stamps, a 1 MiB ring of 16-byte units (one
// stamp each), then the pages of large items (> 32 KiB). src/queue_record.hpp says what a stamp
// holds.
//
// Small items take no lock (a bounded MPMC ring after Vyukov's, with ownership in the stamps),
// and one read-modify-write each way:
//   put: from this thread's cursor (or the shared tail hint, when that is ahead), walk past
//        records already claimed to a unit free for this lap, claim it by a CAS on its stamp
//        (free -> claimed by me), copy the payload, store "ready", count it in my own counter (a
//        store).
//   get: from this thread's cursor (or the head, when that is ahead), walk to the first ready
//        record (skipping ones still claimed or taken, so a slow producer never hides another's
//        item), take it by a CAS (ready -> taken by me), copy it out, free its units for the
//        next lap, count it.
// The tail and head hints are moved (by CAS) only when they lag kHintLag units behind a cursor;
// qsize() sums the threads' counters. The claim and the take name their owner, so a process
// killed at any instant leaves a stamp that says whose it was: a survivor that finds a claimed
// or taken record of a dead thread (an owner whose tid and start time no longer run) steals it
// by a CAS and frees it, counting the item in `lost`. Waiters look for such records every
// kRecheck, lost() at once.
//
// Large items and bounded queues use the ring's mp::Lock (taken over from a dead holder), under
// a journal replayed on takeover: the pages are reserved under it (owned by an in-flight slot
// naming the copier), copied outside it, then handed to a claimed record under it; a consumer
// copies them out and gives them back under it. The pages near the heap's base (kWindow) are
// mapped once in each process, and an extent given back is kept with its pages (up to
// kKeepBytes) for the next item of its size class: no mmap, fallocate or page fault per item
// (this VM's page faults cost more than the copy). Beyond the window an item is mapped while it
// is copied; beyond the high-water mark its pages are punched out once read. Bounded queues
// (maxsize > 0) put under the lock so that maxsize is exact.
//
// Waiting is an eventcount: a waiter registers in get_waiters / put_waiters, reads item_seq
// (consumers) or room_seq (producers), looks once more, then sleeps on the word. A mover looks
// at the other side's registrations right after its claim or take CAS (no fence of its own), and
// wakes one sleeper when it has finished (the word's low bit: no second futex call while a
// wake-up is on its way); a waiter whose last look met a record claimed (taken) by a mover still
// at work spins and yields instead, and naps only once that took kBusySpin (wait_for says why).
// Every step the two sides must see each other by is seq_cst (no fences: ThreadSanitizer does
// not model them). A sleeper looks again every kRecheck anyway.
#include "mp/queues.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <new>
#include <thread>

#include "posix/futex.hpp"
#include "posix/memfd.hpp"
#include "queue_faults.hpp"
#include "queue_record.hpp"

namespace mp::detail {

using posix::Clock;
using Deadline = std::optional<Clock::time_point>;
using namespace std::chrono_literals;

void (*g_queue_fault)(QueueStep step) = nullptr;
std::atomic<std::uint64_t> g_queue_wakes{0};

namespace {

constexpr std::uint64_t kMagic = 0x6575657571706d00;  // "\0mpqueue"
constexpr std::uint32_t kVersion = 4;
constexpr std::size_t kStateBytes = 128 * 1024;
constexpr std::size_t kStampsOffset = kStateBytes;
constexpr std::size_t kRingOffset = kStampsOffset + kUnits * sizeof(std::uint64_t);
constexpr std::uint64_t kHeapBase = kRingOffset + kRingBytes;
constexpr std::size_t kSlots = 64;
// Large items' pages in [kHeapBase, kHeapBase + kWindow) are reached through a mapping each
// process keeps (QueueCore::window_); beyond it, each item is mapped while it is copied. Up to
// kKeepExtents extents, kKeepBytes in all, are kept with their pages once read, for the next
// large items of their size class: a page fault costs more than a copy of the page. (16
// extents, 32 MiB, were too few on a loaded machine: a consumer descheduled for a few ms let
// its producer take new pages, the extents given back beyond the high-water mark were punched
// out, and the two settled into new pages, faults and a punch for every other item, ~3 ms an
// item instead of ~0.1.)
constexpr std::uint64_t kWindow = std::uint64_t{256} << 20;
constexpr std::uint32_t kKeepExtents = 64;
constexpr std::uint64_t kKeepBytes = std::uint64_t{64} << 20;
// A put of a large item waits a little for a kept extent when this many are in use.
constexpr std::int64_t kPipeline = 4;
constexpr std::uint32_t kNoSlot = UINT32_MAX;
constexpr auto kRecheck = 200ms;  // a sleeper looks again this often (a peer may have died)
constexpr auto kLockGrace = 1s;   // the longest a try waits for the ring's lock
// How long a waiter looks before it sleeps: longer than a put or get takes, so that a steady
// stream never puts its consumer to sleep (each put would then make a futex call, and the
// consumer fall behind again), far shorter than a scheduler's tick.
constexpr auto kSpin = 30us;
// A waiter held up by a record being moved spins this long (its mover may not wake it, and is
// a few instructions from done unless it lost its CPU), then naps this long at a time.
constexpr auto kBusySpin = 2ms;
constexpr auto kBusyNap = 1ms;

enum Op : std::uint32_t { kNone, kReserve, kPublish, kFinish };

void fault(QueueStep step) {
  if (g_queue_fault) [[unlikely]]
    g_queue_fault(step);
}

void pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

// A large item being copied in, and the thread copying it (tid 0: free).
struct InFlight {
  std::atomic<std::uint32_t> tid{0};
  std::int32_t pid = 0;
  std::uint64_t start = 0;
  Extent extent{};
};

// An extent kept with its pages, for reuse (off: in the window; cap: its size class).
struct KeptExtent {
  std::uint64_t off = 0;
  std::uint64_t cap = 0;
};

// What an interrupted step of the lock's holder changed, for the next holder to undo or finish.
struct Journal {
  std::atomic<std::uint32_t> op{kNone};
  std::uint64_t heap_top = 0;
  std::int64_t live = 0;
  std::uint32_t n_kept = 0;  // the kept extents before the step (kReserve, kFinish)
  std::uint32_t kept_i = 0;  // kReserve: the entry reused (overwritten by the last one)
  KeptExtent kept_was{};     // kReserve: that entry before
  Extent extent{};
  std::uint32_t slot = kNoSlot;
  std::uint64_t pos = 0;
  std::uint64_t word = 0;   // kPublish: the stamp the step stores; kFinish: the one it frees
  bool count_lost = false;  // kFinish: the item is lost (its mover died, or it could not be had)
  bool counted = false;
};

// Who sleeps on one side's word (item_seq, room_seq). The word's low bit says a wake-up is on
// its way: while it is set, more puts (or gets) make no futex call, however long the woken
// thread takes to run. It is cleared (the word moved on to the next even value) by whoever
// looks next: a waiter leaving its sleep, or one about to sleep; that one then looks for items
// once more, and a woken one passes the wake-up on if it sees more than it takes. (A separate
// flag, set by a waker after the sleeper it saw had left, stayed set with nobody to clear it:
// every later wake-up was skipped and the next sleeper lay until kRecheck.)
struct Waiters {
  std::atomic<std::uint32_t> sleeping{0};
};

// One registered thread: tid | low 32 bits of its start time << 32 (0: a free entry).
struct Owner {
  std::atomic<std::uint64_t> id{0};
};

// What one registered thread has put and got, written by it alone (a load and a store, no
// read-modify-write on the fast path); qsize() sums them. A line each: no false sharing.
struct alignas(64) Counts {
  std::atomic<std::uint64_t> put{0};
  std::atomic<std::uint64_t> got{0};
};

struct QueueState {
  std::uint64_t magic = kMagic;
  std::uint32_t version = kVersion;
  std::uint32_t joinable = 0;
  std::uint64_t units = kUnits;
  std::int64_t maxsize = 0;
  std::uint64_t heap_base = kHeapBase;
  std::uint64_t uid = 0;  // tells this queue from another in a thread's cache of registrations
  char name[40] = {};
  // Producers' line, consumers' line: neither side writes the other's on its fast path, and
  // each is written only every kHintLag units (threads keep their own cursors).
  alignas(64) std::atomic<std::uint64_t> tail{0};  // a hint: at most ~kHintLag behind the tail
  alignas(64) std::atomic<std::uint64_t> head{0};  // every record before it is freed
  alignas(64) Waiters get_waiters;                 // consumers, asleep on item_seq
  std::atomic<std::uint32_t> item_seq{0};          // moves on when a put wakes a consumer
  alignas(64) Waiters put_waiters;                 // producers, asleep on room_seq
  std::atomic<std::uint32_t> room_seq{0};          // moves on when a get wakes a producer
  std::atomic<std::uint32_t> owners_used{0};       // registry entries [0, owners_used) used
  alignas(64) std::atomic<std::int64_t> unfinished{0};
  std::atomic<std::uint32_t> done_seq{0};  // +1 when unfinished reaches 0
  std::atomic<std::uint64_t> lost{0};
  // Under the lock:
  alignas(64) std::uint64_t heap_top = kHeapBase;  // large items' pages lie below
  std::int64_t live = 0;  // large items' extents not yet given back (kept ones included)
  std::atomic<std::uint32_t> n_kept{0};  // read without the lock by a put waiting for one
  std::uint64_t kept_bytes = 0;
  KeptExtent kept[kKeepExtents];
  Journal journal;
  InFlight slots[kSlots];
  alignas(64) Owner owners[kOwners];
  Counts counts[kOwners];
};
static_assert(sizeof(QueueState) <= kStateBytes);

const std::size_t kQueueStampsOffset = kStampsOffset;
const std::size_t kQueueRingOffset = kRingOffset;
const std::size_t kQueueHeadOffset = offsetof(QueueState, head);
const std::size_t kQueueTailOffset = offsetof(QueueState, tail);
const std::size_t kQueueItemSeqOffset = offsetof(QueueState, item_seq);

namespace {

// The name's whole buffer (cut at its NUL only when an error is made of it: no strnlen on
// the fast path).
std::string_view name_view(const QueueState& s) {
  return {s.name, sizeof s.name};
}

std::string name_of(const QueueState& s) {
  return std::string(s.name, strnlen(s.name, sizeof s.name));
}

[[noreturn]] void corrupted_named(std::string_view queue, const std::string& what) {
  queue = queue.substr(0, queue.find('\0'));
  throw ProcessError("mp::Queue '" + std::string(queue) + "': corrupted shared state: " + what);
}

[[noreturn]] void corrupted(const QueueState& s, const std::string& what) {
  corrupted_named(name_of(s), what);
}

}  // namespace

Record check_record(std::string_view queue, std::uint64_t word) {
  const Stamp st = unpack(word);
  if (st.large) {
    if (st.bytes != 0 && st.bytes != sizeof(Extent))
      corrupted_named(queue, "a large item's record of " + std::to_string(st.bytes) + " bytes");
    if (st.bytes == 0 && st.state != Unit::claimed && st.state != Unit::free)
      corrupted_named(queue, "a large item published without its pages");
  } else if (st.bytes > kInlineMax) {
    corrupted_named(queue, "a record of " + std::to_string(st.bytes) + " bytes (at most " +
                               std::to_string(kInlineMax) + " inline)");
  }
  return {st.large, st.bytes, units_of(st.bytes)};
}

namespace {

std::uint64_t pages(std::uint64_t len, std::uint64_t page) {
  return std::max<std::uint64_t>((len + page - 1) / page * page, page);
}

// A large item's extent: its pages rounded up to a size class (eight a power of two apart), so
// that a kept extent fits the next items of about its size.
std::uint64_t capacity(std::uint64_t len, std::uint64_t page) {
  const std::uint64_t p = pages(len, page);
  const std::uint64_t step = std::max<std::uint64_t>(std::bit_floor(p) / 8, page);
  return (p + step - 1) / step * step;
}

}  // namespace

Extent check_extent(std::string_view queue, const void* payload, std::uint64_t heap_base,
                    std::uint64_t heap_top, std::uint64_t page) {
  Extent e;
  std::memcpy(&e, payload, sizeof e);
  if (e.off < heap_base || e.off >= heap_top || e.len <= kInlineMax || e.len > heap_top - e.off ||
      e.len > (std::uint64_t{1} << 56) || capacity(e.len, page) > heap_top - e.off ||
      (e.off & (page - 1)) != 0)
    corrupted_named(queue, "a large item of " + std::to_string(e.len) + " bytes at " +
                               std::to_string(e.off) + ", outside the queue's pages [" +
                               std::to_string(heap_base) + ", " + std::to_string(heap_top) + ")");
  return e;
}

namespace {

Deadline deadline_after(const std::optional<std::chrono::duration<double>>& timeout) {
  if (!timeout.has_value()) return std::nullopt;
  auto t = std::max(*timeout, std::chrono::duration<double>::zero());
  if (t > std::chrono::hours(24 * 365 * 100)) return std::nullopt;  // forever
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(t);
}

bool past(const Deadline& d) {
  return d && Clock::now() >= *d;
}

std::uint64_t capacity(std::uint64_t len) {
  return capacity(len, posix::page_size());
}

std::uint64_t lap_of(std::uint64_t pos) {
  return (pos / kUnits) & kLapMask;
}

// Consecutive positions' stamps lie on different cache lines: a consumer freeing the stamp
// just behind a producer's does not take the producer's line away from it. Spread within
// blocks of 64 positions (8 lines, a line 8 positions apart), not across the whole ring: a
// line is used again 8 positions later, while it is still in the L1 cache (spread across the
// ring, each put and get met a line last used 8192 positions before: an L2 miss).
std::atomic<std::uint64_t>& stamp_at(QueueState& s, std::uint64_t pos) {
  auto* stamps = reinterpret_cast<std::atomic<std::uint64_t>*>(reinterpret_cast<std::byte*>(&s) +
                                                               kStampsOffset);
  constexpr std::uint64_t kPerLine = 8, kBlock = kPerLine * kPerLine;
  const std::uint64_t i = pos & (kUnits - 1);
  return stamps[(i & ~(kBlock - 1)) + (i % kPerLine) * kPerLine + (i % kBlock) / kPerLine];
}

std::byte* ring(QueueState& s) {
  return reinterpret_cast<std::byte*>(&s) + kRingOffset;
}

// n bytes, n <= 16, by fixed-size copies the compiler inlines (a call to memcpy for 8 bytes
// costs more than the copy).
inline void copy_small(std::byte* dst, const std::byte* src, std::size_t n) {
  if (n >= 8) {
    std::memcpy(dst, src, 8);
    std::memcpy(dst + n - 8, src + n - 8, 8);
  } else if (n >= 4) {
    std::memcpy(dst, src, 4);
    std::memcpy(dst + n - 4, src + n - 4, 4);
  } else {
    for (std::size_t k = 0; k < n; ++k) dst[k] = src[k];
  }
}

void ring_write(QueueState& s, std::uint64_t pos, std::size_t at, const void* src, std::size_t n) {
  const std::size_t i = ((pos & (kUnits - 1)) * kUnitBytes + at) & (kRingBytes - 1);
  const auto* from = static_cast<const std::byte*>(src);
  if (n <= kRingBytes - i) [[likely]] {  // no wrap
    if (n <= kUnitBytes)
      copy_small(ring(s) + i, from, n);
    else
      std::memcpy(ring(s) + i, from, n);
    return;
  }
  const std::size_t first = kRingBytes - i;
  std::memcpy(ring(s) + i, from, first);
  std::memcpy(ring(s), from + first, n - first);
}

void ring_read(QueueState& s, std::uint64_t pos, std::size_t at, void* dst, std::size_t n) {
  const std::size_t i = ((pos & (kUnits - 1)) * kUnitBytes + at) & (kRingBytes - 1);
  auto* to = static_cast<std::byte*>(dst);
  if (n <= kRingBytes - i) [[likely]] {
    if (n <= kUnitBytes)
      copy_small(to, ring(s) + i, n);
    else
      std::memcpy(to, ring(s) + i, n);
    return;
  }
  const std::size_t first = kRingBytes - i;
  std::memcpy(to, ring(s) + i, first);
  std::memcpy(to + first, ring(s), n - first);
}

// The stamp `w` with another state and owner.
constexpr std::uint64_t retag(std::uint64_t w, Unit state, std::uint32_t owner) {
  constexpr std::uint64_t keep = ~pack({Unit::taken, false, kOwners - 1, 0, 0});
  return (w & keep) | pack({state, false, owner, 0, 0});
}
static_assert(retag(pack({Unit::ready, true, 5, 16, 77}), Unit::taken, 9) ==
              pack({Unit::taken, true, 9, 16, 77}));

std::uint64_t free_word(std::uint64_t pos, std::uint32_t bytes) {
  return pack({Unit::free, false, 0, bytes, lap_of(pos) + 1});
}

// The record's units become free for the next lap: the others first, its first unit last (a
// producer of the next lap looks at that one; until then nobody else touches the others).
void free_units(QueueState& s, std::uint64_t pos, std::uint32_t bytes) {
  const std::uint64_t n = units_of(bytes);
  for (std::uint64_t i = 1; i < n; ++i)
    stamp_at(s, pos + i).store(free_word(pos + i, 0), std::memory_order_release);
  stamp_at(s, pos).store(free_word(pos, bytes), std::memory_order_release);
}

// ---- the registry of threads ----

std::uint64_t identity_word(const posix::ThreadIdentity& me) {
  return me.tid | (static_cast<std::uint64_t>(static_cast<std::uint32_t>(me.start)) << 32);
}

bool owner_alive(const QueueState& s, std::uint32_t i) {
  const std::uint64_t id = s.owners[i].id.load(std::memory_order_acquire);
  if (id == 0) return false;
  return posix::thread_alive_low32(static_cast<std::uint32_t>(id),
                                   static_cast<std::uint32_t>(id >> 32));
}

// This thread's registration in a queue, and the head as it last read it: a producer may
// claim a unit only once the head has passed the unit's last lap (so the stamp it overwrites
// is no longer needed to find the next record), and reads the consumers' head only when its
// copy does not say so.
struct OwnerCache {
  std::uint64_t uid = 0;
  std::uint32_t tid = 0;
  std::uint32_t index = 0;
  std::uint64_t head = 0;
  // Where this thread's next claim starts looking (the end of its last one: at or before the
  // tail), and its next take (a position every record before which is freed).
  std::uint64_t tail = 0;
  std::uint64_t from = 0;
  Counts* counts = nullptr;
};
// The shared hints are moved only when they lag this far behind a thread's cursor.
constexpr std::uint64_t kHintLag = 64;
constexpr int kCached = 4;
thread_local OwnerCache t_owners[kCached] __attribute__((tls_model("initial-exec")));
thread_local unsigned t_next_owner __attribute__((tls_model("initial-exec"))) = 0;

// Sleeps on `word` while it reads `seen`, at most until the deadline or kRecheck. False when
// it returned because kRecheck passed (the caller may look for dead peers then).
bool sleep_on(const std::atomic<std::uint32_t>& word, std::uint32_t seen, const Deadline& d,
              Clock::duration cap) {
  auto until = Clock::now() + cap;
  const bool capped = !d || *d > until;
  if (!capped) until = *d;
  const bool woken = posix::futex_wait(word, seen, until);
  return woken || !capped;
}

// Wakes one sleeper of `word` (the caller saw one, after the step it waits for was made
// visible, or before it in the same total order: see wait_for), unless a wake-up is already on
// its way (the low bit): at most one futex call until a waiter has looked again. The
// read-modify-write also hands what this thread made visible to whoever clears the bit (its
// CAS reads this value or a later one), so that one's next look sees it.
void wake_one(std::atomic<std::uint32_t>& word) {
  if ((word.fetch_or(1, std::memory_order_seq_cst) & 1) == 0) {
    g_queue_wakes.fetch_add(1, std::memory_order_relaxed);
    posix::futex_wake(word, 1);
  }
}

// A wake-up that was on its way to this side has arrived (or was for nobody): the word moves
// to the next even value. That value, to sleep on; `cleared`: this call cleared the bit (the
// wake-ups skipped meanwhile are this thread's to pass on).
std::uint32_t settle(std::atomic<std::uint32_t>& word, bool& cleared) {
  std::uint32_t v = word.load(std::memory_order_seq_cst);
  while ((v & 1) != 0)
    if (word.compare_exchange_weak(v, v + 1, std::memory_order_seq_cst)) {
      cleared = true;
      return v + 1;
    }
  return v;
}

// Room was made (a record freed, counted as got): a producer that sleeps is told. The bump comes
// first (it orders the count before the look at the sleepers; by 2: the low bit is wake_one's):
// slower than a get's fast path, which looks right after its take (QueueCore::get), but needed
// where no take came first.
void wake_room(QueueState& s) {
  s.room_seq.fetch_add(2, std::memory_order_seq_cst);
  if (s.put_waiters.sleeping.load(std::memory_order_seq_cst) != 0) wake_one(s.room_seq);
}

// One more item put (or got) by the thread owning the counter: it alone writes it.
void bump(std::atomic<std::uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

void wake_all(QueueState& s) {
  s.item_seq.fetch_add(2);  // by 2: the low bit is wake_one's
  s.room_seq.fetch_add(2);
  posix::futex_wake(s.item_seq, INT_MAX);
  posix::futex_wake(s.room_seq, INT_MAX);
  s.done_seq.fetch_add(1);
  posix::futex_wake(s.done_seq, INT_MAX);
}

void item_done(QueueState& s) {  // an item the queue will never deliver again: task_done for it
  if (!s.joinable) return;
  std::int64_t u = s.unfinished.load();
  while (u > 0 && !s.unfinished.compare_exchange_weak(u, u - 1)) {
  }
  if (u == 1) {
    s.done_seq.fetch_add(1);
    posix::futex_wake(s.done_seq, INT_MAX);
  }
}

// ---- large items' pages, under the lock ----

void begin(Journal& j, Op op) {
  j.op.exchange(op, std::memory_order_acq_rel);
}
void end(Journal& j) {
  j.op.store(kNone, std::memory_order_release);
}

void free_slot(QueueState& s, std::uint32_t i) {
  if (i < kSlots) s.slots[i].tid.store(0, std::memory_order_release);
}

// A large item's extent is given back: its pages returned to the system (the heap's top comes
// down when the extent lay at it, back to the base when no extent is left).
void drop_extent(QueueState& s, int fd, const Extent& e) {
  const std::uint64_t cap = capacity(e.len);
  posix::memfd_release(fd, e.off, cap);
  if (e.off + cap == s.heap_top) s.heap_top = e.off;
  if (--s.live <= 0) {
    s.live = 0;
    s.heap_top = s.heap_base;
  }
}

// The same, but kept with its pages for the next large item of its size class while the window
// holds it and the kept ones stay under their high-water mark. Only in a journaled step (a
// recovery undoes it by restoring n_kept): kept twice, an extent would hold two items.
void give_back_extent(QueueState& s, int fd, const Extent& e) {
  const std::uint64_t cap = capacity(e.len);
  if (s.n_kept < kKeepExtents && s.kept_bytes + cap <= kKeepBytes &&
      e.off + cap <= s.heap_base + kWindow) {
    s.kept[s.n_kept++] = {e.off, cap};
    s.kept_bytes += cap;
    return;
  }
  drop_extent(s, fd, e);
}

std::uint64_t kept_sum(const QueueState& s) {
  std::uint64_t b = 0;
  for (std::uint32_t i = 0; i < s.n_kept; ++i) b += s.kept[i].cap;
  return b;
}

// Large items whose copier died before handing them to the ring: given back, counted lost.
void reap_slots(QueueState& s, int fd) {
  const auto my_pid = posix::this_thread_identity().pid;
  for (auto& slot : s.slots) {
    const std::uint32_t tid = slot.tid.load(std::memory_order_acquire);
    if (tid == 0 || slot.pid == my_pid || posix::thread_alive(tid, slot.start)) continue;
    drop_extent(s, fd, slot.extent);
    s.lost.fetch_add(1);
    slot.tid.store(0, std::memory_order_release);
  }
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
    reap_slots(s, fd);
  }
  throw ProcessError("mp::Queue '" + name_of(s) + "': more than 64 large items being put");
}

// A large record's pages go back and its unit is freed (lost: its mover died, or the item
// could not be delivered). Under the lock.
void finish_large(QueueState& s, int fd, std::uint64_t pos, std::uint64_t word, const Extent& e,
                  bool lost) {
  Journal& j = s.journal;
  j.pos = pos;
  j.word = word;
  j.extent = e;
  j.live = s.live;
  j.heap_top = s.heap_top;
  j.count_lost = lost;
  j.counted = false;
  j.n_kept = s.n_kept;
  begin(j, kFinish);
  give_back_extent(s, fd, e);
  if (lost) {
    s.lost.fetch_add(1);
    j.counted = true;
  }
  std::uint64_t w = word;
  stamp_at(s, pos).compare_exchange_strong(w, free_word(pos, sizeof(Extent)));
  end(j);
}

// The previous holder of the lock died inside a step: finish it (its journal says how), then
// give back what dead copiers held.
void recover(QueueState& s, int fd) {
  Journal& j = s.journal;
  switch (j.op.load(std::memory_order_acquire)) {
    case kReserve:  // a large put that had only begun
      s.heap_top = j.heap_top;
      s.live = j.live;
      if (j.n_kept > s.n_kept && j.n_kept <= kKeepExtents) {  // a kept extent was taken
        s.kept[j.kept_i % kKeepExtents] = j.kept_was;
        s.n_kept = j.n_kept;
      }
      s.kept_bytes = kept_sum(s);
      s.lost.fetch_add(1);
      free_slot(s, j.slot);
      break;
    case kPublish:  // pages handed from a slot to a record: done when the stamp says so
      if (stamp_at(s, j.pos).load() == j.word) free_slot(s, j.slot);
      break;
    case kFinish: {  // the extent is not kept (it may have been already: undone)
      s.n_kept = std::min(j.n_kept, kKeepExtents);
      s.kept_bytes = kept_sum(s);
      s.heap_top = j.heap_top;
      s.live = j.live;
      drop_extent(s, fd, j.extent);
      if (j.count_lost && !j.counted) s.lost.fetch_add(1);
      std::uint64_t w = j.word;
      stamp_at(s, j.pos).compare_exchange_strong(w, free_word(j.pos, sizeof(Extent)));
      break;
    }
    default:
      break;
  }
  end(j);
  reap_slots(s, fd);
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

// A large item's pages while it is copied: in this process's window, or else mapped for the
// copy (populated: one call maps them faster than a fault each).
class ExtentPages {
 public:
  ExtentPages(int fd, const Extent& e, std::byte* in_window) : data_(in_window) {
    if (data_) return;
    len_ = capacity(e.len);
    data_ = static_cast<std::byte*>(posix::memfd_map_range(fd, e.off, len_));
  }
  ~ExtentPages() {
    if (len_ != 0) posix::memfd_unmap_range(data_, len_);
  }
  ExtentPages(const ExtentPages&) = delete;
  ExtentPages& operator=(const ExtentPages&) = delete;
  std::byte* data() const { return data_; }

 private:
  std::byte* data_ = nullptr;
  std::uint64_t len_ = 0;  // mapped for the copy
};

}  // namespace

// ---- the ring, without a lock ----

struct QueueAccessImpl {
  // This thread's index in the registry (registered on first use).
  static OwnerCache& owner(QueueCore& q) {
    QueueState& s = *q.s_;
    const auto& me = posix::this_thread_identity();
    for (auto& c : t_owners)
      if (c.uid == s.uid && c.tid == me.tid) [[likely]]
        return c;
    const std::uint32_t i = register_owner(q, me);
    OwnerCache& c = t_owners[t_next_owner++ % kCached];
    c = {s.uid, me.tid, i, s.head.load(std::memory_order_acquire), 0, 0, &s.counts[i]};
    return c;
  }

  static std::uint32_t register_owner(QueueCore& q, const posix::ThreadIdentity& me) {
    QueueState& s = *q.s_;
    const std::uint64_t id = identity_word(me);
    for (std::uint32_t i = 0; i < kOwners; ++i)
      if (s.owners[i].id.load(std::memory_order_relaxed) == id) return i;
    for (std::uint32_t i = 0; i < kOwners; ++i) {
      std::uint64_t z = 0;
      if (s.owners[i].id.load(std::memory_order_relaxed) == 0 &&
          s.owners[i].id.compare_exchange_strong(z, id)) {
        std::uint32_t used = s.owners_used.load();
        while (used < i + 1 && !s.owners_used.compare_exchange_weak(used, i + 1)) {
        }
        return i;
      }
    }
    // Full: an entry of a thread that has ended is taken over, once what it held is freed.
    for (std::uint32_t i = 0; i < kOwners; ++i) {
      std::uint64_t old = s.owners[i].id.load();
      if (owner_alive(s, i) || !s.owners[i].id.compare_exchange_strong(old, id)) continue;
      for (std::uint64_t u = 0; u < kUnits; ++u) {
        const std::uint64_t w = stamp_at(s, u).load(std::memory_order_acquire);
        const Stamp st = unpack(w);
        if (st.owner == i && (st.state == Unit::claimed || st.state == Unit::taken))
          reclaim(q, i, st.lap * kUnits + u, w);
      }
      return i;
    }
    throw ProcessError("mp::Queue '" + name_of(s) + "': more than " + std::to_string(kOwners) +
                       " live threads use it");
  }

  // The record at `pos` (stamp `word`) belongs to a thread that died: `me` steals it and frees
  // it. False when someone changed it first.
  static bool reclaim(QueueCore& q, std::uint32_t me, std::uint64_t pos, std::uint64_t word) {
    QueueState& s = *q.s_;
    Stamp st = unpack(word);
    if (st.lap != lap_of(pos)) return false;
    st.owner = me;
    const std::uint64_t mine = pack(st);
    if (st.large && st.bytes != 0) {  // pages owned by the record: under the lock
      const int fd = block_descriptor(q.block_);
      RingLock g(q.lock_, s, fd, std::nullopt);
      std::uint64_t w = word;
      if (!stamp_at(s, pos).compare_exchange_strong(w, mine)) return false;
      std::byte payload[sizeof(Extent)];
      ring_read(s, pos, 0, payload, sizeof payload);
      Extent e{};
      try {
        e = check_extent(name_view(s), payload, s.heap_base, s.heap_top, posix::page_size());
      } catch (const ProcessError&) {
        e = {};  // scribbled over: nothing to give back but the unit
      }
      if (e.len != 0) {
        finish_large(s, fd, pos, mine, e, true);
      } else {
        s.lost.fetch_add(1);
        free_units(s, pos, sizeof(Extent));
      }
    } else {
      std::uint64_t w = word;
      if (!stamp_at(s, pos).compare_exchange_strong(w, mine)) return false;
      free_units(s, pos, st.bytes);
      // A large record claimed before its pages were handed over: its in-flight slot counts it.
      if (!st.large) s.lost.fetch_add(1);
    }
    if (st.state == Unit::taken) {
      item_done(s);
      bump(s.counts[me].got);
    }
    wake_room(s);
    return true;
  }

  // Records of dead threads, from the head on, are reclaimed.
  static void reap_ring(QueueCore& q) {
    QueueState& s = *q.s_;
    const std::uint32_t me = owner(q).index;
    std::uint32_t checked[8];
    bool alive[8];
    int n_checked = 0;
    auto is_alive = [&](std::uint32_t i) {
      if (i == me) return true;
      for (int k = 0; k < n_checked; ++k)
        if (checked[k] == i) return alive[k];
      const bool a = owner_alive(s, i);
      if (n_checked < 8) checked[n_checked] = i, alive[n_checked++] = a;
      return a;
    };
    const std::uint64_t h = s.head.load(std::memory_order_acquire);
    for (std::uint64_t pos = h; pos - h < kUnits;) {
      const std::uint64_t w = stamp_at(s, pos).load(std::memory_order_acquire);
      const Stamp st = unpack(w);
      if (st.lap == lap_of(pos)) {
        if (st.state == Unit::free) return;
        if ((st.state == Unit::claimed || st.state == Unit::taken) && !is_alive(st.owner))
          reclaim(q, me, pos, w);
        pos += units_of(st.bytes);
      } else if (st.lap == lap_of(pos + kUnits) && st.state == Unit::free) {
        pos += units_of(st.bytes);
      } else {
        return;
      }
    }
  }

  // Moves the head past records already freed (consumers move it only every kHintLag units, and
  // one may have died, or freed out of order). One CAS for the whole walk: while the head still
  // reads h, none of the records walked can have been claimed again (a claim needs the head past
  // its unit's last lap).
  static std::uint64_t advance_head(QueueState& s) {
    std::uint64_t h = s.head.load(std::memory_order_acquire);
    for (;;) {
      std::uint64_t end = h;
      while (end - h < kUnits) {
        const Stamp st = unpack(stamp_at(s, end).load(std::memory_order_acquire));
        if (st.lap != lap_of(end + kUnits) || st.state != Unit::free) break;
        end += units_of(st.bytes);
      }
      if (end == h || s.head.compare_exchange_strong(h, end, std::memory_order_acq_rel)) return end;
    }
  }

  // The record at `pos` of this lap is one a producer or consumer is in the middle of moving:
  // the waiter it holds up is not woken by that mover (see wait_for).
  static bool mid_step(QueueState& s, std::uint64_t pos, Unit state) {
    const Stamp st = unpack(stamp_at(s, pos).load(std::memory_order_seq_cst));
    return st.lap == lap_of(pos) && st.state == state;
  }

  // Claims a record of `bytes` at the tail: its position, or none when the ring has no room
  // (`busy`: a consumer is copying out the record in the way). The search starts at this
  // thread's own cursor when the shared hint is behind it, and walks past records already
  // claimed; the hint is moved (by CAS: a store could take it back) only when it lags kHintLag.
  // (No std::optional returned here or by try_take: built a byte at a time on the stack and
  // read whole, it costs a store-forwarding stall on every put and get.)
  static constexpr std::uint64_t kNoPos = ~std::uint64_t{0};
  static std::uint64_t try_claim(QueueState& s, OwnerCache& me, std::uint32_t bytes, bool large,
                                 bool& busy) {
    const std::uint64_t n = units_of(bytes);
    // The claim's stamp but for its lap, made once in a register: packed in the loop from
    // `large` and `bytes` spilled to the stack, it was read back wider than written (a
    // store-forwarding stall, which waits for every older store, the last item's included, to
    // reach the cache: the one cache miss of each put taken twice).
    const std::uint64_t claim = pack({Unit::claimed, large, me.index, bytes, 0});
    int stale = 0;
    std::uint64_t hint = s.tail.load(std::memory_order_acquire);
    // Mine is at or before the tail (the end of my last claim); but laps old when the hint is
    // past it.
    bool from_mine = me.tail > hint && me.tail - hint < kUnits;
    std::uint64_t t = from_mine ? me.tail : hint;
    for (;;) {
      auto& first = stamp_at(s, t);
      std::uint64_t w = first.load(std::memory_order_acquire);
      const Stamp st = unpack(w);
      const std::uint64_t lap = lap_of(t);
      if ((st.lap == lap && st.state != Unit::free) ||
          (st.lap == lap_of(t + kUnits) && st.state == Unit::free)) {
        // Someone's record (or one already read): walk past it.
        if (!st.large && st.bytes > kInlineMax)
          corrupted(s,
                    "a record of " + std::to_string(st.bytes) + " bytes at " + std::to_string(t));
        t += units_of(st.bytes);
        continue;
      }
      // Room: the head has passed these units' last lap.
      if (t + n > me.head + kUnits) {
        me.head = s.head.load(std::memory_order_acquire);
        if (t + n > me.head + kUnits) me.head = advance_head(s);
        if (t + n > me.head + kUnits) {
          if (!from_mine && s.tail.load(std::memory_order_acquire) == hint && t == hint &&
              (t > me.head + kUnits || t < me.head))
            // The tail never runs more than the ring ahead of the head.
            corrupted(s, "the tail " + std::to_string(t) + " is far from the head " +
                             std::to_string(me.head));
          busy = mid_step(s, me.head, Unit::taken);
          return kNoPos;
        }
      }
      if (st.lap == lap && st.state == Unit::free) {
        if (first.compare_exchange_strong(w, claim | lap, std::memory_order_seq_cst)) {
          me.tail = t + n;
          if (t + n - hint >= kHintLag) {
            std::uint64_t expect = hint;
            while (expect < t + n &&
                   !s.tail.compare_exchange_weak(expect, t + n, std::memory_order_release,
                                                 std::memory_order_relaxed)) {
            }
          }
          return t;
        }
        continue;  // another producer's now: walk past it
      }
      // A stamp of another lap: my cursor was stale (start again from the hint), or the hint is,
      // or the segment is corrupt.
      if (from_mine) {
        from_mine = false;
        me.tail = 0;
        t = hint = s.tail.load(std::memory_order_acquire);
        continue;
      }
      if (s.tail.load(std::memory_order_acquire) == hint && ++stale > 3)
        corrupted(
            s, "the tail " + std::to_string(t) + " meets a stamp of lap " + std::to_string(st.lap));
      t = hint = s.tail.load(std::memory_order_acquire);
    }
  }

  struct Taken {
    std::uint64_t pos;
    std::uint64_t word;
    Record rec;
    bool at_head;        // every record before it was freed
    std::uint64_t head;  // the head as read: moved past the record (when at_head) if it lags
  };

  // Takes the oldest ready record: none when nothing is ready now (`busy`: a record claimed
  // on the way is being written).
  //
  // Records still claimed are skipped (a slow producer must not hide another's items), but
  // FIFO per producer needs care: a claimed record read just before its producer published it
  // and claimed its next one would be passed for that next one. So once a ready record is
  // found, the claimed ones passed on the way are read again (after the ready one: its
  // producer's earlier records are visible as published by then), and the earliest of them
  // that is ready now is taken instead.
  static bool try_take(QueueState& s, OwnerCache& me, bool& busy, Taken& taken) {
    constexpr int kPassed = 64;
    int stale = 0;
    for (;;) {
      const std::uint64_t h = s.head.load(std::memory_order_acquire);
      // My cursor, when ahead of the head: every record before it is freed (so it lies in the
      // head's lap, a record's start).
      const bool from_mine = me.from > h && me.from - h < kUnits;
      bool at_head = true;
      std::uint64_t passed[kPassed];
      int n_passed = 0;
      bool overflow = false;
      std::uint64_t pos = from_mine ? me.from : h;
      for (; pos - h < kUnits;) {
        std::uint64_t w = stamp_at(s, pos).load(std::memory_order_seq_cst);
        Stamp st = unpack(w);
        if (st.lap == lap_of(pos)) {
          if (st.state == Unit::free) {  // nothing published from here on
            if (at_head) me.from = pos;
            busy = busy || n_passed > 0 || overflow;
            return false;
          }
          // The common record checked inline; the others (large, or nonsense) by check_record.
          Record rec = !st.large && st.bytes <= kInlineMax
                           ? Record{false, st.bytes, units_of(st.bytes)}
                           : check_record(name_view(s), w);
          if (st.state == Unit::ready) {
            if (overflow) break;  // too many passed to read again: walk again from the head
            std::uint64_t at = pos;
            for (int i = 0; i < n_passed; ++i) {
              const std::uint64_t pw = stamp_at(s, passed[i]).load(std::memory_order_acquire);
              const Stamp ps = unpack(pw);
              if (ps.state == Unit::ready && ps.lap == lap_of(passed[i])) {
                at = passed[i], w = pw, st = ps, rec = check_record(name_view(s), pw);
                break;
              }
            }
            // The same stamp, taken by me (by bits: a Stamp copied field by field through the
            // stack costs a store-forwarding stall).
            const std::uint64_t tw = retag(w, Unit::taken, me.index);
            if (stamp_at(s, at).compare_exchange_strong(w, tw, std::memory_order_seq_cst)) {
              taken = {at, tw, rec, at_head && at == pos, h};
              return true;
            }
            break;  // taken first by another: walk again
          }
          // Claimed or taken by someone: skip it, keep it before the head.
          if (st.state == Unit::claimed) {
            if (n_passed < kPassed)
              passed[n_passed++] = pos;
            else
              overflow = true;
          }
          pos += rec.units;
          at_head = false;
          continue;
        }
        if (st.lap == lap_of(pos + kUnits) && st.state == Unit::free) {  // freed already
          pos += units_of(st.bytes);
          continue;
        }
        if (from_mine) {  // my cursor was laps old: from the head
          me.from = 0;
          break;
        }
        // The head read is stale (the ring went round since), or the segment is corrupt.
        if (s.head.load(std::memory_order_acquire) == h && ++stale > 3)
          corrupted(s, "the head " + std::to_string(h) + " meets a stamp of lap " +
                           std::to_string(st.lap) + " at " + std::to_string(pos));
        break;
      }
      if (pos - h >= kUnits) return false;
    }
  }

  // After a take at the head: the next take starts past the record, and the shared head moves
  // there when it lags kHintLag (by CAS from what was read: every record between was freed).
  static void passed_head(QueueState& s, OwnerCache& me, const Taken& taken, std::uint64_t end) {
    if (!taken.at_head) return;
    me.from = end;
    if (end - taken.head >= kHintLag) {
      std::uint64_t expect = taken.head;
      s.head.compare_exchange_strong(expect, end, std::memory_order_release,
                                     std::memory_order_relaxed);
    }
  }

  // The item is published, then counted; a consumer seen asleep (looked at right after the
  // claim) is woken.
  static void publish(QueueState& s, OwnerCache& me, std::uint64_t pos, std::uint64_t ready,
                      bool wake) {
    if (s.joinable) s.unfinished.fetch_add(1);
    stamp_at(s, pos).store(ready, std::memory_order_release);
    fault(QueueStep::put_published);
    // Counted once published (qsize() never counts an item nobody can take yet: a consumer
    // woken for one would pass on a wake-up for nothing).
    bump(me.counts->put);
    if (wake) wake_one(s.item_seq);
  }

  // Whether a consumer sleeps (or is about to): looked at after the claim, whose CAS orders it
  // (wait_for says why that is enough).
  static bool consumer_sleeps(QueueState& s) {
    return s.get_waiters.sleeping.load(std::memory_order_seq_cst) != 0;
  }

  static void put_inline(QueueState& s, OwnerCache& me, std::uint64_t pos, const void* data,
                         std::uint32_t len) {
    const bool wake = consumer_sleeps(s);
    if (g_queue_fault) [[unlikely]] {  // a test's kill points: in two halves
      fault(QueueStep::put_claimed);
      ring_write(s, pos, 0, data, len / 2);
      fault(QueueStep::put_half_written);
      ring_write(s, pos, len / 2, static_cast<const std::byte*>(data) + len / 2, len - len / 2);
    } else {
      ring_write(s, pos, 0, data, len);
    }
    publish(s, me, pos, pack({Unit::ready, false, me.index, len, lap_of(pos)}), wake);
  }

  // Waits until `attempt` succeeds (or the deadline: false): producers for room (sleeping on
  // room_seq, registered in put_waiters), consumers for an item (item_seq, get_waiters).
  //
  // The eventcount: a waiter registers, reads the word (clearing a wake-up bit left set:
  // settle), tries once more, then sleeps on the word. The other side looks at the
  // registrations right after the CAS that claims (or takes) its record, and wakes one sleeper
  // once its step is done. Registration and that CAS are both seq_cst read-modify-writes, so one
  // of the two sees the other: either the mover sees the sleeper (and wakes it), or the waiter's
  // last try sees the record claimed (taken) by a mover still at work. Nobody wakes it then, so
  // it does not sleep: it spins and yields (the mover is a few instructions from done, or waits
  // for a CPU), and only a mover held up for kBusySpin (descheduled, or dead) makes it nap,
  // kBusyNap at a time, looking for dead movers every kRecheck.
  template <class Attempt, class More>
  static bool wait_for(QueueCore& q, std::atomic<std::uint32_t>& word, Waiters& waiters,
                       const Deadline& deadline, Attempt&& attempt, More&& more, bool tried) {
    bool took_over = false;  // slept, or cleared a wake-up bit: wake-ups may have been skipped
    auto done = [&] {
      // More are there than this one takes, and others sleep: the next sleeper's turn (nobody
      // else wakes it while the wake-up this one cleared was on its way).
      if (took_over && waiters.sleeping.load(std::memory_order_seq_cst) != 0 && more())
        wake_one(word);
      return true;
    };
    Clock::time_point busy_since{};
    bool was_busy = false;
    for (;;) {
      bool busy = false;
      // (Not again at once when the caller has just looked: a consumer that keeps up with its
      // producer would take the line of the stamp the producer is about to claim away from it
      // once more, for nothing.)
      if (!tried && attempt(busy)) return done();
      tried = false;
      if (past(deadline)) return false;
      // Spin: longer than a put or get takes, far shorter than a scheduler's tick. The clock is
      // first read after a few looks: a consumer that keeps up with its producer waits here for
      // every few items, and a clock read costs more than a look on this VM.
      Clock::time_point spin_until{};
      for (int i = 1;; ++i) {
        for (int k = 0; k < 8; ++k) pause();
        busy = false;
        if (attempt(busy)) return done();
        if ((i & 7) == 0) {
          if (i == 8) spin_until = Clock::now() + kSpin;
          if (Clock::now() >= spin_until) break;
          // The peer may be waiting for this CPU (more runnable threads than CPUs): let it run.
          std::this_thread::yield();
        }
      }
      waiters.sleeping.fetch_add(1, std::memory_order_seq_cst);
      const std::uint32_t seen = settle(word, took_over);
      busy = false;
      const bool got = attempt(busy);
      const auto now = Clock::now();
      if (busy && !was_busy) busy_since = now;
      was_busy = busy;
      bool woken = true;
      const bool nap = busy && now - busy_since >= kBusySpin;
      if (!got && (!busy || nap) && !past(deadline)) {
        woken = sleep_on(word, seen, deadline, busy ? kBusyNap : kRecheck);
        took_over = true;
      }
      waiters.sleeping.fetch_sub(1, std::memory_order_seq_cst);
      if (took_over) settle(word, took_over);
      if (got) return done();
      // Nothing for kRecheck, or held up that long by a mover: a dead peer may hold the ring.
      if ((!woken && !busy) || (busy && Clock::now() - busy_since >= kRecheck)) {
        reap_ring(q);
        busy_since = Clock::now();
      }
    }
  }

  template <class Attempt>
  static bool wait_room(QueueCore& q, const Deadline& deadline, Attempt&& attempt,
                        bool tried = false) {
    QueueState& s = *q.s_;
    return wait_for(
        q, s.room_seq, s.put_waiters, deadline, attempt,
        [&] { return s.maxsize <= 0 || q.qsize() < s.maxsize; }, tried);
  }

  template <class Attempt>
  static bool wait_item(QueueCore& q, const Deadline& deadline, Attempt&& attempt,
                        bool tried = false) {
    // More than the one this consumer took (not yet counted as got).
    return wait_for(
        q, q.s_->item_seq, q.s_->get_waiters, deadline, attempt, [&] { return q.qsize() > 1; },
        tried);
  }
};

// ---- QueueCore ----

QueueCore::QueueCore(long maxsize, bool joinable) {
  void* p = nullptr;
  block_ = make_data_block(kHeapBase, "mp-queue", p);
  s_ = new (p) QueueState();
  s_->maxsize = maxsize;
  s_->joinable = joinable;
  static std::atomic<unsigned> counter{0};
  const auto& me = posix::this_thread_identity();
  const unsigned n = ++counter;
  s_->uid = (static_cast<std::uint64_t>(me.pid) << 32) ^ (me.start << 20) ^ n ^
            static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
  if (s_->uid == 0) s_->uid = 1;
  std::snprintf(s_->name, sizeof s_->name, "mp-queue-%d-%u", me.pid, n);
  map_window();
}

void QueueCore::adopt(const BlockRef& ref) {
  void* p = nullptr;
  block_ = load_block(ref, p);
  s_ = static_cast<QueueState*>(p);
  if (s_->magic != kMagic || s_->version != kVersion || s_->units != kUnits ||
      s_->heap_base != kHeapBase)
    throw ProcessError("mp::Queue: the shared segment handed over is not a queue's");
  map_window();
}

void QueueCore::map_window() {
  // Address space only (the pages are the memfd's, touched once reserved). Without it, every
  // large item is mapped while it is copied.
  try {
    void* p = posix::memfd_map_window(block_descriptor(block_), kHeapBase, kWindow);
    window_ = std::shared_ptr<std::byte>(
        static_cast<std::byte*>(p), [](std::byte* w) { posix::memfd_unmap_range(w, kWindow); });
  } catch (const std::system_error&) {
    window_.reset();
  }
}

std::byte* QueueCore::window(std::uint64_t off, std::uint64_t len) const {
  if (!window_ || off < kHeapBase || off - kHeapBase > kWindow || len > kWindow - (off - kHeapBase))
    return nullptr;
  return window_.get() + (off - kHeapBase);
}

std::uint32_t queue_sleepers(const QueueCore& q) {
  return q.state()->get_waiters.sleeping.load();
}

std::string QueueCore::name() const {
  return name_of(*s_);
}

long QueueCore::qsize() const {
  // Every registered thread's counts (a thread counts its put before it publishes the item, its
  // get once it has freed the record).
  std::uint64_t put = 0, got = 0;
  const std::uint32_t n = std::min(s_->owners_used.load(std::memory_order_acquire), kOwners);
  for (std::uint32_t i = 0; i < n; ++i) {
    got += s_->counts[i].got.load(std::memory_order_acquire);
    put += s_->counts[i].put.load(std::memory_order_acquire);
  }
  return std::max<long>(static_cast<std::int64_t>(put - got), 0);
}

bool QueueCore::full() const {
  return s_->maxsize > 0 && qsize() >= s_->maxsize;
}

std::uint64_t QueueCore::lost() const {
  auto& self = const_cast<QueueCore&>(*this);
  QueueAccessImpl::reap_ring(self);
  QueueState& s = *s_;
  const bool in_flight = std::any_of(std::begin(s.slots), std::end(s.slots), [](const auto& slot) {
    return slot.tid.load(std::memory_order_relaxed) != 0;
  });
  if (in_flight) {
    const int fd = block_descriptor(block_);
    RingLock g(lock_, s, fd, std::nullopt);
    reap_slots(s, fd);
  }
  return s.lost.load();
}

bool QueueCore::put(const void* data, std::size_t len, bool block,
                    const std::optional<Duration>& timeout) {
  QueueState& s = *s_;
  using A = QueueAccessImpl;
  OwnerCache& me = A::owner(*this);
  // Not blocking: at once, whatever the timeout (CPython ignores it then).
  const Deadline deadline = block ? deadline_after(timeout) : Deadline(Clock::now());
  if (len > kInlineMax) return put_large(data, len, deadline);
  const auto bytes = static_cast<std::uint32_t>(len);
  if (s.maxsize <= 0) {
    bool busy = false;
    if (const auto pos = A::try_claim(s, me, bytes, false, busy); pos != A::kNoPos) [[likely]] {
      A::put_inline(s, me, pos, data, bytes);
      return true;
    }
    return A::wait_room(
        *this, deadline,
        [&](bool& busy) {
          const auto pos = A::try_claim(s, me, bytes, false, busy);
          if (pos == A::kNoPos) return false;
          A::put_inline(s, me, pos, data, bytes);
          return true;
        },
        true);
  }
  const int fd = block_descriptor(block_);
  bool timed_out = false;
  const bool done = A::wait_room(*this, deadline, [&](bool& busy) {
    RingLock g(lock_, s, fd, deadline);
    if (!g) return timed_out = true;
    if (qsize() >= s.maxsize) return false;
    const auto pos = A::try_claim(s, me, bytes, false, busy);
    if (pos == A::kNoPos) return false;
    A::put_inline(s, me, pos, data, bytes);
    return true;
  });
  return done && !timed_out;
}

bool QueueCore::put_large(const void* data, std::size_t len, const Deadline& deadline) {
  QueueState& s = *s_;
  using A = QueueAccessImpl;
  OwnerCache& me = A::owner(*this);
  const int fd = block_descriptor(block_);
  if (deadline && Clock::now() >= *deadline && full()) return false;

  // The item first gets pages of its own (a kept extent of its size class, or new ones at the
  // heap's top) and is copied there without the lock.
  const std::uint64_t cap = capacity(len);
  std::uint32_t slot = kNoSlot;
  Extent extent{};
  bool reused = false;
  enum Reserved { kTimedOut, kDone, kWait };
  auto reserve = [&](bool may_wait) {
    RingLock g(lock_, s, fd, deadline);
    if (!g) return kTimedOut;
    // The latest given back first: its pages may still be in a cache.
    std::uint32_t k = s.n_kept;
    while (k > 0 && s.kept[k - 1].cap != cap) --k;
    reused = k > 0;
    if (reused) --k;
    // None kept, and a pipeline of large items in flight (a consumer will give one back soon):
    // waiting a little for it costs less than new pages, which both sides fault in.
    if (!reused && may_wait && cap <= kKeepBytes && s.live - s.n_kept >= kPipeline) return kWait;
    Journal& j = s.journal;
    j.heap_top = s.heap_top;
    j.live = s.live;
    j.n_kept = s.n_kept;
    j.slot = kNoSlot;
    if (reused) {
      extent = {s.kept[k].off, len};
      j.kept_i = k;
      j.kept_was = s.kept[k];
    } else {
      extent = {s.live == 0 ? s.heap_base : s.heap_top, len};
    }
    j.extent = extent;
    begin(j, kReserve);
    if (reused) {  // the last kept extent takes its entry
      s.kept[k] = s.kept[--s.n_kept];
      s.kept_bytes -= cap;
    } else {
      s.heap_top = extent.off;
    }
    slot = claim_slot(s, fd, extent);
    j.slot = slot;
    if (!reused) {
      s.heap_top += cap;
      ++s.live;
    }
    end(j);
    return kDone;
  };
  Reserved r = reserve(true);
  if (r == kWait) {
    // Bounded by about what new pages cost (~1 ms a MiB here on a quiet machine, several on a
    // loaded one, where the consumer that would give one back also loses its CPU for ms), so
    // that a queue nobody reads only takes puts more slowly.
    Deadline until = Clock::now() + std::chrono::microseconds(cap >> 8);
    if (deadline && *deadline < *until) until = deadline;
    A::wait_room(*this, until, [&](bool&) { return s.n_kept.load(std::memory_order_relaxed) > 0; });
    r = reserve(false);
  }
  if (r == kTimedOut) return false;
  auto give_back = [&] {
    RingLock g(lock_, s, fd, std::nullopt);
    drop_extent(s, fd, extent);
    free_slot(s, slot);
  };
  try {
    if (!reused) posix::memfd_reserve(fd, extent.off, cap);  // a kept extent has its pages
    ExtentPages pages(fd, extent, window(extent.off, cap));
    std::byte* dst = pages.data();
    std::memcpy(dst, data, len / 2);
    fault(QueueStep::put_large_copying);
    std::memcpy(dst + len / 2, static_cast<const std::byte*>(data) + len / 2, len - len / 2);
  } catch (const std::system_error& e) {
    give_back();
    throw ProcessError("mp::Queue '" + name_of(s) + "': no room for an item of " +
                       std::to_string(len) + " bytes in its memfd (" + e.what() + ")");
  } catch (...) {
    give_back();
    throw;
  }

  // Then a record of the ring takes the pages over from the slot, under the lock.
  auto hand_over = [&](std::uint64_t pos) {
    const std::uint64_t claimed16 =
        pack({Unit::claimed, true, me.index, sizeof(Extent), lap_of(pos)});
    Journal& j = s.journal;
    j.slot = slot;
    j.pos = pos;
    j.word = claimed16;
    begin(j, kPublish);
    ring_write(s, pos, 0, &extent, sizeof extent);
    stamp_at(s, pos).store(claimed16, std::memory_order_release);
    free_slot(s, slot);
    end(j);
    fault(QueueStep::put_large_handed_over);
  };
  auto publish = [&](std::uint64_t pos) {
    A::publish(s, me, pos, pack({Unit::ready, true, me.index, sizeof(Extent), lap_of(pos)}),
               A::consumer_sleeps(s));
  };
  bool timed_out = false;
  const bool bounded = s.maxsize > 0;
  const bool done = A::wait_room(*this, deadline, [&](bool& busy) {
    if (bounded) {  // the count checked and the item published under one hold of the lock
      RingLock g(lock_, s, fd, deadline);
      if (!g) return timed_out = true;
      if (qsize() >= s.maxsize) return false;
      const auto pos = A::try_claim(s, me, 0, true, busy);
      if (pos == A::kNoPos) return false;
      hand_over(pos);
      publish(pos);
      return true;
    }
    const auto pos = A::try_claim(s, me, 0, true, busy);
    if (pos == A::kNoPos) return false;
    {
      RingLock g(lock_, s, fd, std::nullopt);
      hand_over(pos);
    }
    publish(pos);
    return true;
  });
  if (!done || timed_out) {
    give_back();
    return false;
  }
  return true;
}

bool QueueCore::get(ItemSink sink, void* ctx, bool block, const std::optional<Duration>& timeout,
                    ItemAppend append) {
  QueueState& s = *s_;
  using A = QueueAccessImpl;
  OwnerCache& me = A::owner(*this);
  const Deadline deadline = block ? deadline_after(timeout) : Deadline(Clock::now());
  bool busy = false;
  A::Taken taken;
  if (!A::try_take(s, me, busy, taken) &&
      !A::wait_item(
          *this, deadline, [&](bool& busy) { return A::try_take(s, me, busy, taken); }, true))
    return false;
  // A producer asleep for room, looked at right after the take's CAS (see wait_for).
  const bool producer_sleeps = s.put_waiters.sleeping.load(std::memory_order_seq_cst) != 0;
  const std::uint64_t pos = taken.pos;
  fault(QueueStep::get_taken);
  if (!taken.rec.large) [[likely]] {
    const std::uint32_t n = taken.rec.bytes;
    void* dst = nullptr;
    try {
      dst = sink(ctx, n);
    } catch (...) {
      free_units(s, pos, n);
      s.lost.fetch_add(1);
      item_done(s);
      bump(me.counts->got);
      wake_room(s);
      throw;
    }
    if (g_queue_fault) [[unlikely]] {
      ring_read(s, pos, 0, dst, n / 2);
      fault(QueueStep::get_copied);
      ring_read(s, pos, n / 2, static_cast<std::byte*>(dst) + n / 2, n - n / 2);
    } else {
      ring_read(s, pos, 0, dst, n);
    }
    free_units(s, pos, n);
    A::passed_head(s, me, taken, pos + units_of(n));
    bump(me.counts->got);
    // Bounded: producers wait for the count, which no take orders (wake_room's bump does).
    if (s.maxsize > 0)
      wake_room(s);
    else if (producer_sleeps)
      wake_one(s.room_seq);
    return true;
  } else {
    const int fd = block_descriptor(block_);
    std::byte payload[sizeof(Extent)];
    ring_read(s, pos, 0, payload, sizeof payload);
    Extent extent{};
    bool delivered = false;
    try {
      // Checked into a variable of its own: the handler below reads `extent`, and an
      // assignment from the call could be compiled as a write into it before the check threw.
      const Extent checked =
          check_extent(name_view(s), payload, s.heap_base, s.heap_top, posix::page_size());
      extent = checked;
      const std::uint64_t half = extent.len / 2;
      if (append) {
        ExtentPages pages(fd, extent, window(extent.off, capacity(extent.len)));
        const std::byte* src = pages.data();
        append(ctx, extent.len, src, half);
        fault(QueueStep::get_large_copying);
        append(ctx, extent.len, src + half, extent.len - half);
      } else {
        auto* dst = static_cast<std::byte*>(sink(ctx, extent.len));
        ExtentPages pages(fd, extent, window(extent.off, capacity(extent.len)));
        const std::byte* src = pages.data();
        std::memcpy(dst, src, half);
        fault(QueueStep::get_large_copying);
        std::memcpy(dst + half, src + half, extent.len - half);
      }
      delivered = true;
    } catch (...) {
      RingLock g(lock_, s, fd, std::nullopt);
      if (extent.len != 0) {
        finish_large(s, fd, pos, taken.word, extent, true);
      } else {
        s.lost.fetch_add(1);
        free_units(s, pos, sizeof(Extent));
      }
      item_done(s);
      bump(me.counts->got);
      wake_room(s);
      throw;
    }
    RingLock g(lock_, s, fd, std::nullopt);
    finish_large(s, fd, pos, taken.word, extent, !delivered);
  }
  A::passed_head(s, me, taken, pos + 1);
  bump(me.counts->got);
  // A producer may wait for the extent given back, not for room (put_large): told always.
  wake_room(s);
  (void)producer_sleeps;
  return true;
}

void QueueCore::task_done() {
  QueueState& s = *s_;
  std::int64_t u = s.unfinished.load();
  do {
    if (u <= 0) throw std::logic_error("task_done() called too many times");
  } while (!s.unfinished.compare_exchange_weak(u, u - 1));
  if (u > 1) return;
  s.done_seq.fetch_add(1);
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
