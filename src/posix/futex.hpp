// What the process-shared primitives (synchronize.cpp) need from Linux: shared futexes, a
// block of memory shared through a memfd, and who this thread is / whether another is alive.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace mp::posix {

using Clock = std::chrono::steady_clock;

/// Sleeps while *word == expected, until woken, `deadline` (none: no bound) or a signal.
/// Returns false only when the deadline passed. Spurious returns are the caller's to handle.
bool futex_wait(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::optional<Clock::time_point> deadline);
/// Wakes up to `n` waiters (INT32_MAX: all) of `word`, in any process.
void futex_wake(const std::atomic<std::uint32_t>& word, int n);

/// A memfd of `size` bytes (zero-filled, close-on-exec), mapped shared. Throws system_error.
struct SharedMapping {
  int fd = -1;
  void* addr = nullptr;
  std::size_t size = 0;
};
SharedMapping create_shared_mapping(std::size_t size, const char* name);
/// Maps a descriptor made by create_shared_mapping (it takes ownership of `fd`).
SharedMapping map_shared(int fd);
void unmap_shared(SharedMapping& m) noexcept;

/// This thread as another process can find it: its thread id, its process id and its start
/// time (clock ticks since boot, /proc's field 22), which tells a live thread from a later one
/// that reuses the id. Cached per thread, forgotten in a fork child.
struct ThreadIdentity {
  std::uint32_t tid = 0;
  std::int32_t pid = 0;
  std::uint64_t start = 0;
};
// Cached per thread (initial-exec TLS: one instruction to reach, the fast path of every lock).
extern thread_local ThreadIdentity t_identity __attribute__((tls_model("initial-exec")));
const ThreadIdentity& load_thread_identity();
inline const ThreadIdentity& this_thread_identity() {
  if (t_identity.tid == 0) [[unlikely]]
    return load_thread_identity();
  return t_identity;
}
/// Drops the cached identity (a child made by a raw clone, where atfork handlers do not run).
void forget_thread_identity() noexcept;

/// Whether thread `tid`, started at `start` (0: not known), still runs: not ended, not a
/// zombie, its id not reused. Without /proc, or not allowed to look, true.
bool thread_alive(std::uint32_t tid, std::uint64_t start);
/// The same, given only the low 32 bits of the start time (where one 64-bit word must hold
/// both, as a queue's registry of threads).
bool thread_alive_low32(std::uint32_t tid, std::uint32_t start_low32);
/// Whether `tid` is a thread of this process.
bool is_own_thread(std::uint32_t tid);
}  // namespace mp::posix
