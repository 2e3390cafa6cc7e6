"""`make bench` (judge rows): compile once, run many, as a judge does it.

One C submission is compiled once in a box, then run against 100 tests, each with fresh limits
(--time 1, --wall-time 2, --mem 256 MiB, one process), its input copied into the box and its
output read back and checked. Peers, measured in the same run, in blocks that alternate (A B C C
B A) so load falls on all:

- isolate itself, built from its source with make (ISOLATE_SRC, else the mirror this machine
  keeps, else skipped; libcap-dev and libseccomp-dev are needed), with a config of its own under
  /tmp. It runs without --cg: isol8r creates cgroups only in its own subtree, so isolate gets
  none; its limits are rlimits and its own polling of the program's CPU time;
- else nsjail (found as bench/run.py finds it), when isolate cannot be built;
- `isol8r isolate` with the same command line (a process per test, as CMS runs isolate);
- isol8r.isolate.Box from Python (the library: the same box model, no process per test).

Rows: per-test wall time (p50, p99), the machine's CPU ms per test (all cores, from
/proc/stat), and each isol8r row's speed against the peer. No figure here is a pass/fail test.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from run import _busy, find_nsjail, nsjail  # noqa: E402  (bench/run.py: not edited here)

from isol8r.isolate import Box  # noqa: E402

TESTS = 100
MIRROR = Path("/work/.mirror/ioi+isolate/repo")
SOURCE = ("#include <stdio.h>\nint main(void){long a; if (scanf(\"%ld\", &a) != 1) return 1;\n"
          "printf(\"%ld\\n\", a * 2); return 0;}\n")
LIMITS = ["--time=1", "--wall-time=2", f"--mem={256 << 10}", "--processes=1"]


def build_isolate(work: Path) -> tuple[str | None, str]:
    """isolate built from its source in work/src, with its config at work/etc/isolate."""
    if not (Path("/usr/include/sys/capability.h").exists()
            and Path("/usr/include/seccomp.h").exists() and shutil.which("make")):
        return None, "isolate skipped: libcap-dev, libseccomp-dev and make are needed to build it"
    src = work / "src"
    given = os.environ.get("ISOLATE_SRC")
    try:
        if given:
            shutil.copytree(given, src, ignore=shutil.ignore_patterns(".git"))
        elif MIRROR.exists():
            src.mkdir(parents=True)
            tar = subprocess.run(["git", "--git-dir", str(MIRROR), "archive", "HEAD"],
                                 capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
        else:
            return None, "isolate skipped: no source (set ISOLATE_SRC to a clone of ioi/isolate)"
        subprocess.run(["make", "-s", "isolate", f"PREFIX={work}", f"VARPREFIX={work}/var"],
                       cwd=src, check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"isolate skipped: the build failed ({e})"
    (work / "etc").mkdir(exist_ok=True)
    (work / "boxes").mkdir(exist_ok=True)
    (work / "etc" / "isolate").write_text(
        f"box_root = {work}/boxes\nlock_root = {work}/locks\n"
        f"cg_root = {work}/no-cgroup\nfirst_uid = 60000\nfirst_gid = 60000\nnum_boxes = 100\n")
    exe = src / "isolate"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout
    return str(exe), version.splitlines()[0] + " (built from source, without --cg)"


class Peer:
    """A judge's view of one sandbox: init, compile in the box, run one test, clean up."""

    name = ""

    def init(self) -> Path:
        raise NotImplementedError

    def run(self, i: int) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class IsolateCli(Peer):
    """isolate's command line: isolate itself, or `isol8r isolate` (env carries its box root)."""

    def __init__(self, name: str, cmd: list[str], box_id: int, env: dict[str, str]) -> None:
        self.name, self.cmd, self.env = name, cmd, env
        self.id = f"--box-id={box_id}"

    def _call(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.cmd, self.id, *args], env=self.env, text=True,
                              capture_output=True, check=True)

    def init(self) -> Path:
        self._call("--cleanup")
        self.box = Path(self._call("--init").stdout.strip()) / "box"
        (self.box / "sol.c").write_text(SOURCE)
        self._call("--processes=64", "--time=20", "--wall-time=40", "-E", "PATH=/usr/bin:/bin",
                   "-s", "--run", "--", "/usr/bin/gcc", "-O2", "-o", "sol", "sol.c")
        return self.box

    def run(self, i: int) -> None:
        (self.box / "in").write_text(f"{i}\n")
        subprocess.run([*self.cmd, self.id, *LIMITS, "--stdin=in", "--stdout=out", "-s",
                        f"--meta={self.box.parent}/meta", "--run", "--", "./sol"], env=self.env,
                       check=True)
        check(self.box, i)

    def cleanup(self) -> None:
        self._call("--cleanup")


class Library(Peer):
    """isol8r.isolate.Box from Python: the same box and limits, no process per test."""

    def __init__(self, root: Path, box_id: int) -> None:
        self.name = "isol8r Box (library)"
        self.b = Box(box_id, root=str(root))

    def init(self) -> Path:
        self.b.init()
        box = Path(self.b.box)
        (box / "sol.c").write_text(SOURCE)
        m = self.b.run(["/usr/bin/gcc", "-O2", "-o", "sol", "sol.c"], processes=64, time=20,
                       wall_time=40, env=["PATH=/usr/bin:/bin"], silent=True)
        assert m.status == "OK", m.text()
        return box

    def run(self, i: int) -> None:
        box = Path(self.b.box)
        (box / "in").write_text(f"{i}\n")
        m = self.b.run(["./sol"], time=1.0, wall_time=2.0, mem=256 << 10, processes=1,
                       stdin="in", stdout="out", silent=True)
        assert m.status == "OK", m.text()
        check(box, i)

    def cleanup(self) -> None:
        self.b.cleanup()


class Nsjail(Peer):
    """nsjail, when isolate cannot be built: the compiled program run from a bind of the box."""

    def __init__(self, exe: str, work: Path) -> None:
        self.name, self.exe, self.box = "nsjail", exe, work / "nsjail-box"

    def init(self) -> Path:
        self.box.mkdir(parents=True, exist_ok=True)
        (self.box / "sol.c").write_text(SOURCE)
        subprocess.run(["gcc", "-O2", "-o", str(self.box / "sol"), str(self.box / "sol.c")],
                       check=True)
        return self.box

    def run(self, i: int) -> None:
        (self.box / "in").write_text(f"{i}\n")
        cmd = nsjail(self.exe, ["/box/sol"], net=False)
        at = cmd.index("--")
        cmd[at:at] = ["-R", f"{self.box}:/box", "--cwd", "/box", "-t", "2", "--rlimit_cpu", "1"]
        with open(self.box / "in", "rb") as fin, open(self.box / "out", "wb") as fout:
            subprocess.run(cmd, stdin=fin, stdout=fout, stderr=subprocess.DEVNULL, check=True)
        check(self.box, i)


def check(box: Path, i: int) -> None:
    out = (box / "out").read_text()
    if out != f"{2 * i}\n":
        raise SystemExit(f"bench: wrong output for test {i} in {box}: {out!r}")


def measure(peers: list[Peer], tests: int) -> dict[str, dict[str, float]]:
    """Blocks of tests per peer, in the order A B C C B A; per-test wall times and CPU."""
    times: dict[str, list[float]] = {p.name: [] for p in peers}
    busy: dict[str, float] = {p.name: 0.0 for p in peers}
    half = tests // 2
    for order, first in ((peers, 0), (peers[::-1], half)):
        for p in order:
            b0 = _busy()
            for i in range(first, first + (half if first == 0 else tests - half)):
                t = time.perf_counter()
                p.run(i)
                times[p.name].append(time.perf_counter() - t)
            busy[p.name] += _busy() - b0
    out = {}
    for p in peers:
        xs = sorted(times[p.name])
        out[p.name] = {"p50_ms": statistics.median(xs) * 1e3,
                       "p99_ms": xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3,
                       "cpu_ms": busy[p.name] / len(xs) * 1e3, "tests": len(xs)}
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("bench/judge.py: needs root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="isol8r-bench-judge-"))
    work.chmod(0o755)
    peers: list[Peer] = []
    try:
        exe, note = build_isolate(work / "isolate")
        if exe is not None:
            peers.append(IsolateCli("isolate", [exe], 11, dict(os.environ)))
        else:
            nsj, nsj_note = find_nsjail()
            note += f"; peer: nsjail ({nsj_note})" if nsj else f"; {nsj_note}"
            if nsj:
                peers.append(Nsjail(nsj, work))
        ours = work / "isol8r-boxes"
        env = dict(os.environ, ISOL8R_ISOLATE_ROOT=str(ours),
                   PYTHONPATH=str(HERE.parent / "src"))
        peers.append(IsolateCli("isol8r isolate (CLI)", [sys.executable, "-m", "isol8r", "isolate"],
                                12, env))
        peers.append(Library(ours, 13))
        print(f"\njudge: compile once, run {TESTS} tests of one C submission "
              f"({platform.machine()}, {os.cpu_count()} cores); {note}")
        t0 = time.perf_counter()
        for p in peers:
            p.init()
        compile_s = time.perf_counter() - t0
        rows = measure(peers, TESTS)
        peer = rows.get("isolate") or rows.get("nsjail")
        print(f"  {'per test':26} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms':>8} {'peer/this':>10}")
        for name, r in rows.items():
            ratio = f"x{peer['p50_ms'] / r['p50_ms']:.2f}" if peer and r is not peer else ""
            print(f"  {name:26} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['cpu_ms']:8.2f} "
                  f"{ratio:>10}")
        print(f"  (compiling in each box: {compile_s:.1f} s in all; goal: isol8r >= x3.00)")
    finally:
        for p in peers:
            try:
                p.cleanup()
            except (OSError, subprocess.SubprocessError, AssertionError):
                pass
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
