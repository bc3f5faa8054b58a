// Must not compile: a std::string owns heap memory, so its bytes cannot be shared.
#include <mp/mp.hpp>

#include <string>

int main() {
  mp::Value<std::string> v("shared?");
  return v.load().empty();
}
