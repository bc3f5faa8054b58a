#include "auth.hpp"

#include <nettle/hmac.h>
#include <nettle/memops.h>

#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "mp/errors.hpp"

namespace mp::detail {
namespace {

constexpr std::string_view kChallenge = "#CHALLENGE#";
constexpr std::string_view kWelcome = "#WELCOME#";
constexpr std::string_view kFailure = "#FAILURE#";
constexpr std::string_view kSha256 = "{sha256}";
constexpr std::size_t kMessageLength = 40;  // random bytes in a challenge (CPython)

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

namespace {
std::vector<std::byte> framed(std::span<const std::byte> payload) {
  const auto n = static_cast<std::uint32_t>(payload.size());
  std::vector<std::byte> buf(4 + payload.size());
  buf[0] = std::byte(n >> 24);
  buf[1] = std::byte(n >> 16);
  buf[2] = std::byte(n >> 8);
  buf[3] = std::byte(n);
  std::memcpy(buf.data() + 4, payload.data(), payload.size());
  return buf;
}
}  // namespace

void send_message(int fd, std::span<const std::byte> payload, posix::Deadline deadline) {
  posix::write_until(fd, framed(payload), deadline);
}

std::vector<std::byte> hmac_sha256(const AuthenticationString& key,
                                   std::span<const std::byte> message) {
  return hmac("sha256", key, message);
}

std::vector<std::byte> hmac(std::string_view digest, const AuthenticationString& key,
                            std::span<const std::byte> message) {
  const auto* k = reinterpret_cast<const std::uint8_t*>(key.bytes().data());
  const auto* m = reinterpret_cast<const std::uint8_t*>(message.data());
  if (digest == "sha256") {
    hmac_sha256_ctx ctx;
    hmac_sha256_set_key(&ctx, key.size(), k);
    hmac_sha256_update(&ctx, message.size(), m);
    std::vector<std::byte> out(SHA256_DIGEST_SIZE);
    hmac_sha256_digest(&ctx, SHA256_DIGEST_SIZE, reinterpret_cast<std::uint8_t*>(out.data()));
    return out;
  }
  if (digest == "md5") {
    hmac_md5_ctx ctx;
    hmac_md5_set_key(&ctx, key.size(), k);
    hmac_md5_update(&ctx, message.size(), m);
    std::vector<std::byte> out(MD5_DIGEST_SIZE);
    hmac_md5_digest(&ctx, MD5_DIGEST_SIZE, reinterpret_cast<std::uint8_t*>(out.data()));
    return out;
  }
  throw AuthenticationError("digest '" + std::string(digest) + "' unsupported");
}

namespace {

// CPython 3.12's _get_digest_name_and_payload: a 16- or 20-byte message is the legacy
// protocol (HMAC-MD5, no prefix: CPython <= 3.11); otherwise "{digest}payload".
std::pair<std::string, std::span<const std::byte>> digest_and_payload(
    std::span<const std::byte> message) {
  if (message.size() == 16 || message.size() == 20) return {"", message};
  const auto* c = reinterpret_cast<const char*>(message.data());
  if (!message.empty() && c[0] == '{') {
    for (std::size_t i = 1; i < message.size() && i <= 21; ++i) {
      if (c[i] != '}') continue;
      std::string digest(c + 1, i - 1);
      if (digest == "sha256" || digest == "md5") return {digest, message.subspan(i + 1)};
      break;
    }
  }
  throw AuthenticationError(
      "unsupported message length, missing digest prefix, or unsupported digest");
}

}  // namespace

Challenge make_challenge() {
  // The HMAC covers the whole challenge, digest name included (CPython 3.12+).
  Challenge c;
  c.message.assign(bytes_of(kSha256).begin(), bytes_of(kSha256).end());
  auto random = posix::random_bytes(kMessageLength);
  c.message.insert(c.message.end(), random.begin(), random.end());
  std::vector<std::byte> challenge(bytes_of(kChallenge).begin(), bytes_of(kChallenge).end());
  challenge.insert(challenge.end(), c.message.begin(), c.message.end());
  c.framed = framed(challenge);
  return c;
}

bool response_is_valid(const AuthenticationString& key, const Challenge& challenge,
                       std::span<const std::byte> response) {
  try {
    // A CPython <= 3.11 client answers the whole challenge with a bare HMAC-MD5, as CPython
    // 3.12 itself accepts.
    auto [digest, mac] = digest_and_payload(response);
    auto expected = hmac(digest.empty() ? "md5" : digest, key, challenge.message);
    return expected.size() == mac.size() && memeql_sec(expected.data(), mac.data(), mac.size());
  } catch (const AuthenticationError&) {
    return false;
  }
}

std::vector<std::byte> framed_verdict(bool welcome) {
  return framed(bytes_of(welcome ? kWelcome : kFailure));
}

void deliver_challenge(int fd, const AuthenticationString& key, posix::Deadline deadline) {
  const Challenge challenge = make_challenge();
  posix::write_until(fd, challenge.framed, deadline);
  auto response = recv_message(fd, kMaxHandshakeMessage, deadline);
  if (!response_is_valid(key, challenge, response)) {
    try {
      posix::write_until(fd, framed_verdict(false), deadline);
    } catch (const std::exception&) {
      // The peer may be gone already; the verdict stands.
    }
    throw AuthenticationError("digest received was wrong");
  }
  posix::write_until(fd, framed_verdict(true), deadline);
}

void answer_challenge(int fd, const AuthenticationString& key, posix::Deadline deadline) {
  auto message = recv_message(fd, kMaxHandshakeMessage, deadline);
  if (!starts_with(message, kChallenge))
    throw AuthenticationError("Protocol error, expected challenge");
  std::span<const std::byte> challenge(message.data() + kChallenge.size(),
                                       message.size() - kChallenge.size());
  if (challenge.size() < 20) throw AuthenticationError("challenge too short");
  auto [digest, payload] = digest_and_payload(challenge);
  std::vector<std::byte> response;
  if (digest.empty()) {
    response = hmac("md5", key, challenge);  // a CPython <= 3.11 peer: bare HMAC-MD5
  } else {
    const std::string prefix = "{" + digest + "}";
    response.assign(bytes_of(prefix).begin(), bytes_of(prefix).end());
    auto mac = hmac(digest, key, challenge);  // over the whole challenge, prefix included
    response.insert(response.end(), mac.begin(), mac.end());
  }
  send_message(fd, response, deadline);
  auto verdict = recv_message(fd, kMaxHandshakeMessage, deadline);
  if (verdict.size() != kWelcome.size() || !starts_with(verdict, kWelcome))
    throw AuthenticationError("digest sent was rejected");
}

}  // namespace mp::detail
