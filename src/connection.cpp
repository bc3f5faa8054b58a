// Connections (CPython connection.py): messages framed by a 4-byte big-endian length (-1 and
// an 8-byte length above 2 GiB), header and payload written together, read exactly (never
// ahead: a connection shared with a child must leave the next message whole).
#include "mp/connection.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>

#include <cereal/types/utility.hpp>  // send_connection: a direction pair

#include "posix/posix.hpp"

namespace mp {
namespace {

constexpr std::size_t kShortLimit = 0x7fffffff;  // above: -1, then the length in 8 bytes

std::size_t header_for(std::size_t n, unsigned char (&h)[12]) {
  auto put = [&](std::size_t at, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i)
      h[at + i] = static_cast<unsigned char>(v >> (8 * (bytes - 1 - i)));
  };
  if (n <= kShortLimit) {
    put(0, n, 4);
    return 4;
  }
  put(0, 0xffffffffu, 4);
  put(4, n, 8);
  return 12;
}

}  // namespace

Connection::Connection(int fd, bool readable, bool writable) {
  if (fd < 0) throw std::logic_error("invalid handle");
  if (!readable && !writable)
    throw std::logic_error("at least one of `readable` and `writable` must be True");
  fd_ = fd;
  readable_ = readable;
  writable_ = writable;
  is_socket_ = probe_socket(fd);
}

bool Connection::probe_socket(int fd) {
  return posix::is_socket(fd);
}

Connection::Connection(Connection&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      readable_(std::exchange(o.readable_, false)),
      writable_(std::exchange(o.writable_, false)),
      is_socket_(o.is_socket_) {}

Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
    readable_ = std::exchange(o.readable_, false);
    writable_ = std::exchange(o.writable_, false);
    is_socket_ = o.is_socket_;
  }
  return *this;
}

Connection::~Connection() {
  close();
}

void Connection::close() {
  if (fd_ >= 0) posix::unique_fd(fd_).reset();
  fd_ = -1;
}

int Connection::fileno() const {
  if (fd_ < 0) throw std::logic_error("handle is closed");
  return fd_;
}

void Connection::check_readable() const {
  if (fd_ < 0) throw std::logic_error("handle is closed");
  if (!readable_) throw std::logic_error("connection is write-only");
}

void Connection::check_writable() const {
  if (fd_ < 0) throw std::logic_error("handle is closed");
  if (!writable_) throw std::logic_error("connection is read-only");
}

std::uint64_t Connection::tag_of(const std::type_info& type) {
  // The mangled name is the same in every process running this program.
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char* c = type.name(); *c; ++c)
    h = (h ^ static_cast<unsigned char>(*c)) * 0x100000001b3ull;
  return h;
}

namespace {
struct TagRegistry {
  std::mutex mu;
  std::unordered_map<std::uint64_t, const std::type_info*> types;
};
TagRegistry& tag_registry() {
  static TagRegistry* r = new TagRegistry;  // never destroyed: static destructors may recv
  return *r;
}
}  // namespace

bool detail::register_tag(const std::type_info& type) {
  auto& r = tag_registry();
  std::lock_guard l(r.mu);
  r.types.emplace(Connection::tag_of(type), &type);
  return true;
}

void Connection::check_tag(std::string_view message, std::uint64_t expected,
                           const std::type_info& type) {
  std::uint64_t tag = 0;
  const auto starts_as_pickle = [&] {  // protocols 2 to 5 open with PROTO n
    return message.size() >= 2 && message[0] == '\x80' && message[1] >= 2 && message[1] <= 5;
  };
  if (message.size() >= sizeof tag) std::memcpy(&tag, message.data(), sizeof tag);
  if (message.size() >= sizeof tag && tag == expected) return;
  const std::string wanted = reduction::demangle(type);
  if (starts_as_pickle())
    throw PicklingError("cannot receive a '" + wanted +
                        "': this message is a Python pickle: use recv_bytes(), or send_bytes() "
                        "on the Python side");
  if (message.size() < sizeof tag)
    throw PicklingError("received a message that is not a serialized object (" +
                        std::to_string(message.size()) + " bytes); was it sent by send_bytes?");
  const std::type_info* sent = nullptr;
  {
    auto& r = tag_registry();
    std::lock_guard l(r.mu);
    if (auto it = r.types.find(tag); it != r.types.end()) sent = it->second;
  }
  if (sent)
    throw PicklingError("received an object of type '" + reduction::demangle(*sent) +
                        "', not the expected '" + wanted + "'");
  throw PicklingError("received an object of another type than the expected '" + wanted +
                      "' (one this program never sends or receives: another program's, or "
                      "bytes from send_bytes?)");
}

void Connection::send_bytes(std::span<const std::byte> buf, std::size_t offset,
                            std::optional<std::size_t> size) {
  check_writable();
  if (offset > buf.size()) throw std::logic_error("buffer length < offset");
  const std::size_t n = size.value_or(buf.size() - offset);
  if (n > buf.size() - offset) throw std::logic_error("buffer length < offset + size");
  send_message({}, buf.subspan(offset, n));
}

void Connection::send_message(std::span<const std::byte> head, std::span<const std::byte> body) {
  check_writable();
  unsigned char h[12];
  const std::size_t hn = header_for(head.size() + body.size(), h);
  // One writev for the length, the tag and the payload: no copy of the payload.
  const std::span<const std::byte> parts[] = {
      {reinterpret_cast<const std::byte*>(h), hn}, head, body};
  posix::write_all(fd_, parts, is_socket_);
}

std::uint64_t Connection::recv_length(std::optional<std::size_t> maxlength) {
  check_readable();
  unsigned char h[4];
  std::size_t got = posix::read_full(fd_, {reinterpret_cast<std::byte*>(h), 4});
  if (got == 0) throw EOFError("EOF: the other end of the connection was closed");
  if (got < 4) throw ProcessError("got end of file during message");
  std::uint64_t n = std::uint64_t(h[0]) << 24 | std::uint64_t(h[1]) << 16 |
                    std::uint64_t(h[2]) << 8 | std::uint64_t(h[3]);
  if (n == 0xffffffffu) {
    unsigned char l[8];
    if (posix::read_full(fd_, {reinterpret_cast<std::byte*>(l), 8}) != 8)
      throw ProcessError("got end of file during message");
    n = 0;
    for (unsigned char b : l) n = n << 8 | b;
  } else if (n > kShortLimit) {
    throw ProcessError("bad message length");  // a negative length other than -1
  }
  if (maxlength && n > *maxlength) {
    // As CPython: the message cannot be skipped safely, so this end stops reading.
    if (writable_) {
      readable_ = false;
    } else {
      close();
    }
    throw ProcessError("bad message length");
  }
  // A length no memory could hold is refused before anything is allocated.
  if (n > (std::uint64_t(64) << 20) && n > posix::physical_memory())
    throw ProcessError("bad message length");
  return n;
}

std::string Connection::recv_message(std::optional<std::size_t> maxlength) {
  return recv_body(recv_length(maxlength));
}

std::string Connection::recv_body(std::uint64_t n) {
  // Up to 64 MiB is reserved (beyond, the buffer grows as data arrives) and filled a step at
  // a time: a peer that announces more than it sends makes us touch little more than it sent.
  constexpr std::size_t kStep = std::size_t(4) << 20;
  std::string message;
  message.reserve(std::min<std::size_t>(static_cast<std::size_t>(n), std::size_t(64) << 20));
  while (message.size() < n) {
    const std::size_t have = message.size();
    const std::size_t want = std::min<std::size_t>(static_cast<std::size_t>(n) - have, kStep);
#if defined(__cpp_lib_string_resize_and_overwrite)
    // Read straight into the new room: no zero-fill of what the read overwrites anyway.
    std::size_t got = 0;
    message.resize_and_overwrite(have + want, [&](char* p, std::size_t) {
      got = posix::read_full(fd_, {reinterpret_cast<std::byte*>(p + have), want});
      return have + got;
    });
#else
    message.resize(have + want);
    const std::size_t got =
        posix::read_full(fd_, {reinterpret_cast<std::byte*>(message.data() + have), want});
#endif
    if (got != want) throw ProcessError("got end of file during message");
  }
  return message;
}

std::string Connection::recv_bytes(std::optional<std::size_t> maxlength) {
  return recv_message(maxlength);
}

std::size_t Connection::recv_bytes_into(std::span<std::byte> buf, std::size_t offset) {
  check_readable();
  if (offset > buf.size()) throw std::logic_error("offset too large");
  const std::uint64_t n = recv_length(std::nullopt);
  if (n > buf.size() - offset || (offset == buf.size() && n > 0)) {
    // Too small: the whole message is read anyway (it is consumed), and handed over.
    throw BufferTooShort(recv_body(n));
  }
  // It fits: straight into the caller's buffer, no copy.
  const auto size = static_cast<std::size_t>(n);
  if (posix::read_full(fd_, buf.subspan(offset, size)) != size)
    throw ProcessError("got end of file during message");
  return size;
}

bool Connection::poll(std::optional<Duration> timeout) {
  check_readable();
  return posix::wait_readable(fd_, timeout);
}

void send_handle(Connection& conn, int fd) {
  posix::send_fd(conn.fileno(), fd);
}

int recv_handle(Connection& conn) {
  const int fd = posix::recv_fd(conn.fileno());
  if (fd == -2) throw EOFError("EOF: the other end of the connection was closed");
  if (fd < 0) throw std::runtime_error("received 0 items of ancdata");
  return fd;
}

void send_connection(Connection& via, const Connection& conn) {
  send_handle(via, conn.fileno());
  via.send(std::pair<bool, bool>(conn.readable(), conn.writable()));
}

Connection recv_connection(Connection& via) {
  posix::unique_fd fd(recv_handle(via));
  auto [readable, writable] = via.recv<std::pair<bool, bool>>();
  return Connection(fd.release(), readable, writable);
}

std::pair<Connection, Connection> Pipe(bool duplex) {
  if (duplex) {
    auto [a, b] = posix::make_socketpair();
    return {Connection(a.release(), true, true), Connection(b.release(), true, true)};
  }
  auto [r, w] = posix::make_pipe();
  return {Connection(r.release(), true, false), Connection(w.release(), false, true)};
}

std::vector<int> wait(std::span<const int> fds, std::optional<Connection::Duration> timeout) {
  return posix::wait_any_readable(fds, timeout);
}

std::vector<Connection*> wait(std::span<Connection* const> objects,
                              std::optional<Connection::Duration> timeout) {
  std::vector<int> fds;
  for (auto* c : objects) fds.push_back(c->fileno());
  auto ready = posix::wait_any_readable(fds, timeout);
  std::vector<Connection*> out;
  for (auto* c : objects)
    for (int fd : ready)
      if (c->fileno() == fd) {
        out.push_back(c);
        break;
      }
  return out;
}

}  // namespace mp
