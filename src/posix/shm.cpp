// POSIX shared memory segments (CPython's _posixshmem module, and the os/mmap calls
// shared_memory.py makes around it).
#include "posix/shm.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <system_error>

namespace mp::posix {

namespace {
[[noreturn]] void fail(int err, const char* call, const std::string& path) {
  throw std::system_error(err, std::system_category(), std::string(call) + " '" + path + "'");
}
}  // namespace

unique_fd shm_open(const std::string& path, bool create) {
  // glibc's shm_open adds O_CLOEXEC itself; say it anyway, no descriptor may leak to an exec.
  const int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0);
  for (;;) {
    const int fd = ::shm_open(path.c_str(), flags, 0600);
    if (fd >= 0) return unique_fd(fd);
    if (errno != EINTR) fail(errno, "shm_open", path);
  }
}

void shm_reserve(int fd, std::uint64_t size, const std::string& path) {
  // CPython stops at ftruncate: the segment is sparse, its pages are allocated when first
  // touched, and a /dev/shm without room for them kills the writer with SIGBUS (checked with
  // Python 3.11: a 1 MiB segment on a 64 KiB tmpfs is created fine, then the first write past
  // 64 KiB dies of SIGBUS; only its resource tracker removes the segment afterwards).
  // So reserve every page now: a full /dev/shm (or a memory cgroup at its limit) is ENOSPC
  // here. fallocate also sets the size (no ftruncate: one system call less per segment). In chunks:
  // tmpfs abandons a whole fallocate call when a signal arrives, freeing the pages that call had
  // allocated (mm/shmem.c shmem_fallocate, -EINTR), so one call for a big segment could be
  // interrupted again and again; a chunk that completed stays reserved.
  constexpr std::uint64_t kChunk = 2 << 20;
  for (std::uint64_t offset = 0; offset < size;) {
    const std::uint64_t len = std::min(kChunk, size - offset);
    // posix_fallocate returns the error instead of setting errno (man 3 posix_fallocate).
    const int err = ::posix_fallocate(fd, static_cast<off_t>(offset), static_cast<off_t>(len));
    if (err == EINTR) continue;
    if (err != 0) fail(err, "posix_fallocate", path);
    offset += len;
  }
}

std::uint64_t shm_size(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) fail(errno, "fstat", path);
  return static_cast<std::uint64_t>(st.st_size);
}

std::byte* shm_map(int fd, std::size_t size, const std::string& path) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) fail(errno, "mmap", path);
  return static_cast<std::byte*>(p);
}

void shm_unmap(std::byte* data, std::size_t size) noexcept {
  ::munmap(data, size);
}

void shm_unlink(const std::string& path) {
  if (::shm_unlink(path.c_str()) < 0) fail(errno, "shm_unlink", path);
}

}  // namespace mp::posix
