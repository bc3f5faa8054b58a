// Must NOT compile: a task's result must be able to cross back.
#include <mp/mp.hpp>

struct NoSerializer {
  int* p = nullptr;
};
NoSerializer make(int) {
  return {};
}

int main() {
  mp::Pool pool(1);
  pool.apply(make, 1);
}
