// The resource tracker (CPython's resource_tracker.py): the library's side of it.
#pragma once

#include <string_view>

namespace mp::detail {

/// Registers a named resource of `kind` ("shared_memory": `name` is the shm_open path, with
/// its leading slash, as CPython registers it) to be removed if the program dies holding it.
void track_resource(std::string_view kind, std::string_view name);
/// The resource is gone (unlinked): forget it. A name never tracked must be accepted.
void untrack_resource(std::string_view kind, std::string_view name);

/// Around fork() (runtime's fork handlers): the tracker's lock is held across it.
void resource_tracker_before_fork();
void resource_tracker_after_fork(bool in_child);

/// While spawning (spawn, forkserver): hands the tracker's two descriptors (its lifeline and
/// its table) to the child, returning the first one's index; -1 when none runs.
int tracker_for_child();
/// In a spawned or forkserver child: the parent's tracker, handed over at `index`.
void adopt_tracker(int index);
/// The tracker's main loop (mp::init with kResourceTrackerFlag). Never returns.
[[noreturn]] void resource_tracker_main(int argc, char** argv);
/// Tests: closes this process's end and, if we started the tracker, waits for it to finish.
void resource_tracker_stop();
/// The tracker's pid if this process started it, else 0.
int resource_tracker_pid();

inline constexpr const char* kResourceTrackerFlag = "--multiprocess-resource-tracker";

}  // namespace mp::detail
