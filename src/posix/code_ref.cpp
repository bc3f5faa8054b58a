// Code addresses that stay valid in a spawned copy of this program: (module, offset from the
// module's load address). Address-space layout randomisation moves modules, never the offsets.
#include <elf.h>
#include <link.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "posix/posix.hpp"

namespace mp::posix {
namespace {

struct Lookup {
  std::uintptr_t address = 0;
  bool found = false;
  bool first = true;
  std::string module;
  std::uint64_t offset = 0;
};

int find_module(dl_phdr_info* info, size_t, void* data) {
  auto* q = static_cast<Lookup*>(data);
  const bool is_exe = q->first;  // glibc lists the executable first
  q->first = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    std::uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (q->address >= start && q->address < start + ph.p_memsz) {
      q->found = true;
      q->module = is_exe ? std::string() : std::string(info->dlpi_name ? info->dlpi_name : "");
      q->offset = q->address - info->dlpi_addr;
      return 1;
    }
  }
  return 0;
}

struct Resolve {
  const std::string* module = nullptr;
  bool first = true;
  bool found = false;
  std::uintptr_t base = 0;
};

int find_base(dl_phdr_info* info, size_t, void* data) {
  auto* q = static_cast<Resolve*>(data);
  const bool is_exe = q->first;
  q->first = false;
  if (q->module->empty() ? is_exe : (!is_exe && info->dlpi_name && *q->module == info->dlpi_name)) {
    q->found = true;
    q->base = info->dlpi_addr;
    return 1;
  }
  return 0;
}

int find_build_id(dl_phdr_info* info, size_t, void* data) {
  auto* out = static_cast<std::string*>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    auto* p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
    const auto* end = p + ph.p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      auto* n = reinterpret_cast<const ElfW(Nhdr)*>(p);
      const unsigned char* name = p + sizeof *n;
      const unsigned char* desc = name + ((n->n_namesz + 3) & ~3u);
      if (n->n_type == NT_GNU_BUILD_ID && n->n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0) {
        char hex[3];
        for (unsigned k = 0; k < n->n_descsz; ++k) {
          std::snprintf(hex, sizeof hex, "%02x", desc[k]);
          *out += hex;
        }
        return 1;
      }
      p = desc + ((n->n_descsz + 3) & ~3u);
    }
  }
  return 1;  // only the executable (listed first) matters
}

}  // namespace

bool code_address_module(const void* address, std::string& module, std::uint64_t& offset) {
  Lookup q;
  q.address = reinterpret_cast<std::uintptr_t>(address);
  dl_iterate_phdr(find_module, &q);
  if (!q.found) return false;
  module = std::move(q.module);
  offset = q.offset;
  return true;
}

const void* code_address_resolve(const std::string& module, std::uint64_t offset) {
  Resolve q;
  q.module = &module;
  dl_iterate_phdr(find_base, &q);
  if (!q.found) return nullptr;
  return reinterpret_cast<const void*>(q.base + offset);
}

std::string build_id() {
  static const std::string id = [] {
    std::string s;
    dl_iterate_phdr(find_build_id, &s);
    return s;
  }();
  return id;
}

}  // namespace mp::posix
