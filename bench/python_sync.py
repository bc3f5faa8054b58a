#!/usr/bin/env python3
"""CPython's multiprocessing doing what bench/sync does: locks, a hand-off, Value, SharedMemory.

Uncontended: Lock, RLock and Semaphore acquire() + release() in one process; a Value('q')
incremented as Python code does it, `with v.get_lock(): v.value += 1`; a SharedMemory cycle:
SharedMemory(create=True, size=4096), SharedMemory(name) to attach, close both, unlink; and the
cycle again with the page written by the creator and read by the attacher. Each is timed in
batches of ~0.1 s of this thread's CPU time; the median time per operation is printed.
Hand-off: a child started with the fork context and the parent ping-pong over two Semaphores
(the parent releases `ping` and acquires `pong`, the child the other way round), unpinned, on
one CPU and on a CPU each, as bench/sync does; the time is per round trip, in real time. Given
the JSON that sync wrote (--benchmark_out=FILE --benchmark_out_format=json), it also prints
mp's number for the same measurement and python/mp: how many times slower CPython is.

    python3 bench/python_sync.py [-r 5] [--mp-json FILE] [--json FILE] [--smoke]
"""
import argparse
import json
import multiprocessing
import os
import sys
import time
from multiprocessing import shared_memory

from placement import Placement
from results import Results, add_arguments

SHM_SIZE = 4096
R = Results()
BATCH_S = 0.1  # seconds per batch; less in smoke mode


def timed(fn, n, clock):
    t0 = clock()
    fn(n)
    return clock() - t0


def median_ns(name, fn, reps, clock=time.thread_time):
    """Median over `reps` batches (~batch_s each) of the nanoseconds per call of fn's loop body;
    fn(n) runs the body n times. As bench/sync: in this thread's CPU time for what runs in one
    process (on a shared machine real time also counts whoever else ran), in real time
    (clock=time.perf_counter) for what waits for another process. Kept in R as `name`."""
    batch_s = BATCH_S
    n = 16
    while (t := timed(fn, n, clock)) < batch_s / 4:  # warm-up, and the batch size
        n *= 2
    n = max(1, int(n * batch_s / t))
    return R.add(name, (timed(fn, n, clock) / n * 1e9 for _ in range(reps)), "ns")


def acquire_release(lock):
    # Bound methods in locals: the loop costs what a tight Python loop costs, no more.
    acquire, release = lock.acquire, lock.release

    def run(n):
        for _ in range(n):
            acquire()
            release()

    return run


def value_increment(v):
    lock = v.get_lock()

    def run(n):
        for _ in range(n):
            with lock:
                v.value += 1

    return run


def shm_cycle(touch):
    def run(n):
        for _ in range(n):
            shm = shared_memory.SharedMemory(create=True, size=SHM_SIZE)
            other = shared_memory.SharedMemory(shm.name)
            if touch:
                shm.buf[0] = 1
                if other.buf[0] != 1:
                    sys.exit("the attacher does not read the creator's write")
            other.close()
            shm.close()
            shm.unlink()

    return run


def pong(ping, pong_, stop, cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    while True:
        ping.acquire()
        if stop.is_set():
            return
        pong_.release()




def pingpong_ns(ctx, cpu, reps, name):
    ping, pong_, stop = ctx.Semaphore(0), ctx.Semaphore(0), ctx.Event()
    p = ctx.Process(target=pong, args=(ping, pong_, stop, cpu))
    p.start()
    release, acquire = ping.release, pong_.acquire

    def run(n):
        for _ in range(n):
            release()
            acquire()

    ns = median_ns(name, run, reps, time.perf_counter)
    stop.set()
    ping.release()
    p.join()
    if p.exitcode != 0:
        sys.exit(f"{p.name}: child exited with {p.exitcode}")
    return ns


def mp_medians_ns(path):
    """Median (real, CPU) time (ns) of each benchmark in Google Benchmark's JSON output, by
    name."""
    scale = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
    out = {}
    with open(path) as f:
        for b in json.load(f)["benchmarks"]:
            name = b["run_name"].split("/")[0]
            if b.get("aggregate_name") == "median":
                k = scale[b["time_unit"]]
                out[name] = (b["real_time"] * k, b["cpu_time"] * k)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=5, help="batches, ~0.1 s each, per case (default 5)")
    ap.add_argument("--mp-json", help="sync's --benchmark_out JSON, to compare")
    add_arguments(ap)
    args = ap.parse_args()
    if args.smoke:
        global BATCH_S
        args.r, BATCH_S = 1, 0.01

    mp = mp_medians_ns(args.mp_json) if args.mp_json else {}
    ctx = multiprocessing.get_context("fork")
    print(f"CPython {sys.version.split()[0]} ({sys.executable}), multiprocessing, fork context; "
          f"medians of {args.r} batches; CPU time in one process, real time in two")

    def show(label, py_ns, key, unit="ns", real=False):
        scale = {"ns": 1.0, "us": 1e-3}[unit]
        line = f"  {label:<40} python {py_ns * scale:9.2f} {unit}"
        if key in mp:
            m = mp[key][0 if real else 1]
            line += f"   mp {m * scale:9.2f} {unit}   python/mp {py_ns / m:6.1f}x"
        print(line, flush=True)

    print("uncontended acquire + release, one process:")
    show("Lock", median_ns("lock_acquire_release", acquire_release(ctx.Lock()), args.r),
         "mp_lock_acquire_release")
    show("RLock", median_ns("rlock_acquire_release", acquire_release(ctx.RLock()), args.r),
         "mp_rlock_acquire_release")
    show("Semaphore",
         median_ns("semaphore_acquire_release", acquire_release(ctx.Semaphore()), args.r),
         "mp_semaphore_acquire_release")
    print("Value('q') incremented under its lock, one process:")
    show("with v.get_lock(): v.value += 1",
         median_ns("value_locked_increment", value_increment(ctx.Value("q", 0)), args.r),
         "mp_value_locked_increment")
    print(f"SharedMemory of {SHM_SIZE} bytes: create + attach + close both + unlink:")
    show("SharedMemory cycle", median_ns("shm_cycle", shm_cycle(False), args.r), "mp_shm_cycle",
         "us")
    show("the same, page written and read",
         median_ns("shm_cycle_touched", shm_cycle(True), args.r), "mp_shm_cycle_touched", "us")
    print("hand-off between two processes over two Semaphores, per round trip:")
    for how, suffix, label in (("none", "", "unpinned"), ("same", "_1core", "1 core"),
                               ("split", "_2cores", "2 cores")):
        with Placement(how) as where:
            if where is None:
                continue
            ns = pingpong_ns(ctx, where.child_cpu, args.r, "semaphore_pingpong" + suffix)
        show(label, ns, "mp_semaphore_pingpong" + suffix, "us", real=True)
    R.write(args.json)


if __name__ == "__main__":
    main()
