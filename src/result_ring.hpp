// A pool worker's results on their way to the parent: a byte stream in memory both share
// (one writer, the worker; one reader at a time, the parent under its engine's lock), in
// place of the worker's end of its socket. A result then costs the worker no system call
// while the parent is busy reading others (a send per result was half of a tiny task's
// cost, on both sides); a parent about to sleep asks to be rung, and the worker rings with
// one byte on the socket, whose own direction carries nothing else. What a worker published
// before it died stays readable: the parent reads it all before it looks at what died with it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

namespace mp::detail {

class ResultRing {
 public:
  static constexpr std::size_t kBytes = 256 << 10;
  // The words a ring takes, header included (the memory given is 64-byte aligned, zeroed).
  static constexpr std::size_t kWords = 32 + kBytes / 8;

  explicit ResultRing(std::uint64_t* words);
  /// Empty again, for a new worker on the slot (the last one has ended).
  void reset();

  // The worker's side.
  /// Appends `parts`, waiting for room while the parent reads (none: std::system_error EPIPE
  /// once `parent` — its sentinel, -1: none — says it has gone); rings `bell` if the parent
  /// asked.
  void write(std::span<const std::span<const std::byte>> parts, int bell, int parent);

  // The parent's side.
  /// Moves up to into.size() published bytes into `into`; their count. Room made is announced
  /// to a worker waiting for it.
  std::size_t read(std::span<std::byte> into);
  /// Whether nothing waits to be read; when so, the next write rings (call it before sleeping,
  /// then read again if it says false: what came between is not rung for).
  bool arm();

 private:
  struct Header;
  Header& h() const;
  std::uint64_t* words_;
  std::byte* data_;
};

}  // namespace mp::detail
