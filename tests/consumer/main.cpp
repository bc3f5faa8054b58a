// Built against the installed package: spawn a child and check its exit code.
#include <mp/mp.hpp>

#include <iostream>

void work(int n) {
  mp::exit(n);
}

int main(int argc, char** argv) {
  mp::init(argc, argv);
  mp::Process p(work, 7);
  p.start();
  p.join();
  std::cout << p << '\n';
  return p.exitcode() == 7 ? 0 : 1;
}
