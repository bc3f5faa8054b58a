#!/usr/bin/env python3
"""CPython's multiprocessing doing what bench/process_start does: start + join of a no-op target.

Prints, for each start method, the median milliseconds per start (one child at a time, after a
warm-up), the median milliseconds per batch of 64 concurrent starts (64 starts back to back, then
64 joins), and, for forkserver, the first start in a fresh interpreter (which includes starting
the server). Given the JSON that process_start wrote (--benchmark_out=FILE
--benchmark_out_format=json), it also prints how many times faster mp is for the same method.
Then the start per method while this parent holds 1 MiB to 4 GiB of touched memory (up to half
of MemAvailable), as bench/process_start's *_parent_memory cases.

    python3 bench/python_process_start.py [-n 40] [-b 3] [--methods spawn,fork,forkserver]
                                          [--mp-json FILE] [--json FILE] [--smoke]
"""
import argparse
import json
import multiprocessing
import subprocess
import sys
import time

from results import Results, add_arguments, available_bytes

BATCH = 64
R = Results()


def noop():
    pass


def start_join(ctx):
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    return p.exitcode


WARMUP = 3  # starts before timing; 1 in smoke mode


def median_ms(ctx, n, warmup=None, name=None):
    # Warm-up: the first spawn also starts the resource tracker and fills the page cache; the
    # first forkserver start also starts the server (see first_start_ms).
    for _ in range(WARMUP if warmup is None else warmup):
        start_join(ctx)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        code = start_join(ctx)
        times.append(time.perf_counter() - t0)
        if code != 0:
            sys.exit(f"{ctx.get_start_method()}: child exited with {code}")
    return R.add(name or ctx.get_start_method(), (t * 1e3 for t in times), "ms")


def batch_median_ms(ctx, batches):
    """Median wall time of: start BATCH children back to back, then join them all."""
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        ps = [ctx.Process(target=noop) for _ in range(BATCH)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        times.append(time.perf_counter() - t0)
        bad = [p.exitcode for p in ps if p.exitcode != 0]
        if bad:
            sys.exit(f"{ctx.get_start_method()}: {len(bad)} children failed, e.g. {bad[0]}")
    return R.add(f"{ctx.get_start_method()}_64concurrent", (t * 1e3 for t in times), "ms")


def first_start_ms(method, runs):
    """Median of the first start + join in a fresh interpreter (the server starts then)."""
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, __file__, "--first-start", method], check=True,
                             capture_output=True, text=True).stdout
        times.append(float(out))
    return R.add(f"{method}_first_start", times, "ms")


def mp_medians_ms(path):
    """Median real time (ms) of each benchmark in Google Benchmark's JSON output, by name."""
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    out = {}
    with open(path) as f:
        for b in json.load(f)["benchmarks"]:
            name = b["run_name"].split("/")[0]
            if b.get("aggregate_name") == "median":
                out[name] = b["real_time"] * scale[b["time_unit"]]
    return out


def compare(py_ms, mp_ms):
    if mp_ms is None:
        return ""
    return f"   mp: {mp_ms:9.3f} ms -> mp is {py_ms / mp_ms:5.1f}x faster"


def main():
    global BATCH, WARMUP
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40, help="timed single starts per method (default 40)")
    ap.add_argument("-b", type=int, default=3,
                    help=f"timed batches of {BATCH} per method (default 3)")
    ap.add_argument("--first-runs", type=int, default=5,
                    help="fresh interpreters timing forkserver's first start (default 5)")
    ap.add_argument("--methods", default="spawn,fork,forkserver",
                    help="comma-separated start methods")
    ap.add_argument("--mp-json", help="process_start's --benchmark_out JSON, to compare")
    ap.add_argument("--first-start", metavar="METHOD", help=argparse.SUPPRESS)
    add_arguments(ap)
    args = ap.parse_args()
    if args.smoke:  # a batch of 8, not 64: the path runs, nothing is measured
        args.n, args.b, args.first_runs, BATCH, WARMUP = 2, 1, 1, 8, 1

    if args.first_start:  # a fresh interpreter: time its first start, print milliseconds
        ctx = multiprocessing.get_context(args.first_start)
        t0 = time.perf_counter()
        code = start_join(ctx)
        ms = (time.perf_counter() - t0) * 1e3
        if code != 0:
            sys.exit(f"{args.first_start}: child exited with {code}")
        print(ms)
        return

    mp = mp_medians_ms(args.mp_json) if args.mp_json else {}
    methods = args.methods.split(",")
    print(f"CPython {sys.version.split()[0]} ({sys.executable}), multiprocessing, "
          f"start+join of a no-op")
    print(f"per start (median of {args.n}, after warm-up):")
    warm = {}
    for method in methods:
        ms = warm[method] = median_ms(multiprocessing.get_context(method), args.n)
        print(f"  python {method:<10} {ms:9.3f} ms per start" + compare(ms, mp.get(f"mp_{method}")),
              flush=True)
    if "forkserver" in methods:
        ms = first_start_ms("forkserver", args.first_runs)
        print(f"forkserver first start in a fresh process, server start included "
              f"(median of {args.first_runs}):")
        print(f"  python forkserver {ms:9.3f} ms" + compare(ms, mp.get("forkserver_first_start")))
        extra = [f"python {ms - warm['forkserver']:.1f} ms"]
        if "forkserver_first_start" in mp and "mp_forkserver" in mp:
            extra.append(f"mp {mp['forkserver_first_start'] - mp['mp_forkserver']:.1f} ms")
        print(f"  the server's start (first minus warm start): {', '.join(extra)}", flush=True)
    print(f"{BATCH} concurrent starts, then {BATCH} joins (median of {args.b} batches):")
    for method in methods:
        ms = batch_median_ms(multiprocessing.get_context(method), args.b)
        print(f"  python {method:<10} {ms:9.1f} ms per batch" +
              compare(ms, mp.get(f"mp_{method}_{BATCH}concurrent")), flush=True)
    parent_memory_sweep(methods, 1 if args.smoke else 5, 2 if args.smoke else 7)
    R.write(args.json)


def parent_memory_sweep(methods, n, sizes):
    """Start + join per method while this process holds 1 MiB, 4 MiB, ... 4 GiB of touched
    memory (`sizes` of them, up to half of MemAvailable)."""
    cap = available_bytes() // 2
    print(f"per start while the parent holds touched memory (median of {n}, after a warm-up):")
    print(f"  {'MiB':>6} " + " ".join(f"{m + ' ms':>14}" for m in methods))
    mib = 1
    for _ in range(sizes):
        if mib << 20 > cap:
            break
        ballast = bytearray(b"\x01") * (mib << 20)  # written, so its pages are really there
        row = [median_ms(multiprocessing.get_context(m), n, 1, f"{m}_parent_memory/MiB:{mib}")
               for m in methods]
        print(f"  {mib:6} " + " ".join(f"{ms:14.3f}" for ms in row), flush=True)
        del ballast
        mib *= 4


if __name__ == "__main__":  # spawned children re-import this file: they must not measure
    main()
