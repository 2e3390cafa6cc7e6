"""The fork server: a small process that clones jails on behalf of library callers.

Why: cloning from the caller copies its page tables (the cost grows with the caller's memory),
and a bare clone is unsafe while the caller has other threads. The server is started once per
caller process, is single-threaded and small, and supervises every jail it starts in one event
loop (JailWatch). The caller keeps the I/O side (IOWatch): its pipes, input and output cap.

Protocol, over SOCK_SEQPACKET: the caller sends one request on the control socket, with a fresh
per-run socket and the jail's descriptors as SCM_RIGHTS. On the per-run socket the server answers
("started", pid) with the jail's pidfd, ("log", text) with -v, then ("done", Outcome) or
("error", wire); the caller may send b"O" (output cap reached) or b"K<signal>". A closed per-run
socket means the caller is gone: the server kills that jail. A closed control socket means the
caller process is gone: the server kills every jail and exits.
"""

from __future__ import annotations

import array
import asyncio
import errno
import gc
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import pipeline, supervisor
from .errors import Isol8rError, SetupError, from_wire, to_wire
from .result import Result
from .spec import Spec
from .sys import linux

_SEQ = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
_MAX_FDS = 64
PREWARM = int(os.environ.get("ISOL8R_PREWARM", "1"))  # warm jails kept per shape (0: none)
_MAX_SHAPES = 4
_WARM_FOR = 60.0  # seconds an unused warm jail is kept


def _send(sock: socket.socket, msg: Any, fds: list[int] = []) -> None:
    data = pickle.dumps(msg)
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    data, anc, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * _MAX_FDS))
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
            fds.extend(a)
    return data, fds


# ---- the server process -----------------------------------------------------------------------


class _Run:
    """One jail of the server, and the caller's socket for it."""

    def __init__(self, watch: supervisor.JailWatch, sock: socket.socket) -> None:
        self.watch, self.sock, self.caller_gone = watch, sock, False

    def handle(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        try:
            msg = self.sock.recv(64)
        except OSError:
            msg = b""
        if not msg:
            self.caller_gone = True
            sel.unregister(self.sock)
            self.watch.jail.signal(signal.SIGKILL)
        elif msg == b"O":
            self.watch.limit_hit("output-limit")
        elif msg[:1] == b"K":
            self.watch.jail.signal(int(msg[1:]))


class _Warm:
    """A pre-warmed jail: namespaces, root, identity and capabilities done, waiting for a Request.

    It is watched while it waits: one that fails its setup or dies is dropped, not handed out.
    """

    def __init__(self, pool: "_Pool", key: tuple[object, ...], jail: supervisor.Jail) -> None:
        self.pool, self.key, self.jail, self.born = pool, key, jail, time.monotonic()

    def handle(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        if key.fileobj is self.jail.chan:
            try:
                rec = self.jail.chan.recv(65536)
            except OSError:
                rec = b""
            if rec[:1] == b"T":
                return
        self.pool.drop(self)


class _Pool:
    """Warm jails by shape, so a caller's jail needs only its per-run half (pipeline.Request)."""

    def __init__(self, sel: selectors.BaseSelector, size: int) -> None:
        self.sel, self.size = sel, size
        self.warm: dict[tuple[object, ...], list[_Warm]] = {}

    @staticmethod
    def poolable(spec: Spec) -> bool:
        """Not a jail with --overlay-dir: two mounted overlays must not share an upper dir."""
        return spec.overlay_dir is None

    def take(self, spec: Spec, verbose: bool) -> supervisor.Jail | None:
        if self.size <= 0 or verbose or not self.poolable(spec):
            return None
        key = pipeline.shape(spec)
        waiting = self.warm.get(key)
        if not waiting:
            return None
        w = waiting.pop(0)
        self._unwatch(w)
        return w.jail

    def refill(self, spec: Spec) -> None:
        """Start warm jails for this shape until the pool holds its size; cheap for the server:
        it clones and says go, the jail sets itself up on another core."""
        if self.size <= 0 or not self.poolable(spec):
            return
        key = pipeline.shape(spec)
        waiting = self.warm.setdefault(key, [])
        self.warm[key] = self.warm.pop(key)  # most recently used last
        while len(self.warm) > _MAX_SHAPES:
            for w in self.warm.pop(next(iter(self.warm))):
                self.drop(w)
        while len(waiting) < self.size:
            try:
                jail = supervisor.spawn(spec, pipeline.prepare(spec))
            except Isol8rError:
                return
            w = _Warm(self, key, jail)
            waiting.append(w)
            self.sel.register(jail.chan, selectors.EVENT_READ, w)
            self.sel.register(jail.pidfd, selectors.EVENT_READ, w)

    def _unwatch(self, w: _Warm) -> None:
        for f in (w.jail.chan, w.jail.pidfd):
            try:
                self.sel.unregister(f)
            except (KeyError, ValueError):
                pass

    def drop(self, w: _Warm) -> None:
        self._unwatch(w)
        waiting = self.warm.get(w.key, [])
        if w in waiting:
            waiting.remove(w)
        supervisor._discard(w.jail)

    def expire(self, now: float) -> float | None:
        """Drop jails unused for _WARM_FOR seconds; return when the next one expires."""
        nxt = None
        for waiting in list(self.warm.values()):
            for w in list(waiting):
                if now - w.born > _WARM_FOR:
                    self.drop(w)
                else:
                    nxt = min(nxt or 1e18, w.born + _WARM_FOR)
        return nxt

    def close(self) -> None:
        for waiting in list(self.warm.values()):
            for w in list(waiting):
                self.drop(w)


def serve(control_fd: int, prewarm: int = PREWARM) -> None:
    """The server's loop; returns when the caller closes the control socket."""
    ctl = socket.socket(fileno=control_fd)
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, None)
    runs: list[_Run] = []
    pool = _Pool(sel, prewarm)
    gc.collect()
    gc.freeze()  # keep the interpreter's own objects out of every collection: fewer CoW faults
    while True:
        now = time.monotonic()
        ticks = [t for r in runs if (t := r.watch.tick(now)) is not None]
        if (t := pool.expire(now)) is not None:
            ticks.append(t)
        timeout = max(0.0, min(ticks) - now) if ticks else None
        for key, _ in sel.select(timeout):
            if sel.get_map().get(key.fd) is not key:
                continue  # unregistered or handed over by an earlier event of this batch
            if key.data is None:
                if not _accept(ctl, sel, runs, pool):
                    pool.close()
                    for r in runs:
                        r.watch.jail.signal(signal.SIGKILL)
                        r.watch.finish()
                    return
                continue
            try:
                (key.data[0] if isinstance(key.data, tuple) else key.data).handle(sel, key)
            except Exception as e:  # one jail's trouble must not end every caller's server
                sys.stderr.write(f"isol8r fork server: {type(e).__name__}: {e}\n")
        for r in [r for r in runs if r.watch.done]:
            runs.remove(r)
            _finish(r, sel)


def _accept(ctl: socket.socket, sel: selectors.BaseSelector, runs: list[_Run],
            pool: _Pool) -> bool:
    try:
        data, fds = _recv(ctl)
    except OSError:
        return False
    if not data:
        return False
    if not fds:
        return True
    sock = socket.socket(fileno=fds[0])
    try:
        req = pickle.loads(data)
        child = tuple(zip(fds[1:], req["targets"]))
        log = (lambda m: _send(sock, ("log", m))) if req["verbose"] else None
        spec = req["spec"]
        try:
            jail = supervisor.start(spec, child, req["verbose"], pool.take(spec, req["verbose"]))
        finally:
            for fd in fds[1:]:
                os.close(fd)
        _send(sock, ("started", jail.pid), [jail.pidfd])
    except Isol8rError as e:
        _reply_error(sock, to_wire(e))
        return True
    except Exception as e:  # a bug must cost this request, not every caller's server
        _reply_error(sock, ("Isol8rError", f"fork server: {type(e).__name__}: {e}"))
        return True
    run = _Run(supervisor.JailWatch(jail, log), sock)
    run.watch.register(sel)
    sel.register(sock, selectors.EVENT_READ, run)
    runs.append(run)
    pool.refill(spec)
    return True


def _reply_error(sock: socket.socket, wire: tuple[Any, ...]) -> None:
    try:
        _send(sock, ("error", wire))
    except OSError:
        pass
    sock.close()


def _finish(run: _Run, sel: selectors.BaseSelector) -> None:
    try:
        outcome = run.watch.finish()
    except Exception as e:
        outcome = supervisor.Outcome(error=("SetupError", "fork server: reap", errno.EIO, str(e)))
    if not run.caller_gone:
        sel.unregister(run.sock)
        try:
            _send(run.sock, ("done", outcome))
        except OSError:
            pass
    run.sock.close()


def main() -> None:
    control_fd, parent = int(sys.argv[1]), int(sys.argv[2])
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return
    for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    serve(control_fd)


# ---- the caller's side ------------------------------------------------------------------------


class Client:
    """The caller's handle on its fork server, started on first use; safe from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ctl: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = -1

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _control(self) -> socket.socket:
        with self._lock:
            if self._ctl is None or self._owner != os.getpid() or self._proc is None \
                    or self._proc.poll() is not None:
                self._start()
            assert self._ctl is not None
            return self._ctl

    def _start(self) -> None:
        if self._ctl is not None and self._owner == os.getpid():
            self.close()
        mine, theirs = socket.socketpair(socket.AF_UNIX, _SEQ)
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "isol8r.server", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        theirs.close()
        self._ctl, self._owner = mine, os.getpid()

    def close(self) -> None:
        """Stop the server (it kills any jail still running) and wait for it."""
        with self._lock:
            if self._ctl is not None:
                self._ctl.close()
                self._ctl = None
            if self._proc is not None and self._owner == os.getpid():
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    def submit(self, spec: Spec, stdio: supervisor.Stdio, verbose: bool) -> socket.socket:
        """Ask for a jail; returns the per-run socket (the server answers on it)."""
        ctl = self._control()
        mine, theirs = socket.socketpair(socket.AF_UNIX, _SEQ)
        try:
            _send(ctl, {"spec": spec, "verbose": verbose, "targets": [t for _, t in stdio.child]},
                  [theirs.fileno(), *(src for src, _ in stdio.child)])
        except OSError as e:
            mine.close()
            raise SetupError("fork server", e.errno or errno.EPIPE, "cannot reach it") from None
        finally:
            theirs.close()
            for fd in stdio.close_after_start:
                os.close(fd)
        return mine

    def run(self, spec: Spec, stdio: supervisor.Stdio, *, verbose: bool = False,
            log: supervisor.Log | None = None, forward_signals: bool = False) -> Result:
        sock = self.submit(spec, stdio, verbose)
        session = _Session(sock, stdio.io, log, spec)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ, (session, "run"))
        stdio.io.register(sel)
        old = supervisor._forward_signals(session.signal) if forward_signals else {}
        try:
            supervisor.drive(sel, [session, stdio.io], session.next_tick, session.finished)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            sel.close()
            stdio.io.close()
            session.close()
        return session.result()


class _Session:
    """The caller's view of one jail run by the server."""

    def __init__(self, sock: socket.socket, io: supervisor.IOWatch, log: supervisor.Log | None,
                 spec: Spec) -> None:
        self.sock, self.io, self.log, self.spec = sock, io, log, spec
        self.pidfd = -1
        self.outcome: supervisor.Outcome | None = None
        self.error: tuple[Any, ...] | None = None
        self.ended_at: float | None = None
        io.on_limit = lambda _v: self._tell(b"O")

    def _tell(self, msg: bytes) -> None:
        try:
            self.sock.send(msg)
        except OSError:
            pass

    def signal(self, sig: int) -> None:
        self._tell(b"K%d" % sig)

    def handle(self, sel: Any, key: Any) -> None:
        try:
            data, fds = _recv(self.sock)
        except OSError:
            data, fds = b"", []
        if not data:
            sel.unregister(self.sock)
            self.ended_at = self.ended_at or time.monotonic()
            if self.outcome is None and self.error is None:
                self.error = ("SetupError", "fork server", errno.EPIPE, "it died during the run")
            return
        kind, value = pickle.loads(data)
        if kind == "started":
            self.pidfd = fds[0] if fds else -1
        elif kind == "log" and self.log:
            self.log(value)
        elif kind == "done":
            self.outcome = value
            self.ended_at = time.monotonic()
        elif kind == "error":
            self.error = value
            self.ended_at = time.monotonic()

    def next_tick(self, now: float) -> float | None:
        if self.ended_at is None:
            return None
        return self.ended_at + max(self.spec.kill_grace, 0.5)

    def finished(self) -> bool:
        if self.ended_at is None:
            return False
        return self.io.done or time.monotonic() > self.ended_at + max(self.spec.kill_grace, 0.5)

    def close(self) -> None:
        self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def result(self) -> Result:
        if self.error is not None:
            raise from_wire(self.error)
        assert self.outcome is not None
        return supervisor.result(self.spec, self.outcome, self.io)


class _LoopSelector:
    """The two calls IOWatch and _Session make of a selector, served by an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self.loop, self.wake = loop, wake
        self.keys: dict[int, Any] = {}

    def register(self, fileobj: Any, events: int, data: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self.keys[fd] = key
        cb = lambda: (data[0].handle(self, key), self.wake())  # noqa: E731
        if events & selectors.EVENT_READ:
            self.loop.add_reader(fd, cb)
        else:
            self.loop.add_writer(fd, cb)

    def unregister(self, fileobj: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = self.keys.pop(fd, None)
        if key is not None:
            (self.loop.remove_reader if key.events & selectors.EVENT_READ else
             self.loop.remove_writer)(fd)

    def close(self) -> None:
        for fd in list(self.keys):
            self.unregister(fd)


async def run_async(client: Client, spec: Spec, stdio: supervisor.Stdio) -> Result:
    """One jail through the fork server, awaited on the running loop: no thread per jail."""
    loop = asyncio.get_running_loop()
    sock = client.submit(spec, stdio, False)
    session = _Session(sock, stdio.io, None, spec)
    wake = asyncio.Event()
    sel = _LoopSelector(loop, wake.set)
    sel.register(sock, selectors.EVENT_READ, (session, "run"))
    stdio.io.register(sel)  # type: ignore[arg-type]
    try:
        while not session.finished():
            wake.clear()
            nxt = session.next_tick(time.monotonic())
            timeout = None if nxt is None else max(0.0, nxt - time.monotonic())
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
    finally:
        sel.close()
        stdio.io.close()
        session.close()
    return session.result()


if __name__ == "__main__":
    main()
