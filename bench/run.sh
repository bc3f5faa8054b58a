#!/bin/sh
# Builds the benchmarks (Release) and runs them, each part followed by the same measurements with
# CPython's multiprocessing, compared:
#   process_start: mp's process start (spawn, fork, forkserver) against its floors, one at a time
#     and 64 at once. About 2 minutes on 2 cores.
#   connection: mp::Pipe() round trips and bandwidth between two processes against write/read on
#     a socketpair and on pipes, unpinned, on one CPU and on a CPU each. About 40 s on 2 cores.
#   sync: Lock/RLock/Semaphore acquire+release, a two-process hand-off, Value<int64_t> locked
#     increments and SharedMemory create/attach/unlink cycles against sem_t, std::atomic and
#     raw shm_open floors. About 40 s on 2 cores.
#   pool: mp::Pool(2) apply round trip against a blocking and a 20 us busy-poll socketpair round
#     trip, apply_async and map throughput, SIGKILL-to-WorkerLost latency, an idle pool's CPU;
#     then CPython's Pool(2) and ProcessPoolExecutor(2). About 40 s on 2 cores.
#   queue: mp::Queue throughput (1x1 8-byte and 100-byte items, 1 MiB items, 2x2), ping-pong
#     and put+get in one thread against a plain SPSC ring, Boost.Interprocess message_queue
#     (when libboost-dev is installed), futex ping-pong and memcpy floors; then CPython's Queue
#     and SimpleQueue. About 2 minutes on 2 cores.
#   bench/run.sh [Google Benchmark flags, e.g. --benchmark_filter=spawn]
# Environment: BUILD (build dir, default build/bench), PYTHON (default Debian's /usr/bin/python3),
# ONLY (process_start, connection, sync, pool or queue: run that part alone; the flags go to whichever part
# runs).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build/bench}
python=${PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=python3
only=${ONLY:-}
case "$only" in
  "" | process_start | connection | sync | pool | queue) ;;
  *) echo "ONLY must be process_start, connection, sync, pool or queue, not '$only'" >&2; exit 2 ;;
esac

cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMP_BUILD_BENCH=ON \
  -DMP_BUILD_TESTS=OFF >/dev/null
# Only what will run: the others need not be (re)built.
case "$only" in
  "") targets="process_start mp_bench_noop connection sync pool queue" ;;
  process_start) targets="process_start mp_bench_noop" ;;
  *) targets=$only ;;
esac
# shellcheck disable=SC2086 # the list is meant to split
ninja -C "$build" -j "$(nproc)" $targets

if [ -z "$only" ] || [ "$only" = process_start ]; then
  echo
  echo "== mp: start + join of no-op children ($(nproc) cores)"
  "$build/bench/process_start" --benchmark_out="$build/process_start.json" \
    --benchmark_out_format=json "$@"

  echo
  echo "== CPython multiprocessing, same measurements"
  "$python" "$root/bench/python_process_start.py" --mp-json "$build/process_start.json"
fi

if [ -z "$only" ] || [ "$only" = connection ]; then
  echo
  echo "== mp: Pipe() round trips and bandwidth against write/read floors ($(nproc) cores)"
  "$build/bench/connection" --benchmark_out="$build/connection.json" \
    --benchmark_out_format=json "$@"

  echo
  echo "== CPython multiprocessing Pipe(), same measurements"
  "$python" "$root/bench/python_connection.py" --mp-json "$build/connection.json"
fi

if [ -z "$only" ] || [ "$only" = sync ]; then
  echo
  echo "== mp: locks, hand-offs, Value, SharedMemory against C floors ($(nproc) cores)"
  "$build/bench/sync" --benchmark_out="$build/sync.json" --benchmark_out_format=json "$@"

  echo
  echo "== CPython multiprocessing, same measurements"
  "$python" "$root/bench/python_sync.py" --mp-json "$build/sync.json"
fi

if [ -z "$only" ] || [ "$only" = pool ]; then
  echo
  echo "== mp: Pool(2) against socketpair round-trip floors ($(nproc) cores)"
  "$build/bench/pool" --benchmark_out="$build/pool.json" --benchmark_out_format=json "$@"

  echo
  echo "== CPython multiprocessing.Pool(2) and concurrent.futures.ProcessPoolExecutor(2)"
  "$python" "$root/bench/python_pool.py" --mp-json "$build/pool.json"
fi

if [ -z "$only" ] || [ "$only" = queue ]; then
  echo
  echo "== mp: Queue throughput and latency against an SPSC ring, Boost, futex and memcpy floors ($(nproc) cores)"
  "$build/bench/queue" --benchmark_out="$build/queue.json" --benchmark_out_format=json "$@"

  echo
  echo "== CPython multiprocessing Queue and SimpleQueue, same measurements"
  "$python" "$root/bench/python_queue.py" --mp-json "$build/queue.json"
fi
