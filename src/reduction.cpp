// The pickle layer's non-template half: type names, code references, the authkey's guard.
#include "mp/reduction.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <stdexcept>

#include "posix/posix.hpp"

namespace mp {
namespace reduction {
namespace {
thread_local bool t_spawning = false;
}

std::string demangle(const std::type_info& type) {
  int status = 0;
  char* s = abi::__cxa_demangle(type.name(), nullptr, nullptr, &status);
  if (!s) return type.name();
  std::string out(s);
  std::free(s);
  return out;
}

CodeRef code_ref(const void* address) {
  CodeRef ref;
  if (!posix::code_address_module(address, ref.module, ref.offset))
    throw PicklingError("Can't pickle a code address outside every loaded module");
  return ref;
}

const void* resolve(const CodeRef& ref) {
  const void* p = posix::code_address_resolve(ref.module, ref.offset);
  if (!p)
    throw PicklingError("Can't unpickle a code reference into '" + ref.module +
                        "': that module is not loaded in this process");
  return p;
}

bool spawning() {
  return t_spawning;
}

SpawningScope::SpawningScope() : previous_(t_spawning) {
  t_spawning = true;
}
SpawningScope::~SpawningScope() {
  t_spawning = previous_;
}

}  // namespace reduction

AuthenticationString::AuthenticationString(std::string_view bytes)
    : bytes_(reinterpret_cast<const std::byte*>(bytes.data()),
             reinterpret_cast<const std::byte*>(bytes.data()) + bytes.size()) {}

void AuthenticationString::check_pickling_allowed() {
  if (!reduction::spawning())
    throw std::logic_error(
        "Pickling an AuthenticationString object is disallowed for security reasons");
}

}  // namespace mp
