"""What the fallbacks of issue 19 cost, as root: a run of /bin/true through the library (warm
jails of the fork server) in the default jail, the bare jail (--bare: Landlock, seccomp, no
namespace), and with the outer /proc bound (--proc bind), each against the default jail
measured in the same run; and the clone(2) fallback against clone3 (a child in new
namespaces that exits at once).

    python bench/environments.py [ROUNDS]

Rows: p50 and p99 wall ms per run (the caller's view), the rate (runs/s), CPU ms per run of
the caller and its fork server; each with its ratio to the peer.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src")]

import isol8r  # noqa: E402
from isol8r.sys import linux  # noqa: E402


def server_cpu() -> float:
    """CPU seconds of this process and its children (the fork server included once reaped)
    plus the live fork server's, read from /proc."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(rounds: int, run: Callable[[], Any]) -> dict[str, float]:
    for _ in range(5):
        run()
    times = []
    cpu0, t0 = server_cpu(), time.monotonic()
    for _ in range(rounds):
        t = time.monotonic()
        run()
        times.append(time.monotonic() - t)
    wall, cpu = time.monotonic() - t0, server_cpu() - cpu0
    times.sort()
    return {"p50": statistics.median(times) * 1e3, "p99": times[int(len(times) * 0.99)] * 1e3,
            "rate": rounds / wall, "cpu": cpu / rounds * 1e3}


def row(name: str, m: dict[str, float], peer: dict[str, float]) -> None:
    print(f"{name:28} p50 {m['p50']:6.2f} ms ({m['p50'] / peer['p50']:.2f}x)  "
          f"p99 {m['p99']:6.2f} ms ({m['p99'] / peer['p99']:.2f}x)  "
          f"{m['rate']:7.1f}/s ({m['rate'] / peer['rate']:.2f}x)  "
          f"CPU {m['cpu']:5.2f} ms ({m['cpu'] / peer['cpu']:.2f}x)")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    if os.geteuid() != 0:
        sys.exit("bench/environments.py: run as root")
    peer = measure(rounds, lambda: isol8r.run(["/bin/true"]))
    row("default jail (peer)", peer, peer)
    row("--bare (Landlock)", measure(rounds, lambda: isol8r.run(["/bin/true"], bare=True)), peer)
    row("--proc bind", measure(rounds, lambda: isol8r.run(["/bin/true"], proc="bind")), peer)
    # the clone(2) fallback against clone3: a child in new namespaces that exits at once
    flags = sum((linux.CLONE_NEWUSER, linux.CLONE_NEWPID, linux.CLONE_NEWNS, linux.CLONE_NEWNET,
                 linux.CLONE_NEWIPC, linux.CLONE_NEWUTS))

    def clone_once(call: Callable[[int], tuple[int, int]]) -> None:
        pid, pidfd = call(flags)
        if pid == 0:
            os._exit(0)
        os.close(pidfd)
        os.waitpid(pid, 0)
    n = max(rounds // 2, 20)
    c3 = measure(n, lambda: clone_once(linux.clone3))
    row("clone3 + exit (peer)", c3, c3)
    row("clone(2) + exit (fallback)", measure(n, lambda: clone_once(linux.clone)), c3)

if __name__ == "__main__":
    main()
