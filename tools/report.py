#!/usr/bin/env python3
"""Writes docs/performance.md, its charts and README's summary block from one run of bench/run.sh
(tools/report.sh runs both): Google Benchmark's JSON of each part (NAME.json) and its CPython
script's (python_NAME.json) in one directory. Standard library only; the charts are gnuplot
scripts, rendered to SVG when gnuplot is there.

    python3 tools/report.py --results DIR --page FILE --charts DIR [--build DIR]
                            [--readme README.md] [--log FILE] [--smoke]

--smoke: the run was bench/run.sh's smoke mode. The page says so at the top, and the script
checks what CI asks of that mode: every part wrote its JSON, no case failed, every table of the
page has its cases, and the run's log (--log) shows each part's printed tables; never a speed.

An area of the page is one entry of AREAS below: a title, the part (bench/NAME.cpp and
bench/python_NAME.py) it reads, and its rows, each naming mp's case, its floor and CPython's.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from results import benchmark_name  # noqa: E402  (bench/ is not a package)


# ---- what a row measures

class M:
    """One case of a part's Google Benchmark JSON (mp's, or a floor). field: "real" or "cpu"
    time, or a counter's name (items_per_second, tasks_per_s, ...). A counter whose name ends
    in _per_s or _per_second is a rate; scale turns it into the row's base unit (per second, or
    seconds for a counter in ms)."""

    def __init__(self, name, field="real", scale=1.0, kind=None):
        self.name, self.field, self.scale = name, field, scale
        self.kind = kind or ("time" if field in ("real", "cpu") else
                             "rate" if re.search(r"per_s(econd)?$", field) else "time")


class P:
    """One case of a CPython script's JSON (bench/results.py)."""

    def __init__(self, name):
        self.name = name


class Row:
    """kind: "time" (lower is better: seconds) or "rate" (higher is better: per second).
    unit: how to print it ("s" with SI prefixes; "/s", "B/s"). per: what a rate counts."""

    def __init__(self, label, mp, floor=None, floor_label="", py=None, kind="time", unit=None):
        self.label, self.mp, self.floor, self.floor_label = label, mp, floor, floor_label
        self.py = py
        self.kind = kind
        self.unit = unit or ("s" if kind == "time" else "/s")


class Area:
    """printed: how the part's printed tables start (a line of its output each), which the
    smoke check looks for."""

    def __init__(self, key, title, part, rows, note="", timing="", printed=()):
        self.key, self.title, self.part, self.rows, self.note = key, title, part, rows, note
        self.timing, self.printed = timing, printed


MANAGER_CLIENTS = (1, 2, 4)  # bench/managers' mp_manager_calls/clients:N
SFX = (("", "unpinned"), ("_1core", "both on 1 core"), ("_2cores", "a core each"))

AREAS = [
    Area("process_start", "Process start", "process_start", [
        Row("forkserver (the default): start + join", M("mp_forkserver"), M("fork_exit"),
            "fork + _exit + waitpid", P("forkserver")),
        Row("spawn: start + join", M("mp_spawn"), M("posix_spawn_self"),
            "posix_spawn of the same binary", P("spawn")),
        Row("spawn, against a plain C++ no-op", M("mp_spawn"), M("posix_spawn_noop"),
            "posix_spawn of a C++ no-op without mp"),
        Row("fork: start + join", M("mp_fork"), M("fork_exit"), "fork + _exit + waitpid",
            P("fork")),
        Row("forkserver's first start (server start included)",
            M("forkserver_first_start"), M("mp_spawn"), "mp's spawn",
            P("forkserver_first_start")),
        Row("64 at once, forkserver (per batch)", M("mp_forkserver_64concurrent"),
            py=P("forkserver_64concurrent")),
        Row("64 at once, spawn (per batch)", M("mp_spawn_64concurrent"),
            py=P("spawn_64concurrent")),
        Row("64 at once, fork (per batch)", M("mp_fork_64concurrent"), py=P("fork_64concurrent")),
        Row("fork, the parent holding 1 GiB", M("mp_fork_1GiB"), M("fork_exit_1GiB"),
            "fork + _exit, same parent"),
        Row("spawn, the parent holding 1 GiB", M("mp_spawn_1GiB"), M("mp_spawn"),
            "mp's spawn, small parent"),
        Row("forkserver, the parent holding 1 GiB", M("mp_forkserver_1GiB"), M("mp_forkserver"),
            "mp's forkserver, small parent"),
    ], note="A no-op child, started and joined, one at a time unless said otherwise. What the "
       "parent holds costs fork the page tables it copies; spawn and forkserver stay flat (see "
       "the chart of start time against the parent's memory). Most of a spawn is the dynamic "
       "loader: compare the no-op C++ floor.", timing="real time",
       printed=["ratio of median real times", "per start (median of",
                "per start while the parent holds"]),
    Area("connection", "Connections", "connection", [
        *[Row(f"Pipe() round trip, 8 bytes, {where}", M("mp_roundtrip" + s),
              M("floor_socketpair_roundtrip" + s), "write/read on a socketpair",
              P("roundtrip" + s)) for s, where in SFX],
        *[Row(f"64 MiB in 1 MiB messages, recv_bytes_into, {where}",
              M("mp_bandwidth_recv_bytes_into" + s, "bytes_per_second"),
              M("floor_socketpair_bandwidth" + s, "bytes_per_second"), "socketpair write/read",
              P("bandwidth_recv_bytes_into" + s), kind="rate", unit="B/s") for s, where in SFX],
        *[Row(f"64 MiB in 1 MiB messages, recv_bytes, {where}",
              M("mp_bandwidth_recv_bytes" + s, "bytes_per_second"),
              M("floor_socketpair_bandwidth" + s, "bytes_per_second"), "socketpair write/read",
              P("bandwidth_recv_bytes" + s), kind="rate", unit="B/s") for s, where in SFX],
    ], note="Between the parent and a forked child. Where the two processes run decides the "
       "result more than anything: unpinned, on one core (every message a context switch), and "
       "on a core each (every message wakes the other core).", timing="real time",
       printed=["ratio of medians (time; bandwidth", "round trip of 8 bytes:"]),
    Area("sync", "Synchronisation", "sync", [
        Row("Lock acquire + release", M("mp_lock_acquire_release", "cpu"),
            M("floor_sem_t_acquire_release", "cpu"), "a process-shared sem_t",
            P("lock_acquire_release")),
        Row("RLock acquire + release", M("mp_rlock_acquire_release", "cpu"),
            M("floor_sem_t_acquire_release", "cpu"), "a process-shared sem_t",
            P("rlock_acquire_release")),
        Row("Semaphore acquire + release", M("mp_semaphore_acquire_release", "cpu"),
            M("floor_sem_t_acquire_release", "cpu"), "a process-shared sem_t",
            P("semaphore_acquire_release")),
        Row("Value<int64_t> increment under its lock", M("mp_value_locked_increment", "cpu"),
            M("floor_atomic_fetch_add_increment", "cpu"), "an atomic fetch_add",
            P("value_locked_increment")),
        Row("the same, another process incrementing too",
            M("mp_value_locked_increment_2procs"), M("floor_atomic_fetch_add_increment_2procs"),
            "an atomic fetch_add, same contention"),
        *[Row(f"hand-off over two Semaphores, {where}", M("mp_semaphore_pingpong" + s),
              M("floor_sem_t_pingpong" + s), "two sem_t", P("semaphore_pingpong" + s))
          for s, where in SFX],
    ], note="Uncontended cases in one process are CPU time (on a shared machine real time also "
       "counts whoever else ran); the hand-off between two processes is real time, a round trip "
       "(two wake-ups).", timing="CPU time in one process, real time in two",
       printed=["ratio of medians (ns;", "uncontended acquire + release"]),
    Area("shared_memory", "Shared memory", "sync", [
        Row("SharedMemory 4 KiB create + attach + close + unlink", M("mp_shm_cycle", "cpu"),
            M("floor_shm_cycle", "cpu"), "shm_open, ftruncate, mmap, shm_unlink",
            P("shm_cycle")),
        Row("the same against a floor reserving the pages too", M("mp_shm_cycle", "cpu"),
            M("floor_shm_cycle_fallocate", "cpu"), "the same + posix_fallocate"),
        Row("the same, the page written and read", M("mp_shm_cycle_touched", "cpu"),
            M("floor_shm_cycle_touched", "cpu"), "the raw floor, page written and read",
            P("shm_cycle_touched")),
    ], note="mp reserves a new segment's pages at creation (posix_fallocate), so that a full "
       "/dev/shm is an error there instead of a SIGBUS at the first write, as in CPython; the "
       "second floor pays for the same.", timing="CPU time"),
    Area("queue", "Queues", "queue", [
        Row("Queue 1×1, 8-byte items", M("mp_queue_1p1c_u64", "items_per_second"),
            M("floor_spsc_ring_1p1c_u64", "items_per_second"), "a plain SPSC ring",
            P("queue_1p1c_int"), kind="rate"),
        Row("Queue 1×1, 8-byte items, against Boost", M("mp_queue_1p1c_u64", "items_per_second"),
            M("boost_message_queue_1p1c_u64", "items_per_second"),
            "Boost.Interprocess message_queue", P("simplequeue_1p1c_int"), kind="rate"),
        Row("Queue 1×1, 100-byte strings", M("mp_queue_1p1c_string100", "items_per_second"),
            py=P("queue_1p1c_bytes100"), kind="rate"),
        Row("Queue 1×1, 1 MiB strings", M("mp_queue_1p1c_1MiB", "bytes_per_second"),
            M("floor_memcpy_1MiB", "bytes_per_second"), "memcpy of 1 MiB, one thread",
            kind="rate", unit="B/s"),
        Row("Queue 2×2, 8-byte items", M("mp_queue_2p2c_u64", "items_per_second"),
            M("mp_queue_1p1c_u64", "items_per_second"), "mp's Queue 1×1", kind="rate"),
        Row("ping-pong through two Queues", M("mp_queue_pingpong"),
            M("floor_futex_pingpong"), "two futex words (wake, wait)", P("queue_pingpong")),
        Row("put + get in one thread", M("mp_queue_put_get_one_thread", "cpu")),
    ], note="Items between a forked producer and this process. CPython's 8-byte items are ints; "
       "the Boost row's CPython column is SimpleQueue.", timing="real time (one thread: CPU "
       "time)", printed=["throughput ratio", "case (median of", "python_queue_pingpong"]),
    Area("pool", "Pool", "pool", [
        Row("apply round trip", M("mp_pool_apply_roundtrip"), M("floor_socketpair_roundtrip"),
            "a blocking socketpair round trip", P("pool_apply_roundtrip")),
        Row("the same, hot (PoolOptions::spin)", M("mp_pool_apply_roundtrip_hot"),
            M("floor_socketpair_roundtrip"), "a blocking socketpair round trip"),
        Row("executor submit().result() round trip", M("mp_executor_submit_roundtrip"),
            M("floor_socketpair_roundtrip"), "a blocking socketpair round trip",
            P("executor_submit_roundtrip")),
        Row("apply_async, chunksize 1, all in flight",
            M("mp_pool_apply_async_throughput", "tasks_per_s"),
            py=P("pool_apply_async_throughput"), kind="rate", unit="tasks/s"),
        Row("executor submit, all in flight", M("mp_executor_submit_throughput", "tasks_per_s"),
            py=P("executor_submit_throughput"), kind="rate", unit="tasks/s"),
        Row("map of 1M ints, automatic chunksize", M("mp_pool_map_1M", "items_per_s"),
            py=P("pool_map_1M"), kind="rate", unit="items/s"),
        Row("worker SIGKILLed -> its task's WorkerLost (median of 100)",
            M("mp_pool_workerlost_latency", "median_ms", 1e-3)),
    ], note="mp::Pool(2) and mp::ProcessPoolExecutor(2) against CPython's Pool(2) and "
       "ProcessPoolExecutor(2), a trivial int task. CPython hangs or breaks its executor when a "
       "worker is killed.", timing="real time",
       printed=["round trips: ratio of medians", "throughput (median of",
                "multiprocessing.Pool(2):"]),
    Area("managers", "Managers", "managers", [
        Row("dict get through a proxy", M("mp_manager_dict_get"),
            M("floor_socketpair_roundtrip"), "a blocking socketpair round trip",
            P("manager_dict_get")),
        Row("dict set through a proxy", M("mp_manager_dict_set"),
            M("floor_socketpair_roundtrip"), "a blocking socketpair round trip",
            P("manager_dict_set")),
        Row("dict get, against a floor that polls as mp does", M("mp_manager_dict_get"),
            M("floor_socketpair_busypoll30us_roundtrip"),
            "a socketpair round trip, each end polling 30 µs before it sleeps"),
        Row("proxy creation (a dict, then dropped)", M("mp_manager_proxy_create"),
            M("mp_manager_dict_get"), "one dict get", P("manager_proxy_create")),
        *[Row(f"dict gets from {n} client process{'es' if n > 1 else ''}",
              M(f"mp_manager_calls/clients:{n}", "calls_per_s"),
              M(f"floor_socketpair_calls/clients:{n}", "calls_per_s"),
              "blocking socketpair round trips, an echo process each",
              P(f"manager_calls/clients:{n}"), kind="rate", unit="calls/s")
          for n in MANAGER_CLIENTS],
        *[Row(f"pipelined dict gets (async_call, 32 in flight) from {n} client "
              f"process{'es' if n > 1 else ''}",
              M(f"mp_manager_pipelined_calls/clients:{n}", "calls_per_s"),
              py=P(f"manager_calls/clients:{n}"), kind="rate", unit="calls/s")
          for n in MANAGER_CLIENTS],
        Row("a client SIGKILLed holding a Lock -> the next acquire returns (CPython: never)",
            M("mp_manager_dead_holder_release")),
        Row("the server SIGKILLed -> a call blocked in it fails", M("mp_manager_dead_server_reported")),
        Row("counter: update_with (CPython: with lock: d[k] += 1)", M("mp_manager_update_with"),
            M("mp_manager_dict_get"), "one dict get", P("manager_locked_increment")),
        Row("the same, 2 client processes racing", M("mp_manager_update_with_2clients",
                                                     "increments_per_s"),
            py=P("manager_locked_increment_2clients"), kind="rate", unit="increments/s"),
    ], note="mp::Manager() against CPython's multiprocessing.Manager(), a dict of string keys and "
       "int values, the server a child process. The clients are child processes given the "
       "proxy as an argument, each calling for 0.3 s; a racing counter's final count is "
       "checked. mp's counter is one call run on the server, CPython's a Lock and a get and a "
       "set (four round trips).", timing="real time",
       printed=["manager calls: ratio of medians", "client processes calling d.get",
                "multiprocessing.Manager(), a dict proxy:"]),
    # MPI: an entry here once bench/ has it.
]

# README's summary: (area key, row label).
SUMMARY = [
    ("process_start", "forkserver (the default): start + join"),
    ("process_start", "spawn: start + join"),
    ("connection", "Pipe() round trip, 8 bytes, unpinned"),
    ("sync", "Lock acquire + release"),
    ("queue", "Queue 1×1, 8-byte items"),
    ("pool", "apply round trip"),
    ("pool", "map of 1M ints, automatic chunksize"),
    ("managers", "dict get through a proxy"),
]


# ---- reading the results

TIME_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


class Value:
    """A median and its spread (min, max) over the repetitions, in base units; kind time/rate."""

    def __init__(self, median, lo, hi, kind):
        self.median, self.lo, self.hi, self.kind = median, min(lo, hi), max(lo, hi), kind

    def to(self, kind):
        if kind == self.kind:
            return self
        return Value(1 / self.median, 1 / self.hi, 1 / self.lo, kind)  # per item <-> items/s


class Part:
    def __init__(self, results, name):
        self.name = name
        self.mp, self.py, self.context, self.errors = {}, {}, {}, []
        self.python = None
        path = os.path.join(results, name + ".json")
        if os.path.exists(path):
            with open(path) as f:
                doc = json.load(f)
            self.context = doc.get("context", {})
            for b in doc["benchmarks"]:
                n = benchmark_name(b["run_name"])
                if b.get("error_occurred"):
                    self.errors.append(f"{n}: {b.get('error_message', '')}")
                    continue
                entry = self.mp.setdefault(n, {})
                if b["run_type"] == "aggregate":
                    entry[b["aggregate_name"]] = b
                elif b.get("repetitions", 1) <= 1:
                    entry["single"] = b
        path = os.path.join(results, f"python_{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                doc = json.load(f)
            self.py, self.python = doc["cases"], doc["python"]

    def found(self):
        return bool(self.mp)

    def mp_value(self, m):
        entry = self.mp.get(m.name)
        if not entry:
            return None

        def field(b):
            if m.field in ("real", "cpu"):
                return b[m.field + "_time"] * TIME_SCALE[b["time_unit"]]
            return b[m.field] * m.scale if m.field in b else None

        if "median" in entry:
            vals = [field(entry.get(a, entry["median"])) for a in ("median", "min", "max")]
        elif "single" in entry:
            vals = [field(entry["single"])] * 3
        else:
            return None
        if None in vals or vals[0] <= 0:
            return None
        return Value(*vals, m.kind)

    def py_value(self, p):
        c = self.py.get(p.name)
        if not c or c["median"] <= 0:
            return None
        unit = c["unit"]
        if unit in TIME_SCALE:
            k = TIME_SCALE[unit]
            return Value(c["median"] * k, c["min"] * k, c["max"] * k, "time")
        k = 1 << 20 if unit == "MiB/s" else 1
        return Value(c["median"] * k, c["min"] * k, c["max"] * k, "rate")


# ---- formatting

def si(x, unit):
    """3 significant digits with an SI prefix: 0.00025 s -> 250 us, 1.2e7 /s -> 12.0 M/s."""
    if unit == "s":
        for k, p in ((1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
            if x >= k or k == 1e-9:
                return f"{x / k:.3g} {p}"
    if unit == "B/s":
        for k, p in ((1 << 30, "GiB/s"), (1 << 20, "MiB/s"), (1 << 10, "KiB/s"), (1, "B/s")):
            if x >= k or k == 1:
                return f"{x / k:.3g} {p}"
    for k, p in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if x >= k or k == 1:
            if unit == "/s":
                return f"{x / k:.3g} {p}/s"
            return f"{x / k:.3g} {p + ' ' if p else ''}{unit}"


def with_spread(v, row):
    if v is None:
        return "–"
    if v.lo == v.hi:
        return si(v.median, row.unit)
    return f"{si(v.median, row.unit)} <sub>({si(v.lo, row.unit)} – {si(v.hi, row.unit)})</sub>"


def cost_ratio(a, b):
    """How many times b's cost a pays (times: a/b; rates: b/a); > 1: a is slower."""
    if a is None or b is None:
        return None
    return a.median / b.median if a.kind == "time" else b.median / a.median


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


# ---- the machine

def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_date(parts):
    """When the run began: the first part's start, as Google Benchmark recorded it."""
    dates = sorted(p.context["date"] for p in parts.values() if p.context.get("date"))
    try:
        t = datetime.datetime.fromisoformat(dates[0]).astimezone(datetime.timezone.utc)
    except (IndexError, ValueError):
        t = datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def machine(results, build, parts):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    compiler = ""
    for c in [os.path.join(build or "", "CMakeCache.txt")]:
        if build and os.path.exists(c):
            with open(c) as f:
                for line in f:
                    if line.startswith("CMAKE_CXX_COMPILER:"):
                        compiler = sh(line.split("=", 1)[1].strip(), "--version").splitlines()[0]
                    if line.startswith("CMAKE_BUILD_TYPE:"):
                        compiler += f" ({line.split('=', 1)[1].strip()} build)"
            break
    if not compiler:
        compiler = (sh("c++", "--version").splitlines() or [""])[0]
    pys = sorted({p.python for p in parts.values() if p.python})
    loads = [p.context.get("load_avg") for p in parts.values() if p.context.get("load_avg")]
    try:  # tools/report.sh's, taken before the run
        with open(os.path.join(results, "commit")) as f:
            commit = f.read().strip()
    except OSError:
        commit = sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD")
        if sh("git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"):
            commit += " (with uncommitted changes)"
    return {
        "CPU": cpu or platform.processor() or "unknown",
        "cores": f"{os.cpu_count()} (this process may use {len(os.sched_getaffinity(0))})",
        "kernel": f"Linux {platform.release()}",
        "compiler": compiler or "unknown",
        "Python": ", ".join(f"CPython {v}" for v in pys) or "not run",
        "load average during the run (1 min, at each part's start)":
            ", ".join(f"{l[0]:.2f}" for l in loads) or "unknown",
        "date": run_date(parts),
        "commit": commit or "unknown",
    }


# ---- charts

class Chart:
    """A gnuplot script writing one SVG. Data inline (datablocks), so the script is whole."""

    def __init__(self, name, title, xlabel, ylabel, logx=False, logy=True):
        self.name, self.title, self.xlabel, self.ylabel = name, title, xlabel, ylabel
        self.logx, self.logy = logx, logy
        self.blocks, self.plots = [], []

    def block(self, rows):
        name = f"$d{len(self.blocks)}"
        self.blocks.append((name, rows))
        return name

    def script(self, svg):
        out = ["set terminal svg size 900,480 dynamic enhanced font 'sans,13' background '#ffffff'",
               f"set output '{svg}'", f"set title {json.dumps(self.title)} noenhanced",
               f"set xlabel {json.dumps(self.xlabel)} noenhanced",
               f"set ylabel {json.dumps(self.ylabel)} noenhanced",
               "set grid ytics mytics lc rgb '#dddddd'", "set key outside right top",
               "set border 3", "set tics nomirror"]
        if self.logx:
            out.append("set logscale x 2" if self.logx == 2 else "set logscale x")
        if self.logy:
            out.append("set logscale y")
            out.append("set format y '10^{%L}'")
        out += self.extra
        for name, rows in self.blocks:
            out.append(f"{name} << EOD")
            out += [" ".join(str(c) for c in r) for r in rows]
            out.append("EOD")
        out.append("plot " + ", \\\n     ".join(self.plots))
        return "\n".join(out) + "\n"

    extra = []


def bars(name, title, ylabel, groups, series, values, unit_scale):
    """Clustered bars with min-max error bars: groups along x, one bar a series (label,
    colour). values[(group, series)] -> Value or None."""
    ch = Chart(name, title, "", ylabel)
    ch.extra = ["set style data histogram", "set style histogram errorbars gap 1.5 lw 1",
                "set style fill solid 0.85 border -1", "set boxwidth 0.9", "set bars front",
                "set xtics scale 0 noenhanced", "set yrange [*:*]"]
    # A series or a group with no value at all (a case compiled out, CPython not run) is left
    # out: gnuplot refuses a histogram column without a valid point.
    series = [(s, c) for s, c in series if any(values.get((g, s)) for g in groups)]
    groups = [g for g in groups if any(values.get((g, s)) for s, _ in series)]
    rows = []
    for g in groups:
        row = [json.dumps(g)]
        for s, _ in series:
            v = values.get((g, s))
            # gnuplot cannot draw 0 on a log axis: a missing value is NaN, drawn as nothing.
            row += [f"{v.median * unit_scale:.6g} {v.lo * unit_scale:.6g} "
                    f"{v.hi * unit_scale:.6g}" if v else "NaN NaN NaN"]
        rows.append(row)
    d = ch.block(rows)
    for i, (s, colour) in enumerate(series):
        c = 2 + 3 * i
        ch.plots.append(f"{d} using {c}:{c + 1}:{c + 2}:xtic(1) title {json.dumps(s)} "
                        f"noenhanced lc rgb '{colour}'")
    return ch


def lines(name, title, xlabel, ylabel, curves, unit_scale, logx=True, xtics=None):
    """Curves with min-max error bars: curves = [(label, colour, dashed, [(x, Value)])];
    xtics: [(label, x)] to name the x axis's ticks."""
    ch = Chart(name, title, xlabel, ylabel, logx=logx)
    ch.extra = ["set key outside right top"]
    xs = [x for _, _, _, points in curves for x, v in points if v]
    if xs and min(xs) > 0:  # a margin either side, so the end points and their ticks show
        ch.extra.append(f"set xrange [{min(xs) / 1.25:g}:{max(xs) * 1.25:g}]")
    if xtics:
        ch.extra.append("set xtics (" + ", ".join(f"{json.dumps(t)} {x}" for t, x in xtics) + ")")
    for label, colour, dashed, points in curves:
        pts = [(x, v) for x, v in points if v]
        if not pts:
            continue
        d = ch.block([(x, f"{v.median * unit_scale:.6g}", f"{v.lo * unit_scale:.6g}",
                       f"{v.hi * unit_scale:.6g}") for x, v in pts])
        dt = "dt 2" if dashed else "dt 1"
        ch.plots.append(f"{d} using 1:2:3:4 with yerrorlines title {json.dumps(label)} "
                        f"noenhanced lc rgb '{colour}' lw 2 {dt} pt 7 ps 0.6")
    return ch


MP, FLOOR, FLOOR2, PY, PY2 = "#1f77b4", "#7f7f7f", "#bcbd22", "#d62728", "#ff9896"


def sweep_points(part, prefix, arg, py_prefix=None, field="real", kind_to=None):
    """[(x, Value)] of mp's (or with py_prefix, CPython's) cases named prefix/arg:X."""
    pts = []
    src = part.py if py_prefix else part.mp
    pat = re.compile(re.escape((py_prefix or prefix) + f"/{arg}:") + r"(\d+)$")
    for n in src:
        mt = pat.match(n)
        if not mt:
            continue
        v = part.py_value(P(n)) if py_prefix else part.mp_value(M(n, field))
        if v and kind_to:
            v = v.to(kind_to)
        pts.append((int(mt.group(1)), v))
    return sorted(pts)


def charts(parts):
    out = []
    ps = parts["process_start"]
    methods = ["forkserver", "spawn", "fork"]
    vals = {}
    for m in methods:
        vals[(m, "mp")] = ps.mp_value(M("mp_" + m))
        vals[(m, "floor")] = ps.mp_value(M("fork_exit" if m != "spawn" else "posix_spawn_self"))
        vals[(m, "CPython")] = ps.py_value(P(m))
    out.append(bars("start", "Start + join of a no-op child, per start method",
                    "time per start + join (ms, log scale)", methods,
                    [("mp", MP), ("floor", FLOOR), ("CPython", PY)], vals, 1e3))

    curves = []
    for m, colour in (("fork", "#2ca02c"), ("spawn", "#9467bd"), ("forkserver", MP)):
        curves.append((f"mp {m}", colour, False, sweep_points(ps, f"mp_{m}_parent_memory", "MiB")))
    curves.append(("fork + _exit (floor)", FLOOR, False,
                   sweep_points(ps, "fork_exit_parent_memory", "MiB")))
    for m, colour in (("fork", "#2ca02c"), ("spawn", "#9467bd"), ("forkserver", MP)):
        curves.append((f"CPython {m}", colour, True,
                       sweep_points(ps, "", "MiB", py_prefix=f"{m}_parent_memory")))
    ch = lines("start_vs_memory", "Start + join against the parent's memory",
               "memory the parent has touched (log scale)",
               "time per start + join (ms, log scale)", curves, 1e3, logx=2,
               xtics=[(size_label(m << 20), m) for m in (1, 4, 16, 64, 256, 1024, 4096)])
    out.append(ch)

    q = parts["queue"]
    groups = ["8-byte items", "100-byte items"]
    vals = {("8-byte items", "mp Queue"): q.mp_value(M("mp_queue_1p1c_u64", "items_per_second")),
            ("8-byte items", "SPSC ring (floor)"):
                q.mp_value(M("floor_spsc_ring_1p1c_u64", "items_per_second")),
            ("8-byte items", "Boost message_queue"):
                q.mp_value(M("boost_message_queue_1p1c_u64", "items_per_second")),
            ("8-byte items", "CPython Queue"): _rate(q.py_value(P("queue_1p1c_int"))),
            ("8-byte items", "CPython SimpleQueue"): _rate(q.py_value(P("simplequeue_1p1c_int"))),
            ("100-byte items", "mp Queue"):
                q.mp_value(M("mp_queue_1p1c_string100", "items_per_second")),
            ("100-byte items", "CPython Queue"): _rate(q.py_value(P("queue_1p1c_bytes100")))}
    out.append(bars("queue", "Queue, one producer and one consumer process",
                    "items per second (log scale)", groups,
                    [("mp Queue", MP), ("SPSC ring (floor)", FLOOR),
                     ("Boost message_queue", FLOOR2), ("CPython Queue", PY),
                     ("CPython SimpleQueue", PY2)], vals, 1))
    curves = [("mp Queue", MP, False, sweep_points(q, "mp_queue_1p1c_bytes", "bytes",
                                                     field="bytes_per_second")),
              ("memcpy, one thread (floor)", FLOOR, False,
               sweep_points(q, "floor_memcpy_bytes", "bytes", field="bytes_per_second")),
              ("CPython Queue", PY, True, [(x, _bytes_rate(v, x)) for x, v in sweep_points(
                  q, "", "bytes", py_prefix="queue_1p1c_bytes")])]
    out.append(lines("queue_vs_item_size", "Queue throughput against the item's size",
                     "item size (log scale)", "MiB per second (log scale)", curves,
                     1 / (1 << 20), logx=2,
                     xtics=[(size_label(n), n) for n in QUEUE_SIZES]))

    pl = parts["pool"]
    groups = ["Pool apply", "executor submit().result()"]
    vals = {("Pool apply", "mp"): pl.mp_value(M("mp_pool_apply_roundtrip")),
            ("Pool apply", "mp hot"): pl.mp_value(M("mp_pool_apply_roundtrip_hot")),
            ("Pool apply", "socketpair (floor)"): pl.mp_value(M("floor_socketpair_roundtrip")),
            ("Pool apply", "CPython"): pl.py_value(P("pool_apply_roundtrip")),
            ("executor submit().result()", "mp"): pl.mp_value(M("mp_executor_submit_roundtrip")),
            ("executor submit().result()", "mp hot"):
                pl.mp_value(M("mp_executor_submit_roundtrip_hot")),
            ("executor submit().result()", "socketpair (floor)"):
                pl.mp_value(M("floor_socketpair_roundtrip")),
            ("executor submit().result()", "CPython"):
                pl.py_value(P("executor_submit_roundtrip"))}
    out.append(bars("pool_roundtrip", "Round trip of a trivial task, 2 workers",
                    "time per round trip (µs, log scale)", groups,
                    [("mp", MP), ("mp hot", "#aec7e8"), ("socketpair (floor)", FLOOR),
                     ("CPython", PY)], vals, 1e6))
    groups = ["apply_async", "executor submit", "map of 1M ints"]
    vals = {("apply_async", "mp"): pl.mp_value(M("mp_pool_apply_async_throughput", "tasks_per_s")),
            ("apply_async", "CPython"): pl.py_value(P("pool_apply_async_throughput")),
            ("executor submit", "mp"):
                pl.mp_value(M("mp_executor_submit_throughput", "tasks_per_s")),
            ("executor submit", "CPython"): pl.py_value(P("executor_submit_throughput")),
            ("map of 1M ints", "mp"): pl.mp_value(M("mp_pool_map_1M", "items_per_s")),
            ("map of 1M ints", "CPython"): pl.py_value(P("pool_map_1M"))}
    out.append(bars("pool_throughput", "Pool throughput, 2 workers, trivial int tasks",
                    "tasks or items per second (log scale)", groups,
                    [("mp", MP), ("CPython", PY)], vals, 1))
    out.append(lines("pool_vs_tasks", "map throughput against the task count (automatic chunksize)",
                     "ints mapped (log scale)", "items per second (log scale)",
                     [("mp Pool", MP, False, sweep_points(pl, "mp_pool_map_tasks", "tasks",
                                                          field="items_per_s")),
                      ("CPython Pool", PY, True,
                       sweep_points(pl, "", "tasks", py_prefix="pool_map_tasks"))], 1))
    out.append(lines("pool_vs_chunksize", "map throughput against the chunksize (20,000 ints)",
                     "chunksize (ints per task, log scale)", "items per second (log scale)",
                     [("mp Pool", MP, False, sweep_points(pl, "mp_pool_map_chunksize",
                                                          "chunksize", field="items_per_s")),
                      ("CPython Pool", PY, True,
                       sweep_points(pl, "", "chunksize", py_prefix="pool_map_chunksize"))], 1,
                     logx=2))
    mg = parts["managers"]
    out.append(lines("managers_vs_clients", "Manager: dict gets per second, all clients together",
                     "client processes (log scale)", "calls per second (log scale)",
                     [("mp", MP, False, sweep_points(mg, "mp_manager_calls", "clients",
                                                     field="calls_per_s")),
                      ("socketpair round trips (floor)", FLOOR, False,
                       sweep_points(mg, "floor_socketpair_calls", "clients",
                                    field="calls_per_s")),
                      ("CPython", PY, True,
                       sweep_points(mg, "", "clients", py_prefix="manager_calls"))], 1, logx=2,
                     xtics=[(str(n), n) for n in MANAGER_CLIENTS]))
    return out


QUEUE_SIZES = [8, 64, 512, 4096, 32768, 262144, 2 << 20, 16 << 20, 64 << 20]  # bench/queue.cpp's


def size_label(n):
    for k, p in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= k:
            return f"{n // k} {p}"
    return f"{n} B"


def _rate(v):
    return v.to("rate") if v else None


def _bytes_rate(v, size):
    """CPython's ns per item of `size` bytes -> bytes per second."""
    if not v:
        return None
    r = v.to("rate")
    return Value(r.median * size, r.lo * size, r.hi * size, "rate")


CHART_TEXT = [
    ("start", "Start + join per start method against the floor and CPython"),
    ("start_vs_memory", "Start + join against the parent's memory (fork grows, spawn and "
                        "forkserver stay flat)"),
    ("queue", "Queue items per second against its floors and CPython"),
    ("queue_vs_item_size", "Queue throughput against the item's size"),
    ("pool_roundtrip", "Pool and executor round trip against the floor and CPython"),
    ("pool_throughput", "Pool and executor throughput against CPython"),
    ("pool_vs_tasks", "map throughput against the task count"),
    ("pool_vs_chunksize", "map throughput against the chunksize"),
    ("managers_vs_clients", "Manager dict gets per second against the client processes"),
]


# ---- the page

def table(area, part):
    lines_ = [f"| {area.title.lower()} | mp | floor | mp / floor | CPython | CPython / mp |",
              "| --- | --- | --- | --- | --- | --- |"]
    missing = []
    for r in area.rows:
        mp = part.mp_value(r.mp)
        if mp is None:
            missing.append(r.mp.name)
            continue
        mp = mp.to(r.kind)
        fl = part.mp_value(r.floor).to(r.kind) if r.floor and part.mp_value(r.floor) else None
        py = part.py_value(r.py).to(r.kind) if r.py and part.py_value(r.py) else None
        if r.py and py is None and part.py:
            missing.append("CPython " + r.py.name)
        floor = f"{with_spread(fl, r)}<br>{r.floor_label}" if fl else "–"
        lines_.append(f"| {r.label} | {with_spread(mp, r)} | {floor} | "
                      f"{fmt_ratio(cost_ratio(mp, fl))} | {with_spread(py, r)} | "
                      f"{fmt_ratio(cost_ratio(py, mp))} |")
    return lines_, missing


def page(parts, info, smoke, chart_dir_rel, rendered):
    out = ["# Performance", ""]
    if smoke:
        out += ["> **SMOKE RUN — NOT A MEASUREMENT.** Written by `sh tools/report.sh --smoke`: "
                "every case ran a few iterations only, to check that it runs. Nothing below "
                "says how fast anything is.", ""]
    out += ["Written by `sh tools/report.sh` from one run of every benchmark in `bench/` and "
            "CPython's equivalents (`bench/python_*.py`) side by side; run it to get this page "
            "for your machine. Do not edit it by hand.", "",
            "**How to read it.** Each figure is the median of repeated runs (5 for most cases, "
            "each of a fixed minimum time; CPython's: 3 to 5 batches), with the spread of those "
            "runs, min – max, in small print and as error bars in the charts. Ratios are taken "
            "between medians **of this one run**, so a change of load on the machine hits both "
            "sides alike; absolute numbers from runs on other days are not comparable. "
            "*mp / floor* is how many times the floor's cost mp pays (times: mp's over the "
            "floor's; rates: the floor's over mp's): 1× is as fast as the operating system "
            "allows. *CPython / mp* is how many times slower CPython's multiprocessing is. "
            "A dash: not measured in this run (a case compiled out, e.g. Boost missing, or "
            "filtered).", "", "## The machine", "",
            "| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in info.items()]
    out.append("")
    problems = []
    for a in AREAS:
        part = parts[a.part]
        out += [f"## {a.title}", ""]
        if a.note:
            out += [a.note + f" Timed in {a.timing}." if a.timing else a.note, ""]
        if not part.found():
            out += ["Not run.", ""]
            problems.append(f"{a.title}: no {a.part}.json")
            continue
        t, missing = table(a, part)
        out += t + [""]
        problems += [f"{a.title}: no {m}" for m in missing]
    out += ["## Charts", ""]
    for name, text in CHART_TEXT:
        if name in rendered:
            out += [f"![{text}]({chart_dir_rel}/{name}.svg)", ""]
    if not rendered:
        out += ["(Not rendered: gnuplot is not installed; `sh tools/report.sh` installs it.)", ""]
    return "\n".join(out), problems


def summary(parts):
    out = ["| | mp | against the floor | CPython |", "| --- | --- | --- | --- |"]
    areas = {a.key: a for a in AREAS}
    for key, label in SUMMARY:
        a = areas[key]
        part = parts[a.part]
        r = next(r for r in a.rows if r.label == label)
        mp = part.mp_value(r.mp)
        if not mp:
            continue
        mp = mp.to(r.kind)
        fl = part.mp_value(r.floor) if r.floor else None
        py = part.py_value(r.py) if r.py else None
        fl, py = fl and fl.to(r.kind), py and py.to(r.kind)
        against = ""
        if fl and r.kind == "time":
            against = f"{fmt_ratio(cost_ratio(mp, fl))} {r.floor_label}"
        elif fl:  # a rate's ratio as a time's would mislead: say which side is faster
            c = cost_ratio(mp, fl)
            against = (f"{r.floor_label}: {fmt_ratio(c)} faster" if c >= 1 else
                       f"{fmt_ratio(1 / c)} faster than {r.floor_label}")
        cpy = ""
        if py:
            slower = cost_ratio(py, mp)
            cpy = f"{si(py.median, r.unit)} (" + (f"{fmt_ratio(slower)} slower)" if slower >= 1 else
                                                   f"{fmt_ratio(1 / slower)} faster)")
        out.append(f"| {label} | {si(mp.median, r.unit)} | {against} | {cpy} |")
    return "\n".join(out)


BEGIN = "<!-- performance summary: tools/report.sh writes from here -->"
END = "<!-- performance summary: to here -->"


def rewrite_readme(path, block, info):
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{path}: no {BEGIN} ... {END} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = (f"\nFrom `sh tools/report.sh` on {info['date']}, commit {info['commit']} "
            f"({info['CPU']}, {info['cores'].split()[0]} cores); medians of one run, "
            f"ratios within it. Every case, the spread and the charts: "
            f"[`docs/performance.md`](docs/performance.md).\n\n{block}\n")
    with open(path, "w") as f:
        f.write(head + BEGIN + body + END + tail)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="bench/run.sh's OUT directory")
    ap.add_argument("--build", help="the build tree the benchmarks came from (its compiler)")
    ap.add_argument("--page", required=True, help="the markdown page to write")
    ap.add_argument("--charts", required=True, help="directory for the SVG charts")
    ap.add_argument("--readme", help="README.md whose summary block to rewrite")
    ap.add_argument("--log", help="bench/run.sh's output, checked in smoke mode")
    ap.add_argument("--smoke", action="store_true", help="label the page; check the run")
    args = ap.parse_args()

    parts = {name: Part(args.results, name) for name in
             dict.fromkeys(a.part for a in AREAS)}
    info = machine(args.results, args.build, parts)
    os.makedirs(args.charts, exist_ok=True)
    gnuplot = shutil.which("gnuplot")
    rendered = set()
    for ch in charts(parts):
        svg = os.path.join(args.charts, ch.name + ".svg")
        gp = os.path.join(args.results, ch.name + ".gp")
        if not ch.plots:
            continue
        with open(gp, "w") as f:
            f.write(ch.script(svg))
        if gnuplot:
            r = subprocess.run([gnuplot, gp], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"gnuplot {gp} failed:\n{r.stderr}")
            rendered.add(ch.name)
    rel = os.path.relpath(args.charts, os.path.dirname(os.path.abspath(args.page)))
    text, problems = page(parts, info, args.smoke, rel, rendered)
    with open(args.page, "w") as f:
        f.write(text)
    print(f"wrote {args.page}" + (f" and {len(rendered)} charts in {args.charts}" if rendered
                                  else " (charts not rendered: no gnuplot; scripts in "
                                       f"{args.results}/*.gp)"))
    if args.readme:
        rewrite_readme(args.readme, summary(parts), info)
        print(f"rewrote the summary block of {args.readme}")
    print()
    print(summary(parts))

    errors = [e for p in parts.values() for e in p.errors]
    for e in errors:
        print(f"case failed: {e}", file=sys.stderr)
    if args.smoke:
        # What CI asks of the smoke mode: every part ran and printed its tables, no case failed,
        # every row of the page found its cases. Speeds are not looked at.
        problems += [f"{p.name}: no python_{p.name}.json" for p in parts.values() if not p.py]
        if args.log:
            with open(args.log, errors="replace") as f:
                log = f.read()
            for a in AREAS:
                problems += [f"{a.part}: its output has no table starting '{h}'"
                             for h in a.printed if not re.search("^ *" + re.escape(h), log, re.M)]
        # Cases that exist only where the machine has them (Boost's headers, an executor).
        optional = {"boost_message_queue_1p1c_u64"}
        problems = [p for p in problems if not any(o in p for o in optional)]
        for p in problems:
            print(f"smoke check: {p}", file=sys.stderr)
        if problems or errors:
            sys.exit(f"smoke check failed: {len(problems)} missing, {len(errors)} failed cases")
        print(f"\nsmoke check passed: {sum(len(p.mp) for p in parts.values())} mp cases and "
              f"{sum(len(p.py) for p in parts.values())} CPython cases ran, every table printed")
    elif errors:
        sys.exit(f"{len(errors)} cases failed")


if __name__ == "__main__":
    main()
