// The pickle layer: what may cross to a spawned child, and how.
//
// Values cross as cereal binary archives: the standard library's types (included below) and any
// user type with a cereal `serialize(Archive&)` (or save/load) function. Plain functions and
// captureless lambdas cross as a reference into the child's copy of the same binary, without
// registration. Everything else (a capturing lambda, a type with no serializer) is refused: at
// compile time where the start method is known then, else by mp::PicklingError from start().
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <variant>
#include <vector>

#include <cereal/archives/binary.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/bitset.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/complex.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>

#include "mp/errors.hpp"

namespace mp {

class Process;

namespace reduction {

using OutArchive = cereal::BinaryOutputArchive;
using InArchive = cereal::BinaryInputArchive;

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
constexpr bool cereal_serializable() {
  return cereal::traits::is_output_serializable<T, OutArchive>::value &&
         cereal::traits::is_input_serializable<T, InArchive>::value;
}

// cereal's traits say yes for std::vector<X> whatever X is (and fail later, in a static_assert
// of their own): look inside the standard wrappers and containers. Raw pointers never cross.
template <class T>
constexpr bool picklable() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_pointer_v<U> || std::is_reference_v<U> || std::is_member_pointer_v<U>) {
    return false;
  } else if constexpr (std::is_arithmetic_v<U> || std::is_enum_v<U>) {
    return true;
  } else if constexpr (is_instance_v<U, std::pair>) {
    return picklable<typename U::first_type>() && picklable<typename U::second_type>();
  } else if constexpr (is_instance_v<U, std::tuple> || is_instance_v<U, std::variant>) {
    return []<template <class...> class W, class... Ts>(W<Ts...>*) {
      return (picklable<Ts>() && ...);
    }(static_cast<U*>(nullptr));
  } else if constexpr (is_instance_v<U, std::optional>) {
    return picklable<typename U::value_type>();
  } else if constexpr (is_instance_v<U, std::shared_ptr> || is_instance_v<U, std::unique_ptr>) {
    using E = typename U::element_type;
    return !std::is_array_v<E> && std::is_default_constructible_v<E> && picklable<E>();
  } else if constexpr (requires {
                         typename U::value_type;
                         typename U::iterator;
                       }) {
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

template <class F>
void save_callable(OutArchive& ar, const F& f) {
  if constexpr (std::is_pointer_v<F>) {
    ar(code_ref(reinterpret_cast<const void*>(f)));
  } else if constexpr (std::is_empty_v<F> && std::is_default_constructible_v<F>) {
    // The type is the whole value: the loader's own instantiation names it.
  } else {
    ar(f);
  }
}

template <class F>
F load_callable(InArchive& ar) {
  if constexpr (std::is_pointer_v<F>) {
    CodeRef ref;
    ar(ref);
    return reinterpret_cast<F>(const_cast<void*>(resolve(ref)));
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
