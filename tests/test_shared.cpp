// CPython's _TestValue, _TestArray, _TestSharedCTypes: values and arrays in shared memory,
// changed by children started by every method and seen by the parent.
#include <mutex>
#include <thread>

#include "support.hpp"

using namespace mp_test;

namespace {

struct Point {
  int x;
  double y;
  long long z;
};

class SharedAcross : public ::testing::TestWithParam<std::string> {
 protected:
  const mp::Context& ctx() const { return mp::get_context(GetParam()); }
};

void change_values(mp::Value<int> i, mp::Value<double> d, mp::Value<short> h,
                   mp::Value<long long> q, mp::Value<char> c, mp::Value<Point> s,
                   mp::RawValue<int> raw) {
  i.store(24234);
  d.store(-4.25);
  h.store(234);
  q.store(1LL << 34);
  c.store('y');
  s.store(Point{2, 0.5, -3});
  raw.get() = 7;
}

TEST_P(SharedAcross, ValuesChangedByAChildAreSeenHere) {
  mp::Value<int> i(4343);
  mp::Value<double> d(3.625);
  mp::Value<short> h(-232);
  mp::Value<long long> q(1LL << 33);
  mp::Value<char> c('x');
  mp::Value<Point> s(Point{1, 2.5, 3});
  mp::RawValue<int> raw(6);
  auto p = ctx().Process(change_values, i, d, h, q, c, s, raw);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(i.load(), 24234);
  EXPECT_EQ(d.load(), -4.25);
  EXPECT_EQ(h.load(), 234);
  EXPECT_EQ(q.load(), 1LL << 34);
  EXPECT_EQ(c.load(), 'y');
  EXPECT_EQ(s.load().x, 2);
  EXPECT_EQ(s.load().y, 0.5);
  EXPECT_EQ(s.load().z, -3);
  EXPECT_EQ(raw.get(), 7);
}

void add_guarded(mp::Value<long long> v, int times) {
  for (int k = 0; k < times; ++k) {
    std::lock_guard g(v.get_lock());
    v.store(v.load() + 1);  // load/store re-take the (recursive) lock: as Python's v.value += 1
  }
}

TEST_P(SharedAcross, GuardedIncrementsFromFourProcessesSumExactly) {
  mp::Value<long long> v(0);
  std::vector<mp::Process> ps;
  for (int k = 0; k < 4; ++k) ps.push_back(ctx().Process(add_guarded, v, 1000));
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join(kHang);
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(v.load(), 4000);
}

void prefix_sum(mp::Array<int> a) {
  std::lock_guard g(a.get_lock());
  for (std::size_t k = 1; k < a.size(); ++k) a[k] += a[k - 1];
}

void double_text_in_place(mp::Array<char> text) {
  std::lock_guard g(text.get_lock());
  const std::string s = text.value();
  const std::string twice = s + s;
  std::copy(twice.begin(), twice.end(), text.get_obj().begin());
}

TEST_P(SharedAcross, ArraysChangedByAChildAreSeenHere) {
  mp::Array<int> a{1, 2, 3, 4, 5};
  auto p = ctx().Process(prefix_sum, a);
  p.start();
  p.join(kHang);
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(a.to_vector(), (std::vector<int>{1, 3, 6, 10, 15}));

  mp::Array<char> text(20);
  const std::string hello = "hello";
  std::copy(hello.begin(), hello.end(), text.get_obj().begin());
  auto q = ctx().Process(double_text_in_place, text);
  q.start();
  q.join(kHang);
  EXPECT_EQ(q.exitcode(), 0);
  EXPECT_EQ(text.value(), "hellohello");
  EXPECT_EQ(text.raw().size(), 20u);
}

INSTANTIATE_TEST_SUITE_P(StartMethods, SharedAcross,
                         ::testing::Values("fork", "spawn", "forkserver"),
                         [](const auto& info) { return info.param; });

TEST(Value, LocksAsSharedctypes) {
  mp::Value<int> v(1);
  {  // the default lock is recursive: load/store inside a held get_lock() work
    std::lock_guard g(v.get_lock());
    v.store(v.load() + 1);
  }
  EXPECT_EQ(v.load(), 2);
  // A given lock is the lock: holding it through one name holds the other.
  mp::Lock lock;
  mp::Value<int, mp::Lock> w(5, lock);
  lock.acquire();
  EXPECT_FALSE(w.get_lock().try_lock());
  lock.release();
  EXPECT_TRUE(w.get_lock().try_lock());
  EXPECT_FALSE(lock.try_lock());
  w.get_lock().release();
  // Copies are handles to the same value.
  auto copy = v;
  copy.store(9);
  EXPECT_EQ(v.load(), 9);
  EXPECT_EQ(&copy.get_obj(), &v.get_obj());
}

TEST(Array, IndexingAssignmentAndZeroFill) {
  for (int round = 0; round < 3; ++round) {  // zero-filled every time (CPython issue #11675)
    mp::Array<int> a(10);
    EXPECT_EQ(a.size(), 10u);
    for (std::size_t k = 0; k < a.size(); ++k) EXPECT_EQ(a[k], 0);
    for (std::size_t k = 0; k < a.size(); ++k) a[k] = static_cast<int>(k) + round;
  }
  mp::Array<int> a{4, 5, 6};
  EXPECT_EQ(a.at(2), 6);
  try {
    a.at(3);
    ADD_FAILURE() << "an index past the end was accepted";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "invalid index");
  }
  const int two[] = {1, 2};
  try {
    a.assign(two);
    ADD_FAILURE() << "assigned a sequence of another size";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "Can only assign sequence of same size");
  }
  const int three[] = {7, 8, 9};
  a.assign(three);
  EXPECT_EQ(a.to_vector(), (std::vector<int>{7, 8, 9}));
  mp::RawArray<double> raw{0.5, 1.5};
  EXPECT_EQ(raw[1], 1.5);
  mp::Array<char> empty(4);
  EXPECT_EQ(empty.value(), "");
  EXPECT_EQ(empty.raw(), std::string(4, '\0'));
}

TEST(Value, CrossingOutsideSpawningIsRefused) {
  auto [a, b] = mp::Pipe();
  try {
    a.send(mp::Value<int>(1));
    ADD_FAILURE() << "a Value was pickled outside spawning";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(),
                 "Value objects should only be shared between processes through inheritance");
  }
}

}  // namespace
