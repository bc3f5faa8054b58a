// Must NOT compile: a pool's workers are already running, so a task that captures cannot reach
// them (under any start method, fork included).
#include <mp/mp.hpp>

int main() {
  mp::Pool pool(1);
  int captured = 1;
  return pool.apply([captured](int x) { return x + captured; }, 2);
}
