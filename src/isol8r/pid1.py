"""The jail's init: PID 1 that forwards signals to the program, reaps orphans and reports status.

It waits with sigwaitinfo on signals the supervisor left blocked, so it installs no handler and
runs no Python signal machinery; a signal arriving early stays pending rather than being lost.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from typing import Callable, NoReturn

from . import protocol
from .protocol import Exec, Failure, Status

# What init passes on to the program's process group: every signal a caller forwards
# (protocol.FORWARDED), and SIGALRM, SIGTTIN and SIGTTOU, which no caller forwards (a caller's
# own are about the caller: its timer, its being a background job) but which a process of the
# host may send the jail's init directly (kill of its pid); as PID 1, init would otherwise drop
# them without a word, having no handler.
FORWARDED = (*protocol.FORWARDED, signal.SIGALRM, signal.SIGTTIN, signal.SIGTTOU)
_WAITED = {signal.SIGCHLD, *FORWARDED}


def serve(program: int, exec_pipe: int, report: Callable[[bytes], None],
          linger: Callable[[], None]) -> NoReturn:
    """Relay the program's setup records until its exec closes the pipe, then forward signals
    until it exits, report its wait status and exit like it did, once the supervisor has
    closed the channel (linger): the exit of a namespace's last process tears its mounts and
    namespaces down, ~1 ms of a core the supervisor's own wake-up would otherwise wait for."""
    chunks = []
    while True:
        data = os.read(exec_pipe, 4096)
        if not data:
            break
        chunks.append(data)
    os.close(exec_pipe)
    failed = False
    for line in b"".join(chunks).split(b"\n"):
        if line:
            failed = failed or line[:1] == Failure.TAG
            report(line)
    if not failed:
        report(Exec(time.monotonic_ns()).encode())
    status, ru = _wait_for(program)
    ended = time.monotonic_ns()
    emptied = empty_namespace()
    report(Status(status, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, ended, emptied).encode())
    linger()
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 255)


def empty_namespace() -> bool:
    """As PID 1 of the jail's own PID namespace: kill every other process in it and reap them,
    so the report that follows means nothing of the jail still runs (the namespaces' teardown
    then goes on without the caller waiting for it). Returns True when done, False when this init
    is not PID 1 (--share-pid: kill(-1) would reach beyond the jail, so it is not used)."""
    if os.getpid() != 1:
        return False
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return True


def _wait_for(program: int) -> tuple[int, "resource.struct_rusage"]:
    """Reap every child; forward every other signal to the program's process group."""
    while True:
        sig = signal.sigwaitinfo(_WAITED).si_signo
        if sig != signal.SIGCHLD:
            try:
                os.kill(-program, sig)
            except ProcessLookupError:
                try:
                    os.kill(program, sig)
                except ProcessLookupError:
                    pass
            continue
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == program:
                return status, ru
