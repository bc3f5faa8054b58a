#include "result_ring.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "posix/futex.hpp"
#include "posix/posix.hpp"

namespace mp::detail {

// Counts only grow (mod 2^64): what waits is tail - head, where it starts is head % kBytes.
// The two counts sit on lines of their own: each is written by one side, read by the other.
struct ResultRing::Header {
  alignas(64) std::atomic<std::uint64_t> tail;     // bytes published (the worker's)
  alignas(64) std::atomic<std::uint64_t> head;     // bytes read (the parent's)
  alignas(64) std::atomic<std::uint32_t> ring_me;  // 1: a parent thread sleeps until rung
  std::atomic<std::uint32_t> waiting;              // 1: the worker waits for room
  std::atomic<std::uint32_t> room;                 // futex word: bumped for a waiting worker
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "the header is shared between processes: its atomics must be lock-free");

ResultRing::ResultRing(std::uint64_t* words)
    : words_(words), data_(reinterpret_cast<std::byte*>(words + 32)) {
  static_assert(sizeof(Header) <= 32 * 8, "kWords leaves 32 words for the header");
}

ResultRing::Header& ResultRing::h() const {
  return *reinterpret_cast<Header*>(words_);
}

void ResultRing::reset() {
  Header& r = h();
  r.tail.store(0, std::memory_order_relaxed);
  r.head.store(0, std::memory_order_relaxed);
  r.ring_me.store(0, std::memory_order_relaxed);
  r.waiting.store(0, std::memory_order_relaxed);
  r.room.store(0, std::memory_order_release);
}

namespace {
// After a publish (a seq_cst store of the tail): the parent asked to be rung (it armed, then
// found nothing): one byte. Both sides store, then load the other's word, all seq_cst (no
// fences: ThreadSanitizer does not model them): either arm() sees what was published or this
// sees its ask.
void ring_if_asked(std::atomic<std::uint32_t>& ring_me, int bell) {
  if (ring_me.load(std::memory_order_seq_cst) != 0 &&
      ring_me.exchange(0, std::memory_order_acq_rel) != 0) {
    const std::byte b{1};
    // A full socket already holds a byte that rings; a parent gone reads nothing anyway.
    posix::send_nowait(bell, std::span(&b, 1));
  }
}
}  // namespace

void ResultRing::write(std::span<const std::span<const std::byte>> parts, int bell, int parent) {
  Header& r = h();
  std::uint64_t tail = r.tail.load(std::memory_order_relaxed);
  for (std::span<const std::byte> part : parts) {
    while (!part.empty()) {
      const std::uint64_t used = tail - r.head.load(std::memory_order_acquire);
      if (used >= kBytes) {
        // Full: what is written so far goes now, and the parent is rung for it; then wait.
        r.tail.store(tail, std::memory_order_seq_cst);
        ring_if_asked(r.ring_me, bell);
        // As with the bell: store our ask, then load theirs (read()'s head), both seq_cst.
        r.waiting.store(1, std::memory_order_seq_cst);
        const std::uint32_t seen = r.room.load(std::memory_order_seq_cst);
        if (tail - r.head.load(std::memory_order_seq_cst) < kBytes) continue;
        // Bounded, so that a parent gone (its sentinel) is noticed.
        posix::futex_wait(r.room, seen, posix::Clock::now() + std::chrono::milliseconds(100));
        if (parent >= 0) {
          posix::PollFd p{parent};
          if (posix::poll_fds(std::span(&p, 1), posix::Duration(0)) > 0 && p.readable)
            throw std::system_error(EPIPE, std::generic_category(),
                                    "mp::Pool: the parent has gone");
        }
        continue;
      }
      const std::size_t n = std::min<std::uint64_t>(part.size(), kBytes - used);
      const std::size_t at = tail % kBytes, first = std::min(n, kBytes - at);
      std::memcpy(data_ + at, part.data(), first);
      std::memcpy(data_, part.data() + first, n - first);
      tail += n;
      part = part.subspan(n);
    }
  }
  r.tail.store(tail, std::memory_order_seq_cst);
  ring_if_asked(r.ring_me, bell);
}

std::size_t ResultRing::read(std::span<std::byte> into) {
  Header& r = h();
  const std::uint64_t head = r.head.load(std::memory_order_relaxed);
  // A count the worker corrupted reads garbage (the frames then say so), never out of bounds.
  const std::size_t n = std::min<std::uint64_t>(
      std::min<std::uint64_t>(r.tail.load(std::memory_order_acquire) - head, kBytes), into.size());
  if (n == 0) return 0;
  const std::size_t at = head % kBytes, first = std::min(n, kBytes - at);
  std::memcpy(into.data(), data_ + at, first);
  std::memcpy(into.data() + first, data_, n - first);
  r.head.store(head + n, std::memory_order_seq_cst);
  if (r.waiting.load(std::memory_order_seq_cst) != 0 &&
      r.waiting.exchange(0, std::memory_order_acq_rel) != 0) {
    r.room.fetch_add(1, std::memory_order_release);
    posix::futex_wake(r.room, 1);
  }
  return n;
}

bool ResultRing::arm() {
  Header& r = h();
  // Left set even when something is there: another thread of the parent may sleep on it.
  r.ring_me.store(1, std::memory_order_seq_cst);
  return r.tail.load(std::memory_order_seq_cst) == r.head.load(std::memory_order_relaxed);
}

}  // namespace mp::detail
