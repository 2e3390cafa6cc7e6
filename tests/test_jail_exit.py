"""Issue 2, exit status: the program's own code, 128+N (CLI) / signal N (library) when killed,
125 with one line naming the step, path and errno when setup fails, 126 cannot execute,
127 not found; and a supervisor killed by SIGKILL takes the whole jail with it.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import isol8r
from conftest import ROOT, alive, cli, isol8r_cgroups, jail, needs_root, py, sh

pytestmark = needs_root

SEGV_CODE = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert "Traceback" not in stderr
    return lines[0]


# ---- the program's own status -------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_exit_code_library(code: int) -> None:
    r = sh(f"exit {code}")
    assert (r.exit_code, r.signal, r.returncode, r.status) == (code, None, code, code)
    assert r.verdict == ("ok" if code == 0 else "nonzero-exit")


def test_exit_code_cli() -> None:
    p = cli("run", "--", "/bin/sh", "-c", "exit 3")
    assert p.returncode == 3, p.stderr
    assert p.stderr == ""


def test_sigkill_library() -> None:
    r = sh("kill -KILL $$")
    assert (r.exit_code, r.signal, r.returncode, r.status) == (None, 9, -9, 137)
    assert r.verdict == "signaled"


def test_sigkill_cli() -> None:
    p = cli("run", "--", "/bin/sh", "-c", "kill -KILL $$")
    assert p.returncode == 137, p.stderr


def test_sigsegv_library_and_cli() -> None:
    r = py(SEGV_CODE)
    assert (r.signal, r.returncode) == (signal.SIGSEGV, -signal.SIGSEGV)
    p = cli("run", "--", "/usr/bin/python3", "-c", SEGV_CODE)
    assert p.returncode == 139, p.stderr


def test_status_of_a_program_without_init() -> None:
    assert sh("exit 5", no_init=True).exit_code == 5
    p = cli("run", "--no-init", "--", "/bin/sh", "-c", "exit 5")
    assert p.returncode == 5, p.stderr


# ---- setup failures: 125 -------------------------------------------------------------------------


def test_setup_failure_library_names_step_path_errno() -> None:
    with pytest.raises(isol8r.SetupError) as info:
        jail("/bin/true", cwd="/nonexistent")
    e = info.value
    assert not isinstance(e, isol8r.ExecError)
    assert e.errno == errno.ENOENT
    assert "chdir" in str(e) and "/nonexistent" in str(e) and "ENOENT" in str(e)
    assert e.exit_code == 125


def test_setup_failure_cli_is_125_and_one_line() -> None:
    p = cli("run", "--cwd", "/nonexistent", "--", "/bin/true")
    assert p.returncode == 125
    line = one_line(p.stderr)
    assert "chdir" in line and "/nonexistent" in line and "ENOENT" in line, line
    assert p.stdout == ""


# ---- 126 and 127 --------------------------------------------------------------------------------


def test_not_executable_is_126() -> None:
    with pytest.raises(isol8r.ExecError) as info:
        jail("/etc/passwd")
    assert info.value.exit_code == 126
    assert info.value.errno == errno.EACCES
    p = cli("run", "--", "/etc/passwd")
    assert p.returncode == 126
    line = one_line(p.stderr)
    assert "/etc/passwd" in line and "EACCES" in line


def test_directory_is_126() -> None:
    p = cli("run", "--", "/usr")
    assert p.returncode == 126
    assert "/usr" in one_line(p.stderr)


@pytest.mark.parametrize("prog", ["/nonexistent/prog", "no-such-program-isol8r"])
def test_not_found_is_127(prog: str) -> None:
    with pytest.raises(isol8r.ExecError) as info:
        jail(prog)
    assert info.value.exit_code == 127
    assert info.value.errno == errno.ENOENT
    p = cli("run", "--", prog)
    assert p.returncode == 127
    line = one_line(p.stderr)
    assert prog in line and "ENOENT" in line


def test_program_exiting_126_or_127_itself_is_not_an_exec_error() -> None:
    r = sh("exit 127")
    assert r.exit_code == 127 and r.error is None


# ---- a supervisor killed by SIGKILL takes the jail with it -------------------------------------


LIBRARY_CALLER = "import isol8r; isol8r.run(['/bin/sleep', '{secs}'])"


def _jail_of(secs: str) -> dict[int, str]:
    """The jail running `sleep secs` (a number no other process sleeps): the sleep and its init.
    Found by that marker, wherever the jail hangs in the host's process tree (under the CLI's
    server, or the library's fork server)."""
    out: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) < 2 or os.path.basename(argv[0]) != b"sleep" or argv[1] != secs.encode():
                continue
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        out[int(entry)] = "sleep"
        out[ppid] = "init"
    return out


# The CLI runs its jail through its server (or in its own process), a library caller has its jails
# cloned and reaped by a fork server: killing the caller must end the jail all the same.
@pytest.mark.parametrize("caller", ["cli", "cli-in-process", "library"])
def test_supervisor_killed_takes_the_jail_with_it(caller: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    secs = f"{60 + os.getpid() % 1000 / 1000 + random.randrange(1000) / 1e6:.6f}"
    if caller.startswith("cli"):
        argv = [sys.executable, "-m", "isol8r", "run", "--", "sleep", secs]
        if caller == "cli-in-process":
            env["ISOL8R_CLI_SERVER"] = "0"
    else:
        argv = [sys.executable, "-c", LIBRARY_CALLER.format(secs=secs)]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    jailed: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 10
        while "sleep" not in jailed.values() and time.monotonic() < deadline:
            time.sleep(0.02)
            jailed = _jail_of(secs)
        assert "sleep" in jailed.values(), f"the jail never started: {jailed}"
        p.kill()
        p.wait(timeout=5)
        deadline = time.monotonic() + 2
        while any(alive(pid) for pid in jailed) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = {pid: comm for pid, comm in jailed.items() if alive(pid)}
        assert not left, f"jail processes outlived their supervisor: {left}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        _remove_groups_of(p.pid)
        for pid in jailed:  # never leave a sleeping jail on the host, even when the test fails
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _remove_groups_of(supervisor: int) -> None:
    """A supervisor killed by SIGKILL runs no cleanup: its jail's groups (empty once the jail is
    gone) stay until a later run sweeps them, 60 s on (cgroups._sweep). The in-process CLI's
    jail has one since its program's memory peak is counted in a group of its own: removed here
    so the session's check of the host sees what it saw before."""
    for top in isol8r_cgroups():
        if os.path.basename(top) != "isol8r" or not os.path.isdir(top):
            continue
        for name in os.listdir(top):
            if name.startswith(f"jail-{supervisor}-"):
                deadline = time.monotonic() + 5
                for d, _, _ in os.walk(os.path.join(top, name), topdown=False):
                    while True:
                        try:
                            os.rmdir(d)
                            break
                        except OSError:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.02)
                try:
                    os.rmdir(top)  # isol8r/ itself, unless another jail still uses it
                except OSError:
                    pass
