// Ranges of a memfd beyond what is mapped whole: a queue's large items live there, each mapped
// only while it is copied, its pages reserved before use and given back after.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mp::posix {

/// Allocates the pages of [offset, offset+len) now (fallocate), growing the file if needed, so
/// that a full tmpfs or memory cgroup is std::system_error ENOSPC here, never SIGBUS later.
void memfd_reserve(int fd, std::uint64_t offset, std::uint64_t len);
/// Frees the pages of [offset, offset+len); the file keeps its size (FALLOC_FL_PUNCH_HOLE).
void memfd_release(int fd, std::uint64_t offset, std::uint64_t len) noexcept;
/// Cuts the file to `size` bytes (ftruncate), freeing what lay beyond.
void memfd_truncate(int fd, std::uint64_t size);
/// A shared read-write mapping of [offset, offset+len) (offset page-aligned). Throws system_error.
void* memfd_map_range(int fd, std::uint64_t offset, std::size_t len);
void memfd_unmap_range(void* addr, std::size_t len) noexcept;
/// The same, not populated and possibly beyond the file's end: a window kept mapped, whose
/// pages are touched only once reserved (a page past the end would be SIGBUS).
void* memfd_map_window(int fd, std::uint64_t offset, std::size_t len);
/// The page size extents are aligned to.
std::size_t page_size() noexcept;

}  // namespace mp::posix
