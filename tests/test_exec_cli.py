"""Issue 15 item 2: named sandboxes from the command line. `isol8r sandbox create` prints an id
and returns; the sandbox stays (held by the sandbox daemon) for `isol8r exec` and `isol8r cp`
from later processes, until `isol8r sandbox rm` or its --idle-timeout; only the uid that made
it may use it (the daemon checks the peer's credentials: tested as uid 65534 against root's);
the daemon leaves once it holds nothing.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli, needs_root

pytestmark = needs_root
sys.path.insert(0, str(ROOT / "src"))
from isol8r.daemon import sandboxd  # noqa: E402

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def create(*args: str) -> str:
    p = cli("sandbox", "create", *args)
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    assert len(sid) == 12 and all(c in "0123456789abcdef" for c in sid), p.stdout
    return sid


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([*NOBODY, sys.executable, "-m", "isol8r", *args], capture_output=True,
                          text=True, timeout=30, env=env, cwd="/")


def wait_gone(timeout: float = 15.0) -> bool:
    """The daemon left (its socket is gone): it holds no sandbox."""
    deadline = time.monotonic() + timeout
    while os.path.exists(sandboxd.path()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(autouse=True)
def nothing_left() -> object:
    yield
    cli("sandbox", "rm", "--all")
    assert wait_gone(), "the sandbox daemon did not leave once it held no sandbox"


def test_create_exec_cp_ls_rm(tmp_path: Path) -> None:
    sid = create("--name", "build", "--memory", "256M")
    # state persists between commands run by different processes
    p = cli("exec", "build", "--", "/bin/sh", "-c", "echo one > /tmp/state; echo hi; exit 3")
    assert (p.returncode, p.stdout) == (3, "hi\n"), p.stderr
    p = cli("exec", sid, "--", "/bin/cat", "/tmp/state")
    assert (p.returncode, p.stdout) == (0, "one\n"), p.stderr
    # --json -: the Result, with the output in it, as `isol8r run --json -`
    p = cli("exec", "--json", "-", "build", "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 2")
    d = json.loads(p.stdout)
    assert p.returncode == 2 and (d["stdout"], d["stderr"], d["exit_code"], d["verdict"]) == \
        ("out\n", "err\n", 2, "nonzero-exit")
    # a per-command limit
    p = cli("exec", "--json", "-", "--time-limit", "0.5", "build", "--", "/bin/sleep", "10")
    assert json.loads(p.stdout)["verdict"] == "time-limit"
    # files in and out
    src = tmp_path / "in.sh"
    src.write_text("#!/bin/sh\necho from-host\n")
    src.chmod(0o755)
    p = cli("cp", str(src), "build:/tmp/in.sh")
    assert p.returncode == 0, p.stderr
    p = cli("exec", "build", "--", "/tmp/in.sh")
    assert p.stdout == "from-host\n", p.stderr
    cli("exec", "build", "--", "/bin/sh", "-c", "printf made > /tmp/out.txt")
    p = cli("cp", f"{sid}:/tmp/out.txt", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out.txt").read_text() == "made"
    # ls, then rm
    p = cli("sandbox", "ls", "--json")
    rows = json.loads(p.stdout)
    assert [(r["id"], r["name"]) for r in rows] == [(sid, "build")]
    assert cli("sandbox", "rm", "build").returncode == 0
    p = cli("exec", sid, "--", "/bin/true")
    assert p.returncode == 125 and "no such sandbox" in p.stderr
    assert wait_gone()


def test_only_the_creating_uid_may_use_it() -> None:
    sid = create("--name", "mine")
    for args in (["exec", sid, "--", "/bin/true"], ["exec", "mine", "--", "/bin/true"],
                 ["cp", f"{sid}:/etc/hostname", "/dev/null"], ["cp", "/etc/hostname", f"{sid}:/tmp/x"],
                 ["sandbox", "rm", sid]):
        p = as_nobody(*args)
        assert p.returncode == 125, (args, p.stdout, p.stderr)
        assert "no such sandbox of uid 65534" in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1, p.stderr
    p = as_nobody("sandbox", "ls", "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == [], p.stderr
    p = as_nobody("sandbox", "rm", "--all")
    assert p.returncode == 0
    p = as_nobody("sandbox", "create")  # root's daemon does not make jails for another uid
    assert p.returncode == 125 and "only uid 0" in p.stderr, p.stderr
    p = cli("exec", sid, "--", "/bin/echo", "still here")  # nothing above touched it
    assert (p.returncode, p.stdout) == (0, "still here\n"), p.stderr


def test_idle_timeout_removes_it() -> None:
    sid = create("--idle-timeout", "1")
    assert cli("exec", sid, "--", "/bin/true").returncode == 0
    assert wait_gone(), "an idle sandbox outlived its --idle-timeout"
    assert cli("exec", sid, "--", "/bin/true").returncode == 125


def test_exec_t_gives_a_terminal() -> None:
    sid = create()
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "isol8r", "exec", "-t", sid, "--",
                             "/bin/sh", "-c", "tty; read x; echo got-$x; exit 7"],
                            stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 20
        sent = False
        while time.monotonic() < deadline:
            if not sent and b"/dev/pts/" in out:
                os.write(master, b"abc\r")
                sent = True
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if proc.poll() is not None and not r:
                break
        assert proc.wait(timeout=20) == 7, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"/dev/pts/0" in out and b"got-abc" in out, out


@pytest.mark.parametrize("args, word", [
    (["exec", "x"], "command"),
    (["cp", "/a", "/b"], "ID:PATH"),
    (["sandbox", "create", "--idle-timeout", "soon"], "soon"),
    (["sandbox", "create", "--memory", "lots"], "lots"),
    (["sandbox", "create", "--pass-fd", "3"], "--pass-fd"),
    (["sandbox", "rm"], "--all"),
    (["sandbox", "frobnicate"], "frobnicate"),
])
def test_bad_input_is_one_line(args: list[str], word: str) -> None:
    p = cli(*args)
    assert p.returncode == 125 and word in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_cp_of_a_missing_file_says_which(tmp_path: Path) -> None:
    sid = create()
    p = cli("cp", f"{sid}:/tmp/nope", str(tmp_path / "n"))
    assert p.returncode == 125 and "/tmp/nope" in p.stderr, p.stderr
    assert not (tmp_path / "n").exists()  # not left half-made


def test_exec_statuses_and_json_as_isol8r_run() -> None:
    sid = create()
    p = cli("exec", sid, "--", "/nonexistent")
    assert p.returncode == 127 and "execve" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    p = cli("exec", sid, "--", "/etc/hostname")
    assert p.returncode == 126, p.stderr
    p = cli("exec", "--json", "-", sid, "--", "/nonexistent")
    d = json.loads(p.stdout)
    assert (p.returncode, d["verdict"], d["status"], d["step"]) == (127, "setup-error", 127,
                                                                   "execve")
    p = cli("exec", "--json", "-", sid, "--", "/bin/cat", input="typed\n")  # stdin is the caller's
    assert json.loads(p.stdout)["stdout"] == "typed\n"
    p = cli("exec", sid, "--", "/bin/sh", "-c", "kill -9 $$")
    assert p.returncode == 137


def test_exec_passes_its_signals_on() -> None:
    """A signal to `isol8r exec` reaches the command (as `isol8r run` passes its own on): the
    program's handler runs, and the exit status is the program's."""
    sid = create()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "isol8r", "exec", sid, "--", "/bin/sh", "-c",
                             "trap 'echo got-int; exit 9' INT; echo ready; "
                             "while :; do sleep 0.1; done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.3)  # the shell is in its loop (its trap was set before "ready")
        proc.send_signal(2)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (9, b"got-int\n"), err
    proc = subprocess.Popen([sys.executable, "-m", "isol8r", "exec", sid, "--", "/bin/sh", "-c",
                             "echo ready; exec /bin/sleep 60"], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    try:
        proc.terminate()
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.system("ps -eo pid,ppid,stat,wchan:20,cmd | grep -E 'sleep 60|sandboxcli|isol8r exec' | grep -v grep >&2")
            raise
        assert code == 128 + 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_cp_cannot_follow_a_planted_symlink_out(tmp_path: Path) -> None:
    """A symlink the jail planted resolves inside the jail: `cp` of it never reads or writes
    the host's file of that name."""
    sid = create()
    host = tmp_path / "secret"
    host.write_text("host only\n")
    host.chmod(0o644)
    tmp_path.chmod(0o755)
    p = cli("exec", sid, "--", "/bin/ln", "-s", str(host), "/tmp/link")
    assert p.returncode == 0, p.stderr
    p = cli("cp", f"{sid}:/tmp/link", str(tmp_path / "got"))
    assert p.returncode == 125 and "/tmp/link" in p.stderr, p.stderr  # no such file inside
    assert not (tmp_path / "got").exists()
    src = tmp_path / "new"
    src.write_text("from cp\n")
    p = cli("cp", str(src), f"{sid}:/tmp/link")
    assert host.read_text() == "host only\n"  # written inside the jail, if anywhere
