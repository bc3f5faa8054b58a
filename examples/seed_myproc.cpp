// The library's main job end to end: a Process subclass run in a spawned child.
//
// Python:                                   C++:
//   class MyProc(Process):                    struct MyProc : mp::Process {
//       def run(self): ...                      void run() override { ... }
//   if __name__ == '__main__':                  MP_FIELDS(MyProc, n, label, values)
//       p = MyProc(); p.start(); p.join()     }; ... mp::init(argc, argv); p.start(); p.join();
#include <mp/mp.hpp>

#include <iostream>
#include <numeric>
#include <string>
#include <vector>

// Static-initialised: every process starts with 1, including a spawned child, which is a fresh
// exec of this program and never sees what main() assigns below.
int g_setting = 1;

// Prints and flushes at once: the child writes to the same stdout, so each step's line is out
// before anything the child prints, even when stdout is a pipe or a file.
void say(const std::string& line) {
  std::cout << line << std::endl;
}

struct MyProc : mp::Process {
  int n = 0;
  std::string label;
  std::vector<int> values;

  void run() override {
    // In the child, this very object is current_process(): rebuilt from the declared fields.
    std::cout << "  [child]  I am " << mp::current_process().name() << ", pid "
              << *mp::current_process().pid() << ", parent pid " << mp::parent_process()->pid()
              << '\n';
    std::cout << "  [child]  fields arrived: n=" << n << " label=" << label
              << " values.size()=" << values.size() << '\n';
    std::cout << "  [child]  g_setting=" << g_setting
              << " (the static-initialised value: main()'s assignment did not reach me)\n";
    int sum = std::accumulate(values.begin(), values.end(), 0);
    std::cout << "  [child]  sum(values)=" << sum << ", returned as my exit code\n";
    // An exit code is one byte (0..255): enough for a small result or a status. Larger data
    // goes through stdout as here, or through a Pipe/Queue (coming in a later release).
    mp::exit(sum);
  }

  // Names the class (the repr says MyProc, the default name is MyProc-N) and lists the fields
  // a spawned child receives; the child default-constructs a MyProc, then fills these in, so
  // a field left out arrives with its default value.
  MP_FIELDS(MyProc, n, label, values)
};

int main(int argc, char** argv) {
  // In a spawned child this rebuilds the MyProc object, runs it and exits: it never returns
  // there. So everything below runs only in the parent (Python's `if __name__ == '__main__'`).
  mp::init(argc, argv);

  // The seed runs under spawn, as Python's `set_start_method('spawn')`. (The default is
  // forkserver: forks of one fresh exec of this program, with spawn's semantics, faster.)
  mp::set_start_method("spawn");
  say("1. start method: " + mp::get_start_method() + " (a fresh exec of this program per child)");

  g_setting = 99;  // state set in main(): a spawned child will not see it
  say("2. parent set g_setting=" + std::to_string(g_setting));

  MyProc p;
  p.n = 7;
  p.label = "seed";
  p.values = {10, 20, 12};
  std::cout << "3. before start: " << p << std::endl;  // operator<< prints the repr

  p.start();
  p.join();
  std::cout << "4. after join:   " << p << std::endl;
  say("5. result passed back through the exit code: " + std::to_string(*p.exitcode()));

  // A capturing lambda is code plus data the spawned child cannot rebuild, so start() refuses
  // it with mp::PicklingError *before* making any child. (With a typed context,
  // mp::spawn_context.Process(lambda), the same mistake does not even compile.)
  int secret = 42;
  mp::Process bad([secret] { std::cout << secret << '\n'; });
  const auto before = mp::active_children().size();
  try {
    bad.start();
    say("6. unexpected: the capturing lambda was started");
    bad.join();
    return 1;
  } catch (const mp::PicklingError& e) {
    say(std::string("6. capturing lambda under spawn: mp::PicklingError: ") + e.what());
  }
  const auto after = mp::active_children().size();
  say("7. active children before/after the failed start: " + std::to_string(before) + "/" +
      std::to_string(after) + "; pid " + (bad.pid() ? "set" : "empty") + ": no child was created");
  say("8. the refused object is still unstarted: " + bad.repr());
  return after == before && !bad.pid() && p.exitcode() == 42 ? 0 : 1;
}
