// Shared memory (Python's multiprocessing.shared_memory.SharedMemory): a named POSIX shared
// memory segment, mapped into this process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include <cereal/types/string.hpp>

#include "mp/errors.hpp"

namespace mp {

/// A named shared memory segment (/dev/shm/<name> on Linux) and this process's mapping of it.
/// A copy is another handle to the same segment and mapping (as a copied mp::Lock is the same
/// lock), so one object can be the argument of several Processes, as in Python. Destroying or
/// closing a handle never removes the segment: one process calls unlink() once nobody needs it
/// any more, as in Python.
///
/// Errors: misuse throws std::invalid_argument with CPython's ValueError text; a failed
/// system call throws std::system_error with its errno (ENOENT for a missing segment, EEXIST
/// for one that exists, EACCES, ENOSPC ...) and a message naming the segment.
class SharedMemory {
 public:
  /// An empty object, like a moved-from one: no name, no mapping (what a received object is
  /// built from before it attaches).
  SharedMemory() noexcept = default;
  /// Creates (`create`) or attaches to the segment `name` (without the leading '/'). With no
  /// name, creates "psm_" + 8 hex digits, retrying on a collision. A new segment has mode 0600
  /// and `size` bytes, all reserved at once: a full /dev/shm is ENOSPC here, never SIGBUS at a
  /// later write. Attaching ignores `size`: the segment keeps its own. Only a creator with
  /// `track` registers the segment with the resource tracker (an attacher never does).
  /// Throws std::invalid_argument for size < 0 ("'size' must be a positive integer"), create
  /// with size 0 ("'size' must be a positive number different from zero"), no name without
  /// create ("'name' can only be None if create=True"), a name with a NUL ("embedded null
  /// character"), an empty segment ("cannot mmap an empty file"); std::system_error else.
  explicit SharedMemory(std::optional<std::string> name, bool create = false, std::int64_t size = 0,
                        bool track = true);
  /// Another handle to the same segment, sharing this process's mapping (empty if `o` is closed).
  SharedMemory(const SharedMemory& o) = default;
  SharedMemory& operator=(const SharedMemory& o) = default;
  /// Moves leave `o` empty.
  SharedMemory(SharedMemory&& o) noexcept;
  SharedMemory& operator=(SharedMemory&& o) noexcept;
  /// Closes this handle (never unlinks).
  ~SharedMemory();

  /// The segment's name, as given or generated, without the leading '/' (Python's .name).
  const std::string& name() const { return name_; }
  /// The segment's size in bytes; kept after close().
  std::size_t size() const { return size_; }
  /// The mapped bytes, shared with every process that maps the segment; empty after close().
  std::span<std::byte> buf() const { return {map_.get(), map_ ? size_ : 0}; }
  /// Drops this handle's mapping (buf() becomes empty; the memory is unmapped once the last
  /// copy closes); the segment stays. Idempotent.
  void close() noexcept;
  /// Removes the segment's name (shm_unlink): mappings that exist keep working, a new attach
  /// gets ENOENT. A segment already removed (a second unlink(), another process's, or the
  /// resource tracker of a Python process that attached to it and exited: CPython's gh-82300)
  /// throws mp::FileNotFoundError (a std::system_error ENOENT) saying so, as CPython raises
  /// FileNotFoundError. Works before or after close(); does nothing on an empty object.
  void unlink();
  /// The `track` flag it was made (or received) with: whether its creation is registered with
  /// the resource tracker and unlink() tells the tracker that the segment is gone.
  bool tracked() const { return track_; }

  /// Python's repr: SharedMemory('name', size=512).
  friend std::ostream& operator<<(std::ostream& os, const SharedMemory& shm);

  /// Crossing to another process (a Process argument, Connection::send): by name, then the
  /// receiver attaches to it (std::system_error ENOENT if it was unlinked meanwhile), as
  /// Python pickles it. The receiver never registers it with the tracker; it keeps `track`.
  template <class Archive>
  void save(Archive& ar) const {
    ar(name_, track_);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::string name;
    bool track = true;
    ar(name, track);
    *this = name.empty() ? SharedMemory() : SharedMemory(std::move(name), false, 0, track);
  }

 private:
  std::string name_;
  std::size_t size_ = 0;
  std::shared_ptr<std::byte> map_;  // the mapping, size_ bytes, shared by copies; null when closed
  bool track_ = false;
};

}  // namespace mp
