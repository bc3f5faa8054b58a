// The SharedMemoryManager (Python's multiprocessing.managers.SharedMemoryManager): a manager
// whose server owns the lifetime of the shared memory segments made through it.
//
//   mp::SharedMemoryManager smm;
//   smm.start();                                   // the server, in a child process
//   mp::SharedMemory shm = smm.SharedMemory(4096);  // any process may attach or receive it
//   auto list = smm.ShareableList(1, 2.5, "text");  // mp::ShareableList<int, double, std::string>
//   smm.shutdown();                                 // (or scope exit) both segments are unlinked
//
// Lifetime, as in CPython: the segment is created here (registered with the resource tracker,
// like any segment this process creates) and its name handed to the server, which unlinks it
// at shutdown(), telling the tracker it is gone. If the server dies without doing so (killed),
// shutdown() unlinks the segments this process made through it; and if the whole program
// dies, the resource tracker it shares with the server removes them when it ends.
//
// Included by <mp/managers.hpp>.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "mp/managers.hpp"
#include "mp/shared_memory.hpp"

namespace mp {

namespace managed {

/// On the server (CPython's SharedMemoryTracker): the segments it owns, unlinked when it goes.
class SharedMemoryTracker {
 public:
  static constexpr bool mp_standard = true;
  SharedMemoryTracker() = default;
  SharedMemoryTracker(const SharedMemoryTracker&) = delete;
  SharedMemoryTracker& operator=(const SharedMemoryTracker&) = delete;
  /// Unlinks every segment still tracked.
  ~SharedMemoryTracker();
  /// From now on the server owns the segment `name`.
  void track_segment(const std::string& name);
  /// Unlinks the segment `name` now and forgets it; false if it was not tracked.
  bool release_segment(const std::string& name);
  /// The names tracked, oldest first.
  std::vector<std::string> list_segments() const;
  /// Unlinks every tracked segment (one already removed by someone else is skipped); how many.
  std::size_t unlink_all();
  MP_METHODS(SharedMemoryTracker, track_segment, release_segment, list_segments, unlink_all)

 private:
  std::vector<std::string> names_;
};

}  // namespace managed

/// A BaseManager whose server owns the segments made by SharedMemory() and ShareableList():
/// shutdown() (or leaving the scope) unlinks them all. start() as BaseManager.
class SharedMemoryManager : public BaseManager {
 public:
  using BaseManager::BaseManager;
  SharedMemoryManager(SharedMemoryManager&& o) noexcept
      : BaseManager(std::move(o)),
        tracker_(std::exchange(o.tracker_, std::nullopt)),
        made_(std::move(o.made_)),
        owner_(std::exchange(o.owner_, 0)) {}
  /// Shuts down (unlinking the segments) if this process started the server.
  ~SharedMemoryManager();

  /// Starts the server (as BaseManager::start()) and its segment tracker.
  void start();
  /// Unlinks every segment made through this manager, then stops the server; idempotent.
  /// Only the process that started the server does anything (a fork child's copy does not).
  void shutdown();

  /// A new segment of `size` bytes owned by the server (Python's smm.SharedMemory(size)).
  /// Throws what mp::SharedMemory(std::nullopt, true, size) throws, std::logic_error before
  /// start(), mp::ManagerError if the server has gone (the segment is then unlinked).
  mp::SharedMemory SharedMemory(std::int64_t size);
  /// A new ShareableList holding `values`, its segment owned by the server (Python's
  /// smm.ShareableList(sequence)); a string literal makes a std::string slot.
  template <class... A>
  auto ShareableList(A&&... values) {
    using L = mp::ShareableList<typename detail::SlotOf<A>::type...>;
    return adopt(L(std::forward<A>(values)...));
  }
  /// As above with a capacity per slot (see mp::ShareableList).
  template <class... T>
  mp::ShareableList<T...> ShareableList(std::tuple<T...> values,
                                        std::array<std::size_t, sizeof...(T)> capacities) {
    return adopt(mp::ShareableList<T...>(std::move(values), capacities));
  }
  /// The names of the segments the server owns.
  std::vector<std::string> segment_names();
  /// Unlinks one segment now (before shutdown()); false if the server did not own it.
  bool release_segment(const std::string& name);

 private:
  template <class L>
  L adopt(L list) {
    track(list.shm());
    return list;
  }
  void track(mp::SharedMemory& shm);
  Proxy<managed::SharedMemoryTracker>& tracker();
  std::optional<Proxy<managed::SharedMemoryTracker>> tracker_;
  // What this process made through us (unlinked here if the server died), under its lock: the
  // manager's calls may come from several threads.
  struct Made {
    std::mutex mu;
    std::vector<std::string> names;
  };
  std::unique_ptr<Made> made_ = std::make_unique<Made>();
  int owner_ = 0;  // the pid that started the server
};

}  // namespace mp
