"""`make bench`, sandboxes: a command in a sandbox that stays against a fresh jail, one run.

Rows (peers measured interleaved in this run, ratios against them):
  1. /bin/true: sb.run p50/p99 against a fresh isol8r.run and a fresh nsjail.
  2. "compile once, run 100 tests": a C program compiled once in the sandbox, then 100 runs,
     each with its own time and memory limit and verdict: jails (runs) per second and the
     machine's CPU ms per run, against fresh nsjail jails and fresh isol8r jails running the
     same program (compiled on the host for them) with the same limits.
  3. Sandbox creation p50 against a fresh isol8r.run.
Peers are found and run as bench/run.py does (imported, not copied). No figure is a pass/fail
test: the table is the result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import run as peers  # noqa: E402  (bench/run.py: find_nsjail, nsjail, stats, _busy)

import isol8r  # noqa: E402

# the test program: reads n, sums 1..n*10000 (under a ms), prints it; n=0 loops forever (a
# time-limit verdict), n<0 allocates 256 MiB (a memory-limit verdict)
SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    long n = 0;
    if (scanf("%ld", &n) != 1) return 2;
    if (n == 0) for (volatile long i = 0;; i++) {}
    if (n < 0) { char *p = malloc(256 << 20); memset(p, 1, 256 << 20); return p[4096]; }
    unsigned long s = 0;
    for (long i = 0; i < n * 10000; i++) s += (unsigned long)i ^ (s >> 3);
    printf("%lu\n", s);
    return 0;
}
"""
TESTS = 100
TIME_LIMIT, MEMORY = 2.0, "64M"


def case(i: int) -> bytes:
    """The input of test i: mostly quick runs, one time-limit and one memory-limit verdict."""
    return b"-1\n" if i == 75 else b"%d\n" % (1 + i % 5)


def timed(f: Callable[[], object]) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def latency(sb: isol8r.Sandbox, nsj: str | None, rounds: int) -> dict[str, dict[str, float]]:
    ps: dict[str, Callable[[], object]] = {
        "sandbox sb.run": lambda: sb.run(["/bin/true"]),
        "isol8r.run (fresh jail)": lambda: isol8r.run(["/bin/true"]),
    }
    if nsj:
        ps["nsjail (fresh jail)"] = lambda: peers.run(peers.nsjail(nsj, ["/bin/true"]))
    times: dict[str, list[float]] = {k: [] for k in ps}
    for f in ps.values():
        f()  # warm-up
    for _ in range(rounds):
        for name, f in ps.items():
            times[name].append(timed(f))
    return {name: peers.stats(xs) for name, xs in times.items()}


def judge(sb: isol8r.Sandbox, nsj: str | None, work: Path) -> dict[str, dict[str, float]]:
    """Compile once, run TESTS tests with their own limits: runs/s, CPU ms per run, verdicts."""
    sb.write_file("/tmp/sum.c", SOURCE)
    t = time.perf_counter()
    cc = sb.run(["/usr/bin/gcc", "-O2", "-o", "/tmp/sum", "/tmp/sum.c"], capture_output=True,
                timeout=60)
    compile_s = time.perf_counter() - t
    if cc.exit_code != 0:
        raise SystemExit(f"gcc in the sandbox failed: {cc.stderr[-500:]!r}")
    exe = work / "sum"
    (work / "sum.c").write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(work / "sum.c")], check=True)
    exe.chmod(0o755)
    work.chmod(0o755)

    def in_sandbox(i: int) -> str:
        return sb.run(["/tmp/sum"], input=case(i), capture_output=True, timeout=TIME_LIMIT,
                      memory=MEMORY).verdict

    def fresh_isol8r(i: int) -> str:
        return isol8r.run(["/t/sum"], ro_bind=[f"{work}:/t"], input=case(i), capture_output=True,
                          timeout=TIME_LIMIT, memory=MEMORY).verdict

    def fresh_nsjail(i: int) -> str:
        assert nsj is not None
        cmd = [nsj, "-Mo", "--really_quiet", "-u", "65534", "-g", "65534", "-R", "/usr",
               "-R", "/lib", "-R", "/lib64", "-R", "/bin", "-R", f"{work}:/t", "-T", "/tmp",
               "-t", str(int(TIME_LIMIT)), "--rlimit_as", "64", "--", "/t/sum"]
        p = subprocess.run(cmd, input=case(i), capture_output=True)
        return "ok" if p.returncode == 0 else f"status {p.returncode}"

    ps: dict[str, Callable[[int], str]] = {"sandbox (compiled once)": in_sandbox,
                                           "isol8r fresh jails": fresh_isol8r}
    if nsj:
        ps["nsjail fresh jails"] = fresh_nsjail
    out: dict[str, dict[str, float]] = {}
    for name, f in ps.items():
        f(1)  # warm-up
        busy, t = peers._busy(), time.perf_counter()
        verdicts = [f(i) for i in range(TESTS)]
        wall = time.perf_counter() - t
        out[name] = {"runs_per_s": TESTS / wall, "cpu_ms_per_run": (peers._busy() - busy) / TESTS * 1e3,
                     "ok": verdicts.count("ok"), "not_ok": TESTS - verdicts.count("ok")}
    out["sandbox (compiled once)"]["compile_s"] = compile_s
    return out


def creation(rounds: int) -> dict[str, dict[str, float]]:
    made: list[float] = []
    fresh: list[float] = []
    for _ in range(rounds):
        t = time.perf_counter()
        sb = isol8r.Sandbox()
        made.append(time.perf_counter() - t)
        sb.close()
        fresh.append(timed(lambda: isol8r.run(["/bin/true"])))
    return {"Sandbox() creation": peers.stats(made), "isol8r.run (fresh jail)": peers.stats(fresh)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    nsj, note = peers.find_nsjail()
    print(f"sandboxes (nsjail: {note})")
    work = Path(tempfile.mkdtemp(prefix="isol8r-bench-sb-"))
    try:
        with isol8r.Sandbox() as sb:
            lat = latency(sb, nsj, args.rounds)
            jud = judge(sb, nsj, work)
        made = creation(max(10, args.rounds // 10))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = lat["sandbox sb.run"]["p50_ms"]
    print("  /bin/true                          p50 ms   p99 ms  sandbox x faster")
    for name, row in lat.items():
        print(f"  {name:32} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['p50_ms'] / base:8.1f}")
    rate = jud["sandbox (compiled once)"]["runs_per_s"]
    print(f"  compile once, run {TESTS} tests        runs/s  CPU ms/run  sandbox x  ok/other")
    for name, row in jud.items():
        print(f"  {name:32} {row['runs_per_s']:8.1f} {row['cpu_ms_per_run']:10.2f} "
              f"{rate / row['runs_per_s']:8.1f}  {row['ok']:.0f}/{row['not_ok']:.0f}")
    print(f"  (compiling in the sandbox took {jud['sandbox (compiled once)']['compile_s']:.2f} s)")
    print("  creation                           p50 ms   p99 ms")
    for name, row in made.items():
        print(f"  {name:32} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency": lat, "judge": jud, "creation": made},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
