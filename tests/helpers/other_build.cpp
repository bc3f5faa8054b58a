// A different program that calls mp::init: a parent's process object must not run here.
#include <mp/mp.hpp>

int main(int argc, char** argv) {
  mp::init(argc, argv);
  return 0;
}
