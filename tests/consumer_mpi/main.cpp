// Built against the installed package (CMake COMPONENTS mpi, and pkg-config multiprocess-mpi),
// run under mpiexec -n 2: the map runs on rank 1.
#include <mp/mpi.hpp>

#include <iostream>
#include <vector>

int square(int x) {
  return x * x;
}

int main(int argc, char** argv) {
  mp::mpi::init(argc, argv);
  mp::mpi::Pool pool;
  const auto out = pool.map(square, std::vector<int>{1, 2, 3, 4});
  if (out != std::vector<int>{1, 4, 9, 16}) return 1;
  std::cout << "consumer_mpi: map over " << pool.processes() << " worker rank(s) ok\n";
  return 0;
}
