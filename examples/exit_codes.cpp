// How a child's end becomes its exitcode(), as in Python: 0 when run() returns, n from
// mp::exit(n) or throw mp::SystemExit(n), 1 for an uncaught exception, -N for signal N.
#include <mp/mp.hpp>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

using namespace std::chrono_literals;

void returns() {}

void calls_exit() {
  mp::exit(3);  // inside run() this throws mp::SystemExit: destructors on the stack still run
}

void throws_system_exit() {
  throw mp::SystemExit(4);
}

void exit_through_catch_all() {
  try {
    mp::exit(5);
  } catch (const std::exception&) {
    // Never reached: SystemExit is deliberately not a std::exception, so a catch-all for
    // errors does not swallow a request to exit (Python's SystemExit is no Exception either).
  }
}

void throws_error() {
  // Uncaught: the child prints "Process <name>:" and "<type>: <what()>" to stderr, exits 1.
  throw std::runtime_error("something broke");
}

void sleeps() {
  std::this_thread::sleep_for(60s);
}

// One line per child: what it did, its exitcode() (the repr's spelling) and its repr.
void report(const std::string& what, const mp::Process& p) {
  const auto code = p.exitcode();
  std::cout << std::left << std::setw(29) << what << " -> " << std::setw(9)
            << (code ? mp::exitcode_to_name(*code) : "(empty)") << "  " << p << std::endl;
}

// Runs `target` in a spawned child and waits for it. (report() ends lines with std::endl, so
// nothing of ours is still buffered when a child writes to the same stdout.)
void run(const std::string& what, void (*target)()) {
  mp::Process p(target);
  p.start();
  p.join();
  report(what, p);
}

int main(int argc, char** argv) {
  mp::init(argc, argv);  // in a spawned child: runs the target, exits with its code

  run("run() returns", returns);
  run("mp::exit(3)", calls_exit);
  run("throw mp::SystemExit(4)", throws_system_exit);
  run("mp::exit(5) under catch-all", exit_through_catch_all);
  run("uncaught std::runtime_error", throws_error);

  // Signals: terminate() sends SIGTERM, kill() SIGKILL; the repr names the signal.
  mp::Process t(sleeps);
  t.start();
  t.terminate();
  t.join();
  report("terminate()", t);

  mp::Process k(sleeps);
  k.start();
  k.kill();
  k.join();
  report("kill()", k);

  // join(timeout) returns when the time is up without throwing; the child runs on and
  // exitcode() stays empty: check it (or is_alive()) to learn which happened.
  mp::Process s(sleeps);
  s.start();
  s.join(200ms);
  report(s.is_alive() ? "join(200ms): still running" : "join(200ms): unexpected end", s);
  s.terminate();  // don't leave it sleeping: at exit we would join it for the full minute
  s.join();
  return 0;
}
