"""Pinning the two processes of a CPython benchmark, shared by python_connection.py and
python_sync.py (the same placements as bench/pinning.hpp)."""
import os


class Placement:
    """none: the scheduler's choice; same: both on the CPU the parent runs on; split: the parent
    on the first allowed CPU, the child (given child_cpu) on the second."""

    def __init__(self, how):
        self.how, self.old, self.child_cpu = how, None, None

    def __enter__(self):
        if self.how != "none":
            self.old = os.sched_getaffinity(0)
            cpus = sorted(self.old)
            if self.how == "same":
                os.sched_setaffinity(0, {os.sched_getcpu() if hasattr(os, "sched_getcpu")
                                         else cpus[0]})
            elif len(cpus) >= 2:
                os.sched_setaffinity(0, {cpus[0]})
                self.child_cpu = cpus[1]
            else:
                return None
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            os.sched_setaffinity(0, self.old)
