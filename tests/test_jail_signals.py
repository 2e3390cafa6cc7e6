"""Issue 2, signals and the init: signals sent to the isol8r process reach the jailed program,
the init reaps orphans and cannot be signalled by the program, and --no-init makes the program
PID 1.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, cli, needs_root, py, sh

pytestmark = needs_root

FORWARDED = ("SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCONT", "SIGTSTP",
             "SIGTERM")

HANDLER_CODE = f"""
import os, signal, sys
def handler(sig, frame):
    # os.write, not print: a signal can land while print('ready') is still flushing
    os.write(1, signal.Signals(sig).name.encode() + b"\\n")
    if sig == signal.SIGTERM:
        sys.exit(3)
for name in {FORWARDED!r}:
    signal.signal(getattr(signal, name), handler)
print('ready', flush=True)
while True:
    signal.pause()
"""


class LineReader:
    """Lines from a pipe, with a deadline per line, never blocking past it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        os.set_blocking(fd, False)

    def line(self, timeout: float = 5.0) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            data = os.read(self.fd, 4096)
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def popen_cli(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-m", "isol8r", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)


def _finish(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
    p.communicate(timeout=10)


def test_signals_to_isol8r_reach_the_program() -> None:
    p = popen_cli("run", "--", "/usr/bin/python3", "-c", HANDLER_CODE)
    try:
        assert p.stdout is not None
        out = LineReader(p.stdout.fileno())
        assert out.line(10) == "ready", p.stderr.read() if p.poll() is not None else "no ready"
        for name in FORWARDED:
            p.send_signal(getattr(signal, name))
            got = out.line()
            if got != name:
                p.kill()
                err = p.communicate(timeout=5)[1]
                raise AssertionError(f"{name} sent to isol8r did not reach the program: {got!r}, "
                                     f"stderr {err!r}")
        assert p.wait(timeout=5) == 3
    finally:
        _finish(p)


# ---- the init -----------------------------------------------------------------------------------

ORPHAN_CODE = """
import json, os, time
r, w = os.pipe()
child = os.fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(0.05)
        os._exit(0)
    os.write(w, str(grandchild).encode())
    os._exit(0)
os.waitpid(child, 0)
grandchild = int(os.read(r, 32))
deadline = time.monotonic() + 3
while os.path.exists('/proc/%d' % grandchild) and time.monotonic() < deadline:
    time.sleep(0.01)
zombies = []
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            state = open('/proc/%s/stat' % p).read().rsplit(')', 1)[1].split()[0]
        except OSError:
            continue
        if state == 'Z':
            zombies.append(int(p))
print(json.dumps({'reaped': not os.path.exists('/proc/%d' % grandchild), 'zombies': zombies}))
"""


def test_init_reaps_orphans() -> None:
    r = py(ORPHAN_CODE)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"reaped": True, "zombies": []}


def test_without_init_orphans_stay_zombies() -> None:
    # the twin that shows the reaping test can fail: with the program as PID 1 and not reaping,
    # the orphan stays a zombie
    r = py(ORPHAN_CODE, no_init=True)
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert not info["reaped"] and info["zombies"]


KILL_INIT_CODE = """
import json, os, signal, time
out = {}
for sig in SIGNALS:
    try:
        os.kill(1, sig)
        out[sig.name] = 'sent'
    except OSError as e:
        out[sig.name] = e.errno
time.sleep(0.1)
with open('/proc/1/stat') as f:
    out['init_state'] = f.read().rsplit(')', 1)[1].split()[0]
print(json.dumps(out), flush=True)
"""


# As 0:0 the program has init's uid, so kill() is allowed: the kernel must still drop SIGKILL
# and SIGSTOP sent to a namespace's init from inside (and init would forward SIGINT back to
# the program's own group, so that one is only sent as 65534).
@pytest.mark.parametrize("user, signals", [(None, "signal.SIGKILL, signal.SIGSTOP, signal.SIGINT"),
                                           ("0:0", "signal.SIGKILL, signal.SIGSTOP")])
def test_program_cannot_kill_or_stop_init(user: str | None, signals: str) -> None:
    r = py(KILL_INIT_CODE.replace("SIGNALS", f"({signals},)"), user=user)
    assert r.exit_code == 0, (r, r.stderr)
    info = json.loads(r.stdout)
    assert info["init_state"] in ("S", "R"), info
    for name, result in info.items():
        if name != "init_state":
            assert result in (1, "sent"), info  # EPERM, or sent and without effect


# ---- --no-init ----------------------------------------------------------------------------------


def test_program_is_pid_2_behind_init() -> None:
    assert sh("echo $$").stdout == b"2\n"


def test_no_init_on_the_cli_makes_the_program_pid_1() -> None:
    p = cli("run", "--no-init", "--", "/bin/sh", "-c", "echo $$")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "1\n"


def test_init_false_makes_the_program_pid_1() -> None:
    assert sh("echo $$", init=False).stdout == b"1\n"


def test_no_init_exit_status_and_signal() -> None:
    p = cli("run", "--no-init", "--", "/bin/sh", "-c", "exit 7")
    assert p.returncode == 7, p.stderr
