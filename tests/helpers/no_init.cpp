// A program that links multiprocess but whose main() forgets mp::init. Started as a spawned
// child, it must neither fork-bomb (start() refuses) nor look successful.
#include <mp/mp.hpp>

#include <iostream>

void noop() {}

int main() {
  mp::Process p(noop);
  try {
    p.start();
    std::cerr << "no_init: start() succeeded\n";
  } catch (const std::exception& e) {
    std::cerr << "no_init: start() refused: " << e.what() << '\n';
  }
  return 0;  // the library turns this into exit code 1 and a message naming the fix
}
