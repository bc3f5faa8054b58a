#!/bin/sh
# Builds the benchmarks (Release) and runs them, each part followed by the same measurements with
# CPython's multiprocessing, compared:
#   process_start: mp's process start (spawn, fork, forkserver) against its floors, one at a time
#     and 64 at once, and against the parent's memory (1 MiB to 4 GiB). About 3 minutes on 2
#     cores.
#   connection: mp::Pipe() round trips and bandwidth between two processes against write/read on
#     a socketpair and on pipes, unpinned, on one CPU and on a CPU each. About 40 s on 2 cores.
#   sync: Lock/RLock/Semaphore acquire+release, a two-process hand-off, Value<int64_t> locked
#     increments and SharedMemory create/attach/unlink cycles against sem_t, std::atomic and
#     raw shm_open floors. About 40 s on 2 cores.
#   pool: mp::Pool(2) apply round trip against a blocking and a 20 us busy-poll socketpair round
#     trip, apply_async and map throughput, SIGKILL-to-WorkerLost latency, an idle pool's CPU,
#     map throughput against the task count and the chunksize; then CPython's Pool(2) and
#     ProcessPoolExecutor(2). About 1.5 minutes on 2 cores.
#   queue: mp::Queue throughput (1x1 8-byte and 100-byte items, 1 MiB items, 2x2), ping-pong
#     and put+get in one thread against a plain SPSC ring, Boost.Interprocess message_queue
#     (when libboost-dev is installed), futex ping-pong and memcpy floors, and throughput against
#     the item's size (8 B to 64 MiB); then CPython's Queue and SimpleQueue. About 3 minutes on 2
#     cores.
#   managers: mp::Manager()'s DictProxy get and set round trips against a blocking socketpair
#     round trip, proxy creation, calls/s with 1, 2 and 4 client processes, an update_with
#     counter (alone and 2 clients racing, the count checked); then CPython's Manager() (a Lock
#     plus d[k] += 1 for the counter). About 1 minute on 2 cores.
#   bench/run.sh [Google Benchmark flags, e.g. --benchmark_filter=spawn]
# Environment: BUILD (build dir, default build/bench; one that is already configured keeps its
# build type and options, the benchmarks are switched on in it), PYTHON (default Debian's
# /usr/bin/python3), ONLY (process_start, connection, sync, pool, queue or managers: run that part
# alone; the flags go to whichever part runs), OUT (directory for each part's results: NAME.json
# from Google Benchmark, python_NAME.json from its CPython script; default: the build dir), SMOKE=1
# (every case a few iterations, about a minute in all: checks that each runs and prints its
# tables, measures nothing; tools/test.sh runs it). tools/report.sh runs it all and writes
# docs/performance.md from OUT.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build/bench}
python=${PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=python3
only=${ONLY:-}
out=${OUT:-$build}
smoke=${SMOKE:-}
[ "$smoke" = 0 ] && smoke=""
case "$only" in
  "" | process_start | connection | sync | pool | queue | managers) ;;
  *)
    echo "ONLY must be process_start, connection, sync, pool, queue or managers, not '$only'" >&2
    exit 2
    ;;
esac

if [ -n "${BUILD:-}" ] && [ -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -DMP_BUILD_BENCH=ON >/dev/null
else
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMP_BUILD_BENCH=ON \
    -DMP_BUILD_TESTS=OFF >/dev/null
fi
# Only what will run: the others need not be (re)built.
case "$only" in
  "") targets="process_start mp_bench_noop connection sync pool queue managers" ;;
  process_start) targets="process_start mp_bench_noop" ;;
  *) targets=$only ;;
esac
# shellcheck disable=SC2086 # the list is meant to split
ninja -C "$build" -j "$(nproc)" $targets
mkdir -p "$out"
py_flags=""
if [ -n "$smoke" ]; then
  export MP_BENCH_SMOKE=1 # read by bench/repetitions.hpp
  py_flags=--smoke
fi

# part NAME WHAT PY_WHAT [Google Benchmark flags]: bench/NAME, then bench/python_NAME.py given
# its results to compare; both write their JSON to $out.
part() {
  name=$1
  what=$2
  py_what=$3
  shift 3
  [ -z "$only" ] || [ "$only" = "$name" ] || return 0
  echo
  echo "== mp: $what ($(nproc) cores)"
  "$build/bench/$name" --benchmark_out="$out/$name.json" --benchmark_out_format=json "$@"

  echo
  echo "== $py_what"
  # shellcheck disable=SC2086 # empty or one flag
  "$python" "$root/bench/python_$name.py" --mp-json "$out/$name.json" \
    --json "$out/python_$name.json" $py_flags
}

part process_start "start + join of no-op children" \
  "CPython multiprocessing, same measurements" "$@"
part connection "Pipe() round trips and bandwidth against write/read floors" \
  "CPython multiprocessing Pipe(), same measurements" "$@"
part sync "locks, hand-offs, Value, SharedMemory against C floors" \
  "CPython multiprocessing, same measurements" "$@"
part pool "Pool(2) against socketpair round-trip floors" \
  "CPython multiprocessing.Pool(2) and concurrent.futures.ProcessPoolExecutor(2)" "$@"
part queue "Queue throughput and latency against an SPSC ring, Boost, futex and memcpy floors" \
  "CPython multiprocessing Queue and SimpleQueue, same measurements" "$@"
part managers "Manager() dict calls against a socketpair round-trip floor" \
  "CPython multiprocessing.Manager(), same measurements" "$@"
