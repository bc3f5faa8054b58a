// Must compile: fork runs any callable (the control for the two refusals beside it).
#include <mp/mp.hpp>

int main() {
  int captured = 1;
  auto p = mp::fork_context.Process([captured] { (void)captured; });
  p.start();
  p.join();
}
