// Authentication by authkey (CPython connection.deliver_challenge / answer_challenge), in
// CPython's wire format: messages framed by a 4-byte big-endian length; the server sends
// "#CHALLENGE#{sha256}" + 40 random bytes, the client answers "{sha256}" + HMAC-SHA256(key,
// challenge after "#CHALLENGE#"), the server replies "#WELCOME#" or "#FAILURE#". A CPython
// <= 3.11 peer's legacy form (20-byte challenge, bare 16-byte HMAC-MD5 answer) is understood
// both ways, as CPython 3.12+ does.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "mp/reduction.hpp"
#include "posix/posix.hpp"

namespace mp::detail {

/// One framed message; throws mp::ProcessError("bad message length") when it announces more
/// than `maxlength` bytes (before allocating), mp::EOFError-like ProcessError on EOF.
std::vector<std::byte> recv_message(int fd, std::size_t maxlength, posix::Deadline deadline);
void send_message(int fd, std::span<const std::byte> payload, posix::Deadline deadline);

/// Server side: challenge the peer; throws mp::AuthenticationError("digest received was
/// wrong") after telling it #FAILURE#.
void deliver_challenge(int fd, const AuthenticationString& key, posix::Deadline deadline);
/// The server side one step at a time, for a poll loop that must not wait on any one peer:
/// the framed challenge to send, and the message a valid answer signs.
struct Challenge {
  std::vector<std::byte> framed;
  std::vector<std::byte> message;
};
Challenge make_challenge();
/// Whether `response` (an answer's payload, unframed) proves `key` for `challenge`; constant
/// time. A CPython <= 3.11 client's bare HMAC-MD5 is understood.
bool response_is_valid(const AuthenticationString& key, const Challenge& challenge,
                       std::span<const std::byte> response);
/// "#WELCOME#" or "#FAILURE#", framed.
std::vector<std::byte> framed_verdict(bool welcome);
/// Longest handshake message either side accepts.
inline constexpr std::size_t kMaxHandshakeMessage = 256;

/// Client side: answer a challenge; throws mp::AuthenticationError("digest sent was rejected").
void answer_challenge(int fd, const AuthenticationString& key, posix::Deadline deadline);

/// HMAC of `message` under `key` with "sha256" or "md5" (constant-time compared by the
/// callers); another digest: mp::AuthenticationError.
std::vector<std::byte> hmac(std::string_view digest, const AuthenticationString& key,
                            std::span<const std::byte> message);
std::vector<std::byte> hmac_sha256(const AuthenticationString& key,
                                   std::span<const std::byte> message);

}  // namespace mp::detail
