"""Issue 2, namespaces: PID, mount, network, IPC, UTS, user and cgroup are all new by default,
and each can be shared with the host. Every check looks from inside a real jail, and every
namespace's share twin shows the host's view, which is how we know the check can fail.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
from typing import Any

import pytest

from conftest import cli, needs_root, py, sh

pytestmark = needs_root

NS_FILES = {"user": "user", "pid": "pid", "mount": "mnt", "net": "net", "ipc": "ipc", "uts": "uts",
            "cgroup": "cgroup"}
SHARE_OPTION = {"net": "share_net", "pid": "share_pid", "ipc": "share_ipc", "uts": "share_uts",
                "cgroup": "share_cgroup", "mount": "share_mount", "user": "no_userns"}


def inside(code: str, **options: Any) -> Any:
    """Run python code in a jail; it prints one JSON value on its last line."""
    r = py(code, **options)
    assert r.exit_code == 0, (r, r.stderr)
    return json.loads(r.stdout.decode().splitlines()[-1])


def host_ns() -> dict[str, str]:
    return {name: os.readlink(f"/proc/self/ns/{f}") for name, f in NS_FILES.items()}


NS_CODE = ("import json, os; print(json.dumps({n: os.readlink('/proc/self/ns/' + f) "
           f"for n, f in {NS_FILES!r}.items()}}))")


# ---- all on by default, each one can be shared -------------------------------------------------


def test_every_namespace_is_new_by_default() -> None:
    host, jailed = host_ns(), inside(NS_CODE)
    same = sorted(n for n in NS_FILES if host[n] == jailed[n])
    assert same == [], f"namespaces shared with the host by default: {same}"


@pytest.mark.parametrize("ns", sorted(SHARE_OPTION))
def test_share_option_keeps_exactly_that_namespace(ns: str) -> None:
    host, jailed = host_ns(), inside(NS_CODE, **{SHARE_OPTION[ns]: True})
    assert jailed[ns] == host[ns], f"{SHARE_OPTION[ns]}=True did not keep the host's {ns} namespace"
    others = sorted(n for n in NS_FILES if n != ns and host[n] == jailed[n])
    assert others == [], f"{SHARE_OPTION[ns]}=True also shared {others}"


@pytest.mark.parametrize("ns", sorted(SHARE_OPTION))
def test_share_flag_on_the_cli(ns: str) -> None:
    flag = "--" + SHARE_OPTION[ns].replace("_", "-")
    f = NS_FILES[ns]
    p = cli("run", flag, "--", "/bin/sh", "-c", f"readlink /proc/self/ns/{f}")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == os.readlink(f"/proc/self/ns/{f}")


def test_cli_default_namespaces_are_new() -> None:
    script = "; ".join(f"readlink /proc/self/ns/{f}" for f in NS_FILES.values())
    p = cli("run", "--", "/bin/sh", "-c", script)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split()
    assert len(lines) == len(NS_FILES)
    assert not set(lines) & set(host_ns().values())


# ---- PID ----------------------------------------------------------------------------------------

PID_CODE = """
import json, os
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
with open('/proc/1/stat') as f:
    init_start = int(f.read().rsplit(')', 1)[1].split()[19])
print(json.dumps({'me': os.getpid(), 'pids': pids, 'init_start': init_start,
                  'host_pid_visible': os.path.exists('/proc/%d' % HOST_PID)}))
"""


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def test_host_processes_are_invisible() -> None:
    info = inside(PID_CODE.replace("HOST_PID", str(os.getpid())))
    assert info["me"] != 1 and info["me"] < 10, "the program should be a low pid behind the jail's init"
    assert set(info["pids"]) <= {1, info["me"]}, f"/proc lists more than the jail: {info['pids']}"
    assert not info["host_pid_visible"]
    assert info["init_start"] != _start_time(1), "pid 1 inside is the host's init"


def test_share_pid_shows_host_processes() -> None:
    info = inside(PID_CODE.replace("HOST_PID", str(os.getpid())), share_pid=True)
    assert info["host_pid_visible"]
    assert info["me"] > 2 and len(info["pids"]) > 2


# ---- network ------------------------------------------------------------------------------------

NET_CODE = """
import json, socket
names = socket.if_nameindex()
srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=2)
conn, _ = srv.accept()
c.sendall(b'ping')
echo = conn.recv(4).decode()
try:
    socket.create_connection(('127.0.0.1', HOST_PORT), timeout=2).close()
    host_port = 'connected'
except OSError as e:
    host_port = type(e).__name__
print(json.dumps({'ifaces': names, 'echo': echo, 'host_port': host_port}))
"""


@pytest.fixture
def host_listener() -> Any:
    """A TCP listener on the host's loopback: reachable only from the host's network namespace."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_network_has_only_loopback_and_it_is_up(host_listener: int) -> None:
    info = inside(NET_CODE.replace("HOST_PORT", str(host_listener)))
    assert info["ifaces"] == [[1, "lo"]]
    assert info["echo"] == "ping", "TCP over the jail's own 127.0.0.1 does not work: lo is down?"
    assert info["host_port"] == "ConnectionRefusedError", "the host's loopback is reachable"


def test_share_net_shows_host_interfaces(host_listener: int) -> None:
    info = inside(NET_CODE.replace("HOST_PORT", str(host_listener)), share_net=True)
    assert [tuple(x) for x in info["ifaces"]] == socket.if_nameindex()
    assert info["host_port"] == "connected"


# ---- UTS ----------------------------------------------------------------------------------------


def test_hostname_is_the_jails_own() -> None:
    before = socket.gethostname()
    assert sh("hostname").stdout == b"isol8r\n"
    assert sh("hostname; cat /etc/hostname", hostname="box-7").stdout == b"box-7\nbox-7\n"
    assert socket.gethostname() == before, "the jail changed the host's hostname"


def test_share_uts_shows_host_hostname() -> None:
    r = sh("hostname", share_uts=True)
    assert r.stdout.decode().strip() == socket.gethostname()


# ---- IPC ----------------------------------------------------------------------------------------

_IPC_PRIVATE, _IPC_CREAT, _IPC_RMID = 0, 0o1000, 0
SHM_SIZE = 40960 + 123  # a size nothing else uses, to recognise our segment


@pytest.fixture
def host_shm() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(_IPC_PRIVATE, SHM_SIZE, _IPC_CREAT | 0o600)
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    try:
        yield shmid
    finally:
        assert libc.shmctl(shmid, _IPC_RMID, None) == 0


def _lists_segment(text: str, shmid: int) -> bool:
    rows = [line.split() for line in text.splitlines()[1:]]
    return any(int(r[1]) == shmid and int(r[3]) == SHM_SIZE for r in rows if len(r) > 3)


def test_sysv_ipc_is_separate(host_shm: int) -> None:
    with open("/proc/sysvipc/shm") as f:
        assert _lists_segment(f.read(), host_shm), "the fixture's segment is not on the host"
    r = sh("cat /proc/sysvipc/shm")
    assert r.exit_code == 0, r.stderr
    assert not _lists_segment(r.stdout.decode(), host_shm)


def test_share_ipc_shows_host_segments(host_shm: int) -> None:
    r = sh("cat /proc/sysvipc/shm", share_ipc=True)
    assert _lists_segment(r.stdout.decode(), host_shm)


# ---- cgroup, mount, user: what each looks like from inside --------------------------------------


def test_cgroup_namespace_roots_every_hierarchy() -> None:
    r = sh("cat /proc/self/cgroup")
    lines = r.stdout.decode().split()
    # the program itself sits in memory:/program, the group that counts its own memory peak
    # (cgroups.Cgroup.program_group), inside the jail's group where the namespace is rooted
    assert lines and all(line.split(":", 2)[2] == "/" or line.endswith(":memory:/program")
                         for line in lines), lines


def test_mount_namespace_hides_host_tree() -> None:
    jailed = set(inside("import json, os; print(json.dumps(os.listdir('/')))"))
    assert not {"home", "root", "var", "run", "boot", "srv"} & jailed
    shared = set(inside("import json, os; print(json.dumps(os.listdir('/')))", share_mount=True))
    assert shared == set(os.listdir("/"))


def test_user_namespace_maps_ids_unless_no_userns() -> None:
    assert sh("cat /proc/self/uid_map").stdout.split() != [b"0", b"0", b"4294967295"]
    r = sh("cat /proc/self/uid_map; id -u", no_userns=True)
    assert r.stdout.split() == [b"0", b"0", b"4294967295", b"65534"]
