#include "auth.hpp"

#include <nettle/hmac.h>
#include <nettle/memops.h>

#include <cstring>
#include <string_view>

#include "mp/errors.hpp"

namespace mp::detail {
namespace {

constexpr std::string_view kChallenge = "#CHALLENGE#";
constexpr std::string_view kWelcome = "#WELCOME#";
constexpr std::string_view kFailure = "#FAILURE#";
constexpr std::string_view kSha256 = "{sha256}";
constexpr std::size_t kMessageLength = 40;  // random bytes in a challenge (CPython)
constexpr std::size_t kMaxHandshakeMessage = 256;

std::span<const std::byte> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

bool starts_with(const std::vector<std::byte>& m, std::string_view prefix) {
  return m.size() >= prefix.size() && std::memcmp(m.data(), prefix.data(), prefix.size()) == 0;
}

}  // namespace

std::vector<std::byte> recv_message(int fd, std::size_t maxlength, posix::Deadline deadline) {
  unsigned char h[4];
  auto got = posix::read_until(fd, {reinterpret_cast<std::byte*>(h), 4}, deadline);
  if (got == 0) throw ProcessError("EOF: the peer closed the connection");
  if (got < 4) throw ProcessError("got end of file during message");
  const std::int32_t n =
      static_cast<std::int32_t>(std::uint32_t(h[0]) << 24 | std::uint32_t(h[1]) << 16 |
                                std::uint32_t(h[2]) << 8 | std::uint32_t(h[3]));
  if (n < 0 || static_cast<std::size_t>(n) > maxlength) throw ProcessError("bad message length");
  std::vector<std::byte> out(static_cast<std::size_t>(n));
  if (posix::read_until(fd, out, deadline) != out.size())
    throw ProcessError("got end of file during message");
  return out;
}

void send_message(int fd, std::span<const std::byte> payload, posix::Deadline deadline) {
  const auto n = static_cast<std::uint32_t>(payload.size());
  std::vector<std::byte> buf(4 + payload.size());
  buf[0] = std::byte(n >> 24);
  buf[1] = std::byte(n >> 16);
  buf[2] = std::byte(n >> 8);
  buf[3] = std::byte(n);
  std::memcpy(buf.data() + 4, payload.data(), payload.size());
  posix::write_until(fd, buf, deadline);
}

std::vector<std::byte> hmac_sha256(const AuthenticationString& key,
                                   std::span<const std::byte> message) {
  hmac_sha256_ctx ctx;
  hmac_sha256_set_key(&ctx, key.size(), reinterpret_cast<const std::uint8_t*>(key.bytes().data()));
  hmac_sha256_update(&ctx, message.size(), reinterpret_cast<const std::uint8_t*>(message.data()));
  std::vector<std::byte> out(SHA256_DIGEST_SIZE);
  hmac_sha256_digest(&ctx, SHA256_DIGEST_SIZE, reinterpret_cast<std::uint8_t*>(out.data()));
  return out;
}

void deliver_challenge(int fd, const AuthenticationString& key, posix::Deadline deadline) {
  // The HMAC covers the whole challenge, digest name included (CPython 3.12+).
  std::vector<std::byte> message(bytes_of(kSha256).begin(), bytes_of(kSha256).end());
  auto random = posix::random_bytes(kMessageLength);
  message.insert(message.end(), random.begin(), random.end());
  std::vector<std::byte> challenge(bytes_of(kChallenge).begin(), bytes_of(kChallenge).end());
  challenge.insert(challenge.end(), message.begin(), message.end());
  send_message(fd, challenge, deadline);

  auto response = recv_message(fd, kMaxHandshakeMessage, deadline);
  auto expected = hmac_sha256(key, message);
  const bool ok = response.size() == kSha256.size() + expected.size() &&
                  starts_with(response, kSha256) &&
                  memeql_sec(response.data() + kSha256.size(), expected.data(), expected.size());
  if (!ok) {
    try {
      send_message(fd, bytes_of(kFailure), deadline);
    } catch (const std::exception&) {
      // The peer may be gone already; the verdict stands.
    }
    throw AuthenticationError("digest received was wrong");
  }
  send_message(fd, bytes_of(kWelcome), deadline);
}

void answer_challenge(int fd, const AuthenticationString& key, posix::Deadline deadline) {
  auto message = recv_message(fd, kMaxHandshakeMessage, deadline);
  if (!starts_with(message, kChallenge))
    throw AuthenticationError("Protocol error, expected challenge");
  std::span<const std::byte> payload(message.data() + kChallenge.size(),
                                     message.size() - kChallenge.size());
  if (payload.size() < kSha256.size() + 20 ||
      std::memcmp(payload.data(), kSha256.data(), kSha256.size()) != 0)
    throw AuthenticationError("challenge too short or not {sha256}");
  auto digest = hmac_sha256(key, payload);
  std::vector<std::byte> response(bytes_of(kSha256).begin(), bytes_of(kSha256).end());
  response.insert(response.end(), digest.begin(), digest.end());
  send_message(fd, response, deadline);
  auto verdict = recv_message(fd, kMaxHandshakeMessage, deadline);
  if (verdict.size() != kWelcome.size() || !starts_with(verdict, kWelcome))
    throw AuthenticationError("digest sent was rejected");
}

}  // namespace mp::detail
