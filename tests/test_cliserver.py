"""Issue 6, the CLI's server: `isol8r run` is a thin client of a long-lived server whose workers
run the command as the client would have. Checked here: one server serves many runs, a run gets
the client's descriptors, directory and environment, a server of older code is replaced, and
`isol8r server stop` ends it. (Signals, SIGKILL of the client and a client in other namespaces
are tested with the rest of the CLI: tests/test_jail_signals.py, test_jail_exit.py,
test_verdicts.py.)
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, alive, cli, needs_root

from isol8r import cliserver

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
