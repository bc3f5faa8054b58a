// Spawned children: the program's entry hook and the executable it runs.
#pragma once

#include <string>

namespace mp {

/// The first statement of main(). In a child started by spawn it reads the parent's data,
/// runs the process object and exits: it never returns there, so the rest of main() (the C++
/// form of `if __name__ == '__main__':`) runs only in the parent. Elsewhere it returns at once.
void init(int argc, char** argv);

/// Spawned children run `path` instead of this program (/proc/self/exe). It must be a copy of
/// the same build: a child that is not refuses to run with a clear error.
void set_executable(std::string path);
/// The program spawned children run.
std::string get_executable();

}  // namespace mp
