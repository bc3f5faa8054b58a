#!/usr/bin/env python3
"""CPython's multiprocessing doing what bench/connection does: Pipe() messages between two processes.

Round trip: the parent sends an 8-byte message over a duplex Pipe() and a child started with the
fork context echoes it back (recv_bytes/send_bytes, until b"stop"); the median over batches of
the time per round trip. Bandwidth: 64 MiB in 1 MiB messages from the parent to the child, which
receives with recv_bytes_into a preallocated 1 MiB bytearray, or with recv_bytes, and answers
one byte after the last; the median time per 64 MiB, as MiB/s. Each runs with the two processes
where the scheduler puts them, pinned to one CPU, and pinned to a CPU each, as bench/connection
does. Given the JSON that connection wrote (--benchmark_out=FILE --benchmark_out_format=json),
it also prints mp's numbers and its ratio against CPython for the same measurement.

    python3 bench/python_connection.py [-r 5] [-b 6] [--mp-json FILE] [--json FILE] [--smoke]
"""
import os
import argparse
import json
import multiprocessing
import statistics
import sys
import time

from placement import Placement
from results import Results, add_arguments

SMALL = 8
CHUNK = 1 << 20
CHUNKS = 64
TOTAL = CHUNK * CHUNKS
STOP = b"stop"
R = Results()


def pin_child(cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def echo(conn, cpu):
    pin_child(cpu)
    while True:
        m = conn.recv_bytes()
        if m == STOP:
            return
        conn.send_bytes(m)


def sink(conn, into, cpu):
    pin_child(cpu)
    buf = bytearray(CHUNK)
    got = 0
    while True:
        if into:
            n = conn.recv_bytes_into(buf)
            if n == len(STOP) and buf[:n] == STOP:
                return
        else:
            m = conn.recv_bytes()
            if m == STOP:
                return
            n = len(m)
        got += n
        if got >= TOTAL:
            got = 0
            conn.send_bytes(b"!")


def start(ctx, target, *args):
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(child,) + args)
    p.start()
    child.close()  # the child's end lives in the child only: its death is EOF here
    return parent, p


def stop(parent, p):
    parent.send_bytes(STOP)
    p.join()
    if p.exitcode != 0:
        sys.exit(f"{p.name}: child exited with {p.exitcode}")




def trips(send, recv, ping, n):
    t0 = time.perf_counter()
    for _ in range(n):
        send(ping)
        if len(recv()) != SMALL:
            sys.exit("wrong echo")
    return time.perf_counter() - t0


def roundtrip_us(ctx, cpu, reps, name, batch_s=0.1):
    """Median over `reps` batches (~batch_s each) of the microseconds per round trip."""
    parent, p = start(ctx, echo, cpu)
    ping = bytes(SMALL)
    send, recv = parent.send_bytes, parent.recv_bytes
    n = 100
    while (t := trips(send, recv, ping, n)) < batch_s / 4:  # warm-up, and the batch size
        n *= 2
    n = max(1, int(n * batch_s / t))
    times = []
    for _ in range(reps):
        times.append(trips(send, recv, ping, n) / n)
    stop(parent, p)
    return R.add(name, (t * 1e6 for t in times), "us")


def bandwidth_ms(ctx, into, cpu, batches, name):
    """Median time (ms) to send 64 MiB in 1 MiB messages and get the child's answer."""
    parent, p = start(ctx, sink, into, cpu)
    chunk = bytes([0x5A]) * CHUNK
    times = []
    for i in range(batches + 1):  # the first one warms up
        t0 = time.perf_counter()
        for _ in range(CHUNKS):
            parent.send_bytes(chunk)
        if parent.recv_bytes() != b"!":
            sys.exit("wrong answer")
        if i:
            times.append(time.perf_counter() - t0)
    stop(parent, p)
    R.add(name, (TOTAL / (1 << 20) / t for t in times), "MiB/s")
    return statistics.median(times) * 1e3


def mib_per_s(ms):
    return TOTAL / (1 << 20) / (ms * 1e-3)


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


PLACEMENTS = (("none", ""), ("same", "_1core"), ("split", "_2cores"))
LABEL = {"none": "unpinned", "same": "1 core", "split": "2 cores"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=5,
                    help="batches of round trips, ~0.1 s each, per placement (default 5)")
    ap.add_argument("-b", type=int, default=6,
                    help="timed 64 MiB transfers per way and placement (default 6)")
    ap.add_argument("--mp-json", help="connection's --benchmark_out JSON, to compare")
    add_arguments(ap)
    args = ap.parse_args()
    if args.smoke:
        args.r, args.b = 1, 1

    mp = mp_medians_ms(args.mp_json) if args.mp_json else {}
    ctx = multiprocessing.get_context("fork")
    print(f"CPython {sys.version.split()[0]} ({sys.executable}), multiprocessing Pipe(), "
          f"fork context; medians")
    if mp:
        print("(mp/python: for round trips, of the times: < 1 is mp faster; "
              "for bandwidth, of the rates: > 1 is mp faster)")

    def show(label, py, key, unit, fmt, rate):
        line = f"  {label:<28} python {py:{fmt}} {unit}"
        if key in mp:
            m = mib_per_s(mp[key]) if rate else mp[key] * 1e3
            line += f"   mp {m:{fmt}} {unit}  mp/python {m / py:5.2f}x"
        print(line, flush=True)

    print(f"round trip of {SMALL} bytes:")
    for how, suffix in PLACEMENTS:
        with Placement(how) as where:
            if where is None:
                continue
            us = roundtrip_us(ctx, where.child_cpu, args.r, "roundtrip" + suffix,
                              0.01 if args.smoke else 0.1)
        show(LABEL[how], us, "mp_roundtrip" + suffix, "us", "8.2f", False)
    print("bandwidth, 64 MiB in 1 MiB messages:")
    for how, suffix in PLACEMENTS:
        for into, name in ((True, "recv_bytes_into"), (False, "recv_bytes")):
            with Placement(how) as where:
                if where is None:
                    continue
                ms = bandwidth_ms(ctx, into, where.child_cpu, args.b,
                                  f"bandwidth_{name}{suffix}")
            show(f"{name}, {LABEL[how]}", mib_per_s(ms), f"mp_bandwidth_{name}{suffix}", "MiB/s",
                 "8.0f", True)
    R.write(args.json)


if __name__ == "__main__":
    main()
