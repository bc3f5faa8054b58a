// The words a queue's ring is made of (src/queues.cpp), as pure functions: the fuzzer
// (fuzz/fuzz_queue_record.cpp) feeds them what a peer could have scribbled in the segment.
//
// The ring is kUnits units of 16 bytes; each unit has a 64-bit stamp in a separate array. A
// record (one item) spans units [pos, pos + units): its first unit's stamp says what state it is
// in, how many bytes it holds and who moves it; the stamps of its other units stay "free for
// this lap" until the record is freed. Positions grow without end: pos = lap * kUnits + index.
#pragma once

#include <cstdint>
#include <string_view>

namespace mp::detail {

inline constexpr std::uint64_t kUnitBytes = 16;
inline constexpr std::uint64_t kUnits = std::uint64_t{1} << 16;
inline constexpr std::uint64_t kRingBytes = kUnits * kUnitBytes;  // 1 MiB
inline constexpr std::uint32_t kInlineMax = 32 * 1024;            // larger items: their own pages
inline constexpr std::uint32_t kOwners = 1024;                    // threads registered per queue

enum class Unit : std::uint32_t {
  free = 0,     // claimable when its lap is the position's (bytes: the record it held before)
  claimed = 1,  // a producer (owner) is writing it
  ready = 2,    // published: a consumer may take it
  taken = 3,    // a consumer (owner) is copying it out
};

// state:2 | large:1 | owner:10 | bytes:16 | lap:35 (2^35 laps of 1 MiB: it never wraps).
struct Stamp {
  Unit state = Unit::free;
  bool large = false;       // the payload is an Extent (bytes 16: written; 0: not yet)
  std::uint32_t owner = 0;  // index in the queue's registry of threads
  std::uint32_t bytes = 0;  // the payload's length
  std::uint64_t lap = 0;
};

inline constexpr std::uint64_t kLapMask = (std::uint64_t{1} << 35) - 1;

constexpr std::uint64_t pack(const Stamp& s) {
  return (std::uint64_t(s.state) << 62) | (std::uint64_t(s.large) << 61) |
         (std::uint64_t(s.owner & (kOwners - 1)) << 51) | (std::uint64_t(s.bytes & 0xffff) << 35) |
         (s.lap & kLapMask);
}

constexpr Stamp unpack(std::uint64_t w) {
  return {static_cast<Unit>(w >> 62), ((w >> 61) & 1) != 0,
          static_cast<std::uint32_t>((w >> 51) & (kOwners - 1)),
          static_cast<std::uint32_t>((w >> 35) & 0xffff), w & kLapMask};
}

constexpr std::uint64_t units_of(std::uint32_t bytes) {
  return bytes == 0 ? 1 : (bytes + kUnitBytes - 1) / kUnitBytes;
}

// A large item's pages in the memfd.
struct Extent {
  std::uint64_t off;  // page-aligned, at or beyond the heap's base
  std::uint64_t len;  // the item's bytes
};
static_assert(sizeof(Extent) == kUnitBytes);

// What a reader may rely on in a record it is about to take. Throws mp::ProcessError naming
// `queue` ("corrupted shared state: ...") for a stamp no writer of ours makes.
struct Record {
  bool large;
  std::uint32_t bytes;
  std::uint64_t units;
};
Record check_record(std::string_view queue, std::uint64_t word);
// A large record's payload, checked against the queue's pages [heap_base, heap_top).
Extent check_extent(std::string_view queue, const void* payload, std::uint64_t heap_base,
                    std::uint64_t heap_top, std::uint64_t page);

}  // namespace mp::detail
