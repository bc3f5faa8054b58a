// Frames: the message stream of the pool's workers and of a manager's connections (after its
// handshake), both ways: the length of what follows (u64), an id (u64: a task, a call), a
// status or request code (u8), the bytes. The reader reads ahead, many frames per system call:
// only for a stream this process alone reads (never a Connection it may share with a child).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "mp/errors.hpp"

namespace mp::detail {

constexpr std::size_t kFrameHeader = 17;  // length, id, code

inline void append_frame(std::string& out, std::uint64_t id, std::uint8_t code,
                         std::string_view payload) {
  const std::uint64_t len = 9 + payload.size();
  out.append(reinterpret_cast<const char*>(&len), 8);
  out.append(reinterpret_cast<const char*>(&id), 8);
  out.push_back(static_cast<char>(code));
  out.append(payload);
}

struct Frame {
  std::uint64_t id;
  std::uint8_t code;
  std::string_view payload;
};

// Bytes as they arrive, cut into frames. The buffer only grows: a frame's bytes are received
// into place and moved at most once (growing it zero-fills the new room once).
class FrameReader {
 public:
  // `max_payload`: a longer frame is a corrupted (or hostile) stream; `owner` names the
  // stream in that error.
  FrameReader(std::uint64_t max_payload, const char* owner)
      : max_len_(max_payload + 9), owner_(owner) {}

  std::optional<Frame> next() {
    const std::size_t left = end_ - start_;
    if (left < kFrameHeader) return std::nullopt;
    std::uint64_t len, id;
    std::memcpy(&len, buf_.data() + start_, 8);
    if (len < 9 || len > max_len_)
      throw ProcessError(std::string(owner_) + ": a corrupted frame from a peer");
    if (left - 8 < len) return std::nullopt;
    std::memcpy(&id, buf_.data() + start_ + 8, 8);
    Frame f{id, static_cast<std::uint8_t>(buf_[start_ + 16]),
            std::string_view(buf_).substr(start_ + kFrameHeader, len - 9)};
    start_ += 8 + len;
    return f;
  }
  // Whether next() has a frame to give without reading (a corrupted length counts: next()
  // then throws).
  bool has_frame() const {
    const std::size_t left = end_ - start_;
    if (left < kFrameHeader) return false;
    std::uint64_t len;
    std::memcpy(&len, buf_.data() + start_, 8);
    return len < 9 || len > max_len_ || left - 8 >= len;
  }
  // Room for what comes next (the frames handed out before are invalid after this).
  std::span<std::byte> space() {
    if (start_ == end_) {
      start_ = end_ = 0;
    } else if (start_ > 0 && start_ >= buf_.size() / 2) {
      std::memmove(buf_.data(), buf_.data() + start_, end_ - start_);
      end_ -= start_;
      start_ = 0;
    }
    // A frame whose length has arrived gets its whole size at once.
    std::size_t want = 64 * 1024;
    if (end_ - start_ >= 8) {
      std::uint64_t len;
      std::memcpy(&len, buf_.data() + start_, 8);
      if (len <= max_len_ && start_ + 8 + len > end_)
        want = std::max<std::size_t>(want, start_ + 8 + len - end_);
    }
    if (buf_.size() < end_ + want) buf_.resize(end_ + want);
    return std::as_writable_bytes(std::span(buf_)).subspan(end_);
  }
  void commit(std::size_t n) { end_ += n; }

 private:
  std::string buf_;
  std::size_t start_ = 0;
  std::size_t end_ = 0;
  std::uint64_t max_len_;
  const char* owner_;
};

}  // namespace mp::detail
