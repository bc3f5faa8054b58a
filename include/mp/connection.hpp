// Connections (Python's multiprocessing.connection): Pipe, Connection, wait.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

#include "mp/errors.hpp"
#include "mp/reduction.hpp"

namespace mp {

/// The peer closed its end and no message is left (Python's EOFError).
class EOFError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
// Every type this program sends or receives is recorded under its tag when the program starts
// (in every process running it), so a receiver can name the type that arrived instead of the
// one it expected, at no cost on the wire.
bool register_tag(const std::type_info& type);
template <class T>
inline const bool tag_registered = register_tag(typeid(T));
}  // namespace detail

/// One end of a Pipe (or, later, of a Listener/Client socket): length-prefixed messages in
/// CPython's framing. Move-only; destroying it closes it. Misuse throws std::logic_error
/// ("handle is closed", "connection is read-only", ...); a system call failing throws
/// std::system_error (EPIPE when the peer is gone: never SIGPIPE).
class Connection {
 public:
  using Duration = std::chrono::duration<double>;

  /// A closed connection.
  Connection() = default;
  /// Owns `fd` (a pipe end or a stream socket). Throws std::logic_error("invalid handle") for a
  /// negative fd, and if neither readable nor writable.
  Connection(int fd, bool readable, bool writable);
  Connection(Connection&& o) noexcept;
  Connection& operator=(Connection&& o) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  /// Sends any serializable value; recv<T>() in the peer reads it back (C++ to C++: Python's
  /// pickles cross by send_bytes/recv_bytes). The message carries the type's tag: receiving
  /// it as another type throws mp::PicklingError naming both types, never garbage.
  template <class T>
  void send(const T& obj);
  template <class T>
  T recv();

  /// Sends buf[offset, offset + size) as one message (CPython's argument checks and texts).
  void send_bytes(std::span<const std::byte> buf, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt);
  void send_bytes(std::string_view buf) { send_bytes(std::as_bytes(std::span(buf))); }
  /// The next message's bytes. Longer than `maxlength`: std::runtime_error("bad message
  /// length"), and the connection stops reading (as CPython). EOF: mp::EOFError.
  std::string recv_bytes(std::optional<std::size_t> maxlength = std::nullopt);
  /// Reads the next message into buf at `offset`; returns its size. Too small: throws
  /// mp::BufferTooShort holding the whole message (consumed).
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0);

  /// Whether a message (or EOF) is ready within `timeout` (0: just look; nullopt: wait).
  /// Never consumes anything.
  bool poll(std::optional<Duration> timeout = Duration::zero());

  /// Idempotent.
  void close();
  bool closed() const { return fd_ < 0; }
  bool readable() const { return readable_; }
  bool writable() const { return writable_; }
  /// The descriptor (std::logic_error("handle is closed") once closed).
  int fileno() const;

  /// Crossing to a child (as a Process argument): the child gets its own descriptor.
  template <class Archive>
  void save(Archive& ar) const {
    ar(reduction::duplicate_for_child(fileno()), readable_, writable_);
  }
  template <class Archive>
  void load(Archive& ar) {
    int index = -1;
    ar(index, readable_, writable_);
    fd_ = reduction::passed_fd(index);
    is_socket_ = probe_socket(fd_);
  }

 private:
  void check_readable() const;
  void check_writable() const;
  void send_message(std::span<const std::byte> head, std::span<const std::byte> body);
  std::uint64_t recv_length(std::optional<std::size_t> maxlength);
  std::string recv_message(std::optional<std::size_t> maxlength);
  std::string recv_body(std::uint64_t length);
  static std::uint64_t tag_of(const std::type_info& type);
  friend bool detail::register_tag(const std::type_info& type);
  // Throws PicklingError unless `message` starts with the tag `expected` (of `type`).
  static void check_tag(std::string_view message, std::uint64_t expected,
                        const std::type_info& type);
  static bool probe_socket(int fd);

  int fd_ = -1;
  bool readable_ = false;
  bool writable_ = false;
  bool is_socket_ = false;  // sockets send with MSG_NOSIGNAL; pipes block SIGPIPE instead
};

/// Sends a copy of descriptor `fd` through a socket connection (CPython's
/// reduction.send_handle: one byte and SCM_RIGHTS, outside the message framing). The caller
/// keeps its own descriptor.
void send_handle(Connection& conn, int fd);
/// Receives a descriptor sent with send_handle (close-on-exec; the caller owns it). A message
/// without one: std::runtime_error("received 0 items of ancdata"); EOF: mp::EOFError.
int recv_handle(Connection& conn);
/// A Connection through a Connection: its descriptor travels by send_handle, then its
/// direction. The sender's copy stays open (close it if it is not needed any more).
void send_connection(Connection& via, const Connection& conn);
Connection recv_connection(Connection& via);

/// A connected pair (Python's Pipe): duplex (a socket pair, both ends read and write) or not
/// (a pipe: the first end reads, the second writes).
std::pair<Connection, Connection> Pipe(bool duplex = true);

/// The connections (or raw descriptors, e.g. Process::sentinel()) among `objects` that are
/// ready (a message, EOF, or a process that ended) within `timeout` (nullopt: wait).
std::vector<Connection*> wait(std::span<Connection* const> objects,
                              std::optional<Connection::Duration> timeout = std::nullopt);
std::vector<int> wait(std::span<const int> fds,
                      std::optional<Connection::Duration> timeout = std::nullopt);

template <class T>
void Connection::send(const T& obj) {
  static_assert(reduction::Value<T>,
                "mp::Connection::send: the type has no serializer; for std::map, std::optional, "
                "std::variant, ... #include <mp/types.hpp>; give a type of your own a cereal "
                "serialize(Archive&) function");
  if constexpr (reduction::Value<T>) {
    (void)detail::tag_registered<T>;
    const std::uint64_t tag = tag_of(typeid(T));
    std::string message(reinterpret_cast<const char*>(&tag), sizeof tag);
    {
      reduction::OutArchive ar(message);
      ar(obj);
    }
    send_message({}, std::as_bytes(std::span(message)));
  }
}

template <class T>
T Connection::recv() {
  static_assert(reduction::Value<T>,
                "mp::Connection::recv: the type has no serializer; for std::map, std::optional, "
                "std::variant, ... #include <mp/types.hpp>; give a type of your own a cereal "
                "serialize(Archive&) function");
  T value{};
  if constexpr (reduction::Value<T>) {
    (void)detail::tag_registered<T>;
    const std::string message = recv_message(std::nullopt);
    check_tag(message, tag_of(typeid(T)), typeid(T));
    try {
      reduction::InArchive ar(std::string_view(message).substr(sizeof(std::uint64_t)));
      ar(value);
    } catch (const std::exception& e) {
      throw PicklingError(std::string("cannot read the received '") + reduction::type_name<T>() +
                          "': " + e.what());
    }
  }
  return value;
}

}  // namespace mp
