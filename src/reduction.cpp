// The pickle layer's non-template half: type names, code references, the authkey's guard.
#include "mp/reduction.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "posix/posix.hpp"
#include "runtime.hpp"

template class cereal::OutputArchive<mp::reduction::OutArchive, cereal::AllowEmptyClassElision>;
template class cereal::InputArchive<mp::reduction::InArchive, cereal::AllowEmptyClassElision>;

namespace mp {
namespace reduction {
namespace {
thread_local SpawningScope* t_scope = nullptr;
std::vector<int> g_passed_fds;  // set once in a child, before its process object is rebuilt
}  // namespace

void set_passed_fds(std::vector<int> fds) {
  g_passed_fds = std::move(fds);
}

namespace {
// Drops what the user never wrote: the ABI namespace, std::string's spelling, and default
// template arguments (", std::allocator<...> ", ", std::less<...> ", ...).
std::string readable(std::string s) {
  const auto erase_all = [&s](std::string_view what, std::string_view with) {
    for (std::size_t at; (at = s.find(what)) != std::string::npos;)
      s.replace(at, what.size(), with);
  };
  erase_all("std::__cxx11::", "std::");
  erase_all("std::basic_string<char, std::char_traits<char>, std::allocator<char> >",
            "std::string");
  for (std::string_view arg : {", std::allocator<", ", std::less<", ", std::hash<",
                               ", std::equal_to<", ", std::default_delete<"}) {
    for (std::size_t at; (at = s.find(arg)) != std::string::npos;) {
      std::size_t end = at + arg.size();
      for (int depth = 1; end < s.size() && depth > 0; ++end)
        depth += s[end] == '<' ? 1 : s[end] == '>' ? -1 : 0;
      if (end < s.size() && s[end] == ' ') ++end;  // "> >" was C++03's spelling
      s.erase(at, end - at);
    }
  }
  erase_all(" >", ">");
  return s;
}
}  // namespace

std::string demangle(const std::type_info& type) {
  int status = 0;
  char* s = abi::__cxa_demangle(type.name(), nullptr, nullptr, &status);
  if (!s) return type.name();
  std::string out(s);
  std::free(s);
  return readable(std::move(out));
}

void InArchive::loadBinary(void* data, std::size_t size) {
  if (size > remaining())
    throw PicklingError("truncated data: " + std::to_string(size) + " bytes needed, " +
                        std::to_string(remaining()) + " left");
  if (size) std::memcpy(data, pos_, size);
  pos_ += size;
}

std::uint64_t InArchive::load_size() {
  std::uint64_t n = 0;
  loadBinary(&n, sizeof n);
  const Expected e = std::exchange(expected_, Expected{});  // only the first tag is the count
  const std::size_t left = remaining();
  const auto refuse = [&](const std::string& needs) {
    throw PicklingError("a '" + (e.type ? demangle(*e.type) : std::string("container")) +
                        "' claims " + std::to_string(n) + " elements (" + needs + "), but " +
                        std::to_string(left) + " bytes are left in the message");
  };
  if (e.min_wire > 0 && n > left / e.min_wire)
    refuse("at least " + std::to_string(e.min_wire) + " bytes each");
  if (n > left) {  // elements that may take no bytes: allowed within a memory budget
    if (e.element_size && n > unbacked_budget_ / e.element_size)
      refuse(std::to_string(e.element_size) + " bytes of memory each, unbacked by the message");
    unbacked_budget_ -= static_cast<std::size_t>(n) * e.element_size;
  }
  return n;
}

void save_code(OutArchive& ar, const void* address) {
  ar(code_ref(address));
}

const void* load_code(InArchive& ar) {
  CodeRef ref;
  ar(ref);
  return resolve(ref);
}

namespace {
// The last few code addresses looked up, per thread: a pool sends the same few functions with
// every task, and walking the loaded modules costs about a microsecond each time.
struct CodeCache {
  static constexpr std::size_t kSize = 8;
  struct Entry {
    const void* address = nullptr;
    CodeRef ref;
  };
  Entry entries[kSize];
  std::size_t next = 0;
  Entry* find_address(const void* a) {
    for (auto& e : entries)
      if (e.address == a && a) return &e;
    return nullptr;
  }
  Entry* find_ref(const CodeRef& r) {
    for (auto& e : entries)
      if (e.address && e.ref.offset == r.offset && e.ref.module == r.module) return &e;
    return nullptr;
  }
  void add(const void* a, const CodeRef& r) {
    entries[next] = {a, r};
    next = (next + 1) % kSize;
  }
};
thread_local CodeCache t_code_cache;
}  // namespace

CodeRef code_ref(const void* address) {
  if (auto* e = t_code_cache.find_address(address)) return e->ref;
  CodeRef ref;
  if (!posix::code_address_module(address, ref.module, ref.offset))
    throw PicklingError("Can't pickle a code address outside every loaded module");
  t_code_cache.add(address, ref);
  return ref;
}

const void* resolve(const CodeRef& ref) {
  if (auto* e = t_code_cache.find_ref(ref)) return e->address;
  const void* p = posix::code_address_resolve(ref.module, ref.offset);
  if (!p)
    throw PicklingError("Can't unpickle a code reference into '" + ref.module +
                        "': that module is not loaded in this process");
  t_code_cache.add(p, ref);
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
