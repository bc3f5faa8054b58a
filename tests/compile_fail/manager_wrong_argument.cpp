// Must NOT compile: a proxy's method called with an argument its declared parameter cannot take.
#include <mp/managers.hpp>

#include <string>

struct Counter {
  int n = 0;
  int increment(int by) { return n += by; }
  MP_METHODS(Counter, increment)
};

int main() {
  mp::BaseManager m;
  m.register_type<Counter>("Counter");
  m.start();
  auto c = m.create<Counter>();
  return c.increment(std::string("five"));
}
