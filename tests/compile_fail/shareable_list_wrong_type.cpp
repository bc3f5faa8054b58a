// Must NOT compile: a ShareableList slot set with a value of another type.
#include <mp/shared_memory.hpp>

#include <string>

int main() {
  mp::ShareableList<int, std::string> l(1, "one");
  l.set<0>(std::string("two"));
}
