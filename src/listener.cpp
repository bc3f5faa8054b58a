// Listener and Client (CPython connection.py: SocketListener, SocketClient, the handshake).
#include "mp/listener.hpp"

#include <cerrno>
#include <ostream>
#include <stdexcept>
#include <system_error>

#include "auth.hpp"
#include "posix/socket.hpp"

namespace mp {
namespace {

// CPython's address_type and _validate_family.
std::string family_of(const Address& address, const std::optional<std::string>& family) {
  std::string f;
  if (family) {
    f = *family;
  } else if (std::holds_alternative<std::pair<std::string, int>>(address)) {
    f = "AF_INET";
  } else {
    const auto& path = std::get<std::string>(address);
    f = path.rfind("\\\\", 0) == 0 ? "AF_PIPE" : "AF_UNIX";
  }
  if (f == "AF_PIPE") throw std::logic_error("Family AF_PIPE is not recognized.");
  if (f != "AF_UNIX" && f != "AF_INET") throw std::logic_error("unrecognized family");
  return f;
}

posix::Deadline handshake_deadline() {
  return std::chrono::steady_clock::now() + kHandshakeTimeout;
}

}  // namespace

Listener::Listener(std::optional<Address> address, std::optional<std::string> family, int backlog,
                   std::optional<AuthenticationString> authkey)
    : authkey_(std::move(authkey)) {
  std::string f;
  if (!address) {
    f = family ? family_of(Address(std::string()), family) : "AF_UNIX";
    if (f == "AF_INET") {
      address = Address(std::pair<std::string, int>("localhost", 0));
    } else {
      unlink_dir_ = posix::make_private_dir("/tmp/mp-listener-XXXXXX");
      address = Address(unlink_dir_ + "/listener");
    }
  } else {
    f = family_of(*address, family);
  }
  try {
    if (f == "AF_INET") {
      const auto& [host, port] = std::get<std::pair<std::string, int>>(*address);
      auto bound = posix::listen_inet(host, port, backlog, fd_);
      address_ = Address(std::move(bound));
    } else {
      const auto& path = std::get<std::string>(*address);
      try {
        posix::listen_unix(path, backlog, fd_);
      } catch (const std::system_error& e) {
        // CPython fails here too. The usual cause: a server that died without close().
        if (e.code().value() != EADDRINUSE || path.empty() || path[0] == '\0') throw;
        throw std::system_error(e.code(),
                                "bind '" + path +
                                    "' (the socket file exists: a running server's, or "
                                    "one left by a server that died without closing its "
                                    "Listener; if no server uses it, remove it and retry)");
      }
      address_ = Address(path);
      if (!path.empty() && path[0] != '\0') unlink_path_ = path;
    }
  } catch (...) {
    posix::remove_private_dir(unlink_dir_);
    throw;
  }
}

Listener::Listener(std::optional<Address> address, ListenerOptions options)
    : Listener(std::move(address), std::move(options.family), options.backlog,
               std::move(options.authkey)) {}

Listener::Listener(Listener&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      address_(std::move(o.address_)),
      last_accepted_(std::move(o.last_accepted_)),
      authkey_(std::move(o.authkey_)),
      unlink_path_(std::exchange(o.unlink_path_, {})),
      unlink_dir_(std::exchange(o.unlink_dir_, {})) {}

Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
    address_ = std::move(o.address_);
    last_accepted_ = std::move(o.last_accepted_);
    authkey_ = std::move(o.authkey_);
    unlink_path_ = std::exchange(o.unlink_path_, {});
    unlink_dir_ = std::exchange(o.unlink_dir_, {});
  }
  return *this;
}

Listener::~Listener() {
  close();
}

void Listener::close() {
  if (fd_ >= 0) posix::unique_fd(fd_).reset();
  fd_ = -1;
  posix::unlink_path(unlink_path_);
  unlink_path_.clear();
  posix::remove_private_dir(unlink_dir_);
  unlink_dir_.clear();
}

Connection Listener::accept() {
  if (fd_ < 0) throw std::logic_error("listener is closed");
  std::string peer_host;
  int peer_port = -1;
  posix::unique_fd fd(posix::accept_connection(fd_, peer_host, peer_port));
  if (peer_port >= 0)
    last_accepted_ = Address(std::pair<std::string, int>(peer_host, peer_port));
  else
    last_accepted_ = Address(std::string());
  if (authkey_) {
    detail::deliver_challenge(fd.get(), *authkey_, handshake_deadline());
    detail::answer_challenge(fd.get(), *authkey_, handshake_deadline());
  }
  return Connection(fd.release(), true, true);
}

Connection Client(const Address& address, std::optional<std::string> family,
                  std::optional<AuthenticationString> authkey) {
  const std::string f = family_of(address, family);
  posix::unique_fd fd;
  if (f == "AF_INET") {
    const auto& [host, port] = std::get<std::pair<std::string, int>>(address);
    fd = posix::connect_inet(host, port);
  } else {
    fd = posix::connect_unix(std::get<std::string>(address));
  }
  if (authkey) {
    detail::answer_challenge(fd.get(), *authkey, handshake_deadline());
    detail::deliver_challenge(fd.get(), *authkey, handshake_deadline());
  }
  return Connection(fd.release(), true, true);
}

Connection Client(const Address& address, ClientOptions options) {
  return Client(address, std::move(options.family), std::move(options.authkey));
}

std::ostream& operator<<(std::ostream& os, const Address& address) {
  if (const auto* path = std::get_if<std::string>(&address)) {
    if (!path->empty() && (*path)[0] == '\0') return os << "\\0" << path->substr(1);
    return os << *path;
  }
  const auto& [host, port] = std::get<std::pair<std::string, int>>(address);
  return os << "('" << host << "', " << port << ')';
}

}  // namespace mp
