#!/usr/bin/env python3
"""CPython's multiprocessing doing what bench/process_start does: start + join of a no-op target.

Prints the median milliseconds per start for each start method. Given the JSON that
process_start wrote (--benchmark_out=FILE --benchmark_out_format=json), it also prints how many
times faster mp is for the same method.

    python3 bench/python_process_start.py [-n 40] [--methods spawn,fork] [--mp-json FILE]
"""
import argparse
import json
import multiprocessing
import statistics
import sys
import time


def noop():
    pass


def median_ms(method, n, warmup=3):
    ctx = multiprocessing.get_context(method)
    # Warm-up: the first spawn also starts the resource tracker and fills the page cache.
    for _ in range(warmup):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        times.append(time.perf_counter() - t0)
        if p.exitcode != 0:
            sys.exit(f"{method}: child exited with {p.exitcode}")
    return statistics.median(times) * 1e3


def mp_medians_ms(path):
    """Median real time (ms) of mp_spawn and mp_fork from Google Benchmark's JSON output."""
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    out = {}
    with open(path) as f:
        for b in json.load(f)["benchmarks"]:
            name = b["run_name"].split("/")[0]
            if b.get("aggregate_name") == "median" and name in ("mp_spawn", "mp_fork"):
                out[name[3:]] = b["real_time"] * scale[b["time_unit"]]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40, help="timed starts per method (default 40)")
    ap.add_argument("--methods", default="spawn,fork", help="comma-separated start methods")
    ap.add_argument("--mp-json", help="process_start's --benchmark_out JSON, to compare")
    args = ap.parse_args()

    mp_ms = mp_medians_ms(args.mp_json) if args.mp_json else {}
    print(f"CPython {sys.version.split()[0]} ({sys.executable}), multiprocessing, "
          f"start+join of a no-op, median of {args.n}:")
    for method in args.methods.split(","):
        ms = median_ms(method, args.n)
        line = f"  python {method:<10} {ms:8.3f} ms per start"
        if method in mp_ms:
            line += f"   mp {method}: {mp_ms[method]:.3f} ms -> mp is {ms / mp_ms[method]:.1f}x faster"
        print(line, flush=True)


if __name__ == "__main__":  # spawned children re-import this file: they must not measure
    main()
