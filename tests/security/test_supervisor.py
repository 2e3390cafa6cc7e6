"""The supervisor: the jailed program cannot kill it, trace it or outlive it, and killing it (the
CLI, with SIGKILL) leaves no jailed process alive on the host."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from isol8r.daemon import forkserver
from conftest import ROOT, needs_root
from secprobe import LONE_UID, PY_GUARD, Tools, World, kill_named, probe, processes_named, \
    tools, unique, wait_until, world  # noqa: F401  (fixtures)

pytestmark = needs_root

#: the CLI as an ordinary user (unprivileged user namespaces): the jail's host uid is then the
#: supervisor's own, the strongest case for "the program cannot kill its supervisor"
UNPRIVILEGED_PYTHON = "/usr/bin/python3"


@pytest.fixture
def lone_env() -> Iterator[dict[str, str]]:
    """The environment of a CLI run as LONE_UID, with a runtime directory of its own (isol8r
    caches compiled filters there; by default it would make /tmp/isol8r-UID and leave it)."""
    runtime = tempfile.mkdtemp(prefix="isol8r-runtime-")
    os.chown(runtime, LONE_UID, LONE_UID)
    try:
        yield {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"),
               "XDG_RUNTIME_DIR": runtime}
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def named() -> Iterator[str]:
    """A unique process name (comm) for the probe's processes; any left are killed afterwards."""
    name = unique("isol8r-")
    yield name
    kill_named(name)


# ---- signalling and tracing the supervisor -------------------------------------------------------

def test_program_cannot_kill_or_trace_init_or_the_fork_server(tools: Tools) -> None:
    client = forkserver.shared_client()
    client.connect()
    server = client.pid()
    r = probe(tools, "hitsuper", server)
    assert r.info("survived") == "1", r
    assert r.denied("kill_init_kill") or r.ok("kill_init_kill"), r  # EPERM, or dropped by init
    assert r.errno("ptrace_init") == "EPERM", r
    assert r.errno("kill_host_supervisor") == "ESRCH", r
    assert r.errno("kill_parent") in ("EPERM", None), r
    assert client.pid() == server and client.running()


#: The attack in Python (the default root has /usr/bin/python3, and the unprivileged CLI
#: cannot bind the C probe in: see test_unprivileged_cli_binds_a_file): SIGKILL to the CLI's
#: host pid, and to every ancestor the program can see.
HIT_CLI = PY_GUARD + """
import os, signal, sys
host = int(sys.argv[1])
try:
    os.kill(host, signal.SIGKILL); print("ok kill_host_supervisor 0", flush=True)
except OSError as e:
    print("err kill_host_supervisor", __import__("errno").errorcode[e.errno], flush=True)
print("info survived 1", flush=True)
"""


def unprivileged_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python3 -m isol8r run ARGS` as LONE_UID (with `$$`, its own pid, available to ARGS)."""
    if not os.access(UNPRIVILEGED_PYTHON, os.X_OK):
        pytest.skip(f"{UNPRIVILEGED_PYTHON} is needed to run the CLI as an ordinary user")
    script = f'exec {UNPRIVILEGED_PYTHON} -m isol8r run "$@"'
    p = subprocess.run(["/bin/sh", "-c", script, "sh", *args], user=LONE_UID, group=LONE_UID,
                       extra_groups=[], env=env, cwd="/", capture_output=True, text=True,
                       timeout=60)
    if "user namespaces may be disabled" in p.stderr:
        pytest.skip(f"unprivileged user namespaces unavailable: {p.stderr.strip()}")
    return p


def hit_cli(env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    """The CLI run as LONE_UID; its jailed program aims SIGKILL at the CLI's own host pid."""
    if not os.access(UNPRIVILEGED_PYTHON, os.X_OK):
        pytest.skip(f"{UNPRIVILEGED_PYTHON} is needed to run the CLI as an ordinary user")
    script = (f'exec {UNPRIVILEGED_PYTHON} -m isol8r run "$@" -- /usr/bin/python3 -c '
              f'"$HIT" $$')
    p = subprocess.run(["/bin/sh", "-c", script, "sh", *options], user=LONE_UID, group=LONE_UID,
                       extra_groups=[], env={**env, "HIT": HIT_CLI}, cwd="/",
                       capture_output=True, text=True, timeout=60)
    if "user namespaces may be disabled" in p.stderr:
        pytest.skip(f"unprivileged user namespaces unavailable: {p.stderr.strip()}")
    return p


def test_program_cannot_kill_its_cli_supervisor_even_of_its_own_uid(
        lone_env: dict[str, str]) -> None:
    """Without root, the CLI maps the jail user onto its own uid: the program and its
    supervisor are the same host user. The PID namespace still hides the supervisor."""
    p = hit_cli(lone_env)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "err kill_host_supervisor ESRCH" in p.stdout and "info survived 1" in p.stdout, p.stdout


def test_kill_supervisor_twin_shared_pid_namespace_kills_the_cli(
        lone_env: dict[str, str]) -> None:
    """Twin: --share-pid. The CLI runs as the same host uid as the program, and dies."""
    p = hit_cli(lone_env, "--share-pid")
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr)


def test_unprivileged_cli_binds_a_file(tools: Tools, lone_env: dict[str, str]) -> None:
    """Without root, --ro-bind of a file the caller can read must work (README: "root, or
    unprivileged user namespaces").

    Found by this suite (fixed since): mounts.plan() marked every user bind by_supervisor, and
    supervisor.spawn() opened it with open_tree(OPEN_TREE_CLONE), which needs CAP_SYS_ADMIN over
    the supervisor's mount namespace: EPERM, reported as "write id maps / cgroup: EPERM: SRC"."""
    p = unprivileged_cli(lone_env, "--ro-bind", f"{tools.probe}:/probe", "--", "/probe",
                         "exists", "/")
    assert p.returncode == 0 and "ok exists_0" in p.stdout, (p.stdout, p.stderr)


# ---- outliving the supervisor -------------------------------------------------------------------

def test_a_daemon_cannot_outlive_the_jail(tools: Tools, named: str) -> None:
    """Double fork, new session, closed stdio: the daemon dies with the jail's PID namespace,
    and the run ends at once rather than when the daemon would."""
    r = probe(tools, "orphan", named, 30)
    assert r.ok("orphaned") and r.result.wall_time < 10, r
    assert wait_until(lambda: processes_named(named) == [], 2), processes_named(named)


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def test_no_jailed_process_is_left_when_run_returns(tools: Tools, world: World) -> None:
    """When isol8r.run() returns, the jail must be gone: a caller then reads, reuses or deletes
    what the jail could write. Here a daemon appends to a file of a writable bind; twenty runs
    in a row, none may leave it running (or writing) after run() returned.

    Found by this suite (fixed since): supervisor.JailWatch.done() was true as soon as the jail's
    init reported the program's status (when no cgroup was used), before init had exited and the
    PID namespace's teardown had killed the rest; the daemon ran on for a moment after run()
    returned, and kept writing into the bind."""
    out = world.dir / "out"
    out.mkdir()
    out.chmod(0o777)
    survivors, grew = 0, 0
    for i in range(20):
        name = unique("isol8r-")
        try:
            r = probe(tools, "orphan", name, 5, "/out/log", bind=[f"{out}:/out"])
            left = processes_named(name)
            size = log_size(out / "log")
            time.sleep(0.05)
            grew += log_size(out / "log") > size
            survivors += bool(left)
            assert r.ok("orphaned"), r
        finally:
            kill_named(name)
            (out / "log").unlink(missing_ok=True)
    assert survivors == 0 and grew == 0, \
        f"in {survivors} of 20 runs a jailed daemon was alive when run() returned; " \
        f"in {grew} it still wrote into the writable bind afterwards"


def test_daemon_with_shared_pid_namespace_ends_with_the_run(tools: Tools, named: str) -> None:
    """--share-pid: no PID namespace takes the daemon down, so the jail always gets a cgroup
    then, whose removal kills it (issue 12 item 7; it used to live on on the host)."""
    r = probe(tools, "orphan", named, 30, share_pid=True)
    assert r.ok("orphaned"), r
    assert processes_named(named) == [], "the daemon outlived the run"


def test_daemon_twin_shared_pid_namespace_and_no_cgroup_outlives_the_jail(
        tools: Tools, named: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin: --share-pid and no cgroup (faked: a host without cgroups cannot be made here; the
    run is in-process so the fake applies): the daemon lives on on the host, and the Result's
    notes say so (the fixture kills it)."""
    from isol8r import cgroups

    def unavailable(*_a: object, **_k: object) -> None:
        raise cgroups.CgroupUnavailable("faked: no cgroup filesystem is mounted")
    monkeypatch.setattr(cgroups.Cgroup, "create", unavailable)
    monkeypatch.setattr(cgroups.Cgroup, "program_group", unavailable)  # it would end it too
    r = probe(tools, "orphan", named, 30, share_pid=True, fork_server=False)
    assert r.ok("orphaned"), r
    assert wait_until(lambda: processes_named(named) != [], 2), "the twin's daemon did not survive"


def start_cli(tools: Tools, name: str, *options: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-m", "isol8r", "run", *options, "--ro-bind",
                             f"{tools.probe}:/probe", "--", "/probe", "sleeper", name, "60"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def test_sigkill_of_the_cli_takes_the_whole_jail_down(tools: Tools, named: str) -> None:
    """`python -m isol8r run` killed with SIGKILL: the jailed program and the child it started in
    a session of its own are gone from the host within moments."""
    p = start_cli(tools, named)
    try:
        assert wait_until(lambda: len(processes_named(named)) == 2, 10), p.stderr
        p.kill()
        p.wait()
        assert wait_until(lambda: processes_named(named) == [], 5), processes_named(named)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()


def test_sigkill_of_the_cli_with_shared_pid_namespace_leaves_no_survivor(tools: Tools,
                                                                         named: str) -> None:
    """--share-pid: the parent-death signal reaches init and the program, not the program's own
    child; the jail's cgroup, which --share-pid now always has, takes that one down too."""
    p = start_cli(tools, named, "--share-pid")
    try:
        assert wait_until(lambda: len(processes_named(named)) == 2, 10), p.stderr
        p.kill()
        p.wait()
        assert wait_until(lambda: processes_named(named) == [], 5), processes_named(named)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()
