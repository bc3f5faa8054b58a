// POSIX shared memory segments: shm_open, reservation, mapping, shm_unlink.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "posix/posix.hpp"

namespace mp::posix {

/// shm_open(path) read-write and close-on-exec; `create` adds O_CREAT | O_EXCL, mode 0600.
/// `path` is "/name". Throws std::system_error naming the segment (ENOENT, EEXIST, EACCES,
/// EINVAL for a name with a '/' inside, ...).
unique_fd shm_open(const std::string& path, bool create);
/// Gives a new segment `size` bytes and reserves its pages now, so that a full /dev/shm is
/// std::system_error ENOSPC here rather than SIGBUS at a later write.
void shm_reserve(int fd, std::uint64_t size, const std::string& path);
/// The segment's size (fstat).
std::uint64_t shm_size(int fd, const std::string& path);
/// A shared read-write mapping of the whole segment. Throws std::system_error.
std::byte* shm_map(int fd, std::size_t size, const std::string& path);
/// Undoes shm_map.
void shm_unmap(std::byte* data, std::size_t size) noexcept;
/// shm_unlink(path). Throws std::system_error naming the segment (ENOENT once it is gone).
void shm_unlink(const std::string& path);

}  // namespace mp::posix
