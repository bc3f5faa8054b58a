#!/bin/sh
# Builds the benchmarks (Release) and runs them: mp's process start (spawn, fork, forkserver)
# against its floors, one at a time and 64 at once, then the same measurements with CPython's
# multiprocessing, compared. About 2 minutes on 2 cores.
#   bench/run.sh [process_start flags, e.g. --benchmark_filter=spawn]
# Environment: BUILD (build dir, default build/bench), PYTHON (default Debian's /usr/bin/python3).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build/bench}
python=${PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=python3

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMP_BUILD_BENCH=ON \
  -DMP_BUILD_TESTS=OFF >/dev/null
ninja -C "$build" process_start mp_bench_noop

echo
echo "== mp: start + join of no-op children ($(nproc) cores)"
"$build/bench/process_start" --benchmark_out="$build/process_start.json" \
  --benchmark_out_format=json "$@"

echo
echo "== CPython multiprocessing, same measurements"
"$python" "$root/bench/python_process_start.py" --mp-json "$build/process_start.json"
