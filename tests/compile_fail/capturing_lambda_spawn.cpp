// Must NOT compile: a typed spawn context refuses a capturing lambda at compile time.
#include <mp/mp.hpp>

int main() {
  int captured = 1;
  auto p = mp::spawn_context.Process([captured] { (void)captured; });
  p.start();
}
