// Test hooks into the queues' shared ring (src/queues.cpp): where a test makes a process die
// mid-step, and where it reaches the shared segment to corrupt it. Not part of the API.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "mp/queues.hpp"

namespace mp::detail {

// The steps a fault hook is called at (the process is then inside that step).
enum class QueueStep {
  put_claimed,            // a record claimed, nothing written yet (lost)
  put_half_written,       // half of an inline record written, not published (lost)
  put_published,          // published, not yet counted (delivered)
  put_large_copying,      // half of a large item copied to its pages, no record yet (lost)
  put_large_handed_over,  // a large item's pages handed to its record, not published (lost)
  get_taken,              // a record taken, nothing copied out (lost)
  get_copied,             // half of an inline item copied out, not freed (lost)
  get_large_copying,      // half of a large item copied out (lost)
};
inline constexpr int kQueueSteps = 8;
// Called at each step when set (a test sets it in a child that then kills itself).
extern void (*g_queue_fault)(QueueStep step);

// Futex wake-ups of one waiter made by puts and gets (every process counts its own).
extern std::atomic<std::uint64_t> g_queue_wakes;
// Consumers registered as sleeping on the queue's items.
std::uint32_t queue_sleepers(const QueueCore& q);

struct QueueAccess {
  // The shared segment: its state header and, kQueueRingOffset bytes in, the ring.
  template <class Q>
  static std::byte* segment(const Q& q) {
    return reinterpret_cast<std::byte*>(const_cast<QueueState*>(q.core_.s_));
  }
  template <class Q>
  static std::uint32_t sleepers(const Q& q) {
    return queue_sleepers(q.core_);
  }
};
extern const std::size_t kQueueStampsOffset, kQueueRingOffset;
// Offsets in the state header of the ring's head and tail (std::uint64_t byte positions).
extern const std::size_t kQueueHeadOffset, kQueueTailOffset;
// The offset of the word consumers sleep on (std::atomic<std::uint32_t>; its low bit: a
// wake-up is on its way).
extern const std::size_t kQueueItemSeqOffset;

}  // namespace mp::detail
