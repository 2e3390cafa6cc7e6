"""Issue 6, the CLI's server: `isol8r run` is a thin client of a long-lived server whose workers
run the command as the client would have. Checked here: one server serves many runs, a run gets
the client's descriptors, directory and environment, a server of older code is replaced, and
`isol8r server stop` ends it. (Signals, SIGKILL of the client and a client in other namespaces
are tested with the rest of the CLI: tests/test_jail_signals.py, test_jail_exit.py,
test_verdicts.py.)
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, alive, cli, needs_root

from isol8r.daemon import cliserver

pytestmark = needs_root


def server_pid() -> int | None:
    """The pid of the process listening on this installation's socket (SO_PEERCRED)."""
    path = cliserver.path()
    if path is None:
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
    except OSError:
        return None
    try:
        return struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    finally:
        s.close()


def test_one_server_serves_many_runs_and_stops() -> None:
    assert cli("run", "--", "/bin/true").returncode == 0
    first = server_pid()
    assert first is not None, "no CLI server after a run"
    for code in (0, 3, 7):
        assert cli("run", "--", "/bin/sh", "-c", f"exit {code}").returncode == code
    assert server_pid() == first
    p = cli("server", "stop")
    assert p.returncode == 0 and "stopped" in p.stdout, p
    assert server_pid() is None and not alive(first)
    # the twin: with the server turned off, a run leaves no server behind
    p = cli("run", "--", "/bin/true", env_extra={"ISOL8R_CLI_SERVER": "0"})
    assert p.returncode == 0 and server_pid() is None


def test_a_served_run_gets_the_clients_descriptors_directory_and_environment(open_dir: Path) -> None:
    r, w = os.pipe()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ISOL8R_T="from the client")
    p = subprocess.run([sys.executable, "-m", "isol8r", "run", "--pass-fd", str(w), "--keep-env",
                        "ISOL8R_T", "--json", "result.json", "--", "/usr/bin/python3", "-c",
                        f"import os; os.write({w}, os.environb[b'ISOL8R_T'] + b'\\n')"],
                       cwd=open_dir, env=env, pass_fds=[w], capture_output=True, text=True,
                       timeout=30)
    os.close(w)
    assert p.returncode == 0, p.stderr
    with os.fdopen(r) as f:
        assert f.read() == "from the client\n"
    assert (open_dir / "result.json").exists(), "--json's relative path is not the client's"
    assert server_pid() is not None, "the run did not go through the server"


def test_a_server_of_older_code_is_replaced() -> None:
    assert cli("run", "--", "/bin/true").returncode == 0
    old = server_pid()
    assert old is not None
    src = ROOT / "src" / "isol8r" / "errors.py"
    st = src.stat()
    try:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert cli("run", "--", "/bin/true").returncode == 0
        new = server_pid()
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert new is not None and new != old
    deadline = time.monotonic() + 5
    while alive(old) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(old), "the stale server did not leave"
    cliserver.stop()  # its own code changed back: stop it rather than leave a stale one


def test_a_new_source_file_makes_the_server_stale() -> None:
    """The server stats the paths it found at start-up, not a fresh walk: a module added since
    must still be seen (its directory's mtime changes)."""
    assert cli("run", "--", "/bin/true").returncode == 0
    old = server_pid()
    new_file = ROOT / "src" / "isol8r" / "daemon" / "stale_probe_test.py"
    try:
        new_file.write_text("")
        assert cli("run", "--", "/bin/true").returncode == 0
        new = server_pid()
    finally:
        new_file.unlink()
    assert old is not None and new is not None and new != old
    cliserver.stop()


def _settled(pid: int, want: tuple[int, int], wait: float = 10.0) -> tuple[int, int]:
    """The server's (open descriptors, child processes), polled until they are back to want."""
    from conftest import children
    deadline = time.monotonic() + wait
    while True:
        now = (len(os.listdir(f"/proc/{pid}/fd")), len(children(pid)))
        if now == want or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def test_fifty_overlapping_runs_all_end_right_and_the_server_returns_to_idle() -> None:
    """Issue 12 item 1: a worker beyond the idle count left its fd registered; the reused number
    was 'already registered' for the next listener/worker/lease, and runs hung or got 137."""
    from conftest import children
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    assert cli("run", "--", "/bin/true").returncode == 0
    pid = server_pid()
    assert pid is not None
    idle = (-1, -1)  # measured after the first round: the idle workers kept (_MAX_IDLE) are in
    for rnd in range(4):
        procs = []
        for i in range(50):
            script = f"sleep 0.{(i * 7) % 5}; echo run{i}; exit {i % 7}"
            procs.append(subprocess.Popen([sys.executable, "-m", "isol8r", "run", "--", "/bin/sh",
                                           "-c", script], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        bad = []
        for i, p in enumerate(procs):
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                bad.append((i, "hung"))
                continue
            if p.returncode != i % 7 or out != f"run{i}\n":
                bad.append((i, p.returncode, out, err))
        assert not bad, f"round {rnd}: {bad}"
        assert server_pid() == pid, "the server changed under the runs"
        # the pool and idle workers refill after a burst; descriptors and children come back
        if rnd == 0:
            idle = _settled(pid, idle, wait=2.0)
            idle = _settled(pid, idle, wait=1.0)
            continue
        now = _settled(pid, idle)
        zombies = [c for c in children(pid) if not alive(c)]
        assert now == idle and not zombies, (rnd, idle, now, zombies)


def test_a_stopped_cli_server_bounds_the_wait_and_is_replaced() -> None:
    """Issue 12 item 3: a client of a stopped server waited until SIGCONT."""
    assert cli("run", "--", "/bin/true").returncode == 0
    pid = server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        p = cli("run", "--time-limit", "1", "--", "/bin/true", timeout=30,
                env_extra={"ISOL8R_WAIT_MARGIN": "2"})
        assert p.returncode == 125 and "did not answer" in p.stderr, p
        assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid), "the stuck server was not replaced"
    assert cli("run", "--", "/bin/true").returncode == 0
    assert server_pid() not in (None, pid)


def test_a_full_run_directory_runs_in_process_with_a_note() -> None:
    """Issue 12 item 6: no inode left in /run/isol8r (a tmpfs with 2, in a private mount
    namespace of this test's own): the lock file's open failed with a traceback."""
    script = ("mount -t tmpfs -o nr_inodes=2,mode=700 isol8r-test /run/isol8r && "
              "touch /run/isol8r/fill; "
              f"exec {sys.executable} -m isol8r run -v -- /bin/echo in-process")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "in-process\n", p
    assert "Traceback" not in p.stderr and "running in this process" in p.stderr, p.stderr


def test_a_cli_server_stopped_during_a_run_is_125_and_replaced() -> None:
    """Issue 12 item 3: the client waited for the exit status until SIGCONT."""
    assert cli("run", "--", "/bin/true").returncode == 0
    pid = server_pid()
    assert pid is not None
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ISOL8R_WAIT_MARGIN="1")
    p = subprocess.Popen([sys.executable, "-m", "isol8r", "run", "--", "/bin/sleep", "20"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        os.kill(pid, signal.SIGSTOP)
        out, err = p.communicate(timeout=15)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 125 and "stopped during the run" in err, (p, err)
    deadline = time.monotonic() + 2
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid), "the stopped server was not replaced"
