// The SharedMemoryManager (CPython's managers.py: SharedMemoryTracker, SharedMemoryServer,
// SharedMemoryManager).
#include "mp/shared_memory_manager.hpp"

#include <algorithm>
#include <stdexcept>
#include <system_error>

#include "posix/futex.hpp"

namespace mp {

namespace managed {

SharedMemoryTracker::~SharedMemoryTracker() {
  // The server is going (shutdown, or its last reference released): what it owns goes too.
  try {
    unlink_all();
  } catch (...) {
  }
}

void SharedMemoryTracker::track_segment(const std::string& name) {
  names_.push_back(name);
}

bool SharedMemoryTracker::release_segment(const std::string& name) {
  auto it = std::find(names_.begin(), names_.end(), name);
  if (it == names_.end()) return false;
  names_.erase(it);
  detail::unlink_segment(name);
  return true;
}

std::vector<std::string> SharedMemoryTracker::list_segments() const {
  return names_;
}

std::size_t SharedMemoryTracker::unlink_all() {
  std::size_t n = 0;
  for (const auto& name : names_) {
    try {
      // One its user unlinked already is no error (CPython's destroy_segment would raise
      // FileNotFoundError there and leave the rest).
      n += detail::unlink_segment(name);
    } catch (const std::system_error&) {
      // EACCES and the like: nothing more we can do for it; the others still go.
    }
  }
  names_.clear();
  return n;
}

}  // namespace managed

namespace {
int own_pid() {
  return posix::this_thread_identity().pid;
}
}  // namespace

SharedMemoryManager::~SharedMemoryManager() {
  try {
    shutdown();
  } catch (...) {
  }
}

void SharedMemoryManager::start() {
  BaseManager::start();
  owner_ = own_pid();
  tracker_.emplace(create<managed::SharedMemoryTracker>());
}

void SharedMemoryManager::shutdown() {
  // Not started here, or moved from.
  if (owner_ == 0 || owner_ != own_pid() || !made_) return;
  if (tracker_) {
    bool server_unlinked = false;
    try {
      tracker_->unlink_all();
      server_unlinked = true;
    } catch (const std::exception&) {
      // The server is gone (killed?): what this process made through it is ours to remove.
    }
    tracker_.reset();
    std::lock_guard l(made_->mu);
    if (!server_unlinked)
      for (const auto& name : made_->names) {
        try {
          detail::unlink_segment(name);
        } catch (const std::system_error&) {
        }
      }
    made_->names.clear();
  }
  BaseManager::shutdown();
}

Proxy<managed::SharedMemoryTracker>& SharedMemoryManager::tracker() {
  if (!tracker_) throw std::logic_error("the SharedMemoryManager is not started (start() it)");
  return *tracker_;
}

mp::SharedMemory SharedMemoryManager::SharedMemory(std::int64_t size) {
  tracker();  // not started: nothing is created
  mp::SharedMemory shm(std::nullopt, true, size);
  track(shm);
  return shm;
}

void SharedMemoryManager::track(mp::SharedMemory& shm) {
  try {
    tracker().track_segment(shm.name());
  } catch (...) {
    // Nobody would own it: it goes now (CPython unlinks it there too).
    try {
      shm.unlink();
    } catch (...) {
    }
    throw;
  }
  std::lock_guard l(made_->mu);
  made_->names.push_back(shm.name());
}

std::vector<std::string> SharedMemoryManager::segment_names() {
  return tracker().list_segments();
}

bool SharedMemoryManager::release_segment(const std::string& name) {
  bool released = tracker().release_segment(name);
  std::lock_guard l(made_->mu);
  std::erase(made_->names, name);
  return released;
}

}  // namespace mp
