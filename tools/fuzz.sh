#!/bin/sh
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for a bounded time on its
# corpus in fuzz/corpus/ (new inputs it finds are kept there).
#   tools/fuzz.sh [seconds per target, default 30]
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-30}
sh tools/deps.sh cmake ninja-build clang libclang-rt-14-dev libcereal-dev nettle-dev pkg-config
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
for t in forkserver_request handshake connection_frame queue_record manager_request; do
  echo "== fuzz_$t for ${seconds}s"
  mkdir -p "fuzz/corpus/$t"
  ./build/fuzz/fuzz/fuzz_$t -max_total_time="$seconds" -timeout=10 -rss_limit_mb=256 -print_final_stats=1 \
    "fuzz/corpus/$t" 2>&1 | tail -12
done
