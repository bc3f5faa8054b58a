// A program that links multiprocess but whose main() forgets mp::init. Started as a spawned
// child, it must neither fork-bomb (start() refuses) nor look successful.
#include <mp/mp.hpp>

#include <iostream>
#include <string>

void noop() {}

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--start") {  // run by hand, under a start method
    auto p = mp::get_context(argv[2]).Process(noop);
    try {
      p.start();
      p.join();
      std::cerr << "no_init: start() succeeded\n";
      return 0;
    } catch (const mp::ProcessError& e) {
      std::cerr << "no_init: start() refused: " << e.what() << '\n';
      return 3;
    }
  }
  mp::Process p(noop);
  try {
    p.start();
    std::cerr << "no_init: start() succeeded\n";
  } catch (const std::exception& e) {
    std::cerr << "no_init: start() refused: " << e.what() << '\n';
  }
  return 0;  // the library turns this into exit code 1 and a message naming the fix
}
