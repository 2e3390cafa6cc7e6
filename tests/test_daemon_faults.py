"""Issue 12, the daemons' faults: a fork server or CLI server that dies, stops or cannot start
never makes a run hang, never has its failure blamed on the program, and leaves nothing behind.
Each test signals only the server process it started itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import alive, children, cli, needs_root
from test_cliserver import server_pid

from isol8r import supervisor
from isol8r.daemon import cliserver, forkserver
from isol8r.errors import SetupError
from isol8r.spec import Spec

pytestmark = needs_root


def client_run(client: forkserver.Client, *argv: str, **options: object) -> object:
    spec = Spec.from_options(list(argv), dict(options))
    stdio = supervisor.open_stdio(spec, None, None, None, None, True, lambda _v: None)
    return client.run(spec, stdio)


@pytest.fixture
def client():
    c = forkserver.Client(prewarm=2)
    c.connect()
    try:
        yield c
    finally:
        pid = c.pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        c.close()


def test_a_killed_fork_server_is_a_setup_error_not_the_programs_signal(client) -> None:
    pid = client.pid()
    assert client_run(client, "/bin/true").exit_code == 0
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(SetupError, match="fork server"):
        client_run(client, "/bin/sleep", "100")
    # the next run starts a new server
    assert client_run(client, "/bin/true").exit_code == 0
    assert client.pid() != pid


def test_a_stopped_fork_server_bounds_the_wait_and_is_replaced(client) -> None:
    pid = client.pid()
    assert client_run(client, "/bin/true").exit_code == 0
    os.kill(pid, signal.SIGSTOP)
    resumed = threading.Timer(forkserver.WAIT_MARGIN + 3, os.kill, (pid, signal.SIGCONT))
    resumed.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(SetupError, match="fork server.*replaced"):
            client_run(client, "/bin/true", time_limit=1)
        # not a speed check: before the fix the call returned only after SIGCONT
        assert time.monotonic() - t0 < forkserver.WAIT_MARGIN + 2.5
    finally:
        resumed.cancel()
    assert client_run(client, "/bin/true").exit_code == 0
    assert client.pid() != pid


def groups_of(pid: int) -> list[str]:
    """The jail cgroups a server of this pid made (cgroups.py names them jail-<pid>-...)."""
    out = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        out += [os.path.join(top, d) for d in dirs if d.startswith(f"jail-{pid}-")]
        dirs[:] = [d for d in dirs if top.count("/") < 8]
    return out


def gone_within_a_second(pid: int, kids: list[int]) -> tuple[list[str], list[int]]:
    deadline = time.monotonic() + 1.0
    while True:
        left = (groups_of(pid), [k for k in kids if alive(k)])
        if left == ([], []) or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def kill_with_warm_groups(pid: int) -> list[int]:
    """SIGKILL server pid (the test's own) once its warm jails have their groups; its children."""
    deadline = time.monotonic() + 5
    while len(groups_of(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert groups_of(pid), "no warm jail with a cgroup to leave behind"
    kids = children(pid)
    os.kill(pid, signal.SIGKILL)
    return kids


def test_a_killed_fork_server_leaves_nothing_once_the_next_starts(client) -> None:
    """Issue 12 item 4: its warm jails' cgroups stayed until a sweep 60 s later."""
    assert client_run(client, "/bin/true", memory="64M").exit_code == 0  # warm jails, with groups
    pid = client.pid()
    kids = kill_with_warm_groups(pid)
    assert client_run(client, "/bin/true").exit_code == 0  # whoever starts next
    assert gone_within_a_second(pid, kids) == ([], [])


def test_a_killed_cli_server_leaves_nothing_once_the_next_starts() -> None:
    assert cli("run", "--memory", "64M", "--", "/bin/true").returncode == 0
    pid = server_pid()
    assert pid is not None
    kids = kill_with_warm_groups(pid)
    assert cli("run", "--", "/bin/true").returncode == 0
    assert gone_within_a_second(pid, kids) == ([], [])
    assert not os.path.exists(f"{forkserver.RECORDS}/server-{pid}.rec")


def test_server_stop_removes_its_lock_and_log() -> None:
    assert cli("run", "--", "/bin/true").returncode == 0
    base = cliserver.path()[:-5]
    assert os.path.exists(base + ".lock") and os.path.exists(base + ".log")
    assert cli("server", "stop").returncode == 0
    assert not os.path.exists(base + ".lock") and not os.path.exists(base + ".log")


def test_a_cli_worker_that_dies_mid_run_is_125_not_the_programs_137() -> None:
    """Issue 12 item 2, the CLI's side: the worker serving this run (the one whose stdout is
    this test's pipe) is killed; the client said 137, as if the program had been."""
    assert cli("run", "--", "/bin/true").returncode == 0
    pid = server_pid()
    assert pid is not None
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    p = subprocess.Popen([sys.executable, "-m", "isol8r", "run", "--", "/bin/sleep", "100"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mine = f"pipe:[{os.fstat(p.stdout.fileno()).st_ino}]"
    worker, deadline = None, time.monotonic() + 10
    while worker is None and time.monotonic() < deadline:
        for w in children(pid):
            try:
                if os.readlink(f"/proc/{w}/fd/1") == mine:
                    worker = w
            except OSError:
                pass
        time.sleep(0.02)
    try:
        assert worker is not None, "no worker took the run"
        time.sleep(0.2)
        os.kill(worker, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 125 and "worker died" in err and len(err.splitlines()) == 1, (p, err)


def test_run_async_bounds_the_wait_on_a_stopped_fork_server(client) -> None:
    import asyncio
    pid = client.pid()
    assert client_run(client, "/bin/true").exit_code == 0
    spec = Spec.from_options(["/bin/true"], {"time_limit": 1})
    stdio = supervisor.open_stdio(spec, None, None, None, None, True, lambda _v: None)
    os.kill(pid, signal.SIGSTOP)
    resumed = threading.Timer(forkserver.WAIT_MARGIN + 3, os.kill, (pid, signal.SIGCONT))
    resumed.start()
    try:
        with pytest.raises(SetupError, match="fork server.*replaced"):
            asyncio.run(forkserver.run_async(client, spec, stdio))
    finally:
        resumed.cancel()
    assert not alive(pid), "the stuck server was not replaced"
