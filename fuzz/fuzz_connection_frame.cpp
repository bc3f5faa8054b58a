// libFuzzer: a Connection reading whatever a peer wrote (then closed): frames, lengths,
// truncation, type tags. Only clean errors may come out, and never an allocation the input
// did not pay for beyond the announced length's refusal.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "mp/connection.hpp"
#include "mp/types.hpp"

namespace {
struct Record {  // a user type: fields of several kinds
  int id = 0;
  std::string name;
  std::vector<double> xs;
  std::map<std::string, std::vector<int>> index;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, name, xs, index);
  }
};
}  // namespace

// The first 8 bytes of what send(T) writes: T's type tag.
template <class T>
std::string tag_of() {
  auto [a, b] = mp::Pipe();
  a.send(T{});
  return b.recv_bytes().substr(0, 8);
}

// A body behind a correct tag, straight into the decoder of T.
template <class T>
void decode(const std::uint8_t* data, std::size_t size) {
  static const std::string tag = tag_of<T>();
  auto [a, b] = mp::Pipe();
  a.send_bytes(tag + std::string(reinterpret_cast<const char*>(data), size));
  try {
    (void)b.recv<T>();
  } catch (const mp::PicklingError&) {
  }
}

// tools/fuzz.sh runs this with -rss_limit_mb: a length the message cannot back must be refused
// before anything is allocated for it.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 64 * 1024) return 0;  // more than a socket buffer holds before we read
  // A first byte 0xf0..0xf4: the rest is an archive body for one type (the tag is supplied).
  if (size > 0 && (data[0] & 0xf8) == 0xf0) {
    switch (data[0] & 7) {
      case 0:
        decode<std::string>(data + 1, size - 1);
        break;
      case 1:
        decode<std::vector<int>>(data + 1, size - 1);
        break;
      case 2:
        decode<std::vector<std::string>>(data + 1, size - 1);
        break;
      case 3:
        decode<std::map<std::string, int>>(data + 1, size - 1);
        break;
      default:
        decode<Record>(data + 1, size - 1);
    }
    return 0;
  }
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
      switch (i % 8) {
        case 0:
          (void)c.recv_bytes(1 << 20);
          break;
        case 1:
          (void)c.recv<std::vector<std::string>>();
          break;
        case 2:
          (void)c.recv_bytes_into(buf, 8);
          break;
        case 3:
          (void)c.recv<std::string>();
          break;
        case 4:
          (void)c.recv<std::vector<int>>();
          break;
        case 5:
          (void)c.recv<std::map<std::string, int>>();
          break;
        case 6:
          (void)c.recv<Record>();
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
