"""Result.walls and missing_walls on the host, --require, --proc, --bare and `isol8r doctor`
(issue 19). The nested environments are in test_nested.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import isol8r
from conftest import cli, needs_root, outside_tmp
from isol8r import walls
from isol8r.errors import SetupError

pytestmark = needs_root
ROOT = Path(__file__).resolve().parent.parent
NAMESPACE_WALLS = {"userns", "pidns", "mountns", "netns", "ipcns", "utsns", "cgroupns"}


def test_root_on_host_has_every_wall() -> None:
    """The default for root on a host: all walls, none missing."""
    res = isol8r.run(["/bin/true"])
    assert set(res.walls) >= NAMESPACE_WALLS | {"proc", "uid", "caps", "nnp", "seccomp",
                                                "rlimits", "session"}
    assert res.missing_walls == {}


def test_walls_turned_off_say_so() -> None:
    res = isol8r.run(["/bin/true"], share_net=True, seccomp="none")
    assert res.missing_walls == {"netns": "--net host: the host's network",
                                 "seccomp": "--seccomp none"}
    assert "netns" not in res.walls and "seccomp" not in res.walls


def test_cgroup_wall_when_a_limit_is_asked() -> None:
    res = isol8r.run(["/bin/true"], pids=16)
    assert "cgroup" in res.walls or "cgroup" in res.missing_walls


def test_require_refuses_with_125() -> None:
    """--require a wall this run will not have: 125, one line, nothing run."""
    p = cli("run", "--require", "landlock", "--", "/bin/echo", "ran")
    assert p.returncode == 125 and "ran" not in p.stdout
    assert p.stderr.count("\n") == 1 and "--require" in p.stderr and "landlock" in p.stderr
    with pytest.raises(SetupError, match="seccomp: --seccomp none"):
        isol8r.run(["/bin/true"], seccomp="none", require="seccomp")


def test_require_met_runs() -> None:
    res = isol8r.run(["/bin/true"], require=["userns,pidns", "proc", "seccomp"])
    assert res.exit_code == 0


def test_require_in_a_profile(tmp_path: Path) -> None:
    """The same option as a TOML key."""
    prof = tmp_path / "p.toml"
    prof.write_text('require = ["netns"]\nshare-net = true\n')
    p = cli("run", "--profile", str(prof), "--", "/bin/true")
    assert p.returncode == 125 and "netns" in p.stderr


@pytest.mark.parametrize("value", ["bogus", "userns,,nope", ""])
def test_require_bad_value_is_one_line(value: str) -> None:
    p = cli("run", "--require", value, "--", "/bin/true")
    assert p.returncode == 125 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_proc_bind_is_read_only_and_reported() -> None:
    """--proc bind: the outer /proc, read-only (a write its owner could make in a fresh one
    fails), and the Result says so. Twin: the fresh /proc takes the same write."""
    write = "echo x > /proc/self/comm && echo wrote"
    res = isol8r.run(["/bin/sh", "-c", write], proc="bind", capture_output=True)
    assert "proc" in res.missing_walls and "proc" not in res.walls
    assert b"wrote" not in res.stdout and b"Read-only" in res.stderr
    twin = isol8r.run(["/bin/sh", "-c", write], capture_output=True)
    assert twin.stdout == b"wrote\n" and "proc" in twin.walls


def test_proc_none() -> None:
    res = isol8r.run(["/bin/sh", "-c", "test -e /proc/self && echo has-proc; echo done"],
                     proc="none", capture_output=True)
    assert res.stdout == b"done\n"
    assert res.missing_walls["proc"].startswith("--proc none")


@pytest.fixture
def dirs() -> Iterator[list[str]]:
    """Two 0777 directories outside /tmp: one stays read-only to a bare jail, one is its
    workspace."""
    made = [outside_tmp(".walls-") for _ in range(2)]
    for d in made:
        os.chmod(d, 0o777)
    yield made
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


WRITE = 'echo x > "$1"/f && echo wrote'


@pytest.mark.skipif(walls.landlock_abi() < 1, reason="the kernel has no Landlock")
def test_bare_filesystem_read_only_but_workspace(dirs: list[str]) -> None:
    """--bare: Landlock keeps the program off every path it was not given (DAC would let it
    write there: 0777). Twin: the same directory given as the workspace is writable."""
    outside, ws = dirs
    res = isol8r.run(["/bin/sh", "-c", WRITE, "sh", outside], bare=True, bind=[ws],
                     capture_output=True)
    assert res.stdout == b"" and b"Permission denied" in res.stderr
    assert "landlock" in res.walls and res.missing_walls["userns"] == "--bare"
    assert not os.path.exists(os.path.join(outside, "f"))
    twin = isol8r.run(["/bin/sh", "-c", WRITE, "sh", ws], bare=True, bind=[ws],
                      capture_output=True)
    assert twin.stdout == b"wrote\n"


BIND = ("import socket\ntry:\n socket.socket().bind(('127.0.0.1', 0)); print('bound')\n"
        "except OSError as e:\n print(e.errno)")


@pytest.mark.skipif(walls.landlock_abi() < 4, reason="Landlock ABI < 4: no TCP rules")
def test_bare_no_tcp() -> None:
    """--bare with --net none: no TCP bind (or connect). Twin: --net host leaves TCP alone."""
    res = isol8r.run(["/usr/bin/python3", "-c", BIND], bare=True, capture_output=True)
    assert res.stdout == b"13\n"  # EACCES
    twin = isol8r.run(["/usr/bin/python3", "-c", BIND], bare=True, share_net=True,
                      capture_output=True)
    assert twin.stdout == b"bound\n"
    assert "no TCP" in res.walls["landlock"] and "no TCP" not in twin.walls["landlock"]


def test_bare_refuses_what_needs_a_mount_namespace() -> None:
    with pytest.raises(SetupError, match="--tmpfs"):
        isol8r.run(["/bin/true"], bare=True, tmpfs=["/x"])
    p = cli("run", "--bare", "--ro-bind", "/usr:/elsewhere", "--", "/bin/true")
    assert p.returncode == 125 and p.stderr.count("\n") == 1 and "its own path" in p.stderr


def test_doctor() -> None:
    p = cli("doctor")
    assert p.returncode == 0, p.stderr
    assert "landlock ABI" in p.stdout and "user namespaces: yes" in p.stdout
    assert "jail: every wall" in p.stdout
    p = cli("doctor", "--json")
    data: dict[str, Any] = json.loads(p.stdout)
    assert data["environment"]["root of the host"] is True
    assert data["environment"]["clone3"] == "yes"
    p = cli("doctor", "--bogus")
    assert p.returncode == 125 and "--bogus" in p.stderr


def test_bare_leftovers_in_the_group_end_with_the_program() -> None:
    """No PID namespace: a background child of the program is killed at its end (its process
    group); the Result's pidns entry says what is not (a process that leaves the group)."""
    res = isol8r.run(["/bin/sh", "-c", "sleep 1000 & echo $!"], bare=True, capture_output=True)
    pid = int(res.stdout)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    assert not _alive(pid)
    assert "session of its own" in res.missing_walls["pidns"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_end_session_kills_the_group() -> None:
    """supervisor.end_session, which a bare jail's end calls: every process of the group that
    the (already gone) leader led. (Here the orphans of an ended shell are also killed by this
    machine's init, so the run-level test above cannot tell the two apart.)"""
    import subprocess

    from isol8r import supervisor
    leader = subprocess.Popen(["/bin/sh", "-c", "sleep 1000 & echo $!; exec sleep 1000"],
                              stdout=subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    supervisor.end_session(leader.pid)
    leader.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.02)
    assert not _alive(child) and leader.returncode == -9
    leader.stdout.close()
