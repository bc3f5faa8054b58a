// The manager server's request handling without a socket, for the libFuzzer target
// (fuzz/fuzz_manager_request.cpp): what a client's frames do to a server.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mp::detail {
// Serves `requests` (whole frames: call id, op, body) as one client's, then ends that client
// as when its connection closes. The first call starts one server for the process that
// serves `types` (registered name, type key) besides the standard ones.
void fuzz_manager_requests(const std::vector<std::pair<std::string, std::string>>& types,
                           const std::vector<std::string>& requests);
}  // namespace mp::detail
