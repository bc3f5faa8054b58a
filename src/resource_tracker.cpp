// The resource tracker (CPython's resource_tracker.py).
#include "resource_tracker.hpp"

namespace mp::detail {

void track_resource(std::string_view kind, std::string_view name) {
  // filled in by the resource tracker step
  (void)kind;
  (void)name;
}

void untrack_resource(std::string_view kind, std::string_view name) {
  // filled in by the resource tracker step
  (void)kind;
  (void)name;
}

}  // namespace mp::detail
