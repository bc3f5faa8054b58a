// The resource tracker (CPython's resource_tracker.py): remembers the named resources this
// program created, so that what a dead program leaked is removed.
#pragma once

#include <string_view>

namespace mp::detail {

/// Registers a named resource of `kind` ("shared_memory": `name` is the shm_open path, with
/// its leading slash, as CPython registers it) to be removed if the program dies holding it.
void track_resource(std::string_view kind, std::string_view name);
/// The resource is gone (unlinked): forget it. A name never tracked must be accepted.
void untrack_resource(std::string_view kind, std::string_view name);

}  // namespace mp::detail
