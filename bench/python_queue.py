#!/usr/bin/env python3
"""CPython's multiprocessing doing what bench/queue does: items through a Queue and a SimpleQueue.

One producer (a child started with the fork context) puts n items as fast as it can, this
process gets them; the time per item is real time from the first get to the last, the median
of `reps` runs. 8-byte items are ints, 100-byte items bytes; a ping-pong through two Queues
times one round trip. Given the JSON that bench/queue wrote (--benchmark_out=FILE
--benchmark_out_format=json), it also prints mp's number for the same measurement and
python/mp: how many times slower CPython is. Then bytes items of 8 B to 64 MiB, as
bench/queue's mp_queue_1p1c_bytes/bytes:N cases (fewer items as they grow, 256 MiB at most).

    python3 bench/python_queue.py [-r 5] [--mp-json FILE] [--json FILE] [--smoke]
"""
import argparse
import json
import multiprocessing
import time

from results import Results, add_arguments, benchmark_name

R = Results()
SWEEP_BYTES = [8, 64, 512, 4096, 32768, 262144, 2 << 20, 16 << 20, 64 << 20]


def produce(q, n, item):
    put = q.put
    for _ in range(n):
        put(item)


def pingpong_child(ping, pong, n):
    for _ in range(n):
        pong.put(ping.get())


def one_run(ctx, make, n, item):
    q = make(ctx)
    p = ctx.Process(target=produce, args=(q, n, item))
    p.start()
    get = q.get
    get()  # the first item: the producer runs
    t0 = time.perf_counter()
    for _ in range(n - 1):
        get()
    t = time.perf_counter() - t0
    p.join()
    return t / (n - 1) * 1e9


def pingpong(ctx, n):
    ping, pong = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=pingpong_child, args=(ping, pong, n + 1))
    p.start()
    ping.put(0)
    pong.get()
    t0 = time.perf_counter()
    for _ in range(n):
        ping.put(0)
        pong.get()
    t = time.perf_counter() - t0
    p.join()
    return t / n * 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--mp-json")
    add_arguments(ap)
    args = ap.parse_args()
    n_items, n_pingpong = (2000, 200) if args.smoke else (200000, 20000)
    if args.smoke:
        args.reps = 1
    ctx = multiprocessing.get_context("fork")
    mp = {}
    if args.mp_json:
        with open(args.mp_json) as f:
            for b in json.load(f)["benchmarks"]:
                if b.get("aggregate_name") == "median":
                    name = benchmark_name(b["run_name"])
                    scale = {"ns": 1, "us": 1e3, "ms": 1e6}[b["time_unit"]]
                    mp[name] = b["real_time"] * scale
    cases = [
        ("python_queue_1p1c_int", lambda c: c.Queue(), n_items, 12345678, "mp_queue_1p1c_u64"),
        ("python_simplequeue_1p1c_int", lambda c: c.SimpleQueue(), n_items, 12345678,
         "mp_queue_1p1c_u64"),
        ("python_queue_1p1c_bytes100", lambda c: c.Queue(), n_items, b"x" * 100,
         "mp_queue_1p1c_string100"),
    ]
    print(f"{'case (median of %d)' % args.reps:40} {'ns/item':>10} {'items/s':>12} "
          f"{'mp ns/item':>11} {'python/mp':>10}")
    for name, make, n, item, mp_name in cases:
        ns = R.add(name.removeprefix("python_"),
                   (one_run(ctx, make, n, item) for _ in range(args.reps)), "ns")
        m = mp.get(mp_name)
        extra = f"{m:11.1f} {ns / m:9.0f}x" if m else ""
        print(f"{name:40} {ns:10.1f} {1e9 / ns:12.3g} {extra}")
    ns = R.add("queue_pingpong", (pingpong(ctx, n_pingpong) for _ in range(args.reps)), "ns")
    m = mp.get("mp_queue_pingpong")
    extra = f"{m:11.1f} {ns / m:9.0f}x" if m else ""
    print(f"{'python_queue_pingpong (round trip)':40} {ns:10.1f} {1e9 / ns:12.3g} {extra}")
    for size in SWEEP_BYTES[:2] if args.smoke else SWEEP_BYTES:
        # As many items as 256 MiB holds, 4 to 20,000 (2 to 200 in smoke mode).
        n = max(2, min(200, (256 << 20) // size)) if args.smoke else \
            max(4, min(20000, (256 << 20) // size))
        name = f"queue_1p1c_bytes/bytes:{size}"
        ns = R.add(name, (one_run(ctx, lambda c: c.Queue(), n, b"x" * size)
                          for _ in range(1 if args.smoke else 3)), "ns")
        m = mp.get("mp_" + name)
        extra = f"{m:11.1f} {ns / m:9.0f}x" if m else ""
        print(f"{'python_' + name:40} {ns:10.1f} {1e9 / ns:12.3g} {extra}", flush=True)
    R.write(args.json)


if __name__ == "__main__":
    main()
