// libFuzzer: the fork server's request decoder, on any bytes and any descriptor count.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>

#include "forkserver.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t fds = data[0] % 80;  // what came with it: up to past the limit
  try {
    auto r = mp::detail::decode_request(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(data + 1), size - 1), fds);
    // Whatever it accepts is consistent.
    if (r.nfds != fds || r.nfds > mp::detail::ForkRequest::kMaxFds || r.nfds < 1) __builtin_trap();
  } catch (const std::exception&) {
  }
  return 0;
}
