"""cgroups.py: real-kernel tests on this host's cgroups (v1 on a hybrid host, v2 on a unified one),
this host's real cgroup2 hierarchy, which has no controller free (CLONE_INTO_CGROUP, cpu.stat,
cgroup.kill, delegation refused). The fake trees for the v2 limit and counter files (and co-mounted
v1) that the kernel here cannot show are root-free: tests/unit/test_cgroups_fake.py.

Every test ends with no isol8r cgroup left: the autouse fixture checks
`find /sys/fs/cgroup -maxdepth 6 -type d -iname '*isol8r*'` and removes our leftovers if a test
failed (isol8r/ dirs holding live jails of other processes are not ours and are let be).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from isol8r import cgroups
from isol8r.cgroups import Cgroup, CgroupUnavailable, Limits

CGROOT = "/sys/fs/cgroup"
MiB = 1 << 20
FULL = Limits(memory=64 * MiB, pids=8, cpus=0.5)
ROOT = os.geteuid() == 0
REASON = "not root" if not ROOT else cgroups.available(limits=FULL)
real = pytest.mark.skipif(REASON is not None, reason=f"no usable cgroups: {REASON}")
JAIL = re.compile(r"jail-(\d+)-")


# ---- leftovers ----------------------------------------------------------------------------------


def _isol8r_dirs() -> list[str]:
    out = subprocess.run(["find", CGROOT, "-maxdepth", "6", "-type", "d", "-iname", "*isol8r*"],
                         capture_output=True, text=True, check=False).stdout
    return out.split()


def _foreign(top: str) -> bool:
    """An isol8r/ dir that holds a live jail of another process (engineers share this machine)."""
    try:
        names = os.listdir(top)
    except OSError:
        return True  # gone meanwhile
    for n in names:
        m = JAIL.match(n)
        if m and int(m[1]) != os.getpid() and cgroups.alive(int(m[1])):
            return True
    return False


def _purge(top: str) -> None:
    for d, _, _ in os.walk(top, topdown=False):
        name = os.path.basename(d)
        if d != top and not name.startswith(f"jail-{os.getpid()}-") and _foreign(top):
            continue
        for p in (_read(os.path.join(d, "cgroup.procs")) or "").split():
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(100):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@pytest.fixture(autouse=True)
def no_leftovers():
    yield
    deadline = time.monotonic() + 3.0
    while True:
        left = [d for d in _isol8r_dirs() if not _foreign(d)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if left:
        for d in left:
            _purge(d)
        pytest.fail(f"cgroups left behind: {left}")


# ---- helpers ------------------------------------------------------------------------------------


def _start(cg: Cgroup, body: Callable[[], int | None]) -> int:
    """Fork a child, attach it, then let it run body; it never runs body outside the group."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            os.close(w)
            if os.read(r, 1) == b"g":
                code = body() or 0
            else:
                code = 97
        finally:
            os._exit(code)
    os.close(r)
    try:
        cg.attach(pid)
        os.write(w, b"g")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(w)
    return pid


def _wait(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} did not end in {timeout}s")


def _file(cg: Cgroup, controller: str, name: str) -> str:
    path = cg.path(controller)
    assert path is not None
    with open(os.path.join(path, name)) as f:
        return f.read().strip()


@pytest.fixture
def make():
    made: list[Cgroup] = []

    def create(limits: Limits | None = None, **kw) -> Cgroup:
        cg = Cgroup.create(limits or Limits(), **kw)
        made.append(cg)
        return cg

    yield create
    for cg in made:
        cg.remove()


# ---- real kernel: this host's layout (v1 here) ---------------------------------------------------


@real
def test_limits_land_in_the_control_files(make):
    cg = make(FULL)
    assert all(p.rsplit("/", 2)[1] == "isol8r" for p in cg.paths)
    if cg.version == 1:
        assert int(_file(cg, "memory", "memory.limit_in_bytes")) == 64 * MiB
        memsw = os.path.join(cg.path("memory") or "", "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            assert int(_file(cg, "memory", "memory.memsw.limit_in_bytes")) == 64 * MiB
        assert _file(cg, "pids", "pids.max") == "8"
        assert _file(cg, "cpu", "cpu.cfs_quota_us") == "50000"
        assert _file(cg, "cpu", "cpu.cfs_period_us") == "100000"
        assert cg.clone_fd() == -1
        for ctl in ("memory", "pids", "cpu", "cpuacct"):
            assert cg.path(ctl) is not None
    else:
        assert _file(cg, "", "memory.max") == str(64 * MiB)
        assert _file(cg, "", "pids.max") == "8"
        assert _file(cg, "", "cpu.max") == "50000 100000"
        assert cg.clone_fd() >= 0


@real
def test_set_limits_writes_new_values_up_and_down_and_never_lifts_one(make):
    """A warm jail's group is re-used with the next caller's values (daemon/pool.py)."""
    cg = make(FULL)
    for memory, pids, cpus in ((256 * MiB, 16, 1.5), (32 * MiB, 4, 0.25), (32 * MiB, 4, 0.25)):
        cg.set_limits(Limits(memory=memory, pids=pids, cpus=cpus))
        if cg.version == 1:
            assert int(_file(cg, "memory", "memory.limit_in_bytes")) == memory
            memsw = os.path.join(cg.path("memory") or "", "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # v1 refuses memsw below memory: the order matters
                assert int(_file(cg, "memory", "memory.memsw.limit_in_bytes")) == memory
            assert _file(cg, "pids", "pids.max") == str(pids)
            assert _file(cg, "cpu", "cpu.cfs_quota_us") == str(round(cpus * 100_000))
        else:
            assert _file(cg, "", "memory.max") == str(memory)
            assert _file(cg, "", "pids.max") == str(pids)
    with pytest.raises(ValueError, match="memory"):
        cg.set_limits(Limits(pids=4, cpus=0.25))


@real
def test_memory_hog_is_oom_killed_and_peak_is_near_the_limit(make):
    limit = 64 * MiB
    cg = make(Limits(memory=limit))

    def hog() -> int:
        b = bytearray(3 * limit)
        for i in range(0, len(b), 4096):
            b[i] = 1
        return 0

    status = _wait(_start(cg, hog))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    u = cg.usage()
    assert u.oom_killed
    assert u.memory_peak is not None and 0.8 * limit <= u.memory_peak <= limit + MiB
    print(f"OOM peak {u.memory_peak} of limit {limit} ({u.memory_peak / limit:.3f})")


@real
def test_pids_limit_makes_fork_fail_with_eagain(make):
    cg = make(Limits(pids=4))

    def forker() -> int:
        r, w = os.pipe()
        kids, code = [], 100
        try:
            for _ in range(10):
                pid = os.fork()
                if pid == 0:
                    os.close(w)
                    os.read(r, 1)
                    os._exit(0)
                kids.append(pid)
        except BlockingIOError:  # EAGAIN
            code = len(kids)
        finally:
            os.close(w)
            for pid in kids:
                os.waitpid(pid, 0)
        return code

    status = _wait(_start(cg, forker))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3  # itself + 3 children = 4
    u = cg.usage()
    assert u.pids_peak in (None, 4)
    assert not u.oom_killed


@real
def test_cpu_time_is_accounted_without_a_cpu_limit(make):
    cg = make()
    assert cg.cpu_time() == 0.0

    def spin() -> int:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:
            pass
        return 0

    assert os.WEXITSTATUS(_wait(_start(cg, spin))) == 0
    t = cg.cpu_time()
    u = cg.usage()
    assert t >= 0.2
    assert u.cpu_user is not None and u.cpu_system is not None
    assert abs(u.cpu_user + u.cpu_system - t) < 0.1
    assert u.memory_peak is not None  # accounting groups exist even without limits


@real
def test_cpus_half_a_core_is_enforced(make):
    cg = make(Limits(cpus=0.5))
    if cg.version == 1:
        assert _file(cg, "cpu", "cpu.cfs_quota_us") == "50000"
    else:
        assert _file(cg, "", "cpu.max") == "50000 100000"

    def spin_wall() -> int:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            pass
        return 0

    _wait(_start(cg, spin_wall))
    t = cg.cpu_time()
    print(f"cpus=0.5: {t:.3f} s of CPU in 1 s")
    assert 0.2 <= t <= 0.75


@real
def test_kill_takes_every_process_and_remove_leaves_nothing(make):
    cg = make(Limits(pids=20))

    def family() -> int:
        for _ in range(3):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        time.sleep(60)
        return 0

    pid = _start(cg, family)
    deadline = time.monotonic() + 5
    while len(cg.procs()) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(cg.procs()) == 4
    cg.kill()
    status = _wait(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    deadline = time.monotonic() + 5
    while cg.procs() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not cg.procs()
    if cg.path("freezer"):
        assert _file(cg, "freezer", "freezer.state") == "THAWED"
    paths = cg.paths
    cg.remove()
    assert not any(os.path.exists(p) for p in paths)
    cg.remove()  # idempotent
    assert cg.paths == ()


@real
def test_remove_kills_what_is_still_running():
    cg = Cgroup.create(Limits(memory=32 * MiB))
    pid = _start(cg, lambda: time.sleep(60) or 0)
    paths = cg.paths
    cg.remove()
    status = _wait(pid)
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert not any(os.path.exists(p) for p in paths)


@real
def test_missing_cgroup_parent_is_unavailable_with_a_reason():
    with pytest.raises(CgroupUnavailable, match="does not exist"):
        Cgroup.create(FULL, parent="/no-such-parent-for-this-test")
    reason = cgroups.available("/no-such-parent-for-this-test")
    assert reason and "does not exist" in reason
    with pytest.raises(ValueError):
        Cgroup.create(FULL, parent="../etc")
    with pytest.raises(ValueError):
        Cgroup.create(FULL, name="a/b")


@real
def test_concurrent_jails_create_and_remove_cleanly():
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                cg = Cgroup.create(FULL)
                assert cg.cpu_time() == 0.0
                cg.remove()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@real
def test_groups_left_by_a_crashed_isol8r_are_swept_by_the_next_one(make):
    script = ("import os, signal; from isol8r.cgroups import Cgroup, Limits; "
              "cg = Cgroup.create(Limits(memory=32 << 20)); print(' '.join(cg.paths), flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    env = dict(os.environ, PYTHONPATH=str(Path(cgroups.__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == -signal.SIGKILL
    stale = out.stdout.split()
    try:
        assert stale and all(os.path.isdir(p) for p in stale)  # SIGKILL: no atexit ran
        young = [os.path.join(os.path.dirname(p), os.path.basename(p) + "0") for p in stale]
        for p in young:  # a dead pid's group too young to be sure about: kept
            os.mkdir(p)
        for p in stale:
            os.utime(p, (time.time() - 3600, time.time() - 3600))
        make()  # the next jail sweeps isol8r/
        assert not any(os.path.exists(p) for p in stale)
        assert all(os.path.isdir(p) for p in young)
    finally:
        for p in stale + young:
            if os.path.isdir(p):
                os.rmdir(p)


@real
def test_a_supervisor_that_forgets_remove_cleans_up_at_exit():
    script = ("from isol8r.cgroups import Cgroup, Limits; "
              "cg = Cgroup.create(Limits(pids=5)); print(' '.join(cg.paths))")
    env = dict(os.environ, PYTHONPATH=str(Path(cgroups.__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() and not any(os.path.exists(p) for p in out.stdout.split())


# ---- real cgroup2: this host's unified hierarchy, seen as if it were the only one ---------------
# No controller is free for v2 here (v1 owns memory, pids, cpu), so a fresh cgroup2 mount under
# tmp_path would show the same controller-less hierarchy, and would change the shared mount table
# that concurrent test sessions compare; we use the existing mount instead.


@pytest.fixture
def real_v2() -> tuple[str, cgroups.Layout]:
    if not ROOT:
        pytest.skip("not root")
    with open("/proc/self/mountinfo") as f:
        line = next((ln for ln in f if " - cgroup2 " in ln), None)
    with open("/proc/self/cgroup") as f:
        mine = next((ln for ln in f if ln.startswith("0::")), None)
    if line is None or mine is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    layout = cgroups.detect(line, mine)
    assert layout.v2 is not None
    return layout.v2.mountpoint, layout


def test_real_v2_clone_into_cgroup_accounting_and_kill(real_v2):
    from isol8r.sys import linux

    mnt, layout = real_v2
    if threading.active_count() != 1:
        pytest.skip("clone3 wants a single-threaded process")
    delegated = set(Path(mnt, "cgroup.subtree_control").read_text().split())
    if "memory" not in delegated:  # this host: v2 holds only hugetlb
        reason = cgroups.available(limits=Limits(memory=64 * MiB), layout=layout)
        assert reason and "not delegated" in reason
    cg = Cgroup.create(Limits(), layout=layout)
    try:
        assert cg.version == 2 and cg.path().startswith(mnt + "/")
        assert os.path.basename(os.path.dirname(cg.path())) == "isol8r"
        r, w = os.pipe()
        pid, pidfd = linux.clone3(0, cg.clone_fd())
        if pid == 0:  # first thing: where am I? then spin 0.3 s of CPU
            os.write(w, open("/proc/self/cgroup").read().encode())
            t0 = time.process_time()
            while time.process_time() - t0 < 0.3:
                pass
            os._exit(0)
        os.close(w)
        where = os.read(r, 4096).decode()
        os.close(r)
        os.close(pidfd)
        assert os.WEXITSTATUS(_wait(pid)) == 0
        assert "0::/" + os.path.relpath(cg.path(), mnt) in where.splitlines()
        assert cg.cpu_time() >= 0.2
        u = cg.usage()
        assert u.cpu_user is not None and u.cpu_system is not None
        assert u.cpu_user + u.cpu_system >= 0.2  # process_time() is a syscall: much is system
        if "memory" not in delegated:
            assert u.memory_peak is None and not u.oom_killed
        pid, pidfd = linux.clone3(0, cg.clone_fd())
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        os.close(pidfd)
        cg.kill()
        assert os.WTERMSIG(_wait(pid, 5)) == signal.SIGKILL
    finally:
        paths = cg.paths
        cg.remove()
    assert not any(os.path.exists(p) for p in paths)
    top = os.path.join(mnt, "isol8r")
    assert not os.path.exists(top) or _foreign(top)
