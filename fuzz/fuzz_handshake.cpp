// libFuzzer: both sides of the authentication handshake against a peer that sends these bytes
// and then closes. Nothing but a clean error (or success with the right digest) may come out.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>

#include "auth.hpp"

namespace {
const mp::AuthenticationString kKey("fuzzing key");

void feed(const std::uint8_t* data, std::size_t size, bool server_side) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return;
  // The peer's bytes are all there before we start; then EOF.
  std::size_t off = 0;
  while (off < size) {
    ssize_t n = ::send(sv[1], data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
  ::shutdown(sv[1], SHUT_WR);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  try {
    if (server_side)
      mp::detail::deliver_challenge(sv[0], kKey, deadline);
    else
      mp::detail::answer_challenge(sv[0], kKey, deadline);
  } catch (const std::exception&) {
  }
  ::close(sv[0]);
  ::close(sv[1]);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 64 * 1024) return 0;  // more than a socket buffer holds before we read
  feed(data, size, true);
  feed(data, size, false);
  return 0;
}
