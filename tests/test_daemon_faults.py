"""Issue 12, the daemons' faults: a fork server or CLI server that dies, stops or cannot start
never makes a run hang, never has its failure blamed on the program, and leaves nothing behind.
Each test signals only the server process it started itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import needs_root

from isol8r import server, supervisor
from isol8r.errors import SetupError
from isol8r.spec import Spec

pytestmark = needs_root


def client_run(client: server.Client, *argv: str, **options: object) -> object:
    spec = Spec.from_options(list(argv), dict(options))
    stdio = supervisor.open_stdio(spec, None, None, None, None, True, lambda _v: None)
    return client.run(spec, stdio)


@pytest.fixture
def client():
    c = server.Client(prewarm=2)
    c._control()
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
    resumed = threading.Timer(server.WAIT_MARGIN + 3, os.kill, (pid, signal.SIGCONT))
    resumed.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(SetupError, match="fork server.*replaced"):
            client_run(client, "/bin/true", time_limit=1)
        # not a speed check: before the fix the call returned only after SIGCONT
        assert time.monotonic() - t0 < server.WAIT_MARGIN + 2.5
    finally:
        resumed.cancel()
    assert client_run(client, "/bin/true").exit_code == 0
    assert client.pid() != pid
