// A main() that leaves a Pool unclosed and returns (CPython bpo-38744, bpo-39360): the program
// must exit 0 with nothing on stderr, its workers gone, even with a task still running.
//   pool_unclosed leak|static
// Prints the workers' pids on stdout, one line, before returning.
#include <unistd.h>

#include <cstring>
#include <iostream>

#include <mp/mp.hpp>

namespace {
int sqr(int x) {
  return x * x;
}
int sleep_forever() {
  for (;;) ::pause();
}
}  // namespace

int main(int argc, char** argv) {
  mp::init(argc, argv);
  const bool leak = argc > 1 && std::strcmp(argv[1], "leak") == 0;
  static mp::Pool* leaked = nullptr;
  if (leak) leaked = new mp::Pool(2);
  static mp::Pool kept(2);
  mp::Pool& pool = leak ? *leaked : kept;
  if (pool.apply(sqr, 7) != 49) return 2;
  pool.apply_async(sleep_forever);  // still running at exit
  for (int pid : pool.worker_pids()) std::cout << pid << ' ';
  std::cout << std::endl;
  return 0;
}
