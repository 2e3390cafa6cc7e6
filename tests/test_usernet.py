"""User-mode networking (pasta, slirp4netns) for a stand-in jail namespace.

No packet may leave the machine, and pasta by default follows the host's default route, so the
"host" here is itself a namespace the test made (tests/nethelp.py `island`): its only link is a
veth to a fake internet namespace, which has no link anywhere else. The stack runs inside that
host namespace (`ip netns exec`), the jail is an `unshare --net` process the test started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import needs_root
from isol8r.usernet import (UsernetError, check_ports_free, parse_publish, resolv_conf, start)
from nethelp import Island, in_host, in_netns, island, jail_netns, serve_fake_internet, stop

pytestmark = needs_root

BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(shutil.which(b) is None,
                                                      reason=f"{b} is not installed"))
            for b in ("pasta", "slirp4netns")]


@pytest.fixture(scope="module")
def isle() -> Iterator[Island]:
    with island(mib=50) as i:
        yield i



GET = """
import socket, sys
s = socket.create_connection((sys.argv[1] if len(sys.argv) > 1 else {addr!r}, {port}), timeout=5)
s.sendall(b"GET /{path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
out = b""
while c := s.recv(65536):
    out += c
print(out.decode().splitlines()[-1])
"""

DNS_QUERY = """
import socket, struct
q = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00"
q += b"".join(bytes([len(p)]) + p.encode() for p in {name!r}.split("."))
q += b"\\x00\\x00\\x01\\x00\\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ({dns!r}, 53))
a = s.recv(512)
print(a[3] & 15, socket.inet_ntoa(a[-4:]) if a[3] & 15 == 0 else "-")
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_outbound_tcp_and_dns_from_the_jail(isle: Island, backend: str) -> None:
    with jail_netns() as jail, start(jail, backend=backend,
                                     prefix=("ip", "netns", "exec", isle.host)) as net:
        out = in_netns(jail, GET.format(addr=isle.addr, port=8080, path="jail"))
        assert out.stdout == "hello /jail host=x\n", out.stderr
        out = in_netns(jail, DNS_QUERY.format(name="pypi.test", dns=net.dns))
        assert out.stdout == f"0 {isle.addr}\n", out.stderr  # the fake internet's DNS answered
        out = in_netns(jail, DNS_QUERY.format(name="nx.test", dns=net.dns))
        assert out.stdout == "3 -\n", out.stderr
        pid = net.pid
    assert net.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dns_works_when_the_hosts_resolver_is_on_its_loopback(isle: Island, backend: str) -> None:
    """systemd-resolved's 127.0.0.53: the forwarder reaches it though the jail cannot reach
    the host's loopback otherwise."""
    conf = Path("/etc/netns") / isle.host / "resolv.conf"
    saved = conf.read_text()
    conf.write_text("nameserver 127.0.0.53\n")
    resolver = serve_fake_internet(isle.host, "127.0.0.53", mib=0)
    try:
        with jail_netns() as jail, start(jail, backend=backend,
                                         prefix=("ip", "netns", "exec", isle.host)) as net:
            out = in_netns(jail, DNS_QUERY.format(name="pypi.test", dns=net.dns))
            assert out.stdout == "0 127.0.0.53\n", out.stderr
    finally:
        stop(resolver)
        conf.write_text(saved)


@pytest.mark.parametrize("backend", BACKENDS)
def test_published_ports_reach_the_jail_and_are_freed(isle: Island, backend: str) -> None:
    with jail_netns() as jail:
        server = subprocess.Popen(
            ["nsenter", f"--net=/proc/{jail}/ns/net", sys.executable, "-c",
             "import socket, sys\n"
             "s = socket.create_server(('0.0.0.0', 8000))\nprint('ready', flush=True)\n"
             "while True:\n c, _ = s.accept(); c.recv(100); c.sendall(b'from the jail'); "
             "c.close()\n"], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
            publish = [parse_publish("18080:8000"), parse_publish("127.0.0.1:18081:8000")]
            with start(jail, backend=backend, publish=publish,
                       prefix=("ip", "netns", "exec", isle.host)):
                for addr, port in (("10.201.%d.1" % int(isle.addr.split(".")[2]), 18080),
                                   ("127.0.0.1", 18081)):
                    out = in_host(isle, "import socket\n"
                                  f"s = socket.create_connection(({addr!r}, {port}), timeout=5)\n"
                                  "s.sendall(b'hi'); print(s.recv(100).decode())")
                    assert out.stdout == "from the jail\n", (addr, out.stderr)
            out = in_host(isle, "import socket\n"
                          "for p in (18080, 18081):\n"  # TIME_WAIT may stay, a listener not
                          " s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
                          "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', p)); s.listen()\n"
                          "print('free')")
            assert out.stdout == "free\n", out.stderr
        finally:
            stop(server)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_host_port_in_use_is_a_one_line_error(isle: Island, backend: str) -> None:
    holder = subprocess.Popen(
        ["ip", "netns", "exec", isle.host, sys.executable, "-c",
         "import socket, time\ns = socket.create_server(('0.0.0.0', 18082))\n"
         "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        with jail_netns() as jail, pytest.raises(UsernetError) as e:
            start(jail, backend=backend, publish=[parse_publish("18082:80")],
                  prefix=("ip", "netns", "exec", isle.host))
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("--publish 18082:80: host port 18082 could "
                                                  f"not be bound ({backend}: "), msg
    finally:
        stop(holder)


def test_the_port_check_runs_before_anything_starts() -> None:
    import socket
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
        with pytest.raises(UsernetError, match=f"^--publish 127.0.0.1:{port}:80: host port "
                                               f"{port} is in use$"):
            check_ports_free([parse_publish(f"127.0.0.1:{port}:80")])
        with jail_netns() as jail, pytest.raises(UsernetError, match="in use"):
            start(jail, publish=[parse_publish(f"127.0.0.1:{port}:80")])


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_hosts_loopback_is_not_reachable(isle: Island, backend: str) -> None:
    """A service on the (island) host's 127.0.0.1 is out of the jail's reach: neither the
    gateway address nor slirp's 10.0.2.2 is mapped to it."""
    holder = subprocess.Popen(
        ["ip", "netns", "exec", isle.host, sys.executable, "-c",
         "import socket\ns = socket.create_server(('127.0.0.1', 18083))\n"
         "print('ready', flush=True)\nwhile True:\n c, _ = s.accept(); c.sendall(b'HOST'); "
         "c.close()"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        n = int(isle.addr.split(".")[2])
        with jail_netns() as jail, start(jail, backend=backend,
                                         prefix=("ip", "netns", "exec", isle.host)):
            for gw in (f"10.201.{n}.2", "10.0.2.2", "127.0.0.1"):
                out = in_netns(jail, "import socket\ntry:\n"
                               f" s = socket.create_connection(({gw!r}, 18083), timeout=2)\n"
                               " print(s.recv(10))\nexcept OSError as e:\n print('no')")
                assert out.stdout == "no\n", (gw, out.stdout, out.stderr)
    finally:
        stop(holder)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_stack_keeps_little_privilege(isle: Island, backend: str) -> None:
    with jail_netns() as jail, start(jail, backend=backend,
                                     prefix=("ip", "netns", "exec", isle.host)) as net:
        deadline = time.monotonic() + 5  # pasta seals itself just after it reports ready
        while True:
            with open(f"/proc/{net.pid}/status") as f:
                st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            if st["Seccomp"] == "2" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        with open(f"/proc/{net.pid}/mountinfo") as f:
            assert len(f.readlines()) < 10  # its own near-empty mount namespace
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    nbs, sys_admin = 1 << 10, 1 << 21  # CAP_NET_BIND_SERVICE, CAP_SYS_ADMIN
    allowed = nbs if backend == "slirp4netns" else nbs | sys_admin
    assert int(st["CapEff"], 16) & ~allowed == 0, st["CapEff"]


def test_a_missing_backend_is_a_one_line_error() -> None:
    with pytest.raises(UsernetError, match="^unknown user-mode network backend 'vde'$"):
        start(1, backend="vde")


def test_resolv_conf() -> None:
    assert resolv_conf("169.254.1.1") == "nameserver 169.254.1.1\noptions edns0\n"
    assert resolv_conf("10.0.2.3", ["corp.test"]) == \
        "nameserver 10.0.2.3\nsearch corp.test\noptions edns0\n"
