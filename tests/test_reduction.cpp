// The pickle layer against hostile input: a peer that claims a huge length in a tiny message
// must get a PicklingError, and must not make us allocate what it claimed (issue 10, item 1).
#include <sys/resource.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "support.hpp"

using namespace mp_test;

namespace {

constexpr std::uint64_t kClaim = std::uint64_t{1} << 29;  // 512 MiB of chars, 2 GiB of ints

struct Record {
  int id = 0;
  std::string name;
  std::vector<double> xs;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, name, xs);
  }
  friend bool operator==(const Record&, const Record&) = default;
};

struct Empty {
  template <class Archive>
  void serialize(Archive&) {}
};

// The bytes send(value) puts on the wire (type tag + archive), with the 8-byte length at
// `offset` (counted from the tag) replaced by kClaim.
template <class T>
std::string hostile(const T& value, std::size_t offset) {
  auto [a, b] = mp::Pipe();
  a.send(value);
  std::string frame = b.recv_bytes();
  std::memcpy(frame.data() + offset, &kClaim, sizeof kClaim);
  return frame;
}

// In a fork child: one hostile frame per type the parent reads, in the parent's order.
void write_hostile_frames(mp::Connection w) {
  w.send_bytes(hostile(std::string("abc"), 8));
  w.send_bytes(hostile(std::vector<int>{1}, 8));
  w.send_bytes(hostile(std::vector<std::string>{"a"}, 8));
  w.send_bytes(hostile(std::map<std::string, int>{{"a", 1}}, 8));
  w.send_bytes(hostile(Record{7, "bob", {1.5}}, 8 + sizeof(int)));  // the name's length
  w.send_bytes(hostile(std::vector<Empty>(3), 8));
}

long peak_rss_kib() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// The PicklingError recv<T>() throws (its text), and how much the peak RSS grew meanwhile.
template <class T>
std::pair<std::string, long> refusal(mp::Connection& r) {
  const long before = peak_rss_kib();
  std::string what = "no PicklingError";
  try {
    (void)r.recv<T>();
  } catch (const mp::PicklingError& e) {
    what = e.what();
  }
  return {what, peak_rss_kib() - before};
}

TEST(Reduction, HugeClaimedLengthsAreRefusedBeforeAllocating) {
  auto [r, w] = mp::Pipe(false);
  auto p = mp::fork_context.Process(write_hostile_frames, std::move(w));
  p.start();
  const long kBoundKiB = 16 << 10;
  const std::string claim = "claims " + std::to_string(kClaim) + " elements";
  {
    auto [what, grew] = refusal<std::string>(r);
    EXPECT_NE(what.find("'std::string' " + claim +
                        " (at least 1 bytes each), but 3 bytes are "
                        "left in the message"),
              std::string::npos)
        << what;
    EXPECT_LT(grew, kBoundKiB) << "peak RSS grew by " << grew << " KiB";
  }
  {
    auto [what, grew] = refusal<std::vector<int>>(r);
    EXPECT_NE(what.find("'std::vector<int>' " + claim + " (at least 4 bytes each), but 4 bytes"),
              std::string::npos)
        << what;
    EXPECT_LT(grew, kBoundKiB) << "peak RSS grew by " << grew << " KiB";
  }
  {
    auto [what, grew] = refusal<std::vector<std::string>>(r);
    EXPECT_NE(
        what.find("'std::vector<std::string>' " + claim + " (at least 8 bytes each), but 9 bytes"),
        std::string::npos)
        << what;
    EXPECT_LT(grew, kBoundKiB) << "peak RSS grew by " << grew << " KiB";
  }
  {
    auto [what, grew] = refusal<std::map<std::string, int>>(r);
    EXPECT_NE(what.find("'std::map<std::string, int>' " + claim +
                        " (at least 12 bytes each), but 13 bytes"),
              std::string::npos)
        << what;
    EXPECT_LT(grew, kBoundKiB) << "peak RSS grew by " << grew << " KiB";
  }
  {
    auto [what, grew] = refusal<Record>(r);
    EXPECT_NE(what.find("Record'"), std::string::npos) << what;
    EXPECT_NE(what.find("'std::string' " + claim + " (at least 1 bytes each), but 19 bytes"),
              std::string::npos)
        << what;
    EXPECT_LT(grew, kBoundKiB) << "peak RSS grew by " << grew << " KiB";
  }
  {
    auto [what, grew] = refusal<std::vector<Empty>>(r);
    EXPECT_NE(what.find("'std::vector<(anonymous namespace)::Empty>' " + claim +
                        " (1 bytes of memory each, unbacked by the message)"),
              std::string::npos)
        << what;
    EXPECT_LT(grew, kBoundKiB) << "peak RSS grew by " << grew << " KiB";
  }
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
}

TEST(Reduction, HonestMessagesAtTheBoundsStillCross) {
  auto [a, b] = mp::Pipe();
  a.send(Record{1, std::string(1000, 'x'), std::vector<double>(500, 0.5)});
  EXPECT_EQ(b.recv<Record>(), (Record{1, std::string(1000, 'x'), std::vector<double>(500, 0.5)}));
  // Elements that take no bytes at all: more of them than the message has bytes.
  a.send(std::vector<Empty>(100000));
  EXPECT_EQ(b.recv<std::vector<Empty>>().size(), 100000u);
  a.send(std::vector<std::string>(1000));  // each only its 8-byte length
  EXPECT_EQ(b.recv<std::vector<std::string>>().size(), 1000u);
  a.send(std::vector<std::vector<int>>{{}, {1, 2}, {}});
  EXPECT_EQ(b.recv<std::vector<std::vector<int>>>(),
            (std::vector<std::vector<int>>{{}, {1, 2}, {}}));
}

TEST(Reduction, TruncatedMessagesAreRefused) {
  auto [a, b] = mp::Pipe();
  auto [c, d] = mp::Pipe();
  c.send(std::vector<int>{1, 2, 3});
  std::string frame = d.recv_bytes();
  frame.pop_back();
  a.send_bytes(frame);
  try {
    (void)b.recv<std::vector<int>>();
    ADD_FAILURE() << "no PicklingError";
  } catch (const mp::PicklingError& e) {
    EXPECT_NE(std::string(e.what()).find("claims 3 elements"), std::string::npos) << e.what();
  }
}

}  // namespace
