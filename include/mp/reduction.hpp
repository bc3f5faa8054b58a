// The pickle layer: what may cross to a spawned child, and how.
//
// Values cross as cereal binary archives: arithmetic types, std::string, std::vector and
// std::tuple here, the rest of the standard library with <mp/types.hpp> (or the one cereal/types/
// header a type needs), and any user type with a cereal `serialize(Archive&)` (or save/load). Plain
// functions and captureless lambdas cross as a reference into the child's copy of the same binary,
// without registration. Everything else (a capturing lambda, a type with no serializer) is refused:
// at compile time where the start method is known then, else by mp::PicklingError from start().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <variant>
#include <vector>

#include <cereal/cereal.hpp>
#include <cereal/types/string.hpp>  // CodeRef
#include <cereal/types/vector.hpp>  // AuthenticationString

#include "mp/errors.hpp"

namespace mp {

class Process;

namespace reduction {

/// The readable name of a type ("std::vector<int>", "main::{lambda(int)#1}").
std::string demangle(const std::type_info& type);
template <class T>
std::string type_name() {
  return demangle(typeid(T));
}

namespace detail {
template <class T, template <class...> class Template>
inline constexpr bool is_instance_v = false;
template <template <class...> class Template, class... Args>
inline constexpr bool is_instance_v<Template<Args...>, Template> = true;

template <class T>
concept container = requires {
  typename T::value_type;
  typename T::iterator;
};
template <class T>
inline constexpr bool is_std_array_v = false;
template <class T, std::size_t N>
inline constexpr bool is_std_array_v<std::array<T, N>> = true;

// The fewest bytes one T takes in an archive, never more than the truth (0: unknown). A
// container's claimed element count is checked against it before the container grows.
template <class T>
constexpr std::size_t min_wire_size() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_arithmetic_v<U> || std::is_enum_v<U>) {
    return sizeof(U);
  } else if constexpr (is_std_array_v<U>) {
    return std::tuple_size_v<U> * min_wire_size<typename U::value_type>();
  } else if constexpr (is_instance_v<U, std::pair>) {
    return min_wire_size<typename U::first_type>() + min_wire_size<typename U::second_type>();
  } else if constexpr (is_instance_v<U, std::tuple>) {
    return []<class... Ts>(std::tuple<Ts...>*) {
      return (min_wire_size<Ts>() + ... + std::size_t{0});
    }(static_cast<U*>(nullptr));
  } else if constexpr (is_instance_v<U, std::basic_string> || is_instance_v<U, std::vector>) {
    return sizeof(std::uint64_t);  // the size tag
  } else if constexpr (is_instance_v<U, std::optional> || is_instance_v<U, std::unique_ptr> ||
                       is_instance_v<U, std::shared_ptr>) {
    return 1;  // the engaged flag (shared_ptr: a 4-byte id)
  } else if constexpr (is_instance_v<U, std::variant>) {
    return 4;  // the index
  } else {
    return 0;  // a user type may write nothing at all
  }
}

template <class T>
inline constexpr bool is_archive_wrapper_v =
    is_instance_v<T, cereal::SizeTag> || is_instance_v<T, cereal::NameValuePair> ||
    is_instance_v<T, cereal::BinaryData>;
}  // namespace detail

class OutArchive;
class InArchive;
}  // namespace reduction
}  // namespace mp

// The archives' non-template members are compiled once, in the library.
extern template class cereal::OutputArchive<mp::reduction::OutArchive,
                                            cereal::AllowEmptyClassElision>;
extern template class cereal::InputArchive<mp::reduction::InArchive,
                                           cereal::AllowEmptyClassElision>;

namespace mp {
namespace reduction {

/// Writes values in cereal's binary format, appending to a string.
class OutArchive : public cereal::OutputArchive<OutArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit OutArchive(std::string& out) : OutputArchive(this), out_(out) {}
  void saveBinary(const void* data, std::size_t size) {
    out_.append(static_cast<const char*>(data), size);
  }

 private:
  std::string& out_;
};

/// Reads what OutArchive wrote, from a buffer that must outlive it. Every length it reads
/// (a string's, a container's) is checked against the bytes left before anything grows:
/// a hostile or truncated message throws PicklingError naming the type and both sizes,
/// and never makes the reader allocate more than the message can back.
class InArchive : public cereal::InputArchive<InArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit InArchive(std::span<const std::byte> data)
      : InputArchive(this), pos_(data.data()), end_(data.data() + data.size()) {}
  explicit InArchive(std::string_view data) : InArchive(std::as_bytes(std::span(data))) {}

  template <class... Ts>
  InArchive& operator()(Ts&&... values) {
    (load_one(std::forward<Ts>(values)), ...);
    return *this;
  }
  /// Copies the next `size` bytes to `data`; throws PicklingError if fewer are left.
  void loadBinary(void* data, std::size_t size);
  /// Reads a container's element count; throws PicklingError if the bytes left cannot hold
  /// that many elements of the container being read.
  std::uint64_t load_size();
  std::size_t remaining() const { return static_cast<std::size_t>(end_ - pos_); }

 private:
  struct Expected {  // the container whose size tag comes next, if one does
    const std::type_info* type = nullptr;
    std::size_t min_wire = 1;  // unknown: at least a byte an element
    std::size_t element_size = 1;
  };
  template <class T>
  void load_one(T&& value) {
    using U = std::remove_cvref_t<T>;
    if constexpr (detail::is_instance_v<U, cereal::SizeTag>) {
      value.size = static_cast<std::remove_cvref_t<decltype(value.size)>>(load_size());
    } else if constexpr (detail::is_archive_wrapper_v<U>) {
      InputArchive::operator()(std::forward<T>(value));
    } else {
      const Expected outer = expected_;
      if constexpr (detail::container<U> && !detail::is_std_array_v<U>)
        expected_ = {&typeid(U), detail::min_wire_size<typename U::value_type>(),
                     sizeof(typename U::value_type)};
      else
        expected_ = {};
      InputArchive::operator()(std::forward<T>(value));
      expected_ = outer;
    }
  }

  const std::byte* pos_;
  const std::byte* end_;
  Expected expected_;
  // Elements that take no bytes (empty types) are allowed past the bytes left, up to this
  // much memory for the whole message.
  std::size_t unbacked_budget_ = std::size_t{16} << 20;
};

template <class T>
requires std::is_arithmetic_v<T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const T& value) {
  ar.saveBinary(std::addressof(value), sizeof value);
}
template <class T>
requires std::is_arithmetic_v<T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, T& value) {
  ar.loadBinary(std::addressof(value), sizeof value);
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const cereal::SizeTag<T>& tag) {
  const std::uint64_t size = tag.size;
  ar.saveBinary(&size, sizeof size);
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, cereal::SizeTag<T>& tag) {
  tag.size = static_cast<std::remove_cvref_t<T>>(ar.load_size());
}
template <class T>
void CEREAL_SAVE_FUNCTION_NAME(OutArchive& ar, const cereal::BinaryData<T>& data) {
  ar.saveBinary(data.data, static_cast<std::size_t>(data.size));
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InArchive& ar, cereal::BinaryData<T>& data) {
  ar.loadBinary(data.data, static_cast<std::size_t>(data.size));
}
template <class Archive, class T>
requires std::is_same_v<Archive, InArchive> || std::is_same_v<Archive, OutArchive>
void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& nvp) {
  ar(nvp.value);
}

namespace detail {

template <class T>
constexpr bool cereal_serializable() {
  return cereal::traits::is_output_serializable<T, OutArchive>::value &&
         cereal::traits::is_input_serializable<T, InArchive>::value;
}

// cereal's traits say yes for std::vector<X> whatever X is (and fail later, in a static_assert
// of their own): look inside the standard wrappers and containers. Raw pointers never cross.
// A standard type whose cereal header is missing (see <mp/types.hpp>) is not picklable.
template <class T>
constexpr bool picklable() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_pointer_v<U> || std::is_reference_v<U> || std::is_member_pointer_v<U>) {
    return false;
  } else if constexpr (std::is_arithmetic_v<U> || std::is_enum_v<U>) {
    return true;
  } else if constexpr (is_instance_v<U, std::pair>) {
    return picklable<typename U::first_type>() && picklable<typename U::second_type>() &&
           cereal_serializable<U>();
  } else if constexpr (is_instance_v<U, std::tuple> || is_instance_v<U, std::variant>) {
    return []<template <class...> class W, class... Ts>(W<Ts...>*) {
      return (picklable<Ts>() && ...);
    }(static_cast<U*>(nullptr)) &&
           cereal_serializable<U>();
  } else if constexpr (is_instance_v<U, std::optional>) {
    return picklable<typename U::value_type>() && cereal_serializable<U>();
  } else if constexpr (is_instance_v<U, std::shared_ptr> || is_instance_v<U, std::unique_ptr>) {
    using E = typename U::element_type;
    return !std::is_array_v<E> && std::is_default_constructible_v<E> && picklable<E>() &&
           cereal_serializable<U>();
  } else if constexpr (container<U>) {
    return picklable<typename U::value_type>() && cereal_serializable<U>();
  } else {
    return cereal_serializable<U>();
  }
}
}  // namespace detail

/// A value of T can be written to and read back from a binary archive (and rebuilt: default
/// constructible), all the way down: std::vector<X> only if X is.
template <class T>
concept Value = std::is_default_constructible_v<T> && detail::picklable<T>();

/// A callable the child can rebuild: a function pointer, a captureless lambda (empty and
/// default-constructible in C++20), or a function object that is itself a Value.
template <class F>
concept Callable = (std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>) ||
                   (std::is_empty_v<F> && std::is_default_constructible_v<F>) || Value<F>;

/// A reference to code in this program, valid in a spawned copy of the same binary:
/// the loaded module (empty for the executable) and the offset from its load address.
struct CodeRef {
  std::string module;
  std::uint64_t offset = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(module, offset);
  }
};
/// Throws PicklingError if `address` lies in no loaded module.
CodeRef code_ref(const void* address);
/// Throws PicklingError if the module is not loaded here.
const void* resolve(const CodeRef& ref);
/// The two above through an archive (compiled once, in the library).
void save_code(OutArchive& ar, const void* address);
const void* load_code(InArchive& ar);

template <class F>
void save_callable(OutArchive& ar, const F& f) {
  if constexpr (std::is_pointer_v<F>) {
    save_code(ar, reinterpret_cast<const void*>(f));
  } else if constexpr (std::is_empty_v<F> && std::is_default_constructible_v<F>) {
    // The type is the whole value: the loader's own instantiation names it.
  } else {
    ar(f);
  }
}

template <class F>
F load_callable(InArchive& ar) {
  if constexpr (std::is_pointer_v<F>) {
    return reinterpret_cast<F>(const_cast<void*>(load_code(ar)));
  } else if constexpr (std::is_empty_v<F> && std::is_default_constructible_v<F>) {
    return F{};
  } else {
    F f;
    ar(f);
    return f;
  }
}

/// Rebuilds a Process (of the class the pointer was instantiated for) in a spawned child.
using ProcessLoader = std::unique_ptr<Process> (*)(InArchive&);

/// Writes each field in turn; zero fields are allowed.
template <class Archive, class... Fields>
void fields(Archive& ar, Fields&&... f) {
  static_assert((detail::picklable<std::remove_cvref_t<Fields>>() && ...),
                "MP_FIELDS: a field's type has no serializer; for std::map, std::optional, "
                "std::variant, std::unique_ptr, ... #include <mp/types.hpp>; for your own type "
                "give it a cereal serialize(Archive&) function");
  if constexpr ((detail::picklable<std::remove_cvref_t<Fields>>() && ...))
    (ar(std::forward<Fields>(f)), ...);
}

/// While spawning: registers `fd` to be handed to the child (at exec, or by SCM_RIGHTS under
/// forkserver) and returns the index the child finds it under. Throws std::logic_error when
/// not spawning (CPython's DupFd / duplicate_for_child).
int duplicate_for_child(int fd);
/// In a child being rebuilt: the descriptor handed over under `index` (close-on-exec; the
/// child owns it). Throws PicklingError for an index that was not handed over.
int passed_fd(int index);

/// A descriptor that travels to a child as an argument or field (CPython reduction.DupFd):
/// inherited under fork, handed over under spawn and forkserver. It does not own the
/// descriptor; in the child, fd() is the child's own copy.
class DupFd {
 public:
  DupFd() = default;
  explicit DupFd(int fd) : fd_(fd) {}
  int fd() const { return fd_; }
  template <class Archive>
  void save(Archive& ar) const {
    ar(duplicate_for_child(fd_));
  }
  template <class Archive>
  void load(Archive& ar) {
    int index = -1;
    ar(index);
    fd_ = passed_fd(index);
  }

 private:
  int fd_ = -1;
};

}  // namespace reduction

/// The authentication key of a process (Python's AuthenticationString): 32 random bytes by
/// default. Serializing it outside spawning throws std::logic_error, as in Python.
class AuthenticationString {
 public:
  AuthenticationString() = default;
  explicit AuthenticationString(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  explicit AuthenticationString(std::string_view bytes);
  const std::vector<std::byte>& bytes() const { return bytes_; }
  std::size_t size() const { return bytes_.size(); }
  friend bool operator==(const AuthenticationString&, const AuthenticationString&) = default;

  template <class Archive>
  void save(Archive& ar) const {
    check_pickling_allowed();
    ar(bytes_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(bytes_);
  }

 private:
  static void check_pickling_allowed();
  std::vector<std::byte> bytes_;
};

}  // namespace mp

CEREAL_SETUP_ARCHIVE_TRAITS(mp::reduction::InArchive, mp::reduction::OutArchive)
