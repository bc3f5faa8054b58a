// The fork start method runs any callable, a capturing lambda included; spawn refuses it.
//
// fork copies this process as it is at start(): the child shares nothing with the parent
// afterwards, but begins with all of its memory, so a lambda's captures are simply there.
// spawn execs the program afresh and can rebuild only plain functions, captureless lambdas
// and serializable values.
//
// The fork trap (as in Python): only the thread calling start() exists in the child. A lock
// another thread held at that moment (malloc's, a logger's) stays locked there forever. Fork
// from a program that has started no threads, or use spawn.
#include <mp/mp.hpp>

#include <iostream>
#include <string>
#include <vector>

int g_setting = 1;  // static-initialised; main() changes it below

int main(int argc, char** argv) {
  // A spawned child never returns from here; a fork child begins inside start() below instead.
  mp::init(argc, argv);

  g_setting = 99;  // a fork child sees this: it is a copy of the parent at start()
  std::vector<std::string> words = {"fork", "copies", "memory"};
  int bonus = 5;

  // Captures by reference and by value: fine under fork, impossible to send to a spawned child.
  auto count = [&words, bonus] {
    std::cout << "  [child]  " << mp::current_process().name() << ": g_setting=" << g_setting
              << ", captured words=" << words.size() << ", bonus=" << bonus << '\n';
    words.push_back("changed");  // changes the child's copy only
    mp::exit(static_cast<int>(words.size()) + bonus);
  };

  // fork_context is a compile-time typed context; mp::get_context("fork") is the same at run time.
  mp::Process p = mp::fork_context.Process(count);
  std::cout << "before start: " << p << '\n';  // no flush needed: fork flushes before forking
  p.start();
  p.join();
  std::cout << "after join:   " << p << '\n';
  std::cout << "the child's result, through its exit code: " << *p.exitcode() << '\n';
  std::cout << "the parent's words are untouched: " << words.size() << '\n';

  // The same lambda under spawn. From a run-time context (or mp::Process with the default
  // start method) start() throws mp::PicklingError before any child exists.
  mp::Process q = mp::get_context("spawn").Process(count);
  try {
    q.start();
    std::cout << "unexpected: spawn started a capturing lambda\n";
    return 1;
  } catch (const mp::PicklingError& e) {
    std::cout << "under spawn: mp::PicklingError: " << e.what() << '\n';
  }
  std::cout << "refused, never started: " << q << '\n';

#ifdef MP_SHOW_COMPILE_ERROR
  // With the typed spawn context the mistake is caught by the compiler instead
  // (build with -DMP_SHOW_COMPILE_ERROR to see the static_assert message).
  mp::Process r = mp::spawn_context.Process(count);
#endif
  return p.exitcode() == 9 && !q.pid() ? 0 : 1;
}
