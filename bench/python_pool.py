#!/usr/bin/env python3
"""CPython's multiprocessing.Pool and ProcessPoolExecutor doing what bench/pool does.

With 2 workers each, default start method: pool.apply(inc, (x,)) round trip and
executor.submit(inc, x).result() round trip (median of batches of ~0.1 s, real time);
apply_async and submit throughput (N submitted, then every result waited for; median of 3);
pool.map(inc, range(1_000_000)) with CPython's automatic chunksize (median of 3). Given the JSON
that bench/pool wrote (--benchmark_out=FILE --benchmark_out_format=json), it also prints mp's
number for the same measurement and how many times faster mp is. Then map's throughput
against the task count (100 to 1M ints, automatic chunksize) and the chunksize (1 to 1024, 20,000
ints), as bench/pool's mp_pool_map_tasks and mp_pool_map_chunksize cases.

    python3 bench/python_pool.py [-r 5] [--mp-json FILE] [--json FILE] [--smoke]
"""
import argparse
import concurrent.futures
import multiprocessing
import sys
import time

from results import Results, add_arguments, mp_results

WORKERS = 2
ASYNC_TASKS = 20_000  # CPython does ~40 k/s: ~0.5 s a batch
SUBMIT_TASKS = 5_000  # its executor ~8 k/s
MAP_ITEMS = 1_000_000
SWEEP_TASKS = [100, 1_000, 10_000, 100_000, 1_000_000]
SWEEP_CHUNK_ITEMS = 20_000
SWEEP_CHUNKSIZES = [1, 4, 16, 64, 256, 1024]
R = Results()


def inc(x):
    return x + 1


def median_ns(name, fn, reps, batch_s=0.1):
    """Median over `reps` batches (~batch_s each) of the real nanoseconds per call of fn's loop
    body; fn(n) runs the body n times. Kept in R as `name`."""
    def timed(n):
        t0 = time.perf_counter()
        fn(n)
        return time.perf_counter() - t0

    n = 4
    while (t := timed(n)) < batch_s / 4:  # warm-up, and the batch size
        n *= 2
    n = max(1, int(n * batch_s / t))
    return R.add(name, (timed(n) / n * 1e9 for _ in range(reps)), "ns")


def median_rate(name, fn, n, reps=3, unit="tasks/s"):
    """Median over `reps` runs of n / the real seconds fn(n) takes. Kept in R as `name`."""
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(n)
        rates.append(n / (time.perf_counter() - t0))
    return R.add(name, rates, unit)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=5, help="batches, ~0.1 s each, per round trip")
    ap.add_argument("--mp-json", help="bench/pool's --benchmark_out JSON, to compare")
    add_arguments(ap)
    args = ap.parse_args()
    global ASYNC_TASKS, SUBMIT_TASKS, MAP_ITEMS, SWEEP_TASKS, SWEEP_CHUNK_ITEMS, SWEEP_CHUNKSIZES
    reps = 3
    if args.smoke:
        args.r, reps = 1, 1
        ASYNC_TASKS, SUBMIT_TASKS, MAP_ITEMS = 200, 100, 10_000
        SWEEP_TASKS, SWEEP_CHUNK_ITEMS = SWEEP_TASKS[:2], 200
        SWEEP_CHUNKSIZES = SWEEP_CHUNKSIZES[:2]
    mp = mp_results(args.mp_json) if args.mp_json else {}
    method = multiprocessing.get_start_method()
    print(f"CPython {sys.version.split()[0]} ({sys.executable}), {WORKERS} workers, "
          f"start method {method}; real time")

    def roundtrip(label, py_ns, key):
        line = f"  {label:<44} python {py_ns / 1e3:9.1f} us"
        if key in mp:
            m = mp[key][0]
            line += f"   mp {m / 1e3:9.1f} us   mp is {py_ns / m:6.1f}x faster (mp/python " \
                    f"{m / py_ns:.3f}x)"
        else:
            line += f"   mp: no {key} in this run"
        print(line, flush=True)

    def rate(label, py, key, counter, unit, scale):
        line = f"  {label:<44} python {py / scale:9.2f} {unit}"
        if key in mp and counter in mp[key][1]:
            m = mp[key][1][counter]
            line += f"   mp {m / scale:9.2f} {unit}   mp is {m / py:6.1f}x faster"
        else:
            line += f"   mp: no {key} in this run"
        print(line, flush=True)

    with multiprocessing.Pool(WORKERS) as pool:
        pool.apply(inc, (0,))  # the workers up

        def apply_loop(n):
            apply = pool.apply
            for i in range(n):
                apply(inc, (i,))

        def apply_async_all(n):
            rs = [pool.apply_async(inc, (i,)) for i in range(n)]
            for r in rs:
                r.get()

        def map_all(n):
            out = pool.map(inc, range(n))
            if len(out) != n:
                sys.exit("map returned the wrong number of items")

        print("multiprocessing.Pool(2):")
        roundtrip("apply(inc, (x,)) round trip",
                  median_ns("pool_apply_roundtrip", apply_loop, args.r), "mp_pool_apply_roundtrip")
        rate(f"apply_async throughput ({ASYNC_TASKS} in flight)",
             median_rate("pool_apply_async_throughput", apply_async_all, ASYNC_TASKS, reps),
             "mp_pool_apply_async_throughput", "tasks_per_s", "k tasks/s", 1e3)
        rate(f"map(inc, range({MAP_ITEMS:_})), auto chunksize",
             median_rate("pool_map_1M", map_all, MAP_ITEMS, reps, "items/s"), "mp_pool_map_1M",
             "items_per_s", "M items/s", 1e6)

        print("map throughput against the task count (auto chunksize) and the chunksize "
              f"({SWEEP_CHUNK_ITEMS} ints):")
        for n in SWEEP_TASKS:
            name = f"pool_map_tasks/tasks:{n}"
            rate(f"map of {n} ints", median_rate(name, map_all, n, reps, "items/s"), "mp_" + name,
                 "items_per_s", "M items/s", 1e6)
        for c in SWEEP_CHUNKSIZES:
            name = f"pool_map_chunksize/chunksize:{c}"

            def map_chunked(n, c=c):
                if len(pool.map(inc, range(n), chunksize=c)) != n:
                    sys.exit("map returned the wrong number of items")

            rate(f"map, chunksize {c}",
                 median_rate(name, map_chunked, SWEEP_CHUNK_ITEMS, reps, "items/s"), "mp_" + name,
                 "items_per_s", "M items/s", 1e6)

    with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
        ex.submit(inc, 0).result()

        def submit_loop(n):
            submit = ex.submit
            for i in range(n):
                submit(inc, i).result()

        def submit_all(n):
            fs = [ex.submit(inc, i) for i in range(n)]
            for f in fs:
                f.result()

        # mp's executor is not in the tree yet: compared with mp's Pool, the same engine, until
        # bench/pool's executor cases are compiled in.
        has_ex = "mp_executor_submit_roundtrip" in mp
        print("concurrent.futures.ProcessPoolExecutor(2)" +
              ("" if has_ex else " (against mp's Pool: mp's executor cases are compiled out)") +
              ":")
        roundtrip("submit(inc, x).result() round trip",
                  median_ns("executor_submit_roundtrip", submit_loop, args.r),
                  "mp_executor_submit_roundtrip" if has_ex else "mp_pool_apply_roundtrip")
        rate(f"submit throughput ({SUBMIT_TASKS} in flight)",
             median_rate("executor_submit_throughput", submit_all, SUBMIT_TASKS, reps),
             "mp_executor_submit_throughput" if has_ex else "mp_pool_apply_async_throughput",
             "tasks_per_s", "k tasks/s", 1e3)
    R.write(args.json)


if __name__ == "__main__":
    main()
