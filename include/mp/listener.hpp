// Listener and Client (Python's multiprocessing.connection.Listener / Client): connections
// between processes that did not start one another, optionally authenticated by a key.
#pragma once

#include <chrono>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <variant>

#include "mp/connection.hpp"
#include "mp/reduction.hpp"

namespace mp {

/// A Unix socket path (a leading '\0' names a Linux abstract socket), or (host, port) for
/// TCP, as Python's str / tuple addresses. A std::variant (std::get, std::visit work).
struct Address : std::variant<std::string, std::pair<std::string, int>> {
  using variant::variant;
  /// As Python prints it: the path (a leading NUL as "\0"), or ('127.0.0.1', 5000).
  friend std::ostream& operator<<(std::ostream& os, const Address& address);
};

/// Listener's keywords (Python's family=, backlog=, authkey=):
/// `mp::Listener(address, {.authkey = mp::current_process().authkey()})`.
struct ListenerOptions {
  std::optional<std::string> family =
      std::nullopt;  ///< "AF_UNIX", "AF_INET"; default: from the address
  int backlog = 1;
  std::optional<AuthenticationString> authkey = std::nullopt;  ///< none: no authentication
};

/// Client's keywords (Python's family=, authkey=): `mp::Client(address, {.authkey = key})`.
struct ClientOptions {
  std::optional<std::string> family = std::nullopt;
  std::optional<AuthenticationString> authkey = std::nullopt;
};

/// The handshake of accept() and Client() gives up after this long (a stalled peer).
inline constexpr std::chrono::seconds kHandshakeTimeout{20};

/// A bound, listening socket (Python's Listener). family: "AF_UNIX" or "AF_INET"; by default
/// from the address, else AF_UNIX on a fresh path in a private temporary directory. With an
/// authkey, accept() runs CPython's mutual HMAC handshake. Closing (or destroying) it
/// removes its socket file; a crashed server's file stays, and binding its path again throws
/// std::system_error EADDRINUSE naming the path (as CPython): remove the file first.
class Listener {
 public:
  explicit Listener(std::optional<Address> address = std::nullopt,
                    std::optional<std::string> family = std::nullopt, int backlog = 1,
                    std::optional<AuthenticationString> authkey = std::nullopt);
  Listener(std::optional<Address> address, ListenerOptions options);
  Listener(Listener&& o) noexcept;
  Listener& operator=(Listener&& o) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  /// The next connection. Throws std::logic_error("listener is closed") once closed,
  /// mp::AuthenticationError("digest received was wrong") on a wrong key.
  Connection accept();
  /// Idempotent.
  void close();
  /// The listening socket (to wait for a connection with poll()).
  int fileno() const { return fd_; }
  /// The bound address (("127.0.0.1", port) for ("localhost", 0)).
  const Address& address() const { return address_; }
  /// The peer of the last accept(): ("ip", port) for TCP, "" for a Unix socket.
  const std::optional<Address>& last_accepted() const { return last_accepted_; }

 private:
  int fd_ = -1;
  Address address_;
  std::optional<Address> last_accepted_;
  std::optional<AuthenticationString> authkey_;
  std::string unlink_path_;  // the socket file this listener created
  std::string unlink_dir_;   // and the private directory it made for it
};

/// A connection to a Listener (Python's Client). With an authkey, runs CPython's mutual
/// handshake: mp::AuthenticationError("digest sent was rejected") on a wrong key. A missing
/// Unix path: std::system_error ENOENT; a closed TCP port: ECONNREFUSED.
Connection Client(const Address& address, std::optional<std::string> family = std::nullopt,
                  std::optional<AuthenticationString> authkey = std::nullopt);
Connection Client(const Address& address, ClientOptions options);

}  // namespace mp
