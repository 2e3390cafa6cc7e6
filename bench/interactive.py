"""Interactive runs: two programs in a dialogue of K exchanges, as root.

    python bench/interactive.py [RUNS] [EXCHANGES]

Rows, each measured in this run: the peer (the same two programs as plain subprocesses joined
by pipes: no jail, the floor), isol8r.run_connected with direct pipes, and with every pipe
relayed through the caller (transcript=0). Per run of K exchanges: wall p50/p99 ms and the
ratio to the peer's p50; the p50 of a run of no exchange (start and end: both programs'
start-up, and the jails'); one exchange's cost, (p50 at K - p50 at 0) / K; and the machine's CPU
ms per run (all cores, from /proc/stat: other work on the machine counts too).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import isol8r  # noqa: E402

PY = "/usr/bin/python3"
INTERACTOR = """
import sys
k = int(sys.argv[1])
w, r = sys.stdout, sys.stdin
for i in range(k):
    w.write(f"{i}\\n"); w.flush()
    if int(r.readline()) != i + 1:
        sys.exit(1)
"""
SOLUTION = """
import sys
w = sys.stdout
for line in sys.stdin:
    w.write(f"{int(line) + 1}\\n"); w.flush()
"""


def busy_ms() -> float:
    """CPU time of all cores so far (user, nice, system, irq, softirq), in ms."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6)) * 1000 / os.sysconf("SC_CLK_TCK")


def peer(k: int) -> None:
    a_r, b_w = os.pipe()
    b_r, a_w = os.pipe()
    inter = subprocess.Popen([PY, "-c", INTERACTOR, str(k)], stdin=a_r, stdout=a_w)
    sol = subprocess.Popen([PY, "-c", SOLUTION], stdin=b_r, stdout=b_w)
    for fd in (a_r, b_w, b_r, a_w):
        os.close(fd)
    assert inter.wait() == 0 and sol.wait() == 0


def jailed(k: int, transcript: int | None) -> None:
    r = isol8r.run_connected([[PY, "-c", INTERACTOR, str(k)], [PY, "-c", SOLUTION]],
                             transcript=transcript)
    assert r.verdict == "ok", r.reason


def measure(fn: object, runs: int) -> tuple[list[float], float]:
    fn()  # type: ignore[operator]  # warm: the fork server, its warm jails, the page cache
    walls = []
    cpu0 = busy_ms()
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        walls.append((time.perf_counter() - t) * 1000)
    return walls, (busy_ms() - cpu0) / runs


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    rows = [("peer: subprocess + pipes", peer),
            ("isol8r run_connected, direct pipes", lambda n: jailed(n, None)),
            ("isol8r run_connected, relayed", lambda n: jailed(n, 0))]
    print(f"interactive: runs of 0 and {k} exchanges, {runs} runs each; per exchange: "
          f"(p50 at {k} - p50 at 0) / {k}")
    base = None
    for name, fn in rows:
        idle, _ = measure(lambda: fn(0), runs)
        walls, cpu = measure(lambda: fn(k), runs)
        p50 = statistics.median(walls)
        base = base or p50
        each = (p50 - statistics.median(idle)) * 1000 / k
        print(f"  {name:36} p50 {p50:7.1f} ms  p99 {p99(walls):7.1f} ms  x{p50 / base:5.2f}  "
              f"start {statistics.median(idle):6.1f} ms  {each:6.1f} us/exchange  "
              f"cpu {cpu:7.1f} ms/run")


if __name__ == "__main__":
    main()
