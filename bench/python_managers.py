#!/usr/bin/env python3
"""CPython's multiprocessing.Manager() doing what bench/managers does.

One manager, default start method: a dict proxy's d["k"] and d["s"] = i round trips (median of
batches of ~0.1 s, real time); proxy creation, manager.dict() then the proxy dropped; calls/s
with 1, 2 and 4 client processes, each given the proxy as its argument and reading d["k"] for a
fixed window once all are connected (a manager Barrier); a counter as CPython writes it,
`with lock: d[k] += 1` (a manager Lock), alone and with 2 clients racing (the final count
checked). Given the JSON that bench/managers wrote (--benchmark_out=FILE
--benchmark_out_format=json), it prints mp's number for the same measurement, how many times
faster mp is, and the issue's targets.

    python3 bench/python_managers.py [-r 5] [--mp-json FILE] [--json FILE] [--smoke]
"""
import argparse
import multiprocessing
import sys
import time

from results import Results, add_arguments, mp_results

CLIENTS = [1, 2, 4]
WINDOW_S = 0.3  # each client's calling time, as bench/managers' window
RACE = 2_000  # locked increments per racing client: CPython does ~5 k/s
R = Results()


def median_ns(name, fn, reps, batch_s=0.1):
    """Median over `reps` batches (~batch_s each) of the real nanoseconds per call of fn's loop
    body; fn(n) runs the body n times. Kept in R as `name`."""
    def timed(n):
        t0 = time.perf_counter()
        fn(n)
        return time.perf_counter() - t0

    n = 1
    while (t := timed(n)) < batch_s / 4:  # warm-up, and the batch size
        n *= 2
    n = max(1, int(n * batch_s / t))
    return R.add(name, (timed(n) / n * 1e9 for _ in range(reps)), "ns")


def get_loop(d, start, done, window):
    """A client process: connected (its first call), waits for the others, then reads d["k"]
    for `window` seconds; says how many calls it made."""
    d["k"]
    start.wait()
    clock = time.perf_counter
    end = clock() + window
    n = 0
    while clock() < end:
        d["k"]
        n += 1
    done.put(n)


def race(d, lock, start, done, calls):
    d["k"]
    start.wait()
    for _ in range(calls):
        with lock:
            d["race"] += 1
    done.put(calls)


def run_clients(manager, target, n, args, done, parties):
    """Starts n clients target(*args[0], start, done, *args[1]); returns (processes, barrier)."""
    start = manager.Barrier(parties)
    ps = [multiprocessing.Process(target=target, args=(*args[0], start, done, *args[1]))
          for _ in range(n)]
    for p in ps:
        p.start()
    return ps, start


def collect(ps, done):
    total = sum(done.get(timeout=60) for _ in ps)
    for p in ps:
        p.join(60)
        if p.exitcode != 0:
            sys.exit(f"a client process failed (exit code {p.exitcode})")
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-r", type=int, default=5, help="batches, ~0.1 s each, per round trip")
    ap.add_argument("--mp-json", help="bench/managers' --benchmark_out JSON, to compare")
    add_arguments(ap)
    args = ap.parse_args()
    global WINDOW_S, RACE
    reps = 5
    if args.smoke:
        args.r, reps, WINDOW_S, RACE = 1, 1, 0.02, 50
    mp = mp_results(args.mp_json) if args.mp_json else {}
    print(f"CPython {sys.version.split()[0]} ({sys.executable}), start method "
          f"{multiprocessing.get_start_method()}; real time")

    def roundtrip(label, py_ns, key, note=""):
        line = f"  {label:<40} python {py_ns / 1e3:9.1f} us"
        if key in mp:
            m = mp[key][0]
            line += f"   mp {m / 1e3:9.1f} us   mp is {py_ns / m:6.1f}x faster {note}"
        else:
            line += f"   mp: no {key} in this run"
        print(line.rstrip(), flush=True)

    def rate(label, py, key, counter, unit, target=None):
        line = f"  {label:<40} python {py / 1e3:9.2f} k {unit}"
        if key in mp and counter in mp[key][1]:
            m = mp[key][1][counter]
            line += f"   mp {m / 1e3:9.2f} k {unit}   mp is {m / py:6.1f}x faster"
            if target:
                line += f"  (>= {target}x {'ok' if m / py >= target else 'MISSED'})"
            floor = key.replace("mp_manager_", "floor_socketpair_")
            if target and floor in mp and counter in mp[floor][1]:
                f = mp[floor][1][counter]
                line += f"; the floor {f / 1e3:.2f} k = {f / py:.1f}x CPython"
        else:
            line += f"   mp: no {key} in this run"
        print(line, flush=True)

    with multiprocessing.Manager() as manager:
        d = manager.dict()
        d["k"] = 1
        lock = manager.Lock()
        done = manager.Queue()

        def get_n(n):
            for _ in range(n):
                d["k"]

        def set_n(n):
            for i in range(n):
                d["s"] = i

        def create_n(n):
            for _ in range(n):
                manager.dict()  # dropped at once: its decref is the proxy's end

        def locked_increment_n(n):
            d["n"] = 0
            for _ in range(n):
                with lock:
                    d["n"] += 1
            if d["n"] != n:
                sys.exit("with lock: d[k] += 1 lost an update")

        print("multiprocessing.Manager(), a dict proxy:")
        get_ns = median_ns("manager_dict_get", get_n, args.r)
        roundtrip('d["k"] round trip', get_ns, "mp_manager_dict_get", "(mp: <= 1.2x the floor)")
        roundtrip('d["s"] = i round trip', median_ns("manager_dict_set", set_n, args.r),
                  "mp_manager_dict_set")
        create_ns = median_ns("manager_proxy_create", create_n, args.r)
        roundtrip("manager.dict(), then dropped", create_ns, "mp_manager_proxy_create")
        roundtrip("with lock: d[k] += 1 (mp: update_with)",
                  median_ns("manager_locked_increment", locked_increment_n, args.r),
                  "mp_manager_update_with")
        if "floor_socketpair_roundtrip" in mp:
            fl = mp["floor_socketpair_roundtrip"][0]
            print(f"  against mp's run's socketpair round trip ({fl / 1e3:.1f} us): CPython's get "
                  f"{get_ns / fl:.2f}x (issue: ~1.5-2x), its proxy creation "
                  f"{create_ns / get_ns:.0f}x its get")

        print(f"client processes reading d[\"k\"] for {WINDOW_S:.2f} s each (median of {reps}):")
        for n in CLIENTS:
            rates = []
            for _ in range(reps):
                ps, _start = run_clients(manager, get_loop, n, ((d,), (WINDOW_S,)), done, n)
                rates.append(collect(ps, done) / WINDOW_S)
            name = f"manager_calls/clients:{n}"
            cpython = R.add(name, rates, "calls/s")
            rate(f"{n} client{'s' if n > 1 else ''}", cpython, "mp_" + name,
                 "calls_per_s", "calls/s", target=10)
            rate(f"{n} client{'s' if n > 1 else ''}, mp pipelined (async_call, 32 in flight)",
                 cpython, f"mp_manager_pipelined_calls/clients:{n}", "calls_per_s", "calls/s",
                 target=10)

        rates = []
        for _ in range(reps):
            d["race"] = 0
            # This process is the third party: its wait returns when both clients are connected.
            ps, start = run_clients(manager, race, 2, ((d, lock), (RACE,)), done, 3)
            start.wait()
            t0 = time.perf_counter()
            total = collect(ps, done)
            rates.append(total / (time.perf_counter() - t0))
            if d["race"] != 2 * RACE or total != 2 * RACE:
                sys.exit(f"2 clients racing: count {d['race']}, not {2 * RACE}")
        rate(f"2 clients racing, lock + d[k] += 1 ({RACE} each; mp: update_with)",
             R.add("manager_locked_increment_2clients", rates, "increments/s"),
             "mp_manager_update_with_2clients", "increments_per_s", "incr/s")
    R.write(args.json)


if __name__ == "__main__":
    main()
