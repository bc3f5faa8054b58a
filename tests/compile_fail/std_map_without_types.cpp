// Must NOT compile: std::map crosses a Connection, but its serializer (<mp/types.hpp>) is not
// included; the error names the header.
#include <map>
#include <string>

#include <mp/mp.hpp>

int main() {
  auto [a, b] = mp::Pipe();
  a.send(std::map<std::string, int>{{"x", 1}});
}
