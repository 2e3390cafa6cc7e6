"""Network namespaces, veth pairs and a fake internet that the network tests own.

No test packet may reach an address outside what the suite made: the fake internet is a
namespace holding only loopback and one end of a veth whose other end the test placed (in the
host, or in another namespace of its own); it has no route anywhere else. Everything made here
is removed in `finally` blocks, also when a test fails, and processes are ended by their pid.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def netns(tag: str) -> Iterator[str]:
    """A named network namespace isol8r-test-<pid>-<tag>, with lo up; deleted afterwards."""
    name = f"isol8r-test-{os.getpid()}-{tag}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        with contextlib.suppress(OSError):
            (Path("/etc/netns") / name / "resolv.conf").unlink()
        with contextlib.suppress(OSError):
            (Path("/etc/netns") / name).rmdir()


def subnet() -> int:
    """A third octet for 10.200.N.0/24 and 10.201.N.0/24 unlikely to meet another session's."""
    return os.getpid() % 250 + 1


@dataclass(frozen=True)
class Upstream:
    """The fake internet: namespace `ns` serving fake_internet.py on `addr`."""

    ns: str
    addr: str
    proc: subprocess.Popen[str]


def stop(proc: subprocess.Popen[str]) -> None:
    """End a process this test started, by its pid, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def serve_fake_internet(ns: str, addr: str, mib: int = 50) -> subprocess.Popen[str]:
    """Start fake_internet.py in ns on addr; returns once it listens."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable,
                             str(HERE / "fake_internet.py"), addr, str(mib)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    if not ready or proc.stdout.readline().strip() != "ready":
        stop(proc)
        raise RuntimeError("the fake internet did not start")
    return proc


@contextlib.contextmanager
def internet_from_host() -> Iterator[Upstream]:
    """The fake internet joined to the host's namespace by a veth: host 10.200.N.1, it .2."""
    n = subnet()
    host_if = f"i8e{os.getpid() % 1000000}"
    with netns("inet") as ns:
        ip("link", "add", host_if, "type", "veth", "peer", "name", "up0", "netns", ns)
        try:
            ip("addr", "add", f"10.200.{n}.1/30", "dev", host_if)
            ip("link", "set", host_if, "up")
            ip("-n", ns, "addr", "add", f"10.200.{n}.2/30", "dev", "up0")
            ip("-n", ns, "link", "set", "up0", "up")
            proc = serve_fake_internet(ns, f"10.200.{n}.2", mib=1)
            try:
                yield Upstream(ns, f"10.200.{n}.2", proc)
            finally:
                stop(proc)
        finally:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True)


@dataclass(frozen=True)
class Island:
    """A stand-in for a host: namespace `host` whose only link leads to the fake internet
    (`inet`, serving on `addr`, off the link's subnet so it is reached through the route)."""

    host: str
    inet: str
    addr: str
    proc: subprocess.Popen[str]


@contextlib.contextmanager
def island(mib: int = 50) -> Iterator[Island]:
    """Host namespace 10.201.N.1 -- veth -- 10.201.N.2 fake internet, serving on 10.202.N.1;
    the host's resolv.conf (for `ip netns exec`) names the fake internet's DNS."""
    n = subnet()
    with netns("host") as host, netns("inet") as inet:
        ip("link", "add", "h0", "netns", host, "type", "veth", "peer", "name", "i0",
           "netns", inet)
        ip("-n", host, "addr", "add", f"10.201.{n}.1/24", "dev", "h0")
        ip("-n", host, "link", "set", "h0", "up")
        ip("-n", host, "route", "add", "default", "via", f"10.201.{n}.2")
        ip("-n", inet, "addr", "add", f"10.201.{n}.2/24", "dev", "i0")
        ip("-n", inet, "link", "set", "i0", "up")
        ip("-n", inet, "addr", "add", f"10.202.{n}.1/32", "dev", "lo")
        etc = Path("/etc/netns") / host
        made_parent = not etc.parent.exists()
        etc.mkdir(parents=True, exist_ok=True)
        try:
            (etc / "resolv.conf").write_text(f"nameserver 10.202.{n}.1\n")
            proc = serve_fake_internet(inet, f"10.202.{n}.1", mib)
            try:
                yield Island(host, inet, f"10.202.{n}.1", proc)
            finally:
                stop(proc)
        finally:
            with contextlib.suppress(OSError):
                (etc / "resolv.conf").unlink()
            with contextlib.suppress(OSError):
                etc.rmdir()
            if made_parent:
                with contextlib.suppress(OSError):
                    etc.parent.rmdir()


def in_host(isle: Island, code: str, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run Python code in the island's host namespace (`ip netns exec`), capture its output."""
    return subprocess.run(["ip", "netns", "exec", isle.host, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout, env=env)


@contextlib.contextmanager
def jail_netns() -> Iterator[int]:
    """A stand-in for a jail's network namespace: `unshare --net sleep`; yields its pid."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    try:
        for _ in range(200):  # until the unshare has happened (its netns differs from ours)
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                    break
            except OSError:
                pass
            select.select([], [], [], 0.01)
        yield proc.pid
    finally:
        stop(proc)  # type: ignore[arg-type]


def in_netns(pid: int, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run Python code in the network namespace of pid (nsenter), capture its output."""
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout)
