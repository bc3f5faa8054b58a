// A program of its own that serves a manager over TCP on 127.0.0.1, for the suite to reach as
// a client of another program would (no common mp parent, no inherited authkey).
//   manager_tcp KEY
// Prints its port and pid on stdout, one line, then serves until SIGTERM (then shuts the server
// down and exits 0).
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <mp/mp.hpp>

#include "served_counter.hpp"

int main(int argc, char** argv) {
  mp::init(argc, argv);
  if (argc != 2) return 2;
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);
  mp::SyncManager m({.address = mp::Address(std::pair<std::string, int>("127.0.0.1", 0)),
                     .authkey = mp::AuthenticationString(argv[1])});
  m.register_type<mp_test_served::Counter, mp::Args<>, mp::Args<int>>("Counter");
  m.register_type<mp::managed::Dict<std::string, int>>("dict");
  m.start();
  std::cout << std::get<std::pair<std::string, int>>(m.address()).second << ' ' << ::getpid()
            << std::endl;
  int sig = 0;
  sigwait(&term, &sig);
  return 0;
}
