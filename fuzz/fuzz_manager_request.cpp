// libFuzzer: the manager server's request decoder (src/manager_requests.hpp), on any frames
// one client could send: creates, calls with any arguments, releases, references in transit.
// Whatever a request says, the server answers or ends the connection; it never crashes, and
// the client's end frees what its requests made.
//
// Input: frames, each [u16 length] then that many bytes (call id, op, body), up to 16.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <typeinfo>
#include <vector>

#include <mp/managers.hpp>

#include "manager_requests.hpp"

namespace {
struct Counter {
  int n = 0;
  Counter() = default;
  explicit Counter(int start) : n(start) {}
  int add(int by) { return n += by; }
  std::string join(const std::vector<std::string>& parts, const std::string& sep) const {
    std::string out;
    for (const auto& p : parts) out += p + sep;
    return out;
  }
  MP_METHODS(Counter, add, join)
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)mp::detail::Served<Counter>::registered;
  (void)mp::detail::Constructor<Counter>::registered;
  (void)mp::detail::Constructor<Counter, int>::registered;
  std::vector<std::string> frames;
  while (size >= 2 && frames.size() < 16) {
    std::uint16_t n;
    std::memcpy(&n, data, 2);
    data += 2;
    size -= 2;
    if (n > size) n = static_cast<std::uint16_t>(size);
    frames.emplace_back(reinterpret_cast<const char*>(data), n);
    data += n;
    size -= n;
  }
  mp::detail::fuzz_manager_requests({{"Counter", typeid(Counter).name()}}, frames);
  return 0;
}
