// Values and arrays in shared memory (Python's multiprocessing.sharedctypes): Value<T>,
// Array<T> with a lock, RawValue<T>, RawArray<T> without. T must be trivially copyable: its
// bytes are all there is to share. Like the primitives of synchronize.hpp, each object is a
// handle: copies, and a child's Process argument under every start method, are the same memory.
#pragma once

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "mp/synchronize.hpp"

namespace mp {

namespace detail {
// The shared bytes of n objects of T, crossing to a spawned child as a descriptor.
template <class T>
class SharedArrayStorage {
  static_assert(std::is_trivially_copyable_v<T>,
                "mp::Value / mp::Array hold T as raw bytes in shared memory: T must be trivially "
                "copyable (no pointers to the heap, no std::string; use a fixed-size struct or "
                "char array)");

 public:
  SharedArrayStorage() = default;
  explicit SharedArrayStorage(std::size_t n, const char* kind) : n_(n), kind_(kind) {
    void* data = nullptr;
    block_ = make_data_block(n * sizeof(T), kind, data);
    data_ = static_cast<T*>(data);
  }
  T* data() const { return data_; }
  std::size_t size() const { return n_; }
  template <class Archive>
  void save(Archive& ar) const {
    ar(save_block(block_, kind_), n_);
  }
  template <class Archive>
  void load(Archive& ar) {
    load_state(ar, block_, data_);
    ar(n_);
  }

 private:
  std::shared_ptr<SharedBlock> block_;
  T* data_ = nullptr;
  std::size_t n_ = 0;
  const char* kind_ = "Value";
};
}  // namespace detail

/// One T in shared memory, no lock (sharedctypes.RawValue).
template <class T>
class RawValue {
 public:
  explicit RawValue(T init = T{}) : storage_(1, "RawValue") { *storage_.data() = init; }
  /// The shared object itself.
  T& get() const { return *storage_.data(); }
  template <class Archive>
  void serialize(Archive& ar) {
    ar(storage_);
  }

 private:
  detail::SharedArrayStorage<T> storage_;
};

/// One T in shared memory behind a lock (sharedctypes.Value): a new RLock by default, or the
/// Lock/RLock given. load()/store() take the lock, as Python's .value does; for a
/// read-modify-write hold get_lock() yourself: `std::lock_guard g(v.get_lock()); ++v.get_obj();`.
template <class T, class L = RLock>
class Value {
 public:
  explicit Value(T init = T{}) : Value(init, L()) {}
  Value(T init, L lock) : storage_(1, "Value"), lock_(std::move(lock)) { *storage_.data() = init; }
  T load() const {
    std::lock_guard g(lock_);
    return *storage_.data();
  }
  void store(T v) {
    std::lock_guard g(lock_);
    *storage_.data() = v;
  }
  /// The lock guarding it (the same object for every copy and in every process).
  L& get_lock() const { return lock_; }
  /// The shared object itself, unguarded.
  T& get_obj() const { return *storage_.data(); }
  template <class Archive>
  void serialize(Archive& ar) {
    ar(storage_, lock_);
  }

 private:
  detail::SharedArrayStorage<T> storage_;
  mutable L lock_;
};

namespace detail {
// What RawArray and Array share: n zero-filled elements.
template <class T>
class ArrayBase {
 public:
  std::size_t size() const { return storage_.size(); }
  /// Unchecked, unguarded element access.
  T& operator[](std::size_t i) const { return storage_.data()[i]; }
  /// Checked: std::out_of_range("invalid index"), CPython's IndexError text.
  T& at(std::size_t i) const {
    if (i >= size()) throw std::out_of_range("invalid index");
    return storage_.data()[i];
  }
  std::span<T> get_obj() const { return {storage_.data(), size()}; }
  /// For char arrays: the bytes up to the first NUL (ctypes' .value), and all of them (.raw).
  std::string value() const requires std::is_same_v<T, char> {
    const char* p = storage_.data();
    std::size_t n = 0;
    while (n < size() && p[n]) ++n;
    return std::string(p, n);
  }
  std::string raw() const requires std::is_same_v<T, char> {
    return std::string(storage_.data(), size());
  }
  template <class Archive>
  void serialize(Archive& ar) {
    ar(storage_);
  }

 protected:
  ArrayBase(std::size_t n, std::span<const T> init, const char* kind) : storage_(n, kind) {
    std::copy(init.begin(), init.end(), storage_.data());
  }
  ArrayBase() = default;
  void assign_unguarded(std::span<const T> values) {
    if (values.size() != size())
      throw std::invalid_argument("Can only assign sequence of same size");
    std::copy(values.begin(), values.end(), storage_.data());
  }

 private:
  SharedArrayStorage<T> storage_;
};
}  // namespace detail

/// n elements of T in shared memory, zero-filled, no lock (sharedctypes.RawArray).
template <class T>
class RawArray : public detail::ArrayBase<T> {
 public:
  explicit RawArray(std::size_t n = 0) : detail::ArrayBase<T>(n, {}, "RawArray") {}
  RawArray(std::initializer_list<T> init)
      : detail::ArrayBase<T>(init.size(), {init.begin(), init.size()}, "RawArray") {}
  explicit RawArray(std::span<const T> init)
      : detail::ArrayBase<T>(init.size(), init, "RawArray") {}
  /// Replaces every element: std::invalid_argument("Can only assign sequence of same size").
  void assign(std::span<const T> values) { this->assign_unguarded(values); }
};

/// n elements of T in shared memory behind a lock (sharedctypes.Array).
template <class T, class L = RLock>
class Array : public detail::ArrayBase<T> {
 public:
  explicit Array(std::size_t n = 0) : Array(n, L()) {}
  Array(std::size_t n, L lock) : detail::ArrayBase<T>(n, {}, "Array"), lock_(std::move(lock)) {}
  Array(std::initializer_list<T> init)
      : detail::ArrayBase<T>(init.size(), {init.begin(), init.size()}, "Array") {}
  explicit Array(std::span<const T> init) : detail::ArrayBase<T>(init.size(), init, "Array") {}
  L& get_lock() const { return lock_; }
  /// Replaces every element under the lock (CPython's a[:] = values).
  void assign(std::span<const T> values) {
    std::lock_guard g(lock_);
    this->assign_unguarded(values);
  }
  /// A copy of every element, taken under the lock.
  std::vector<T> to_vector() const {
    std::lock_guard g(lock_);
    auto all = this->get_obj();
    return std::vector<T>(all.begin(), all.end());
  }
  template <class Archive>
  void serialize(Archive& ar) {
    detail::ArrayBase<T>::serialize(ar);
    ar(lock_);
  }

 private:
  mutable L lock_;
};

}  // namespace mp
