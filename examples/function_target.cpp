// A function and its arguments, run in a spawned child (Python: Process(target=f, args=...)).
#include <mp/mp.hpp>

#include <iostream>
#include <string>
#include <vector>

int work(int n, std::string tag, std::vector<double> xs) {
  double sum = 0;
  for (double x : xs) sum += x;
  std::cout << mp::current_process().name() << ": n=" << n << " tag=" << tag << " sum=" << sum
            << '\n';
  return 0;
}

int main(int argc, char** argv) {
  mp::init(argc, argv);  // in the spawned child this runs work() and exits

  mp::Process p(work, 42, "hello", std::vector<double>{1.5, 2.5});
  p.start();
  p.join();
  std::cout << p << '\n';
}
