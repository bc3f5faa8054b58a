// Shared memory (CPython's shared_memory.py, POSIX half).
#include "mp/shared_memory.hpp"

#include <atomic>
#include <cerrno>
#include <cstring>

#include <limits>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "posix/futex.hpp"
#include "posix/posix.hpp"
#include "posix/shm.hpp"
#include "resource_tracker.hpp"

namespace mp {

namespace detail {
// Test seam: when set, generated names come from here (the suite forces a collision with it,
// as CPython's test_shared_memory_recreate patches _make_filename).
std::string (*shm_name_source)() = nullptr;
}  // namespace detail

namespace {

constexpr std::string_view kKind = "shared_memory";  // CPython's resource type name

// CPython's _make_filename: "psm_" and 4 random bytes in hex, 14 characters with the slash
// (FreeBSD's limit on a name).
std::string make_filename() {
  if (detail::shm_name_source) return detail::shm_name_source();
  // 32 random bits: a generator seeded once from the kernel (a system call per name cost more
  // than the rest of the name), mixed per draw (splitmix64). A name someone else holds already
  // is only a collision: O_EXCL refuses it and another is drawn.
  static std::atomic<std::uint64_t> state = [] {
    std::uint64_t seed = 0;
    const auto bytes = posix::random_bytes(sizeof seed);
    std::memcpy(&seed, bytes.data(), sizeof seed);
    return seed;
  }();
  // The pid (cached, renewed in a fork child) keeps a fork child, which inherits the state,
  // from drawing its parent's names.
  const auto pid = static_cast<std::uint64_t>(posix::this_thread_identity().pid);
  std::uint64_t z =
      (state.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed) + 0x9e3779b97f4a7c15ull) ^
      (pid << 32);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string name = "psm_";
  for (int shift = 28; shift >= 0; shift -= 4) name += kHex[(z >> shift) & 15];
  return name;
}

// The shm_open path; CPython prepends the slash the same way (so "/x" becomes "//x", which
// glibc reads as "/x").
std::string path_of(const std::string& name) {
  return "/" + name;
}

void unlink_quietly(const std::string& path) noexcept {
  try {
    posix::shm_unlink(path);
  } catch (const std::system_error&) {
    // Already gone: nothing left to clean.
  }
}

}  // namespace

SharedMemory::SharedMemory(std::optional<std::string> name, bool create, std::int64_t size,
                           bool track)
    : track_(track) {
  // CPython's checks, in its order and with its texts.
  if (size < 0) throw std::invalid_argument("'size' must be a positive integer");
  if (create && size == 0)
    throw std::invalid_argument("'size' must be a positive number different from zero");
  if (!name && !create) throw std::invalid_argument("'name' can only be None if create=True");
  // Python 3.13's check; 3.11 passed the name to shm_open cut at the NUL.
  if (name && name->find('\0') != std::string::npos)
    throw std::invalid_argument("embedded null character");

  posix::unique_fd fd;
  if (name) {
    fd = posix::shm_open(path_of(*name), create);
    name_ = std::move(*name);
  } else {
    for (;;) {  // a generated name that exists already: draw another, as CPython
      std::string candidate = make_filename();
      try {
        fd = posix::shm_open(path_of(candidate), true);
      } catch (const std::system_error& e) {
        if (e.code() == std::errc::file_exists) continue;
        throw;
      }
      name_ = std::move(candidate);
      break;
    }
  }
  const std::string path = path_of(name_);
  try {
    if (create) posix::shm_reserve(fd.get(), static_cast<std::uint64_t>(size), path);
    // A creator knows the size it reserved; an attacher's `size` is moot: the segment's own.
    const std::uint64_t actual =
        create ? static_cast<std::uint64_t>(size) : posix::shm_size(fd.get(), path);
    // CPython's mmap refuses an empty segment with this ValueError.
    if (actual == 0) throw std::invalid_argument("cannot mmap an empty file");
    if (actual > std::numeric_limits<std::size_t>::max())
      throw std::system_error(std::make_error_code(std::errc::value_too_large),
                              "mmap '" + path + "'");
    size_ = static_cast<std::size_t>(actual);
    // Copies share the mapping: the last one to close (or go) unmaps it.
    map_ = std::shared_ptr<std::byte>(posix::shm_map(fd.get(), size_, path),
                                      [n = size_](std::byte* p) { posix::shm_unmap(p, n); });
    // Only the creator registers it. CPython 3.11 registers every attacher too, so the first
    // attacher to exit has its tracker unlink a segment others still use (gh-82300).
    if (create && track_) detail::track_resource(kKind, path);
  } catch (...) {
    close();
    // A half-made segment of ours goes, so nothing leaks. One we attached to is someone
    // else's and stays (CPython unlinks it there too, when mapping it fails with an OSError).
    if (create) unlink_quietly(path);
    throw;
  }
  // The descriptor closes here: the mapping keeps the segment alive. CPython keeps it open
  // until close(); we save a descriptor per segment, and there is nothing a child could inherit.
}

SharedMemory::SharedMemory(SharedMemory&& o) noexcept
    : name_(std::exchange(o.name_, {})),
      size_(std::exchange(o.size_, 0)),
      map_(std::move(o.map_)),
      track_(std::exchange(o.track_, false)) {}

SharedMemory& SharedMemory::operator=(SharedMemory&& o) noexcept {
  if (this != &o) {
    close();
    name_ = std::exchange(o.name_, {});
    size_ = std::exchange(o.size_, 0);
    map_ = std::move(o.map_);
    track_ = std::exchange(o.track_, false);
  }
  return *this;
}

SharedMemory::~SharedMemory() {
  close();
}

void SharedMemory::close() noexcept {
  map_.reset();
}

void SharedMemory::unlink() {
  if (name_.empty()) return;  // CPython: `if self._name`
  const std::string path = path_of(name_);
  bool gone = false;
  try {
    posix::shm_unlink(path);
  } catch (const std::system_error& e) {
    if (e.code().value() != ENOENT) throw;
    gone = true;
  }
  // Whoever unlinks tells the tracker, creator or not: the tracker is shared by the process
  // tree (as CPython's), and a segment one child unlinks is no leak of its creator's. One that
  // is gone is no leak either: the tracker must not warn about it at exit.
  if (track_) detail::untrack_resource(kKind, path);
  if (gone)
    throw FileNotFoundError(path,
                            "shared memory segment '" + name_ +
                                "' was already removed: by another unlink(), or by the resource "
                                "tracker of a Python process that attached to it and exited "
                                "(Python 3.11/3.12 register an attached segment: see "
                                "docs/from-python.md)");
}

std::ostream& operator<<(std::ostream& os, const SharedMemory& shm) {
  return os << "SharedMemory('" << shm.name_ << "', size=" << shm.size_ << ')';
}

}  // namespace mp

namespace mp::detail {

namespace {
std::string slot_code_name(std::uint32_t code) {
  const bool nullable = code & 0x100;
  const std::uint32_t base = code & 0xff;
  std::string s;
  if (base == 1)
    s = "bool";
  else if (base == 64)
    s = "std::string";
  else if (base == 65)
    s = "mp::Bytes";
  else if (base == 16 + 4)
    s = "float";
  else if (base == 16 + 8)
    s = "double";
  else if (base > 32 && base <= 40)
    s = "int" + std::to_string(8 * (base - 32));
  else if (base > 48 && base <= 56)
    s = "uint" + std::to_string(8 * (base - 48));
  else
    return "an unknown type (code " + std::to_string(code) + ")";
  return nullable ? "std::optional<" + s + ">" : s;
}
}  // namespace

void layout_mismatch(const std::string& name, const std::string& why) {
  throw std::invalid_argument("mp::ShareableList: segment '" + name +
                              "' does not hold this list's layout: " + why);
}

void slot_mismatch(const std::string& name, std::size_t slot, std::uint32_t found,
                   std::uint32_t expected) {
  layout_mismatch(name, "slot " + std::to_string(slot) + " holds " + slot_code_name(found) +
                            ", not " + slot_code_name(expected));
}

void corrupt_slot(const std::string& name, std::size_t slot) {
  throw std::runtime_error("mp::ShareableList: segment '" + name + "': slot " +
                           std::to_string(slot) +
                           " records a length beyond its storage (the segment was overwritten)");
}

bool unlink_segment(const std::string& name) {
  const std::string path = path_of(name);
  bool gone = false;
  try {
    posix::shm_unlink(path);
  } catch (const std::system_error& e) {
    if (e.code().value() != ENOENT) throw;
    gone = true;
  }
  untrack_resource(kKind, path);
  return !gone;
}

}  // namespace mp::detail
