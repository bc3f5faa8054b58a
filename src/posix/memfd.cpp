// fallocate / ftruncate / mmap of memfd ranges (see memfd.hpp).
#include "posix/memfd.hpp"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <system_error>

namespace mp::posix {

void memfd_reserve(int fd, std::uint64_t offset, std::uint64_t len) {
  int r;
  do r = ::fallocate(fd, 0, static_cast<off_t>(offset), static_cast<off_t>(len));
  while (r != 0 && errno == EINTR);
  if (r != 0) throw std::system_error(errno, std::system_category(), "fallocate");
}

void memfd_release(int fd, std::uint64_t offset, std::uint64_t len) noexcept {
  // Best effort: a hole not punched costs memory until the queue is gone, never correctness.
  int r;
  do
    r = ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                    static_cast<off_t>(len));
  while (r != 0 && errno == EINTR);
}

void memfd_truncate(int fd, std::uint64_t size) {
  int r;
  do r = ::ftruncate(fd, static_cast<off_t>(size));
  while (r != 0 && errno == EINTR);
  if (r != 0) throw std::system_error(errno, std::system_category(), "ftruncate");
}

void* memfd_map_range(int fd, std::uint64_t offset, std::size_t len) {
  // Populated: the range is copied whole at once, and one call maps its (reserved) pages
  // faster than a fault each.
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   static_cast<off_t>(offset));
  if (p == MAP_FAILED) throw std::system_error(errno, std::system_category(), "mmap");
  return p;
}

void* memfd_map_window(int fd, std::uint64_t offset, std::size_t len) {
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd,
                   static_cast<off_t>(offset));
  if (p == MAP_FAILED) throw std::system_error(errno, std::system_category(), "mmap");
  return p;
}

void memfd_unmap_range(void* addr, std::size_t len) noexcept {
  ::munmap(addr, len);
}

std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

}  // namespace mp::posix
