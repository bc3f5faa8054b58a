// Must NOT compile: the typed forkserver context refuses a capturing lambda, as spawn does.
#include <mp/mp.hpp>

int main() {
  int captured = 1;
  auto p = mp::forkserver_context.Process([captured] { (void)captured; });
  p.start();
}
