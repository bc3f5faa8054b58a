// The pickle layer's non-template half: type names, code references, the authkey's guard.
#include "mp/reduction.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <stdexcept>

#include "posix/posix.hpp"
#include "runtime.hpp"

namespace mp {
namespace reduction {
namespace {
thread_local SpawningScope* t_scope = nullptr;
std::vector<int> g_passed_fds;  // set once in a child, before its process object is rebuilt
}  // namespace

void set_passed_fds(std::vector<int> fds) {
  g_passed_fds = std::move(fds);
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
  return t_scope != nullptr;
}

SpawningScope::SpawningScope() : previous_(t_scope) {
  t_scope = this;
}
SpawningScope::~SpawningScope() {
  t_scope = previous_;
}

int duplicate_for_child(int fd) {
  if (!t_scope) throw std::logic_error("a descriptor can only be pickled while spawning a child");
  t_scope->fds.push_back(fd);
  return static_cast<int>(t_scope->fds.size()) - 1;
}

int duplicate_for_child_once(int fd) {
  if (!t_scope) throw std::logic_error("a descriptor can only be pickled while spawning a child");
  for (std::size_t i = 0; i < t_scope->fds.size(); ++i)
    if (t_scope->fds[i] == fd) return static_cast<int>(i);
  return duplicate_for_child(fd);
}

int passed_fd(int index) {
  if (index < 0 || static_cast<std::size_t>(index) >= g_passed_fds.size())
    throw PicklingError("descriptor #" + std::to_string(index) +
                        " was not handed over to this child");
  return g_passed_fds[static_cast<std::size_t>(index)];
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
