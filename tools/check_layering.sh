#!/bin/sh
# src/posix/ is the ground floor: its files include system and standard headers, each other
# ("posix/..."), and of the library above them only mp/errors.hpp. Run by ctest (layering).
set -eu
cd "$(dirname "$0")/.."
bad=$(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]' src/posix/*.cpp src/posix/*.hpp |
  grep -vE '#[[:space:]]*include[[:space:]]*"posix/[a-z_]+\.hpp"' |
  grep -vE '#[[:space:]]*include[[:space:]]*[<"]mp/errors\.hpp[>"]' |
  grep -E '#[[:space:]]*include[[:space:]]*("|<mp/)' || true)
if [ -n "$bad" ]; then
  echo "src/posix/ must include nothing of the library but posix/*.hpp and mp/errors.hpp:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "layering: src/posix/ includes only posix/*.hpp and mp/errors.hpp of the library"
