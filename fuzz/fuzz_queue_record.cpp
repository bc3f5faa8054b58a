// libFuzzer: a queue's record decoder (src/queue_record.hpp) on any stamp a peer could have
// scribbled in the shared segment, with any payload and any top of the queue's pages. What it
// accepts is consistent; what it refuses is an mp::ProcessError naming the queue.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "mp/errors.hpp"
#include "queue_record.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mp::detail;
  std::uint8_t in[8 + 16 + 8] = {};
  std::memcpy(in, data, size < sizeof in ? size : sizeof in);
  std::uint64_t word, heap_top;
  std::memcpy(&word, in, 8);
  std::memcpy(&heap_top, in + 24, 8);
  const std::uint64_t heap_base = 3 << 20, page = 4096;
  if (pack(unpack(word)) != word) __builtin_trap();  // every bit has its field
  try {
    const Record r = check_record("mp-queue-fuzz", word);
    if (r.units < 1 || r.units > kInlineMax / kUnitBytes + 1) __builtin_trap();
    if (r.large && r.bytes != 0 && r.bytes != sizeof(Extent)) __builtin_trap();
    if (!r.large && r.bytes > kInlineMax) __builtin_trap();
    if (r.large && r.bytes == sizeof(Extent)) {
      const Extent e = check_extent("mp-queue-fuzz", in + 8, heap_base, heap_top, page);
      if (e.off < heap_base || e.off % page != 0 || e.len <= kInlineMax || e.off >= heap_top ||
          e.len > heap_top - e.off)
        __builtin_trap();
    }
  } catch (const mp::ProcessError& e) {
    if (std::string(e.what()).find("mp-queue-fuzz") == std::string::npos) __builtin_trap();
  }
  return 0;
}
