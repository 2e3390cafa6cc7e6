"""`make bench`: `isol8r listen` against `nsjail -Ml`, measured in one run, rounds interleaved.

Both serve /bin/echo with every namespace they offer (a network namespace per connection too),
as user 65534, on 127.0.0.1. Rows: connection-to-first-byte latency p50/p99 with 1 client and
with bursts of 32 at once, and connections served per second by 8 clients in a loop; the last
column is isol8r's figure as a ratio of nsjail's (goal: p50 <= 0.5, rate >= 1.5).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from run import find_nsjail  # noqa: E402  (bench/run.py: how a bench finds nsjail)

PROGRAM = ["/bin/echo", "hi"]
ADDR = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDR, 0))
        return int(s.getsockname()[1])


def start_isol8r(tmp: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    log = Path(tmp, f"isol8r{len(args)}.log")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "isol8r", "listen", "--addr", ADDR,
                             "--port", "0",
                             "--log", str(log), "--log-format", "json", "--max-conns", "256",
                             *args, "--", *PROGRAM], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "listening":
                    return proc, int(event["port"])
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("isol8r listen did not start")


def start_nsjail(exe: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [exe, "-Ml", "--port", str(port), "--bindhost", ADDR, "--really_quiet", "-u", "65534",
           "-g", "65534", "-R", "/usr", "-R", "/lib", "-R", "/lib64", "-R", "/bin", "-T", "/tmp",
           "--rlimit_as", "inf", "--", *PROGRAM]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ADDR, port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("nsjail -Ml did not start")


def burst(port: int, n: int) -> list[float]:
    """n connections opened at once; each one's time from connect() to its first byte. Every
    connection is read to its end, so the next burst starts with no jail running."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        t0 = time.perf_counter()
        try:
            s.connect((ADDR, port))
        except BlockingIOError:
            pass
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, t0)
    times, deadline = [], time.monotonic() + 30
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if key.data is not None and data:
                times.append(time.perf_counter() - key.data)
                sel.modify(s, selectors.EVENT_READ, None)
            if not data:
                sel.unregister(s)
                s.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return times


def rate(port: int, clients: int, seconds: float) -> float:
    """Connections served per second by `clients` clients, each connecting again at its end."""
    sel = selectors.DefaultSelector()

    def open_one() -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((ADDR, port))
        except BlockingIOError:
            pass
        sel.register(s, selectors.EVENT_READ)
    for _ in range(clients):
        open_one()
    done, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for key, _ in sel.select(1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                done += 1
                open_one()
    elapsed = time.perf_counter() - t0
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return done / elapsed


def stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"p50_ms": statistics.median(s) * 1e3,
            "p99_ms": s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3, "n": len(s)}


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    exe, how = find_nsjail()
    with tempfile.TemporaryDirectory() as tmp:
        peers: dict[str, tuple[subprocess.Popen[bytes], int]] = {
            "isol8r": start_isol8r(tmp),
            "isol8r --prewarm 32": start_isol8r(tmp, "--prewarm", "32")}
        if exe:
            peers["nsjail"] = start_nsjail(exe)
        try:
            for _, port in peers.values():
                burst(port, 4)  # warm: page cache, fork server, warm jails
            lat: dict[str, dict[str, list[float]]] = {f"{c} client{'s' if c > 1 else ''}": {
                n: [] for n in peers} for c in (1, 32)}
            for _ in range(60):
                for name, (_, port) in peers.items():
                    lat["1 client"][name] += burst(port, 1)
                    time.sleep(0.01)
            for _ in range(6):
                for name, (_, port) in peers.items():
                    lat["32 clients"][name] += burst(port, 32)
                    time.sleep(1.0)  # the jails set up ahead are made again
            rates = {name: rate(port, 8, 4.0) for name, (_, port) in peers.items()
                     if name != "isol8r --prewarm 32"}
        finally:
            for proc, _ in peers.values():
                stop(proc)
    print(f"\nlisten mode (one connection, one jail; /bin/echo; nsjail: {how}):")
    result: dict[str, Any] = {}
    for row, by_peer in lat.items():
        cells = {n: stats(xs) for n, xs in by_peer.items()}
        result[row] = cells
        ratio = ""
        print(f"  first byte, {row}:")
        for n, c in cells.items():
            ratio = ""
            if "nsjail" in cells and n != "nsjail":
                ratio = f"  p50 x{c['p50_ms'] / cells['nsjail']['p50_ms']:.2f} of nsjail's"
            print(f"    {n:20} p50 {c['p50_ms']:7.2f} ms  p99 {c['p99_ms']:7.2f} ms{ratio}")
    result["connections_per_s"] = rates
    ratio = f"  isol8r/nsjail x{rates['isol8r'] / rates['nsjail']:.2f}" if "nsjail" in rates else ""
    print("  connections/s, 8 clients " + "  ".join(f"{n} {r:7.1f}" for n, r in rates.items())
          + ratio)
    out = HERE / "results" / "listen.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
