"""Issue 13 item 2, a terminal: `isol8r run -t` gives the program a pseudo-terminal of the jail's
own /dev/pts, relayed to the caller's; job control, window size, the caller's settings put back.

Every test drives isol8r from a real pseudo-terminal (os.openpty): the slave is the caller's
controlling terminal, the test types on the master and reads what the caller's terminal shows.
Both ways a command runs are covered: through the CLI server and in its own process.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Any, Iterator

import pytest

import isol8r
from conftest import ROOT, needs_root

pytestmark = needs_root

PATHS = {"served": {}, "in-process": {"ISOL8R_CLI_SERVER": "0"}}
SHELL = ["--env", "PS1=jail$ ", "--", "/bin/bash", "--norc", "--noprofile", "-i"]


class Term:
    """isol8r run on a pseudo-terminal the test holds both ends of."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, rows: int = 24,
                 cols: int = 80, command: list[str] | None = None) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.before = termios.tcgetattr(self.slave)
        self.buf = b""

        def become_controlling() -> None:  # the caller's terminal is its controlling terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "isol8r", "run", *args], stdin=self.slave,
            stdout=self.slave, stderr=self.slave, start_new_session=True, preexec_fn=become_controlling,
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {})))

    def resize(self, rows: int, cols: int) -> None:
        """Resize the caller's terminal: the kernel sends its foreground group SIGWINCH."""
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout: float = 10.0) -> re.Match[bytes]:
        """Read what the caller's terminal shows until pattern (a regex) matches; the text
        up to the match is consumed."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                raise AssertionError(f"{pattern!r} not seen in {timeout} s; the terminal shows "
                                     f"{self.buf[-2000:]!r}")
            try:
                self.buf += os.read(self.master, 65536)
            except OSError:
                raise AssertionError(f"{pattern!r} not seen; the terminal closed: {self.buf!r}")

    def drain(self) -> None:
        """Take in what the terminal shows by now."""
        while select.select([self.master], [], [], 0.05)[0]:
            self.buf += os.read(self.master, 65536)

    def wait(self, timeout: float = 15.0) -> int:
        """isol8r's exit status, draining the terminal meanwhile (a full one would block it)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"isol8r did not exit; the terminal shows {self.buf!r}")
            if select.select([self.master], [], [], 0.05)[0]:
                self.buf += os.read(self.master, 65536)
        return self.proc.returncode

    def settings_kept(self) -> bool:
        return termios.tcgetattr(self.slave) == self.before

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture(params=sorted(PATHS))
def term(request: Any) -> Iterator[Any]:
    """A factory of Terms for one way of running the command; each is closed afterwards."""
    made: list[Term] = []

    def make(*args: str, **kw: Any) -> Term:
        t = Term(*args, env=PATHS[request.param], **kw)
        made.append(t)
        return t
    def caller_shell() -> Term:  # an interactive shell on the caller's terminal
        return make(command=["/bin/bash", "--norc", "--noprofile", "-i"])
    make.shell = caller_shell  # type: ignore[attr-defined]
    yield make
    for t in made:
        t.close()


def shell(term: Any, *options: str, **kw: Any) -> Term:
    t = term("-t", *options, *SHELL, **kw)
    t.expect(rb"jail\$ ")
    return t


def exit_shell(t: Term) -> None:
    t.send(b"exit\r")
    assert t.wait() == 0, t.buf
    assert t.settings_kept(), "the caller's terminal settings changed"


def test_the_program_gets_a_terminal_of_the_jails_own_devpts(term: Any) -> None:
    t = term("--tty", "--", "/bin/sh", "-c", "tty; readlink /proc/self/fd/0 /proc/self/fd/1 "
             "/proc/self/fd/2; ls /dev/pts")
    assert t.wait() == 0
    lines = t.buf.decode().split("\r\n")
    assert lines[:4] == ["/dev/pts/0"] * 4, t.buf
    assert lines[4].split() == ["0", "ptmx"], t.buf  # one terminal: its own, not the host's
    assert t.settings_kept()


@pytest.mark.parametrize("init", ["init", "no-init"])
def test_ctrl_c_stops_a_sleep_and_the_shell_survives(term: Any, init: str) -> None:
    t = shell(term, *(["--no-init"] if init == "no-init" else []))
    t.send(b"echo go; sleep 30\r")
    t.expect(rb"\r\ngo\r\n")
    time.sleep(0.3)
    t.send(b"\x03")
    t.send(b"echo status=$?\r")
    t.expect(rb"status=130", timeout=5)  # well before the 30 s of the sleep
    exit_shell(t)


def test_ctrl_z_and_fg(term: Any) -> None:
    t = shell(term)
    t.send(b"python3 -c 'import time; print(\"be\" + \"gun\", flush=True); time.sleep(1); "
           b"print(\"e\" + \"nd\")'\r")
    t.expect(rb"\r\nbegun\r\n")
    t.send(b"\x1a")
    t.expect(rb"Stopped")
    t.send(b"jobs -l\r")
    t.expect(rb"Stopped +python3")
    time.sleep(1.2)
    t.drain()
    assert b"end" not in t.buf  # stopped, not merely slow
    t.send(b"fg\r")
    t.expect(rb"\r\nend\r\n", timeout=5)
    t.send(b"echo status=$?\r")
    t.expect(rb"status=0")
    exit_shell(t)


def test_the_window_size_follows_the_callers(term: Any) -> None:
    t = shell(term, rows=24, cols=80)
    t.send(b"stty size\r")
    t.expect(rb"\r\n24 80\r\n")
    t.resize(40, 132)
    deadline = time.monotonic() + 10
    while True:  # SIGWINCH travels asynchronously: ask until the new size shows
        t.send(b"stty size\r")
        # the line as echoed, or redrawn by the shell when SIGWINCH lands while it reads it
        # ("\rjail$ stty size" and the answer straight after)
        m = t.expect(rb"(?:\r\n|size)(\d+ \d+)\r\n")
        if m.group(1) == b"40 132":
            break
        assert time.monotonic() < deadline, f"the jail still sees {m.group(1)!r}"
        time.sleep(0.1)
    t.send(b"trap 'echo winched' WINCH\r")
    t.expect(rb"jail\$ ")
    t.resize(30, 100)
    t.expect(rb"winched")  # the jail's shell got SIGWINCH from its own terminal
    exit_shell(t)


def test_the_callers_terminal_is_put_back_after_the_program_is_killed(term: Any) -> None:
    t = shell(term)
    assert not t.settings_kept()  # raw while the jail runs
    t.send(b"kill -KILL $$\r")
    assert t.wait() == 128 + signal.SIGKILL
    assert t.settings_kept()


def test_the_callers_terminal_is_put_back_when_the_cli_servers_worker_dies() -> None:
    t = Term("-t", *SHELL)
    try:
        t.expect(rb"jail\$ ")
        assert not t.settings_kept()
        st = os.fstat(t.slave)
        holders = []  # the worker: it holds the caller's terminal, and is not the client
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fd0 = os.stat(f"/proc/{pid}/fd/0")
                if int(pid) != t.proc.pid and (fd0.st_dev, fd0.st_ino) == (st.st_dev, st.st_ino):
                    holders.append(int(pid))
            except OSError:
                continue
        assert len(holders) == 1, holders
        os.kill(holders[0], signal.SIGKILL)
        assert t.wait() == 125  # isol8r's own part died: never blamed on the program (issue 12)
        assert t.settings_kept()
    finally:
        t.close()


def test_tiocsti_from_the_jail_reaches_only_the_jails_terminal(term: Any) -> None:
    code = ("import fcntl, termios\n"
            "for fd in (0, 1, 2):\n"
            "    for c in b'id\\n':\n"
            "        try:\n"
            "            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))\n"
            "        except OSError as e:\n"
            "            print('fd', fd, 'refused', e.errno); break\n"
            "    else:\n"
            "        print('fd', fd, 'injected')\n")
    for seccomp, word in (("default", b"refused"), ("none", b"injected")):
        t = term("-t", f"--seccomp={seccomp}", "--", "/usr/bin/python3", "-c", code)
        assert t.wait() == 0, t.buf
        assert t.buf.count(b"fd ") == 3 and t.buf.count(word) == 3, t.buf
        queued = fcntl.ioctl(t.slave, termios.FIONREAD, b"\0\0\0\0")
        assert struct.unpack("i", queued)[0] == 0, "something was typed on the caller's terminal"
        assert t.settings_kept()


def test_no_init_does_not_lose_ctrl_c(term: Any) -> None:
    """Without --tty, Ctrl-C is the caller's terminal's SIGINT to isol8r, passed on to the
    program, which is PID 1 of its namespace with --no-init: the kernel drops a signal PID 1
    has no handler for, so isol8r ends the jail as SIGINT would have."""
    t = term("--no-init", "--", "/bin/sleep", "30")
    time.sleep(1.0)
    t.send(b"\x03")
    assert t.wait(timeout=10) == 128 + signal.SIGINT
    assert t.settings_kept()


def test_no_init_with_a_terminal_does_not_lose_ctrl_c(term: Any) -> None:
    """With --tty, Ctrl-C is a byte the jail's terminal turns into SIGINT for its foreground,
    here the program as PID 1, which the kernel would shield: isol8r ends the jail instead."""
    t = term("-t", "--no-init", "--", "/bin/sleep", "30")
    deadline = time.monotonic() + 10
    while t.settings_kept():  # raw mode: the relay has the jail's terminal
        assert time.monotonic() < deadline and t.proc.poll() is None, t.buf
        time.sleep(0.05)
    t.send(b"\x03")
    assert t.wait(timeout=10) == 128 + signal.SIGINT
    assert t.settings_kept()


def test_no_init_forwards_a_signal_the_program_handles() -> None:
    """The stand-in is only for signals PID 1 would lose: a handled one still reaches it."""
    # os.write in the handler: the signal can land while print('ready') is still returning
    code = ("import os, signal, time\n"
            "signal.signal(signal.SIGINT, lambda *a: (os.write(1, b'caught\\n'), os._exit(4)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-m", "isol8r", "run", "--no-init", "--",
                          "/usr/bin/python3", "-c", code], stdout=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == b"ready\n"
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=10) == 4
        assert p.stdout.read() == b"caught\n"
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def test_library_tty_with_input_and_captured_output() -> None:
    r = isol8r.run(["/bin/sh", "-c", "tty; cat"], tty=True, input=b"hello\n", capture_output=True,
                   timeout=10)
    assert r.verdict == "ok", r
    # the terminal echoes the input (which may come first), cat writes it back; a terminal
    # ends its lines with \r\n
    assert sorted(r.stdout.split(b"\r\n")) == [b"", b"/dev/pts/0", b"hello", b"hello"], r.stdout
    assert isol8r.run(["/bin/sh", "-c", "test -t 0 && test -t 1 && test -t 2"], tty=True,
                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).exit_code == 0


def test_a_regular_file_as_input(tmp_path: Any) -> None:
    data = tmp_path / "in.txt"
    data.write_bytes(b"".join(b"line %d\n" % i for i in range(3000)))
    with open(data, "rb") as f:
        p = subprocess.run([sys.executable, "-m", "isol8r", "run", "-t", "--", "/bin/sh", "-c",
                            "wc -l"], stdin=f, capture_output=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith(b"\r\n3000\r\n"), p.stdout[-200:]  # every line, then the end


def test_tty_is_a_flag() -> None:
    with pytest.raises(isol8r.SpecError, match="tty"):
        isol8r.run(["/bin/true"], tty="yes")
    p = subprocess.run([sys.executable, "-m", "isol8r", "run", "--dry-run", "-t", "--",
                        "/bin/true"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert p.returncode == 0 and '"tty": true' in p.stdout, p


def test_run_async_with_a_terminal() -> None:
    import asyncio

    async def main() -> isol8r.Result:
        return await isol8r.run_async(["/bin/sh", "-c", "tty; head -c 3"], tty=True,
                                      input=b"abc", capture_output=True, timeout=10)
    r = asyncio.run(main())
    assert r.exit_code == 0, r
    assert b"/dev/pts/0\r\n" in r.stdout and r.stdout.count(b"abc") == 2, r.stdout


def test_output_limit_caps_the_terminals_output() -> None:
    r = isol8r.run(["/usr/bin/yes"], tty=True, capture_output=True, output_limit="10K",
                   stdin=subprocess.DEVNULL, timeout=20)
    assert r.verdict == "output-limit", r
    assert len(r.stdout) == 10240 and r.stdout_truncated, len(r.stdout)


def test_a_background_job_is_stopped_until_fg(term: Any) -> None:
    """`isol8r run -t ... &` from an interactive shell: the job stops (as a program reading its
    terminal from the background does) instead of taking the terminal from the shell; `fg` gives
    it the terminal. Through the CLI server the worker is not in the terminal's session, so the
    kernel would not stop it: isol8r does."""
    caller = term.shell()
    caller.send(b"set -b; PS1='host$ '\r")  # -b: job changes are reported at once
    caller.expect(rb"host\$ ")
    caller.send(b"%s -m isol8r run -t -- /bin/sh -c 'read x; echo got-$x' &\r"
                % sys.executable.encode())
    caller.expect(rb"Stopped", timeout=15)
    caller.send(b"echo shell-$((20+1))\r")  # the shell still has its terminal
    caller.expect(rb"shell-21")
    caller.send(b"fg\r")
    time.sleep(1.0)
    caller.send(b"hello\r")
    caller.expect(rb"got-hello")
    caller.expect(rb"host\$ ")  # typed ahead of it, a line would still go to the jail
    caller.send(b"echo status=$?\r")
    caller.expect(rb"status=0")
