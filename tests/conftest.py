"""Shared fixtures: every test is checked for leaks, and the session for anything left on the host.

A jail must leave nothing behind: no child process of the test runner, no mount in the host's
mount namespace, no cgroup named isol8r, no named network namespace. These checks run after
each test (processes) and at the end of the session (the rest), also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import isol8r  # noqa: E402
from isol8r.daemon import forkserver  # noqa: E402

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to create namespaces as tested")


def children(pid: int | None = None) -> list[int]:
    """Pids whose parent is pid (default: this process), zombies included."""
    pid = os.getpid() if pid is None else pid
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [" ".join(line.split()[3:5]) for line in f]


def isol8r_cgroups() -> list[str]:
    out = subprocess.run(["find", "/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-iname",
                          "*isol8r*"], capture_output=True, text=True).stdout
    return out.split()


def netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    before = set(children())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        left = set(children()) - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"test left child processes behind: {sorted(left)}"


@pytest.fixture(scope="session", autouse=True)
def host_left_as_it_was() -> Iterator[None]:
    """Also starts the library's fork server first, so the per-test check knows it as ours."""
    m, c, n = mounts(), isol8r_cgroups(), netns()
    if IS_ROOT:
        forkserver.shared_client().connect()
    yield
    forkserver.shared_client().close()
    from isol8r.daemon import cliserver
    sock = cliserver.path()
    cliserver.stop()  # the CLI server the tests' `isol8r run` started, if any: it waits
    assert sock is None or not os.path.exists(sock), "the CLI server did not stop"
    assert mounts() == m, "the test session changed the host's mount table"
    # more than before is a leak; fewer is another isol8r process of this host that ended since
    # (a CLI server of another checkout removes its empty isol8r/ group when it stops)
    left = sorted(set(isol8r_cgroups()) - set(c))
    assert not left, f"cgroups left behind: {left}"
    assert netns() == n, "named network namespaces left behind"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A scratch directory the jail's unprivileged ids can traverse, removed afterwards.

    pytest's tmp_path lies under /tmp/pytest-of-root (mode 0700), which ids of the jail's user
    namespace cannot traverse: whatever isol8r mounts by path from inside the namespace fails
    there. The tests *_under_a_private_host_dir check that it does not; the others use this
    directory so that they test their own concern whatever those find.
    """
    d = Path(tempfile.mkdtemp(prefix="isol8r-test-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _docker_profile() -> str:
    """Docker's default seccomp profile: ../shared/profiles from this checkout (the project's
    layout), else the machine's /work/shared."""
    for base in (ROOT.parent / "shared", Path("/work/shared")):
        if (base / "profiles" / "docker-default.json").exists():
            return str(base / "profiles" / "docker-default.json")
    return str(ROOT.parent / "shared" / "profiles" / "docker-default.json")


DOCKER_PROFILE = _docker_profile()


def outside_tmp(prefix: str) -> str:
    """A new directory outside /tmp, /var/tmp and /dev/shm (which a bare jail may write): in
    this checkout, unless the checkout itself lies beneath one of them (a CI clone in /tmp),
    then in /var/lib. The caller removes it."""
    here = os.path.realpath(ROOT)
    writable = ("/tmp", "/var/tmp", "/dev/shm")
    parent = "/var/lib" if any(here == w or here.startswith(w + "/") for w in writable) else here
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def jail(*cmd: str, **options: Any) -> isol8r.Result:
    """Run cmd in a jail with captured output; options as isol8r.run takes them."""
    options.setdefault("capture_output", True)
    return isol8r.run(list(cmd), **options)


def sh(script: str, **options: Any) -> isol8r.Result:
    return jail("/bin/sh", "-c", script, **options)


def py(code: str, **options: Any) -> isol8r.Result:
    return jail("/usr/bin/python3", "-c", code, **options)


def cli(*args: str, timeout: float = 30, env_extra: dict[str, str] | None = None,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "isol8r", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)
