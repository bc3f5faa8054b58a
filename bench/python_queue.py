#!/usr/bin/env python3
"""CPython's multiprocessing doing what bench/queue does: items through a Queue and a SimpleQueue.

One producer (a child started with the fork context) puts n items as fast as it can, this
process gets them; the time per item is real time from the first get to the last, the median
of `reps` runs. 8-byte items are ints, 100-byte items bytes; a ping-pong through two Queues
times one round trip. Given the JSON that bench/queue wrote (--benchmark_out=FILE
--benchmark_out_format=json), it also prints mp's number for the same measurement and
python/mp: how many times slower CPython is.

    python3 bench/python_queue.py [-r 5] [--mp-json FILE]
"""
import argparse
import json
import multiprocessing
import statistics
import time


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
    args = ap.parse_args()
    ctx = multiprocessing.get_context("fork")
    mp = {}
    if args.mp_json:
        with open(args.mp_json) as f:
            for b in json.load(f)["benchmarks"]:
                if b.get("aggregate_name") == "median":
                    name = b["run_name"].split("/")[0]
                    scale = {"ns": 1, "us": 1e3, "ms": 1e6}[b["time_unit"]]
                    mp[name] = b["real_time"] * scale
    cases = [
        ("python_queue_1p1c_int", lambda c: c.Queue(), 200000, 12345678, "mp_queue_1p1c_u64"),
        ("python_simplequeue_1p1c_int", lambda c: c.SimpleQueue(), 200000, 12345678,
         "mp_queue_1p1c_u64"),
        ("python_queue_1p1c_bytes100", lambda c: c.Queue(), 200000, b"x" * 100,
         "mp_queue_1p1c_string100"),
    ]
    print(f"{'case (median of %d)' % args.reps:40} {'ns/item':>10} {'items/s':>12} "
          f"{'mp ns/item':>11} {'python/mp':>10}")
    for name, make, n, item, mp_name in cases:
        ns = statistics.median(one_run(ctx, make, n, item) for _ in range(args.reps))
        m = mp.get(mp_name)
        extra = f"{m:11.1f} {ns / m:9.0f}x" if m else ""
        print(f"{name:40} {ns:10.1f} {1e9 / ns:12.3g} {extra}")
    ns = statistics.median(pingpong(ctx, 20000) for _ in range(args.reps))
    m = mp.get("mp_queue_pingpong")
    extra = f"{m:11.1f} {ns / m:9.0f}x" if m else ""
    print(f"{'python_queue_pingpong (round trip)':40} {ns:10.1f} {1e9 / ns:12.3g} {extra}")


if __name__ == "__main__":
    main()
