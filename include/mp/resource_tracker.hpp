// The resource tracker (Python's multiprocessing.resource_tracker): a small process, started
// on first use, that removes the named resources (shared memory segments) a program created
// and did not remove because it crashed or was killed. It ends, cleaning up and warning on
// stderr, once the program and every child sharing it have ended. SharedMemory registers what
// it creates; these functions are for resources made by hand.
#pragma once

#include <string_view>

namespace mp::resource_tracker {

/// Starts the tracker unless it runs (Process::start() calls it too: every child, by any
/// method, shares its parent's tracker).
void ensure_running();
/// Removes `name` (a shm_open name with its leading '/') at the end unless it was unregistered
/// by then. kind: "shared_memory"; another throws std::invalid_argument with CPython's text.
void register_resource(std::string_view name, std::string_view kind);
/// Forgets `name` (it was removed). A name never registered is accepted.
void unregister_resource(std::string_view name, std::string_view kind);

}  // namespace mp::resource_tracker
