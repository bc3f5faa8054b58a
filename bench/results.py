"""What the CPython scripts (bench/python_*.py) write for tools/report.py, beside the tables they
print: each case's median, min and max over its repetitions, and their unit. Also the two flags
every script takes: --json FILE and --smoke (a few iterations of each case, as bench/run.sh's
smoke mode asks: it checks that a case runs and prints, and measures nothing)."""
import json
import statistics
import sys


def add_arguments(ap):
    ap.add_argument("--json", metavar="FILE",
                    help="also write every case's median, min and max to FILE (tools/report.py)")
    ap.add_argument("--smoke", action="store_true",
                    help="a few iterations of each case: that it runs, not how fast")


class Results:
    def __init__(self):
        self.cases = {}

    def add(self, name, samples, unit):
        """Keeps the repetitions' median, min and max under `name` (unit: "ns", "us", "ms" for
        times, "items/s" or "tasks/s" for rates); returns the median, for the printed table."""
        samples = list(samples)
        median = statistics.median(samples)
        self.cases[name] = {"median": median, "min": min(samples), "max": max(samples),
                            "repetitions": len(samples), "unit": unit}
        return median

    def write(self, path):
        if not path:
            return
        with open(path, "w") as f:
            json.dump({"python": sys.version.split()[0], "executable": sys.executable,
                       "cases": self.cases}, f, indent=1)
            f.write("\n")


def benchmark_name(run_name):
    """A case's name in Google Benchmark's JSON without the suffixes its options add
    (mp_queue_1p1c_bytes/bytes:8/min_time:0.200/repeats:5/real_time -> mp_queue_1p1c_bytes/
    bytes:8): the name tools/report.py and these scripts know it by."""
    options = ("min_time:", "min_warmup_time:", "iterations:", "repeats:", "threads:")
    return "/".join(p for p in run_name.split("/")
                    if p not in ("real_time", "manual_time") and not p.startswith(options))


def mp_results(path):
    """By benchmark name: (median real time in ns, {counter: value}) from Google Benchmark's
    JSON (the median aggregate, or the single run of a case without repetitions)."""
    scale = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
    skip = {"name", "family_index", "per_family_instance_index", "run_name", "run_type",
            "repetitions", "repetition_index", "threads", "iterations", "real_time", "cpu_time",
            "time_unit", "aggregate_name", "aggregate_unit", "error_occurred", "error_message"}
    out = {}
    with open(path) as f:
        for b in json.load(f)["benchmarks"]:
            if b.get("error_occurred"):
                continue
            if b["run_type"] == "aggregate" and b.get("aggregate_name") != "median":
                continue
            if b["run_type"] == "iteration" and b.get("repetitions", 1) > 1:
                continue
            counters = {k: v for k, v in b.items() if k not in skip}
            out[benchmark_name(b["run_name"])] = (b["real_time"] * scale[b["time_unit"]], counters)
    return out


def available_bytes():
    """MemAvailable from /proc/meminfo (0 if unknown): caps the parent-memory sweep."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
