// The exception being handled, described for a peer: its type's readable name and what().
// Called inside a catch block (a pool worker's task, a manager's method).
#pragma once

#include <cxxabi.h>

#include <exception>
#include <string>

#include "mp/reduction.hpp"

namespace mp::detail {

inline std::string exception_type() {
  auto* t = abi::__cxa_current_exception_type();
  return t ? reduction::demangle(*t) : "unknown exception";
}

inline std::string exception_what() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "(not derived from std::exception)";
  }
}

}  // namespace mp::detail
