// libFuzzer: a Connection reading whatever a peer wrote (then closed): frames, lengths,
// truncation, type tags. Only clean errors may come out, and never an allocation the input
// did not pay for beyond the announced length's refusal.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "mp/connection.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 64 * 1024) return 0;  // more than a socket buffer holds before we read
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  std::size_t off = 0;
  while (off < size) {
    ssize_t n = ::send(sv[1], data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
  ::close(sv[1]);
  mp::Connection c(sv[0], true, true);
  // Alternate readers so every path sees the stream: bytes (capped), objects, into a buffer.
  std::vector<std::byte> buf(64);
  for (int i = 0; i < 64 && !c.closed() && c.readable(); ++i) {
    try {
      switch (i % 4) {
        case 0:
          (void)c.recv_bytes(1 << 20);
          break;
        case 1:
          (void)c.recv<std::vector<std::string>>();
          break;
        case 2:
          (void)c.recv_bytes_into(buf, 8);
          break;
        default:
          (void)c.recv<int>();
      }
    } catch (const mp::EOFError&) {
      break;
    } catch (const std::exception&) {
    }
  }
  return 0;
}
