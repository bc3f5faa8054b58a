// A served type two programs of the suite share (tests/helpers/manager_tcp.cpp serves it, the
// suite calls it): the same definition in each, as across machines.
#pragma once

#include <unistd.h>

#include <mp/managers.hpp>
#include <string>

namespace mp_test_served {

struct Counter {
  int n = 0;
  Counter() = default;
  explicit Counter(int start) : n(start) {}
  int increment(int by) { return n += by; }
  int server_pid() const { return ::getpid(); }
  void fail() const { throw std::runtime_error("failed on purpose"); }
  MP_METHODS(Counter, increment, server_pid, fail)
};

}  // namespace mp_test_served
