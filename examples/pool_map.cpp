// A pool of worker processes (Python: multiprocessing.Pool): map, imap with a progress line,
// a task's error caught in the parent, then close() + join().
#include <mp/mp.hpp>

#include <iostream>
#include <numeric>
#include <ranges>
#include <stdexcept>
#include <string>
#include <vector>

// A task is a plain function (or a captureless lambda); its arguments and result travel to and
// from the workers serialized.
long square(int x) {
  return static_cast<long>(x) * x;
}

int parse(std::string s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument("not a number: '" + s + "'");
  return std::stoi(s);
}

int main(int argc, char** argv) {
  mp::init(argc, argv);  // first: in a worker this runs the worker's loop and never returns

  mp::Pool pool(4);  // 4 worker processes (default: one per CPU)

  // map: every result, in input order, once all are done.
  std::vector<int> xs(10);
  std::iota(xs.begin(), xs.end(), 1);
  std::vector<long> squares = pool.map(square, xs);
  std::cout << "squares:";
  for (long s : squares) std::cout << ' ' << s;
  std::cout << '\n';

  // imap: results one by one as you iterate, in input order; the input is read lazily.
  const int n = 100;
  long total = 0;
  int done = 0;
  for (long s : pool.imap(square, std::views::iota(0, n))) {
    total += s;
    std::cout << "\r " << ++done << '/' << n << std::flush;
  }
  std::cout << "\nsum of squares below " << n << ": " << total << '\n';

  // A task that throws: the error arrives in the parent as mp::RemoteError, with the
  // exception's type, its what(), the worker's pid and the item's position.
  try {
    pool.map(parse, std::vector<std::string>{"1", "2", "three", "4"});
  } catch (const mp::RemoteError& e) {
    std::cout << "task " << e.index() << " failed in worker " << e.pid() << ": " << e.type_name()
              << ": " << e.message() << '\n';
  }

  // No more tasks; wait for the workers to finish and exit. (Leaving the scope without this
  // terminates them, as Python's `with Pool() as pool:` does.)
  pool.close();
  pool.join();
}
