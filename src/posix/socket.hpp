// Listening and connecting sockets: Unix (path or abstract) and TCP.
#pragma once

#include <string>
#include <utility>

#include "posix/posix.hpp"

namespace mp::posix {

/// Binds and listens on a Unix socket path ("\0name": abstract); stores the socket in `fd`.
void listen_unix(const std::string& path, int backlog, int& fd);
/// Binds and listens on host:port (SO_REUSEADDR); returns the bound (ip, port).
std::pair<std::string, int> listen_inet(const std::string& host, int port, int backlog, int& fd);
/// A connected socket (close-on-exec). For TCP peers, their ip and port (port -1 otherwise).
int accept_connection(int listener, std::string& peer_host, int& peer_port);
unique_fd connect_unix(const std::string& path);
unique_fd connect_inet(const std::string& host, int port);

/// mkdtemp (mode 0700); removing it (and what is in it), quietly.
std::string make_private_dir(const std::string& pattern);
void remove_private_dir(const std::string& dir);
void unlink_path(const std::string& path);

}  // namespace mp::posix
