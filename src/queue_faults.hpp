// Test hooks into the queues' shared ring (src/queues.cpp): where a test makes a process die
// mid-step, and where it reaches the shared segment to corrupt it. Not part of the API.
#pragma once

#include <cstddef>

#include "mp/queues.hpp"

namespace mp::detail {

// The steps a fault hook is called at (the process is then inside that step).
enum class QueueStep {
  put_half_written,   // holding the lock, half of an inline record written, not published
  get_copied,         // holding the lock, an inline item copied out, not yet taken
  put_large_copying,  // not holding the lock, half of a large item copied to its pages
  get_large_copying,  // not holding the lock, half of a large item copied out
};
// Called at each step when set (a test sets it in a child that then kills itself).
extern void (*g_queue_fault)(QueueStep step);

struct QueueAccess {
  // The shared segment: its state header and, kQueueRingOffset bytes in, the ring.
  template <class Q>
  static std::byte* segment(const Q& q) {
    return reinterpret_cast<std::byte*>(const_cast<QueueState*>(q.core_.s_));
  }
};
extern const std::size_t kQueueRingOffset;
// Offsets in the state header of the ring's head and tail (std::uint64_t byte positions).
extern const std::size_t kQueueHeadOffset, kQueueTailOffset;

}  // namespace mp::detail
