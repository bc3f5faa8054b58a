#!/bin/sh
# Fresh Debian 12 machine -> the demo: a Process subclass run in a spawned child.
set -eu
cd "$(dirname "$0")/.."
sh tools/deps.sh cmake ninja-build g++ libcereal-dev nettle-dev pkg-config
cmake --preset release -DMP_BUILD_TESTS=OFF >/dev/null
cmake --build --preset release --target seed_myproc
./build/release/examples/seed_myproc
