"""The egress proxy with real sockets: the jail's side on loopback, the "internet" a namespace
the test made (tests/nethelp.py), reached through a veth the test owns. Names are resolved by an
injected resolver (a table) so no DNS query leaves; everything else is the real kernel.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from typing import Iterator

import pytest

from conftest import needs_root
from isol8r.daemon.egress import (EgressProxy, Limits, host_addresses, proxy_env,
                                  serve_in_thread)
from isol8r.egress_rules import Policy
from nethelp import Upstream, internet_from_host

pytestmark = needs_root


@pytest.fixture(scope="module")
def up() -> Iterator[Upstream]:
    with internet_from_host() as u:
        yield u


class Running:
    """A proxy serving in a thread of the test process; `close()` stops and frees it."""

    def __init__(self, proxy: EgressProxy) -> None:
        self.proxy = proxy
        self.addr = proxy.listen("127.0.0.1", 0)
        self.thread = serve_in_thread(proxy)

    def close(self) -> None:
        self.proxy.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.proxy.close()


@pytest.fixture
def start(up: Upstream) -> Iterator:
    """start(rules, **limits) -> Running, with the test resolver; all closed afterwards."""
    table = {
        "upstream.test": [up.addr],
        "www.upstream.test": [up.addr],
        "deep.www.upstream.test": [up.addr],
        "loop.test": ["127.0.0.1"],
        "meta.test": ["169.254.169.254"],
        "mixed.test": ["127.0.0.1", up.addr],
    }

    def resolver(name: str) -> list[str]:
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return table[name]

    made: list[Running] = []

    def make(rules: list[str], **limits: object) -> Running:
        r = Running(EgressProxy(Policy.parse(rules), resolver=resolver,
                                limits=Limits(**limits)))  # type: ignore[arg-type]
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.close()


def talk(addr: tuple[str, int], data: bytes, timeout: float = 5) -> bytes:
    """Send data, read until the proxy closes; a hang fails the test through the timeout."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def connect(addr: tuple[str, int], target: str) -> tuple[socket.socket, bytes]:
    """An HTTP CONNECT; returns the socket and the proxy's answer head."""
    s = socket.create_connection(addr, timeout=5)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head


def get_through(s: socket.socket, host: str, path: str = "/") -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out


def socks(addr: tuple[str, int], atyp: int, host: bytes, port: int,
          cmd: int = 1) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(addr, timeout=5)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    dst = bytes([len(host)]) + host if atyp == 3 else host
    s.sendall(bytes([5, cmd, 0, atyp]) + dst + port.to_bytes(2, "big"))
    reply = b""
    while len(reply) < 10:
        chunk = s.recv(10 - len(reply))
        if not chunk:
            break
        reply += chunk
    return s, reply


def reasons(r: Running) -> list[tuple[str, int, str]]:
    return [(d.host, d.port, d.reason) for d in r.proxy.denials]


def test_the_hosts_own_addresses_are_known(up: Upstream) -> None:
    own = {str(a) for a in host_addresses()}
    assert {"127.0.0.1", up.addr.rsplit(".", 1)[0] + ".1"} <= own  # lo and our veth's end
    assert up.addr not in own


def test_connect_admits_an_allowed_name(start, up: Upstream) -> None:
    r = start(["upstream.test", up.addr])
    s, head = connect(r.addr, "upstream.test:8080")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"hello /tunnel host=upstream.test" in get_through(s, "upstream.test", "/tunnel")
    assert r.proxy.denied_count == 0


def test_connect_refuses_a_name_not_in_the_list(start, up: Upstream) -> None:
    r = start(["upstream.test", up.addr])
    s, head = connect(r.addr, "other.test:8080")
    assert head.startswith(b"HTTP/1.1 403"), head
    assert s.recv(4096).endswith(b"other.test:8080 denied: not in allow-list\n")
    s.close()
    assert reasons(r) == [("other.test", 8080, "not in allow-list")]
    d = r.proxy.denials[0]
    assert abs(d.time - time.time()) < 30


def test_a_private_address_needs_its_own_rule(start, up: Upstream) -> None:
    """The twin: the fake internet's address is private; a name rule alone does not open it."""
    r = start(["upstream.test"])
    s, head = connect(r.addr, "upstream.test:8080")
    s.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert reasons(r) == [("upstream.test", 8080, f"resolves to a private address {up.addr}")]


def test_wildcard_matches_subdomains_only(start, up: Upstream) -> None:
    r = start(["*.upstream.test", up.addr])
    for name in ("www.upstream.test", "deep.www.upstream.test", "WWW.Upstream.Test."):
        s, head = connect(r.addr, f"{name}:8080")
        assert head.startswith(b"HTTP/1.1 200"), (name, head)
        s.close()
    s, head = connect(r.addr, "upstream.test:8080")
    s.close()
    assert head.startswith(b"HTTP/1.1 403")
    assert reasons(r) == [("upstream.test", 8080, "not in allow-list")]


def test_port_rules(start, up: Upstream) -> None:
    r = start(["upstream.test:8080", f"{up.addr}:8080"])
    s, head = connect(r.addr, "upstream.test:8080")
    assert head.startswith(b"HTTP/1.1 200")
    s.close()
    s, head = connect(r.addr, "upstream.test:8081")
    s.close()
    assert head.startswith(b"HTTP/1.1 403")
    assert reasons(r) == [("upstream.test", 8081, "not in allow-list")]


def test_plain_http_is_forwarded_with_proxy_headers_dropped(start, up: Upstream) -> None:
    r = start(["upstream.test", up.addr])
    out = talk(r.addr, b"GET http://upstream.test:8081/plain?q=1 HTTP/1.1\r\n"
                       b"Host: upstream.test:8081\r\nProxy-Authorization: secret\r\n"
                       b"Proxy-Connection: keep-alive\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 200"), out
    assert out.endswith(b"hello /plain?q=1 host=upstream.test:8081\n")
    body = b"a body" * 1000
    out = talk(r.addr, b"POST http://upstream.test:8080/p HTTP/1.1\r\nHost: upstream.test\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert out.endswith(b"echo " + body)


def test_socks5_by_name_and_by_address(start, up: Upstream) -> None:
    r = start(["upstream.test", f"{up.addr}:8081"])
    s, reply = socks(r.addr, 3, b"upstream.test", 8081)
    assert reply[:2] == b"\x05\x00"
    assert b"hello /socks host=upstream.test" in get_through(s, "upstream.test", "/socks")
    # a bare address is refused unless a rule names it (at that port)
    s, reply = socks(r.addr, 1, socket.inet_aton(up.addr), 8080)
    assert reply[:2] == b"\x05\x02" and s.recv(1) == b""
    s.close()
    s, reply = socks(r.addr, 1, socket.inet_aton("1.2.3.4"), 443)
    assert reply[:2] == b"\x05\x02" and s.recv(1) == b""
    s.close()
    s, reply = socks(r.addr, 1, socket.inet_aton(up.addr), 8081)  # named: admitted
    assert reply[:2] == b"\x05\x00"
    assert b"hello /ip" in get_through(s, up.addr, "/ip")
    assert reasons(r) == [(up.addr, 8080, "address not in allow-list"),
                          ("1.2.3.4", 443, "address not in allow-list")]


def test_socks5_refuses_ipv6_literal_and_unsupported_commands(start, up: Upstream) -> None:
    r = start(["upstream.test", up.addr])
    s, reply = socks(r.addr, 4, socket.inet_pton(socket.AF_INET6, "::1"), 80)
    assert reply[:2] == b"\x05\x02"
    s.close()
    s, reply = socks(r.addr, 3, b"upstream.test", 8080, cmd=2)  # BIND
    assert reply[:2] == b"\x05\x07" and s.recv(1) == b""
    s.close()
    with socket.create_connection(r.addr, timeout=5) as s:  # no acceptable method
        s.sendall(b"\x05\x01\x02")
        assert s.recv(2) == b"\x05\xff" and s.recv(1) == b""


@pytest.mark.parametrize("name, reason", [
    ("loop.test", "resolves to a loopback address 127.0.0.1"),
    ("meta.test", "resolves to a link-local address 169.254.169.254"),
])
def test_an_allowed_name_resolving_inside_is_refused(start, name: str, reason: str) -> None:
    r = start([name])
    s, head = connect(r.addr, f"{name}:80")
    s.close()
    assert head.startswith(b"HTTP/1.1 403")
    assert reasons(r) == [(name, 80, reason)]


def test_rebinding_twin_an_address_rule_opens_loopback(start) -> None:
    """Without the rule the name is refused (above); with 127.0.0.1 named, it reaches a
    listener on the host's loopback, showing what the refusal protects."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        r = start(["loop.test", f"127.0.0.1:{port}"])
        s, head = connect(r.addr, f"loop.test:{port}")
        assert head.startswith(b"HTTP/1.1 200"), head
        peer, _ = srv.accept()
        peer.sendall(b"from loopback")
        assert s.recv(100) == b"from loopback"
        peer.close()
        s.close()


def test_only_the_allowed_addresses_of_a_name_are_tried(start, up: Upstream) -> None:
    r = start(["mixed.test", up.addr])
    s, head = connect(r.addr, "mixed.test:8080")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"hello /m" in get_through(s, "mixed.test", "/m")


def test_unknown_names_are_refused_with_a_reason(start) -> None:
    r = start(["nowhere.test"])
    s, head = connect(r.addr, "nowhere.test:80")
    s.close()
    assert head.startswith(b"HTTP/1.1 502")
    assert reasons(r) == [("nowhere.test", 80, "name does not resolve")]


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"\x00\x01\x02 junk \xff\r\n\r\n", b"400"),
    (b"GET /relative HTTP/1.1\r\nHost: upstream.test\r\n\r\n", b"400"),
    (b"GET https://upstream.test/ HTTP/1.1\r\n\r\n", b"400"),
    (b"GET http://user@upstream.test/ HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT upstream.test HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT upstream.test:99999 HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT bad_name!:80 HTTP/1.1\r\n\r\n", b"403"),
])
def test_malformed_requests_get_an_error_and_a_close(start, up: Upstream, request_bytes: bytes,
                                                     status: bytes) -> None:
    r = start(["upstream.test", up.addr])
    out = talk(r.addr, request_bytes)
    assert out.split(b" ")[1] == status, out


def test_a_silent_client_is_timed_out(start) -> None:
    r = start(["upstream.test"], request_timeout=0.5)
    t = time.monotonic()
    out = talk(r.addr, b"GET http://upstream.test/ HTTP/1.1\r\n")  # never finishes
    assert out.startswith(b"HTTP/1.1 408") and time.monotonic() - t < 4
    with socket.create_connection(r.addr, timeout=5) as s:  # SOCKS half a greeting
        s.sendall(b"\x05\x02")
        assert s.recv(100)[:2] == b"\x05\x01" and s.recv(1) == b""


def test_too_large_headers_are_refused(start, up: Upstream) -> None:
    r = start(["upstream.test", up.addr], max_header=4096)
    big = b"GET http://upstream.test:8080/ HTTP/1.1\r\nX-Pad: " + b"a" * 10000
    out = talk(r.addr, big)  # no end of headers at all
    assert out.startswith(b"HTTP/1.1 431")
    out = talk(r.addr, big + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")


def test_a_flood_of_connections_is_bounded(start, up: Upstream) -> None:
    r = start(["upstream.test", up.addr], max_connections=8)
    held = [socket.create_connection(r.addr, timeout=5) for _ in range(20)]
    try:
        deadline = time.monotonic() + 5
        while r.proxy.accepted < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.proxy.active == 8
        closed = 0
        for s in held[8:]:  # the ones over the limit were closed at once
            s.settimeout(5)
            closed += s.recv(1) == b""
        assert closed == 12
        assert reasons(r).count(("", 0, "connection limit")) == 12
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while r.proxy.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.proxy.active == 0
    s, head = connect(r.addr, "upstream.test:8080")  # and it serves again
    assert head.startswith(b"HTTP/1.1 200")
    s.close()


def test_the_denial_list_is_bounded_but_all_are_counted(start) -> None:
    r = start(["upstream.test"], max_denials=3)
    for i in range(5):
        s, _ = connect(r.addr, f"no{i}.test:80")
        s.close()
    assert r.proxy.denied_count == 5
    assert [d.host for d in r.proxy.denials] == ["no2.test", "no3.test", "no4.test"]


def test_a_large_transfer_relays_both_ways(start, up: Upstream) -> None:
    """Back-pressure: 1 MiB from the fake internet's bulk port through a small buffer."""
    r = start(["upstream.test", up.addr], buffer=4096)
    s, head = connect(r.addr, "upstream.test:9000")
    assert head.startswith(b"HTTP/1.1 200")
    s.sendall(b"B")
    n = 0
    while chunk := s.recv(65536):
        n += len(chunk)
    s.close()
    assert n == 1 << 20


def test_concurrent_slow_resolution_does_not_stall_others(up: Upstream) -> None:
    gate = threading.Event()

    def resolver(name: str) -> list[str]:
        if name == "slow.test":
            gate.wait(10)
        return [up.addr]

    r = Running(EgressProxy(Policy.parse(["slow.test", "upstream.test", up.addr]),
                            resolver=resolver))
    try:
        slow = socket.create_connection(r.addr, timeout=5)
        slow.sendall(b"CONNECT slow.test:8080 HTTP/1.1\r\n\r\n")
        s, head = connect(r.addr, "upstream.test:8080")
        assert head.startswith(b"HTTP/1.1 200")
        s.close()
        gate.set()
        assert slow.recv(100).startswith(b"HTTP/1.1 200")
        slow.close()
    finally:
        gate.set()
        r.close()


curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@curl
@pytest.mark.parametrize("how", ["http", "connect", "socks5h"])
def test_curl_works_through_the_proxy(start, up: Upstream, how: str) -> None:
    r = start(["upstream.test", up.addr])
    env = dict(os.environ, **proxy_env(*r.addr))
    args = ["curl", "-sS", "-f", "--max-time", "10"]
    if how == "connect":
        args.append("--proxytunnel")
    if how == "socks5h":
        for k in ("http_proxy", "HTTP_PROXY"):
            env.pop(k)
    out = subprocess.run([*args, "http://upstream.test:8080/curl"], env=env,
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello /curl host=upstream.test:8080\n"
    denied = subprocess.run([*args, "http://elsewhere.test:8080/"], env=env,
                            capture_output=True, text=True, timeout=20)
    assert denied.returncode != 0
    assert ("elsewhere.test", 8080, "not in allow-list") in reasons(r)


# ---- the jail's proxy process: confined (issue 16 item 3) ----------------------------------------

ESCAPES = """
import ctypes, json, os, resource, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "confined":
    from isol8r.daemon.egress import confine
    confine(65534, 128)
else:  # the twin: the same id, without confine()
    os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
libc = ctypes.CDLL(None, use_errno=True)
out = {}
out["unshare"] = "ok" if libc.unshare(0x10000000) == 0 else os.strerror(ctypes.get_errno())
pid = os.fork()
if pid == 0:
    try:
        os.execv("/bin/true", ["/bin/true"])
    except OSError as e:
        os._exit(13 if e.errno == 1 else 14)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
out["execve"] = {0: "ok", 13: "Operation not permitted"}.get(code, "other")
lines = open("/proc/self/status").read().splitlines()
status = dict(l.split(":\\t", 1) for l in lines if ":\\t" in l)
out["caps"] = [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")]
out["nnp"] = status["NoNewPrivs"].strip()
out["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
print(json.dumps(out))
"""


def test_confine_takes_what_a_relay_does_not_need() -> None:
    """The proxy's confinement, in a process of its own: no capability in any set (bounding
    included), no_new_privs, a bounded descriptor table, and a seccomp filter under which
    execve and unshare fail; the twin, the same uid without confine(), can do both."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    got = {}
    for how in ("confined", "twin"):
        p = subprocess.run([os.sys.executable, "-c", ESCAPES, src, how], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        import json
        got[how] = json.loads(p.stdout)
    zero = "0000000000000000"
    assert got["confined"] == {"unshare": "Operation not permitted",
                               "execve": "Operation not permitted",
                               "caps": [zero] * 4, "nnp": "1", "nofile": 128}, got
    assert got["twin"]["unshare"] == "ok" and got["twin"]["execve"] == "ok", got
    assert got["twin"]["caps"][2] != zero and got["twin"]["nnp"] == "0", got
