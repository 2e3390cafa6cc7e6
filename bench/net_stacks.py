"""Measure the user-mode network stacks (pasta, slirp4netns) and the egress proxy, as root.

    python bench/net_stacks.py [ROUNDS]

Uses the test suite's island (tests/nethelp.py): a "host" namespace whose only link leads to a
fake internet namespace, so no packet leaves the machine. Per stack: start-up until a jail can
connect (a client inside the jail retries a connect every 0.5 ms from before the stack is
spawned; both clocks are CLOCK_MONOTONIC), the time to receive 50 MiB from the fake internet,
and the stack's resident memory. For the proxy: the added latency of a CONNECT through it.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from isol8r import usernet  # noqa: E402
from nethelp import island, jail_netns, stop  # noqa: E402

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


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(backend: str, isle, rounds: int) -> None:
    ups, readies, secs, rss = [], [], [], []
    for _ in range(rounds):
        with jail_netns() as jail:
            probe = subprocess.Popen(["nsenter", f"--net=/proc/{jail}/ns/net", sys.executable,
                                      "-c", PROBE, isle.addr], stdout=subprocess.PIPE, text=True)
            assert probe.stdout is not None and probe.stdout.readline() == "ready\n"
            t0 = time.monotonic()
            net = usernet.start(jail, backend=backend, prefix=("ip", "netns", "exec", isle.host))
            try:
                up_at = float(probe.stdout.readline())
                probe.wait()
                ups.append(up_at - t0)
                readies.append(net.startup)
                out = subprocess.run(["nsenter", f"--net=/proc/{jail}/ns/net", sys.executable,
                                      "-c", BULK, isle.addr], capture_output=True, text=True)
                n, sec = out.stdout.split()
                assert int(n) == 50 << 20, out
                secs.append(float(sec))
                rss.append(rss_kib(net.pid))
            finally:
                net.stop()
                if probe.poll() is None:
                    stop(probe)  # type: ignore[arg-type]
    print(f"{backend:12s} connect-ready p50 {statistics.median(ups) * 1000:6.1f} ms "
          f"(ready signal {statistics.median(readies) * 1000:5.1f} ms)  "
          f"50 MiB in {statistics.median(secs) * 1000:6.1f} ms "
          f"({50 / statistics.median(secs):6.0f} MiB/s)  RSS {statistics.median(rss):6.0f} KiB")


def proxy_latency(rounds: int) -> None:
    """CONNECT through the proxy vs a direct connect, to a loopback listener."""
    from isol8r.daemon.egress import EgressProxy, serve_in_thread
    from isol8r.egress_rules import Policy
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    proxy = EgressProxy(Policy.parse(["loop.test", f"127.0.0.1:{port}"]),
                        resolver=lambda name: ["127.0.0.1"])
    paddr = proxy.listen()
    thread = serve_in_thread(proxy)
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
            c.sendall(f"CONNECT loop.test:{port} HTTP/1.1\r\n\r\n".encode())
            assert c.recv(100).startswith(b"HTTP/1.1 200")
            srv.accept()[0].close()
            c.close()
            via.append(time.perf_counter() - t)
        v, d = statistics.median(via) * 1e6, statistics.median(direct) * 1e6
        print(f"egress proxy  CONNECT p50 {v:6.0f} us, direct {d:4.0f} us (+{v - d:.0f} us), "
              f"proxy RSS {rss_kib(os.getpid())} KiB (this benchmark's process)")
    finally:
        proxy.stop()
        thread.join()
        proxy.close()
        srv.close()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with island(mib=50) as isle:
        for backend in usernet.available():
            measure(backend, isle, rounds)
    proxy_latency(200)


if __name__ == "__main__":
    main()
