"""Measuring tools: repeated timings summarised as median and spread, and Python child
processes run with their own peak memory.

Every measured run happens in a fresh child process. That is how users run dcx (one
``dcx-infer`` per night), and it keeps one run's caches and thread pools out of the next.

Peak memory is the child's ``VmHWM`` (resident-set high-water mark of its address space),
read by the child itself at exit through a probe prepended to its code. The kernel's
``ru_maxrss`` for a child (``wait4``, ``RUSAGE_CHILDREN``) cannot be used: it starts from the
parent's resident set at fork time, so a benchmark process holding PyTorch (~0.5 GB) would
lend every child that much.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

PEAK_FILE_ENV = "DCX_BENCH_PEAK_FILE"

#: Prepended to a child's code: at interpreter exit, write VmHWM (bytes) to $DCX_BENCH_PEAK_FILE.
PEAK_PROBE = f"""\
import atexit as _atexit
def _dcx_bench_peak():
    import os
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        with open(os.environ["{PEAK_FILE_ENV}"], "w") as out:
            out.write(str(kib * 1024))
    except (OSError, KeyError, StopIteration):
        pass
_atexit.register(_dcx_bench_peak)
"""


def summarise(values: list[float]) -> dict:
    """Median, min, max and quartiles of repeated measurements (n=1 allowed)."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"n": len(ordered), "median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "q1": q1, "q3": q3, "values": values}


#: Progress lines of child commands (see dcx.core.progress) that the benchmark passes on.
FORWARDED_PROGRESS = ("dcx-infer: ",)


@dataclass
class ChildRun:
    """Outcome of one child process."""

    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int | None  # the child's own high-water mark (None where /proc is missing)
    output: str


def python_child(code: str, *args) -> list[str]:
    """A command running ``code`` (with the peak-memory probe) in this interpreter."""
    return [sys.executable, "-c", PEAK_PROBE + code, *(os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args)]


def run_child(command: list[str]) -> ChildRun:
    """Run a :func:`python_child` command to completion: exit code, wall time, peak memory, output."""
    with tempfile.TemporaryDirectory(prefix="dcx-bench-peak-") as tmp:
        peak_file = os.path.join(tmp, "peak")
        env = {**os.environ, PEAK_FILE_ENV: peak_file}
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        lines = []
        for raw in proc.stdout:  # a long child run shows its progress lines as they come
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            if line.startswith(FORWARDED_PROGRESS):
                sys.stderr.write(f"  {line}")
        proc.wait()
        wall = time.perf_counter() - start
        try:
            with open(peak_file, encoding="ascii") as f:
                peak = int(f.read())
        except (OSError, ValueError):
            peak = None
    return ChildRun(command, proc.returncode, wall, peak, "".join(lines))
