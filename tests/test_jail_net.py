"""Issue 16, the network modes of a real jail: --net none|host|user, --publish, --netns.

No packet may leave the machine. --net user's stack follows the default route of the namespace
it runs in, so every jail with a stack is run from inside an "island" (tests/nethelp.py): the
test runs the whole isol8r call (the library or the CLI, each its own process, and so its own
stack) under `ip netns exec HOST`, where HOST is a namespace the test made whose only link
leads to a fake internet namespace (HTTP on 8080, DNS on 53) and nowhere else. The CLI runs
with ISOL8R_CLI_SERVER=0 there: a CLI server started elsewhere would run the jail, and its
stack, in its own network namespace, not the island's.
"""

from __future__ import annotations

import json
import os
import select
import stat
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import isol8r
from conftest import ROOT, cli, needs_root, py
from nethelp import Island, in_host, ip, island, netns, stop, subnet

pytestmark = needs_root

ENV = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}",
           ISOL8R_CLI_SERVER="0")
IFACES = "import json, socket; print(json.dumps(sorted(n for _, n in socket.if_nameindex())))"


@pytest.fixture(scope="module")
def isle() -> Iterator[Island]:
    with island(mib=1) as i:
        yield i


def in_island(isle: Island, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Python code (with isol8r importable) in the island's host namespace."""
    return in_host(isle, code, timeout, ENV)


def island_cli(isle: Island, *args: str, **kw: Any) -> subprocess.Popen[str]:
    """`isol8r run ARGS` in the island's host namespace, its stdout and stderr piped."""
    return subprocess.Popen(["ip", "netns", "exec", isle.host, sys.executable, "-m", "isol8r",
                             "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, **kw)


def stacks(ns: str) -> list[int]:
    """The user-mode stacks (slirp4netns, pasta) running in network namespace ns."""
    ino = os.stat(f"/run/netns/{ns}").st_ino
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm in ("slirp4netns", "pasta") and os.stat(f"/proc/{pid}/ns/net").st_ino == ino:
                out.append(int(pid))
        except OSError:
            pass
    return out


def port_free(isle: Island, port: int) -> bool:
    out = in_island(isle, "import socket\ns = socket.socket()\n"
                    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                    f"s.bind(('0.0.0.0', {port})); s.listen(); print('free')")
    return out.stdout == "free\n"


# ---- none and host --------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"net": "none"}])
def test_the_default_and_none_have_only_loopback(options: dict[str, Any]) -> None:
    r = py(IFACES, **options)
    assert json.loads(r.stdout) == ["lo"], r


@pytest.mark.parametrize("options", [{"net": "host"}, {"share_net": True}])
def test_net_host_sees_the_hosts_interfaces(options: dict[str, Any]) -> None:
    r = py(IFACES, **options)
    assert json.loads(r.stdout) == sorted(n for _, n in socket.if_nameindex()), r
    assert len(json.loads(r.stdout)) > 1


def test_net_host_on_the_cli() -> None:
    p = cli("run", "--net", "host", "--", "/usr/bin/python3", "-c", IFACES)
    assert (p.returncode, json.loads(p.stdout)) == \
        (0, sorted(n for _, n in socket.if_nameindex())), p.stderr


# ---- user ---------------------------------------------------------------------------------------

JAIL_CLIENT = """
import socket, sys
addr = socket.getaddrinfo("pypi.test", 8080, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
s = socket.create_connection(("pypi.test", 8080), timeout=10)
s.sendall(b"GET /from-the-jail HTTP/1.0\\r\\nHost: pypi.test\\r\\n\\r\\n")
out = b""
while c := s.recv(65536):
    out += c
print(addr, out.decode().splitlines()[-1])
"""


def test_net_user_reaches_the_upstream_by_name_through_the_jails_dns(isle: Island) -> None:
    """Three runs from one process: the later ones get warm jails of the shape, which waited
    without a stack; each gets its own when it is handed out, and none is left running."""
    before = stacks(isle.host)
    out = in_island(isle, "import isol8r\n"
                    "for _ in range(3):\n"
                    f" r = isol8r.run(['/usr/bin/python3', '-c', {JAIL_CLIENT!r}], net='user',\n"
                    "                capture_output=True, timeout=30)\n"
                    " print(r.verdict, r.stdout.decode() + r.stderr.decode(), end='')\n")
    want = f"ok {isle.addr} hello /from-the-jail host=pypi.test\n"
    assert out.stdout == want * 3, (out.stdout, out.stderr)
    assert stacks(isle.host) == before == [], "a stack was left running"


def test_net_user_on_the_cli_generates_resolv_conf_and_says_which_stack(isle: Island) -> None:
    p = island_cli(isle, "-v", "--net", "user", "--", "/bin/sh", "-c",
                   "cat /etc/resolv.conf; /usr/bin/python3 -c \"$0\"", JAIL_CLIENT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    dns = "10.0.2.3" if "slirp4netns" in err else "169.254.1.1"
    assert out == (f"nameserver {dns}\noptions edns0\n"
                   f"{isle.addr} hello /from-the-jail host=pypi.test\n"), err
    assert "isol8r: --net user: " in err and "DNS " + dns in err, err
    assert stacks(isle.host) == []


def test_net_user_cannot_reach_the_hosts_loopback(isle: Island) -> None:
    """Neither the stack's gateway (10.0.2.2) nor 127.0.0.1 leads to a service on the host's
    loopback; the twin, --net host, reaches it, so the probe can see it."""
    holder = subprocess.Popen(
        ["ip", "netns", "exec", isle.host, sys.executable, "-c",
         "import socket\ns = socket.create_server(('127.0.0.1', 18093))\n"
         "print('ready', flush=True)\nwhile True:\n c, _ = s.accept(); c.sendall(b'HOST'); "
         "c.close()"], stdout=subprocess.PIPE, text=True)
    probe = ("import socket\nfor a in ('10.0.2.2', '127.0.0.1'):\n"
             " try:\n  print(a, socket.create_connection((a, 18093), timeout=2).recv(9))\n"
             " except OSError as e:\n  print(a, 'no')")
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        for net, want in (("user", "no"), ("host", "b'HOST'")):
            out = subprocess.run(
                ["ip", "netns", "exec", isle.host, sys.executable, "-c",
                 "import isol8r, sys\nr = isol8r.run(['/usr/bin/python3', '-c', sys.argv[1]], "
                 f"net={net!r}, capture_output=True, timeout=30)\n"
                 "print(r.stdout.decode(), end='')", probe],
                capture_output=True, text=True, timeout=60, env=ENV)
            assert out.stdout.splitlines()[1:] == [f"127.0.0.1 {want}"], (net, out)
            assert out.stdout.splitlines()[0] == "10.0.2.2 no", (net, out)
    finally:
        stop(holder)  # type: ignore[arg-type]


METADATA_PROBE = """
import errno, socket
for a, port in (("10.0.2.2", 18094), ("169.254.169.254", 80)):
    try:
        print(a, socket.create_connection((a, port), timeout=5).recv(20).decode())
    except OSError as e:
        print(a, errno.errorcode.get(e.errno, e))
"""


def test_allow_host_loopback_opens_the_hosts_loopback_and_the_metadata_address(
        isle: Island) -> None:
    """Issue 16 item 4. The host's loopback service (on the island's 127.0.0.1) and a stand-in
    metadata service (169.254.169.254 on the fake internet's loopback, reached through the
    island's default route: every packet stays in namespaces this test made) are out of reach
    in --net user: the metadata address is refused by the jail's own routing table (EACCES at
    once, no packet leaves); --allow-host-loopback (the twin) reaches both, and says so."""
    ip("-n", isle.inet, "addr", "add", "169.254.169.254/32", "dev", "lo")
    serve = ("import socket, sys\ns = socket.create_server((sys.argv[1], int(sys.argv[2])))\n"
             "print('ready', flush=True)\nwhile True:\n c, _ = s.accept(); "
             "c.sendall(sys.argv[3].encode()); c.close()")
    local = subprocess.Popen(["ip", "netns", "exec", isle.host, sys.executable, "-c", serve,
                              "127.0.0.1", "18094", "HOST-LOOPBACK"],
                             stdout=subprocess.PIPE, text=True)
    meta = subprocess.Popen(["ip", "netns", "exec", isle.inet, sys.executable, "-c", serve,
                             "169.254.169.254", "80", "CREDENTIALS"],
                            stdout=subprocess.PIPE, text=True)
    try:
        for proc in (local, meta):
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        lib = ("import isol8r, sys\n"
               "r = isol8r.run(['/usr/bin/python3', '-c', sys.argv[1]], net='user', "
               "allow_host_loopback=sys.argv[2] == '1', capture_output=True, timeout=30)\n"
               "print(r.stdout.decode() + r.stderr.decode(), end='')\n"
               "print(any('--allow-host-loopback' in n for n in r.notes))")
        for flag, want in (("0", ["10.0.2.2 ENETUNREACH", "169.254.169.254 EACCES", "False"]),
                           ("1", ["10.0.2.2 HOST-LOOPBACK", "169.254.169.254 CREDENTIALS",
                                  "True"])):
            out = subprocess.run(["ip", "netns", "exec", isle.host, sys.executable, "-c", lib,
                                  METADATA_PROBE, flag], capture_output=True, text=True,
                                 timeout=60, env=ENV)
            assert out.stdout.splitlines() == want, (flag, out)
        p = island_cli(isle, "-v", "--net", "user", "--allow-host-loopback", "--",
                       "/usr/bin/python3", "-c", METADATA_PROBE)
        out_cli, err = p.communicate(timeout=60)
        assert out_cli.splitlines()[1] == "169.254.169.254 CREDENTIALS", (out_cli, err)
        assert ("isol8r: --allow-host-loopback: the jail reaches the host's loopback services "
                "and the metadata address 169.254.169.254") in err, err
        assert stacks(isle.host) == []
    finally:
        stop(local)  # type: ignore[arg-type]
        stop(meta)  # type: ignore[arg-type]
        subprocess.run(["ip", "-n", isle.inet, "addr", "del", "169.254.169.254/32", "dev", "lo"],
                       capture_output=True)


# ---- publish ------------------------------------------------------------------------------------

SERVER = ("import socket\ns = socket.create_server(('0.0.0.0', 8000))\nprint('ready', flush=True)\n"
          "c, _ = s.accept(); c.recv(100); c.sendall(b'from the jail'); c.close()")


def test_publish_forwards_a_port_to_the_jail_and_frees_it(isle: Island) -> None:
    p = island_cli(isle, "--net", "user", "--publish", "18090:8000",
                   "--publish", "127.0.0.1:18091:8000", "--", "/usr/bin/python3", "-c", SERVER)
    try:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 30)
        assert ready and p.stdout.readline() == "ready\n", p.stderr.read() if p.stderr else ""
        assert not port_free(isle, 18090) and not port_free(isle, 18091)
        assert len(stacks(isle.host)) == 1
        out = in_island(isle, "import socket\n"
                        "s = socket.create_connection(('127.0.0.1', 18091), timeout=10)\n"
                        "s.sendall(b'hi'); print(s.recv(100).decode())")
        assert out.stdout == "from the jail\n", out.stderr
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            stop(p)  # type: ignore[arg-type]
        p.communicate()
    assert port_free(isle, 18090) and port_free(isle, 18091)
    assert stacks(isle.host) == []


def test_a_published_port_in_use_is_a_one_line_error_before_the_program_starts(
        isle: Island) -> None:
    holder = subprocess.Popen(
        ["ip", "netns", "exec", isle.host, sys.executable, "-c",
         "import socket, time\ns = socket.create_server(('0.0.0.0', 18092))\n"
         "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        p = island_cli(isle, "--net", "user", "--publish", "18092:80", "--", "/bin/sh", "-c",
                       "echo started")
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out, err) == \
            (125, "", "isol8r: --publish 18092:80: host port 18092 is in use\n")
        lib = in_island(isle, "import isol8r\ntry:\n"
                        " isol8r.run(['/bin/true'], net='user', publish=['18092:80'])\n"
                        "except isol8r.SetupError as e:\n print(e)")
        assert lib.stdout == "--publish 18092:80: host port 18092 is in use\n", lib.stderr
        assert stacks(isle.host) == []
    finally:
        stop(holder)  # type: ignore[arg-type]


# ---- netns --------------------------------------------------------------------------------------


@pytest.fixture
def named() -> Iterator[str]:
    """A named namespace with a veth pair d0-d1 in it, d0 holding 10.203.N.1/24."""
    with netns("join") as ns:
        ip("-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ip("-n", ns, "addr", "add", f"10.203.{subnet()}.1/24", "dev", "d0")
        ip("-n", ns, "link", "set", "d0", "up")
        yield ns


@pytest.mark.parametrize("how", ["name", "path"])
def test_netns_joins_a_named_namespace(named: str, how: str) -> None:
    value = named if how == "name" else f"/run/netns/{named}"
    r = py(IFACES, netns=value)
    assert json.loads(r.stdout) == ["d0", "d1", "lo"], r
    r = py("print(open('/proc/net/fib_trie').read())", netns=value)
    assert f"10.203.{subnet()}.1" in r.stdout.decode(), r
    p = cli("run", "--netns", value, "--", "/usr/bin/python3", "-c", IFACES)
    assert (p.returncode, json.loads(p.stdout or "0")) == (0, ["d0", "d1", "lo"]), p.stderr
    assert json.loads(py(IFACES).stdout) == ["lo"]  # the next jail has a namespace of its own


def test_the_supervisor_leaves_the_joined_namespace(named: str) -> None:
    """In-process (no fork server): the thread that cloned the jail is back in its own."""
    mine = os.readlink("/proc/thread-self/ns/net")
    r = isol8r.run(["/usr/bin/python3", "-c", IFACES], netns=named, capture_output=True,
                   fork_server=False)
    assert json.loads(r.stdout) == ["d0", "d1", "lo"]
    assert os.readlink("/proc/thread-self/ns/net") == mine


# ---- bad values ---------------------------------------------------------------------------------

BAD = [
    (["--net", "bogus"], "--net bogus: expected one of none, host, user"),
    (["--net", "user", "--share-net"], "--share-net: conflicts with --net user"),
    # (the options are read in the table's order, whatever the command line's)
    (["--share-net", "--net", "none"], "--share-net: conflicts with --net none"),
    (["--netns", "isol8r-no-such-ns"], "--netns isol8r-no-such-ns: no network namespace there "
     "(/run/netns/isol8r-no-such-ns: No such file or directory)"),
    (["--netns", "/etc/passwd"], "--netns /etc/passwd: not a network namespace (a name in "
     "/run/netns, or a path such as /proc/PID/ns/net)"),
    (["--netns", "/proc/self/ns/net", "--net", "user"],
     "--netns /proc/self/ns/net: conflicts with --net user"),
    (["--allow-host-loopback"], "--allow-host-loopback: needs --net user"),
    # (--publish with the default --net none forwards TCP since issue 16 item 2)
    (["--net", "host", "--publish", "80:80"], "--publish 80:80: needs --net user or --net none"),
    (["--net", "host", "--publish", "80:80/udp"],
     "--publish 80:80/udp: needs --net user or --net none"),
    (["--net", "user", "--publish", "80"],
     "--publish 80: expected [HOST_ADDR:]HOST_PORT:JAIL_PORT[/udp]"),
    (["--net", "user", "--publish", "0:80"], "--publish 0:80: bad port '0' (1-65535)"),
    (["--net", "user", "--publish", "1:2/sctp"],
     "--publish 1:2/sctp: protocol must be tcp or udp, not 'sctp'"),
    (["--net", "user", "--publish", "300.1.1.1:1:2"],
     "--publish 300.1.1.1:1:2: bad host address '300.1.1.1'"),
    (["--allow-domain", "*"], "--allow-domain *: a bare '*' would allow every host; name the "
     "hosts"),
    (["--allow-domain", "*.org"], "--allow-domain *.org: '*.org' is too broad: the wildcard "
     "must sit above a domain with a dot"),
    (["--net", "user", "--allow-domain", "pypi.org"], "--allow-domain pypi.org: needs --net "
     "none (the default): the proxy is the jail's only way out"),
    (["--net", "user", "--share-mount"],
     "--net user: needs the mount namespace, for the jail's /etc/resolv.conf (not "
     "--share-mount)"),
]


@pytest.mark.parametrize("args, line", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_line_errors(args: list[str], line: str) -> None:
    p = cli("run", *args, "--", "/bin/true", env_extra={"ISOL8R_CLI_SERVER": "0"})
    assert (p.returncode, p.stdout, p.stderr) == (125, "", f"isol8r: {line}\n")
    options: dict[str, Any] = {}
    i = 0
    while i < len(args):
        key = args[i][2:].replace("-", "_")
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            options.setdefault(key, []).append(args[i + 1]) if key == "publish" else \
                options.__setitem__(key, args[i + 1])
            i += 2
        else:
            options[key] = True
            i += 1
    with pytest.raises(isol8r.SpecError) as e:
        isol8r.run(["/bin/true"], **options)
    assert str(e.value).lstrip("-") == line.lstrip("-")  # the library names `net`, not `--net`


def test_a_netns_gone_after_the_spec_is_a_one_line_error() -> None:
    """Removed between the Spec and the run: the jail's Shape names it, nothing starts."""
    with netns("gone") as ns:
        s = isol8r.Spec.from_options(["/bin/true"], {"netns": ns})
    for fork_server in (True, False):
        with pytest.raises(isol8r.SpecError) as e:
            isol8r.run(s, fork_server=fork_server)
        assert str(e.value) == (f"--netns /run/netns/{ns}: no network namespace there "
                                f"(/run/netns/{ns}: No such file or directory)")


def test_nothing_is_left_behind(isle: Island) -> None:
    """No stack in the island, none of this session's named namespaces but the island's (the
    session's own check covers mounts, cgroups and the named namespaces at its end)."""
    assert stacks(isle.host) == []
    mine = f"isol8r-test-{os.getpid()}-"
    assert sorted(n for n in os.listdir("/run/netns") if n.startswith(mine)) == \
        sorted([isle.host, isle.inet])


def test_a_netns_replaced_after_planning_is_refused_at_the_clone() -> None:
    """The Shape holds the namespace by identity: one recreated under the same name between
    the plan and the clone is refused, one line naming it, and nothing is started."""
    from isol8r import pipeline, supervisor
    with netns("stale") as ns:
        s = isol8r.Spec.from_options(["/bin/true"], {"netns": ns})
        plan = pipeline.prepare(pipeline.shape(s))
        ip("netns", "del", ns)
        ip("netns", "add", ns)
        mine = os.readlink("/proc/thread-self/ns/net")
        with pytest.raises(isol8r.SetupError) as e:
            supervisor.spawn(s, plan)
        assert str(e.value) == (f"--netns /run/netns/{ns}: ESTALE (Stale file handle): "
                                "replaced since the jail was planned")
        assert os.readlink("/proc/thread-self/ns/net") == mine


# ---- allow-domain -------------------------------------------------------------------------------

FETCH = """
import json, os, socket, urllib.request
out = {"proxy": os.environ["HTTP_PROXY"]}
for url in ("http://pypi.test:8080/allowed", "http://evil.test:8080/denied"):
    try:
        out[url] = urllib.request.urlopen(url, timeout=10).read().decode().strip()
    except Exception as e:
        out[url] = str(getattr(e, "code", e))
try:
    socket.create_connection((os.environ["UPSTREAM"], 8080), timeout=3)
    out["direct"] = "connected"
except OSError as e:
    out["direct"] = e.strerror
print(json.dumps(out))
"""


def run_allow(isle: Island, rules: list[str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    out = in_island(isle, "import isol8r, json, sys\n"
                    f"r = isol8r.run(['/usr/bin/python3', '-c', {FETCH!r}], allow_domain={rules!r},"
                    f" env={{'UPSTREAM': {isle.addr!r}}}, capture_output=True, timeout=30)\n"
                    "print(json.dumps([json.loads(r.stdout), r.net_denied]))")
    assert out.returncode == 0, out.stderr
    got, denied = json.loads(out.stdout)
    return got, denied


def test_allow_domain_admits_the_named_host_only_and_lists_the_denials(isle: Island) -> None:
    """The proxy on the jail's loopback admits pypi.test (and its private address, which an
    address rule names); evil.test is refused and listed; a direct connection has no route."""
    got, denied = run_allow(isle, ["pypi.test", isle.addr])
    assert got == {"proxy": "http://127.0.0.1:3128",
                   "http://pypi.test:8080/allowed": "hello /allowed host=pypi.test:8080",
                   "http://evil.test:8080/denied": "403",
                   "direct": "Network is unreachable"}, got
    assert [(d["host"], d["port"], d["reason"]) for d in denied] == \
        [("evil.test", 8080, "not in allow-list")]


def test_allow_domain_refuses_a_name_that_resolves_to_a_private_address(isle: Island) -> None:
    """The twin of the test above without the address rule: pypi.test resolves to the fake
    internet's 10.202.N.1, a private address, and a name rule alone never opens one."""
    got, denied = run_allow(isle, ["pypi.test"])
    assert got["http://pypi.test:8080/allowed"] == "403", got
    assert ("pypi.test", 8080, f"resolves to a private address {isle.addr}") in \
        [(d["host"], d["port"], d["reason"]) for d in denied]
    left = os.listdir("/run/isol8r/egress") if os.path.isdir("/run/isol8r/egress") else []
    assert left == [], "a proxy's denials file was left behind"


def test_each_jails_proxy_runs_as_an_id_of_its_own_without_capabilities_and_ends_with_it(
        ) -> None:
    """Seen from the host while two jails run: each proxy (an `isol8r.daemon.egress --jail`
    process, started by the fork server) runs under an id of its jail's own (not root, not
    nobody, whom other processes share, and not the other jail's) with no capability; they are
    gone when the runs return."""
    import threading
    results: list[isol8r.Result] = []
    threads = [threading.Thread(target=lambda: results.append(isol8r.run(
        ["/bin/sleep", "3"], allow_domain=["pypi.org"]))) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        found: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + 10
        while len(found) < 2 and time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                st = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                if b"isol8r.daemon.egress" in argv and b"--jail" in argv \
                        and st["Uid"].split()[0] != "0":  # after its start-up
                    found[pid] = st
            time.sleep(0.05)
    finally:
        for t in threads:
            t.join()
    assert len(found) == 2, f"the two jails' proxies were not both found: {found}"
    uids = set()
    for st in found.values():
        uid = st["Uid"].split()[0]
        assert st["Uid"].split() == [uid] * 4 and st["Gid"].split() == [uid] * 4
        assert uid not in ("0", "65534", str(os.getuid()))
        assert st["Groups"].strip() == "" and int(st["CapEff"], 16) == 0 \
            and int(st["CapPrm"], 16) == 0
        uids.add(uid)
    assert len(uids) == 2, "two jails' proxies share an id"
    assert [r.verdict for r in results] == ["ok", "ok"] and all(r.net_denied == [] for r in results)
    assert not any(Path(f"/proc/{pid}").exists() for pid in found)


@pytest.mark.skipif(os.access("/dev/net/tun", os.R_OK | os.W_OK) and
                    os.stat("/dev/net/tun").st_mode & 0o006 == 0o006,
                    reason="/dev/net/tun is open to every user here")
def test_an_unprivileged_net_user_without_dev_net_tun_is_a_one_line_error() -> None:
    """Where /dev/net/tun is not open to every user (0600 on this VM), a user's stack cannot
    open it, and says so instead of slirp4netns' `child failed(1)`."""
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "/usr/bin/python3", "-m", "isol8r", "run", "--net", "user", "--",
                        "/bin/true"], capture_output=True, text=True, timeout=60, cwd="/",
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode == 125 and p.stdout == "", p
    assert p.stderr.startswith("isol8r: --net user: slirp4netns needs /dev/net/tun, which this "
                               "user cannot open (mode ") and p.stderr.count("\n") == 1, p


FLOOD = """
import json, socket, sys, time, urllib.request
held, refused = [], 0
for _ in range(700):
    try:
        held.append(socket.create_connection(("127.0.0.1", 3128), timeout=5))
    except OSError:
        refused += 1
for s in held:  # half of them also start a request and never finish it
    try:
        s.send(b"CONNECT " + b"a" * 4000)
    except OSError:
        pass
time.sleep(1)
closed = 0
for s in held:
    s.setblocking(False)
    try:
        closed += s.recv(1) == b""
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print("flooded", flush=True)
time.sleep(float(sys.argv[1]))
for s in held:
    s.close()
time.sleep(0.5)
body = urllib.request.urlopen("http://pypi.test:8080/after", timeout=10).read().decode().strip()
print(json.dumps({"held": len(held), "closed": closed, "refused": refused, "after": body}))
"""


def test_a_flood_from_the_jail_cannot_exhaust_its_proxy(isle: Island) -> None:
    """700 connections at once from the jail, each with an unfinished request: the proxy keeps
    at most its bound (256), closes the rest at once (each a denial), its descriptors stay
    under its RLIMIT_NOFILE and its memory small, and once the flood ends it serves an allowed
    request. The proxy is found by a rule only this test uses."""
    tag = f"flood{os.getpid()}.test"
    p = subprocess.Popen(
        ["ip", "netns", "exec", isle.host, sys.executable, "-c",
         "import isol8r, json, sys\n"
         "r = isol8r.run(['/usr/bin/python3', '-c', sys.argv[1], '3'], "
         f"allow_domain=['pypi.test', {isle.addr!r}, {tag!r}], timeout=60)\n"
         "print(json.dumps(r.net_denied))", FLOOD], stdout=subprocess.PIPE, text=True, env=ENV)
    fds, rss = [], []
    try:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready and p.stdout.readline() == "flooded\n"
        proxy = None
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"isol8r.daemon.egress" in argv and tag.encode() in argv:
                proxy = pid
        assert proxy is not None, "the jail's proxy was not found"
        for _ in range(10):
            fds.append(len(os.listdir(f"/proc/{proxy}/fd")))
            status = Path(f"/proc/{proxy}/status").read_text()
            rss.append(int(status.split("VmRSS:")[1].split()[0]))
            time.sleep(0.1)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            stop(p)  # type: ignore[arg-type]
            p.communicate()
    lines = out.splitlines()
    got, denied = json.loads(lines[0]), json.loads(lines[1])
    assert got["held"] + got["refused"] == 700 and got["closed"] >= got["held"] - 256, got
    assert got["after"] == "hello /after host=pypi.test:8080", got
    assert 256 <= max(fds) <= 2 * 256 + 64, fds
    assert max(rss) < 128 * 1024, rss
    over = 700 - 256 - got["refused"]  # the list of denials keeps 256 (all are counted)
    assert sum(d["reason"] == "connection limit" for d in denied) >= min(over, 256), denied


UNPRIVILEGED = """
import isol8r, sys
for fork_server in (False, True, True):  # in-process; the fork server's first, then a warm jail
    r = isol8r.run(["/usr/bin/python3", "-c", sys.argv[1]], net="user", capture_output=True,
                   fork_server=fork_server, timeout=30)
    print(r.verdict, r.stdout.decode() + r.stderr.decode(), end="")
"""


def test_net_user_for_an_unprivileged_caller(isle: Island, tmp_path: Path) -> None:
    """Issue 16 item 1: a caller that is not root (uid 65534) gets --net user, in-process and
    from the fork server's warm jails, with the metadata address refused. This VM's
    /dev/net/tun is 0600, which no user's stack can open, so the test gives the caller, in a
    mount namespace of its own (the host's node is not touched), a node of the same device
    with mode 0666, as most distributions have it."""
    tun = tmp_path / "tun"
    os.mknod(tun, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    os.chmod(tun, 0o666)
    probe = JAIL_CLIENT + ("import socket\ntry:\n socket.create_connection(('169.254.169.254', 80),"
                           " timeout=3)\nexcept OSError as e:\n print(e.strerror)\n")
    out = subprocess.run(
        ["ip", "netns", "exec", isle.host, "unshare", "--mount", "--propagation", "private",
         "sh", "-c", 'mount --bind "$0" /dev/net/tun && exec setpriv --reuid=65534 '
         '--regid=65534 --clear-groups /usr/bin/python3 -c "$1" "$2"', str(tun), UNPRIVILEGED,
         probe],
        capture_output=True, text=True, timeout=120, cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
             "ISOL8R_CLI_SERVER": "0"})
    want = f"ok {isle.addr} hello /from-the-jail host=pypi.test\nPermission denied\n"
    assert out.stdout == want * 3, (out.stdout, out.stderr)
    assert stacks(isle.host) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_publish_with_net_none_forwards_tcp_into_the_jail_and_frees_the_port() -> None:
    """Issue 16 item 2: --publish without --net user. The jail keeps its loopback-only
    namespace (no route out); a forwarder relays the host port (the host's 127.0.0.1 here) to
    the program's listener, and the port is free once the run returns."""
    port = free_port()
    probe = ("import socket\ns = socket.create_server(('127.0.0.1', 8000))\n"
             "print('ready', sorted(n for _, n in socket.if_nameindex()), flush=True)\n"
             "c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()")
    p = subprocess.Popen([sys.executable, "-m", "isol8r", "run", "-v", "--publish",
                          f"127.0.0.1:{port}:8000", "--", "/usr/bin/python3", "-c", probe],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 30)
        assert ready and p.stdout.readline() == "ready ['lo']\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"through the forwarder")
            assert c.recv(100) == b"THROUGH THE FORWARDER"
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "isol8r: --publish with --net none: forwarder pid " in err, err
    finally:
        if p.poll() is None:
            stop(p)  # type: ignore[arg-type]
            p.communicate()
    with socket.socket() as s:  # free again (a closed connection may leave a TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_publish_udp_with_net_none_relays_datagrams_and_frees_the_port() -> None:
    """--publish HOST:JAIL/udp with --net none: a datagram to the host port reaches the jail's
    UDP server, its answer comes back to the sender, and the port is free after the run."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    probe = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "s.bind(('127.0.0.1', 5353)); print('ready', flush=True)\n"
             "data, peer = s.recvfrom(100); s.sendto(data.upper(), peer)")
    p = subprocess.Popen([sys.executable, "-m", "isol8r", "run", "--publish",
                          f"127.0.0.1:{port}:5353/udp", "--", "/usr/bin/python3", "-c", probe],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 30)
        assert ready and p.stdout.readline() == "ready\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(1)
            got = b""
            for _ in range(10):  # the forwarder may start after the jail's program
                c.sendto(b"a datagram", ("127.0.0.1", port))
                try:
                    got = c.recv(100)
                    break
                except TimeoutError:
                    continue
            assert got == b"A DATAGRAM"
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    finally:
        if p.poll() is None:
            stop(p)  # type: ignore[arg-type]
            p.communicate()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # free again
        s.bind(("127.0.0.1", port))


UNPRIVILEGED_PUBLISH = """
import subprocess, sys
import isol8r
port = int(sys.argv[1])
server = ("import socket; s = socket.create_server(('127.0.0.1', 8000)); c, _ = s.accept(); "
          "c.sendall(b'hello from the jail')")
client = ("import socket, sys, time\\ndeadline = time.monotonic() + 30\\n"
          "while time.monotonic() < deadline:\\n"
          " try:\\n  got = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)"
          ".recv(100)\\n"
          " except OSError:\\n  got = b''\\n"
          " if got:\\n  print(got); break\\n"
          " time.sleep(0.05)  # closed at once: the program does not listen yet")
for fork_server in (False, True, True):  # a client process: an in-process run needs one thread
    c = subprocess.Popen([sys.executable, "-c", client, str(port)], stdout=subprocess.PIPE,
                         text=True)
    r = isol8r.run(["/usr/bin/python3", "-c", server], publish=[f"127.0.0.1:{port}:8000"],
                   fork_server=fork_server, timeout=30)
    print(r.verdict, c.communicate(timeout=30)[0], end="")
"""


def test_publish_with_net_none_for_an_unprivileged_caller() -> None:
    """The same as uid 65534, in-process and from the fork server's warm jails: the forwarder
    joins the jail's user namespace, then its network namespace."""
    port = free_port()
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "/usr/bin/python3", "-c", UNPRIVILEGED_PUBLISH, str(port)],
                         capture_output=True, text=True, timeout=120, cwd="/",
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
                              "ISOL8R_CLI_SERVER": "0"})
    assert out.stdout == "ok b'hello from the jail'\n" * 3, (out.stdout, out.stderr)


def test_allow_domain_for_an_unprivileged_caller(isle: Island) -> None:
    """--allow-domain as uid 65534 (in-process and from the fork server): the proxy's socket
    is made by a child that joins the jail's namespaces, its denials wait in a directory of the
    user's own; the allowed name is fetched, the other refused and listed."""
    code = ("import isol8r, json, sys\nfor fs in (False, True):\n"
            " r = isol8r.run(['/usr/bin/python3', '-c', sys.argv[1]], allow_domain=["
            f"'pypi.test', {isle.addr!r}], env={{'UPSTREAM': {isle.addr!r}}}, "
            "capture_output=True, timeout=30, fork_server=fs)\n"
            " print(json.dumps([json.loads(r.stdout or 'null'), r.net_denied, "
            "r.stderr.decode()]))")
    out = subprocess.run(["ip", "netns", "exec", isle.host, "setpriv", "--reuid=65534",
                          "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", code,
                          FETCH], capture_output=True, text=True, timeout=120, cwd="/",
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
                              "ISOL8R_CLI_SERVER": "0", "TMPDIR": "/tmp"})
    assert out.returncode == 0, out.stderr
    for line in out.stdout.splitlines():
        got, denied, err = json.loads(line)
        assert got == {"proxy": "http://127.0.0.1:3128",
                       "http://pypi.test:8080/allowed": "hello /allowed host=pypi.test:8080",
                       "http://evil.test:8080/denied": "403",
                       "direct": "Network is unreachable"}, (got, err)
        assert [(d["host"], d["port"], d["reason"]) for d in denied] == \
            [("evil.test", 8080, "not in allow-list")]
    assert len(out.stdout.splitlines()) == 2, out
    assert os.listdir("/tmp/isol8r-65534-egress") == []
    os.rmdir("/tmp/isol8r-65534-egress")  # made by the runs above
