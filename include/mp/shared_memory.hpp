// Shared memory (Python's multiprocessing.shared_memory): SharedMemory, a named POSIX shared
// memory segment mapped into this process, and ShareableList, a fixed list of values in one.
#pragma once

#include <array>
#include <atomic>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

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

/// Bytes, for a ShareableList slot (Python's bytes).
using Bytes = std::vector<std::byte>;

namespace detail {

// A slot's storage: what a ShareableList<T...> writes for each T, and the code its header
// records (so an attach with other types is refused). Every slot is a 64-bit word (the
// length of a string or bytes value, the high bit "None" for an optional slot), then its
// payload: 8 bytes for a number or bool, the capacity for a string or bytes, 8-byte aligned.
template <class T>
struct SlotKind {
  static constexpr bool supported = false;
};
template <class T>
requires(std::is_arithmetic_v<T> && sizeof(T) <= 8) struct SlotKind<T> {
  static constexpr bool supported = true;
  static constexpr bool sized = false;  // no capacity: always 8 bytes
  static constexpr std::uint32_t code = std::is_same_v<T, bool>       ? 1
                                        : std::is_floating_point_v<T> ? 16 + sizeof(T)
                                        : std::is_signed_v<T>         ? 32 + sizeof(T)
                                                                      : 48 + sizeof(T);
};
template <>
struct SlotKind<std::string> {
  static constexpr bool supported = true;
  static constexpr bool sized = true;
  static constexpr std::uint32_t code = 64;
};
template <>
struct SlotKind<Bytes> {
  static constexpr bool supported = true;
  static constexpr bool sized = true;
  static constexpr std::uint32_t code = 65;
};
template <class T>
struct SlotKind<std::optional<T>> : SlotKind<T> {
  static constexpr std::uint32_t code = SlotKind<T>::code | 0x100;  // may hold None
};

template <class T>
struct OptionalBase {
  using type = T;
  static constexpr bool nullable = false;
};
template <class T>
struct OptionalBase<std::optional<T>> {
  using type = T;
  static constexpr bool nullable = true;
};

// A string literal given to ShareableList's deduction guide is a std::string slot.
template <class A, class D = std::decay_t<A>>
struct SlotOf {
  using type = std::conditional_t<std::is_same_v<D, const char*> || std::is_same_v<D, char*>,
                                  std::string, D>;
};

inline constexpr std::uint64_t kListMagic = 0x317473694c53706dull;  // "mpSList1"
inline constexpr std::uint64_t kNone = std::uint64_t{1} << 63;
inline constexpr std::size_t kAlign = 8;  // CPython's _alignment

// Throw std::invalid_argument: the segment does not hold this layout (what() says why).
[[noreturn]] void layout_mismatch(const std::string& name, const std::string& why);
[[noreturn]] void slot_mismatch(const std::string& name, std::size_t slot, std::uint32_t found,
                                std::uint32_t expected);
// Throws std::runtime_error: a length word beyond its slot (the segment was overwritten).
[[noreturn]] void corrupt_slot(const std::string& name, std::size_t slot);
// Removes the segment `name` and tells the resource tracker it is gone (what a
// SharedMemoryManager's server does); false if it was gone already.
bool unlink_segment(const std::string& name);

template <class T>
void repr_value(std::ostream& os, const T& v) {
  if constexpr (OptionalBase<T>::nullable) {
    if (!v)
      os << "None";
    else
      repr_value(os, *v);
  } else if constexpr (std::is_same_v<T, bool>) {
    os << (v ? "True" : "False");
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[64];
    auto end = std::to_chars(buf, buf + sizeof buf, v).ptr;
    std::string text(buf, end);
    if (text.find_first_of(".eni") == std::string::npos) text += ".0";  // Python's 2.0
    os << text;
  } else if constexpr (std::is_integral_v<T>) {
    os << +v;
  } else {  // std::string as 'text', Bytes as b'...'
    static constexpr char kHex[] = "0123456789abcdef";
    if constexpr (std::is_same_v<T, Bytes>) os << 'b';
    os << '\'';
    for (auto c : v) {
      const auto b = static_cast<unsigned char>(c);
      if (b == '\'' || b == '\\')
        os << '\\' << static_cast<char>(b);
      else if (b >= 0x20 && b < 0x7f)
        os << static_cast<char>(b);
      else
        os << "\\x" << kHex[b >> 4] << kHex[b & 15];
    }
    os << '\'';
  }
}

}  // namespace detail

/// A fixed-length list of values in one shared memory segment (Python's ShareableList), one
/// slot per type: `mp::ShareableList<int, double, std::string> l(7, 2.5, "seven");` Slot
/// types: integers, float, double, bool, std::string, mp::Bytes, and std::optional of any of
/// these (a slot that may hold None). A string or bytes slot keeps the capacity it was created
/// with: its first value's length rounded up to 8 bytes as CPython (always room for one more
/// byte), or more if given. Copies are handles to the same list; it crosses to another process
/// (a Process argument, Connection::send) by its segment's name, as SharedMemory does.
///
/// No locking, as in CPython: a reader racing a writer of the same slot may see a torn value
/// (a string's length is always checked against its capacity); use an mp::Lock for that.
/// The segment starts with a header of our own (magic, slot count, each slot's type code and
/// capacity), not CPython's struct formats: a Python process cannot attach to it.
template <class... T>
class ShareableList {
  static_assert(sizeof...(T) > 0, "mp::ShareableList: an empty list has nothing to share");
  static_assert((detail::SlotKind<T>::supported && ...),
                "mp::ShareableList: a slot type must be an integer, float, double, bool, "
                "std::string, mp::Bytes or std::optional of one of them");

 public:
  static constexpr std::size_t N = sizeof...(T);
  template <std::size_t I>
  using slot_type = std::tuple_element_t<I, std::tuple<T...>>;

  /// An empty handle (what a received list is loaded into); using it throws std::logic_error.
  ShareableList() = default;
  /// Creates a new segment (generated name, registered with the resource tracker) holding
  /// `values`. Throws what SharedMemory(std::nullopt, true, size) throws.
  explicit ShareableList(T... values)
      : ShareableList(std::tuple<T...>(std::move(values)...), std::array<std::size_t, N>{}) {}
  /// As above, with a capacity in bytes per slot (0: CPython's default; ignored for numbers)
  /// and optionally a name. Throws std::invalid_argument with CPython's "bytes/str item exceeds
  /// available storage" for a value longer than the capacity asked for.
  ShareableList(std::tuple<T...> values, std::array<std::size_t, N> capacities,
                std::optional<std::string> name = std::nullopt) {
    capacities_ = capacities;
    fill_capacities(values, std::make_index_sequence<N>{});
    shm_ = SharedMemory(std::move(name), true, static_cast<std::int64_t>(bytes_needed()));
    auto* h = header();
    h[0] = detail::kListMagic;
    h[1] = N;
    auto* slots = reinterpret_cast<std::uint32_t*>(h + 2);
    std::size_t i = 0;
    ((slots[2 * i] = detail::SlotKind<T>::code,
      slots[2 * i + 1] = static_cast<std::uint32_t>(capacities_[i]), ++i),
     ...);
    compute_offsets();
    set_all(std::move(values), std::make_index_sequence<N>{});
  }
  /// Attaches to the list in `shm` (Python's ShareableList(name=...)), e.g.
  /// `mp::ShareableList<int, std::string> l(mp::SharedMemory(name));`. Throws
  /// std::invalid_argument naming the difference if the segment holds no ShareableList or one
  /// of other slot types.
  explicit ShareableList(SharedMemory shm) : shm_(std::move(shm)) { check_layout(); }

  /// The number of slots (Python's len()).
  static constexpr std::size_t size() { return N; }
  /// The segment holding the list (Python's .shm): its name(), unlink(), close().
  const SharedMemory& shm() const { return shm_; }
  SharedMemory& shm() { return shm_; }

  /// The value in slot I (a copy; std::nullopt for None in an optional slot).
  template <std::size_t I>
  slot_type<I> get() const {
    static_assert(I < N, "mp::ShareableList::get<I>: I is beyond the last slot");
    using S = slot_type<I>;
    using B = typename detail::OptionalBase<S>::type;
    const std::byte* p = slot(I);
    const std::uint64_t meta =
        std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(const_cast<std::byte*>(p)))
            .load(std::memory_order_acquire);
    if constexpr (detail::OptionalBase<S>::nullable)
      if (meta & detail::kNone) return std::nullopt;
    B v{};
    if constexpr (detail::SlotKind<B>::sized) {
      const std::uint64_t len = meta & ~detail::kNone;
      if (len > capacities_[I]) detail::corrupt_slot(shm_.name(), I);
      v.resize(static_cast<std::size_t>(len));
      std::memcpy(v.data(), p + 8, v.size());
    } else {
      std::memcpy(&v, p + 8, sizeof v);
    }
    return v;
  }
  /// Writes slot I. Only a value of the slot's type compiles (or one that converts to it
  /// without narrowing: a const char* to std::string, std::nullopt to an optional slot).
  /// A string or bytes value longer than the slot's capacity throws std::invalid_argument
  /// "bytes/str item exceeds available storage" (CPython's ValueError) and writes nothing.
  template <std::size_t I, class V>
  void set(V&& value) {
    static_assert(I < N, "mp::ShareableList::set<I>: I is beyond the last slot");
    using S = slot_type<I>;
    static_assert(
        requires(V && v) { S{std::forward<V>(v)}; },
        "mp::ShareableList::set<I>: the value's type is not the slot's type (nor "
        "converts to it without narrowing)");
    write<I>(S{std::forward<V>(value)});
  }

  /// How many slots hold a value equal to `value` (Python's count()); slots of types that
  /// cannot be compared with it count as different.
  template <class V>
  std::size_t count(const V& value) const {
    std::size_t n = 0;
    for_each_slot([&](std::size_t, const auto& v) { n += equal(v, value); });
    return n;
  }
  /// The first slot holding a value equal to `value` (Python's index()); throws
  /// std::invalid_argument "<repr> not in this container" (CPython's ValueError) if none.
  template <class V>
  std::size_t index(const V& value) const {
    std::optional<std::size_t> found;
    for_each_slot([&](std::size_t i, const auto& v) {
      if (!found && equal(v, value)) found = i;
    });
    if (found) return *found;
    std::ostringstream os;
    using R = typename detail::SlotOf<V>::type;
    detail::repr_value(os, R(value));
    throw std::invalid_argument(os.str() + " not in this container");
  }

  /// Python's repr: ShareableList([7, 2.5, 'seven'], name='psm_12ab34cd').
  friend std::ostream& operator<<(std::ostream& os, const ShareableList& l) {
    os << "ShareableList([";
    l.for_each_slot([&](std::size_t i, const auto& v) {
      if (i) os << ", ";
      detail::repr_value(os, v);
    });
    return os << "], name='" << l.shm_.name() << "')";
  }

  /// Crosses by its segment's name; the receiver attaches and checks the layout (throws as
  /// the attaching constructor does).
  template <class Archive>
  void save(Archive& ar) const {
    ar(shm_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(shm_);
    if (!shm_.name().empty()) check_layout();
  }

 private:
  static constexpr std::size_t header_bytes() { return 16 + 8 * N; }
  static constexpr std::size_t payload(std::size_t cap, bool sized) {
    return sized ? (cap + detail::kAlign - 1) / detail::kAlign * detail::kAlign : 8;
  }
  static constexpr std::array<bool, N> sized_ = {
      detail::SlotKind<typename detail::OptionalBase<T>::type>::sized...};

  std::size_t bytes_needed() const {
    std::size_t n = header_bytes();
    for (std::size_t i = 0; i < N; ++i) n += 8 + payload(capacities_[i], sized_[i]);
    return n;
  }
  void compute_offsets() {
    std::size_t off = header_bytes();
    for (std::size_t i = 0; i < N; ++i) {
      offsets_[i] = off;
      off += 8 + payload(capacities_[i], sized_[i]);
    }
  }
  std::uint64_t* header() const {
    if (shm_.buf().empty())
      throw std::logic_error("an empty or closed ShareableList (default-constructed, not loaded)");
    return reinterpret_cast<std::uint64_t*>(shm_.buf().data());
  }
  std::byte* slot(std::size_t i) const {
    return reinterpret_cast<std::byte*>(header()) + offsets_[i];
  }

  template <std::size_t... I>
  void fill_capacities(const std::tuple<T...>& values, std::index_sequence<I...>) {
    (fill_capacity<I>(std::get<I>(values)), ...);
  }
  template <std::size_t I>
  void fill_capacity(const slot_type<I>& v) {
    using S = slot_type<I>;
    using B = typename detail::OptionalBase<S>::type;
    if constexpr (detail::SlotKind<B>::sized) {
      std::size_t len = 0;
      if constexpr (detail::OptionalBase<S>::nullable)
        len = v ? v->size() : 0;
      else
        len = v.size();
      // CPython's rounding: _alignment * (len // _alignment + 1).
      if (capacities_[I] == 0) capacities_[I] = detail::kAlign * (len / detail::kAlign + 1);
      if (len > capacities_[I])
        throw std::invalid_argument("bytes/str item exceeds available storage");
      if (capacities_[I] > 0xffffffffu)
        throw std::invalid_argument("mp::ShareableList: a slot's capacity must fit in 32 bits");
    } else {
      (void)v;
      capacities_[I] = 8;
    }
  }
  template <std::size_t... I>
  void set_all(std::tuple<T...>&& values, std::index_sequence<I...>) {
    (write<I>(std::move(std::get<I>(values))), ...);
  }
  template <std::size_t I>
  void write(const slot_type<I>& value) {
    using S = slot_type<I>;
    using B = typename detail::OptionalBase<S>::type;
    std::byte* p = slot(I);
    std::uint64_t meta = 0;
    const B* v = nullptr;
    if constexpr (detail::OptionalBase<S>::nullable) {
      if (value)
        v = &*value;
      else
        meta = detail::kNone;
    } else {
      v = &value;
    }
    if (v) {
      if constexpr (detail::SlotKind<B>::sized) {
        if (v->size() > capacities_[I])
          throw std::invalid_argument("bytes/str item exceeds available storage");
        std::memcpy(p + 8, v->data(), v->size());
        meta = v->size();
      } else {
        std::memcpy(p + 8, v, sizeof *v);
      }
    }
    // Published last: a reader takes the length from here, then copies that many bytes.
    std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(p))
        .store(meta, std::memory_order_release);
  }

  void check_layout() {
    const std::string& name = shm_.name();
    const auto buf = shm_.buf();
    if (buf.size() < 16 || header()[0] != detail::kListMagic)
      detail::layout_mismatch(name, "it holds no mp::ShareableList (no header)");
    const std::uint64_t n = header()[1];
    if (n != N)
      detail::layout_mismatch(name,
                              "it has " + std::to_string(n) + " slots, not " + std::to_string(N));
    if (buf.size() < header_bytes()) detail::layout_mismatch(name, "its header is cut short");
    const auto* slots = reinterpret_cast<const std::uint32_t*>(header() + 2);
    static constexpr std::array<std::uint32_t, N> codes = {detail::SlotKind<T>::code...};
    for (std::size_t i = 0; i < N; ++i) {
      if (slots[2 * i] != codes[i]) detail::slot_mismatch(name, i, slots[2 * i], codes[i]);
      capacities_[i] = sized_[i] ? slots[2 * i + 1] : 8;
    }
    if (bytes_needed() > buf.size())
      detail::layout_mismatch(name, "its slots need more bytes than the segment has");
    compute_offsets();
  }

  template <class F, std::size_t... I>
  void for_each_slot(F&& f, std::index_sequence<I...>) const {
    (f(I, get<I>()), ...);
  }
  template <class F>
  void for_each_slot(F&& f) const {
    for_each_slot(std::forward<F>(f), std::make_index_sequence<N>{});
  }
  template <class S, class V>
  static bool equal(const S& slot_value, const V& value) {
    if constexpr (requires { bool(slot_value == value); })
      return slot_value == value;
    else
      return false;
  }

  SharedMemory shm_;
  std::array<std::size_t, N> capacities_{};
  std::array<std::size_t, N> offsets_{};
};

/// `mp::ShareableList l(1, 2.5, "text")` is a ShareableList<int, double, std::string>.
template <class... A>
ShareableList(A...) -> ShareableList<typename detail::SlotOf<A>::type...>;

}  // namespace mp
