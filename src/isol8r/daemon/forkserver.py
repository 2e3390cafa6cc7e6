"""The fork server: a small process that clones jails on behalf of library callers.

Why: cloning from the caller copies its page tables (the cost grows with the caller's memory),
and a bare clone is unsafe while the caller has other threads. The server is started once per
caller process, is single-threaded and small, and supervises every jail it starts in one event
loop (JailWatch). The caller keeps the I/O side (IOWatch): its pipes, input and output cap.

The server leases jails; the caller runs them. Protocol (protocol.py; docs/design.md, "Wire
protocols"), over SOCK_SEQPACKET: the caller sends a Lease (its Spec) on the control socket, with
a fresh per-run socket as SCM_RIGHTS. On the per-run socket the server answers Leased, with the
jail's handshake channel and pidfd (set up and waiting for its Request, taken from the warm pool
when one of the shape waits), or a Failure. The caller activates and watches the jail itself
(supervisor.activate, JailWatch); the server keeps a pidfd and the cgroup, reaps the jail's init
and sends Reaped (wait status, rusage, the cgroup's counters). A closed per-run socket means the
caller is done or gone: the server kills that jail. A closed control socket means the caller
process is gone: the server kills every jail and exits.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .. import launch, pipeline, protocol, supervisor, wire
from ..errors import Isol8rError, SetupError
from ..protocol import Failure, Hold, Lease, Leased, Reaped
from ..result import Result
from ..spec import Spec
from .pool import PREWARM, Pool

if TYPE_CHECKING:
    import asyncio

_SEQ = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
_MAX_FDS = 64
# How long a caller waits on its fork server beyond the run's own limits: for a lease's answer,
# and for the reap report once the jail has exited. Past it the run fails with SetupError and a
# server that stopped answering is replaced (docs/design.md, "Bounded waits").
WAIT_MARGIN = float(os.environ.get("ISOL8R_WAIT_MARGIN", "5"))


def _send(sock: socket.socket, msg: protocol.Msg | Failure, fds: list[int] = []) -> None:
    wire.send(sock, msg.encode(), fds)


def recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and its descriptors; a big one (a Spec with 1 MiB of argv) came in a memfd."""
    return wire.recv(sock, 1 << 20, wire.SCM_MAX_FD)


# ---- the server process -----------------------------------------------------------------------

RECORDS = "/run/isol8r"  # server-<pid>.rec: a running server's pid, start time and pid namespace


def _identity(pid: int) -> str | None:
    """pid's start time (clock ticks since boot) and pid namespace: what a record compares;
    None once it has ended (a zombie too: a killed server's parent may not have reaped it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            return None
        start = fields[19]
        return f"{start} {os.stat('/proc/self/ns/pid').st_ino}"
    except (OSError, IndexError):
        return None


def bury(pid: int) -> None:
    """What server pid, known to be gone, left: its jails' cgroups and its record. Called by
    whoever knows first: the Client that reaped it, or the next server to start (claim)."""
    from .. import cgroups
    cgroups.sweep_owner(pid)
    try:
        os.unlink(os.path.join(RECORDS, f"server-{pid}.rec"))
    except OSError:
        pass


def claim() -> str | None:
    """Sweep what dead servers left (each record whose process is gone: its jails' cgroups, at
    once rather than after cgroups' 60 s), then record this server; returns its record's path."""
    try:
        os.mkdir(RECORDS, 0o700)
    except OSError:
        pass
    try:
        names = os.listdir(RECORDS)
    except OSError:
        return None
    ns = os.stat("/proc/self/ns/pid").st_ino
    for name in names:
        if not (name.startswith("server-") and name.endswith(".rec")):
            continue
        rec = os.path.join(RECORDS, name)
        try:
            pid = int(name[7:-4])
            with open(rec) as f:
                start, rec_ns = f.read().split()
        except (OSError, ValueError):
            continue
        if int(rec_ns) != ns or _identity(pid) == f"{start} {rec_ns}":
            continue  # alive, or in another pid namespace: not ours to judge
        bury(pid)
    mine = os.path.join(RECORDS, f"server-{os.getpid()}.rec")
    try:
        with open(mine, "x") as f:
            f.write(_identity(os.getpid()) or "")
    except OSError:
        return None  # a full /run: this server's leftovers wait for the 60 s sweep
    return mine



class _Lease:
    """A jail handed to a caller. The caller activates and watches it; the server keeps a pidfd to
    reap it, and the cgroup, to report the counters and remove it."""

    def __init__(self, jail: supervisor.Jail, sock: socket.socket, spec: Spec) -> None:
        self.jail, self.sock, self.spec = jail, sock, spec
        self.caller_gone = self.exited = False
        self.hold = False  # a sandbox's jail: its end tops up the pool's sandbox jails

    def register(self, sel: selectors.BaseSelector) -> None:
        sel.register(self.jail.pidfd, selectors.EVENT_READ, self)
        sel.register(self.sock, selectors.EVENT_READ, self)

    def handle(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        if key.fileobj is self.sock:
            try:
                msg = self.sock.recv(64)
            except OSError:
                msg = b""
            if not msg:  # the caller is done with it, or gone: the jail ends now either way
                self.caller_gone = True
                sel.unregister(self.sock)
                self.jail.signal(signal.SIGKILL)
            return
        self.exited = True
        sel.unregister(self.jail.pidfd)

    def finish(self, sel: selectors.BaseSelector) -> None:
        usage = None
        try:
            _, status, ru = os.wait4(self.jail.pid, 0)
            if self.jail.cgroup is not None:
                usage = self.jail.cgroup.usage()
        finally:
            self.jail.close()
        if not self.caller_gone:
            sel.unregister(self.sock)
            try:
                _send(self.sock, Reaped(status, ru.ru_utime, ru.ru_stime, ru.ru_maxrss,
                                        dataclasses.astuple(usage) if usage is not None else None))
            except OSError:
                pass
        self.sock.close()


class Server:
    """The event loop: lease requests on control sockets, leased and warm jails, and whatever
    else registers an object with a handle(sel, key) method (the CLI's listener, cliserver.py).

    Library mode has one primary control socket: when it closes, the caller is gone and the
    server ends. The CLI's server has none: it ends after idle_for seconds without work."""

    def __init__(self, prewarm: int = PREWARM) -> None:
        self.sel = selectors.DefaultSelector()
        self.runs: list[_Lease] = []
        self.pool = Pool(self.sel, prewarm)
        self.closing = False
        self.idle_for: float | None = None
        self.busy: Callable[[], bool] = lambda: False

    def control(self, sock: socket.socket, primary: bool) -> None:
        self.sel.register(sock, selectors.EVENT_READ, _Control(self, sock, primary))

    def loop(self) -> None:
        record = claim()
        try:
            self._loop()
        finally:
            if record is not None:
                try:
                    os.unlink(record)
                except OSError:
                    pass

    def _loop(self) -> None:
        gc.collect()
        gc.freeze()  # keep the interpreter's own objects out of every collection: fewer CoW faults
        sel, last_busy = self.sel, time.monotonic()
        while not self.closing:
            now = time.monotonic()
            if self.runs or self.busy():
                last_busy = now
            nxt = self.pool.expire(now)
            if self.idle_for is not None:
                if now >= last_busy + self.idle_for:
                    break
                nxt = min(nxt or 1e18, last_busy + self.idle_for)
            timeout = max(0.0, nxt - now) if nxt is not None else None
            for key, _ in sel.select(timeout):
                if sel.get_map().get(key.fd) is not key:
                    continue  # unregistered or handed over by an earlier event of this batch
                try:
                    key.data.handle(sel, key)
                except Exception as e:  # one jail's trouble must not end every caller's server
                    sys.stderr.write(f"isol8r fork server: {type(e).__name__}: {e}\n")
            for r in [r for r in self.runs if r.exited]:
                self.runs.remove(r)
                try:
                    r.finish(sel)
                    # Top the pool up now, not when the jail was leased: a clone and a jail's
                    # setup take a core for a few ms, which the run itself should have had.
                    self.pool.refill(r.spec, r.hold)
                except Exception as e:
                    sys.stderr.write(f"isol8r fork server: reap: {type(e).__name__}: {e}\n")
        self.pool.close()
        for r in self.runs:
            r.jail.signal(signal.SIGKILL)
            r.caller_gone = True
            r.finish(sel)
        self.runs = []


class _Control:
    """One caller's control socket: its lease requests."""

    def __init__(self, server: Server, sock: socket.socket, primary: bool) -> None:
        self.server, self.sock, self.primary = server, sock, primary

    def handle(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        if _accept(self.sock, self.server):
            return
        if self.primary:
            self.server.closing = True
        sel.unregister(self.sock)
        self.sock.close()


def serve(control_fd: int, prewarm: int = PREWARM) -> None:
    """The library's server: returns when the caller closes the control socket. A caller that
    died (not one that closed its client) leaves groups of its own that only it would have
    removed (its sandboxes' command groups, cgroups.Cgroup names them for it): removed now."""
    caller = os.getppid()
    server = Server(prewarm)
    server.control(socket.socket(fileno=control_fd), primary=True)
    server.loop()
    if _exiting(caller):
        from .. import cgroups
        cgroups.sweep_owner(caller)


def _exiting(pid: int) -> bool:
    """pid has exited or is exiting (PF_EXITING is set before its descriptors are closed, so
    it is already set when its control socket reads as closed)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & 0x4)


def _accept(ctl: socket.socket, server: Server) -> bool:
    """One lease request: a jail of the spec's shape, in its cgroup, handed over with its channel
    and a pidfd (the pool is topped up once the jail has ended: Server.loop)."""
    try:
        data, fds = recv(ctl)
    except OSError:
        return False
    if not data:
        return False
    if not fds:
        return True
    sock = socket.socket(fileno=fds[0])
    for fd in fds[1:]:
        os.close(fd)
    try:
        req = protocol.expect(data, Lease, Hold)
        spec = req.spec
        warm = None
        hold = isinstance(req, Hold)  # a sandbox's jail: warm ones of its own in the pool
        taken = server.pool.take(spec, hold) if not req.verbose else None  # -v: a fresh jail's times
        if taken is not None:
            fitted = server.pool.fit(taken, spec)  # an unfit jail is discarded: a fresh one then
            warm = (taken, fitted) if fitted is not None else None
        jail, derived = supervisor.lease(spec, req.verbose, warm, hold)
    except Isol8rError as e:  # a ProtocolError too
        _reply_error(sock, Failure.of(e))
        return True
    except Exception as e:  # a bug must cost this request, not every caller's server
        _reply_error(sock, Failure.plain(f"fork server: {type(e).__name__}: {e}"))
        return True
    leased = Leased(jail.pid, derived, jail.limits, jail.notes,
                    jail.cgroup.view() if jail.cgroup is not None else None,
                    jail.program_group.view() if jail.program_group is not None else None,
                    jail.walls, jail.missing)
    try:
        _send(sock, leased, [jail.chan.fileno(), jail.pidfd])
    except OSError:
        supervisor.discard(jail)
        sock.close()
        return True
    jail.chan.close()  # the caller owns the channel now
    lease = _Lease(jail, sock, spec)
    lease.hold = hold
    lease.register(server.sel)
    server.runs.append(lease)
    return True


def _reply_error(sock: socket.socket, failure: Failure) -> None:
    try:
        _send(sock, failure)
    except OSError:
        pass
    sock.close()


def main() -> None:
    """`python -m isol8r.daemon.forkserver CONTROL_FD`: the library's server (Client._start)."""
    # No parent-death signal here: it would fire when the *thread* that started the server
    # exits (a worker of the caller's thread pool). The caller's end of the control socket
    # closes when the caller process ends, however it ends, and that ends the server.
    control_fd = int(sys.argv[1])
    for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    serve(control_fd)


# ---- the caller's side ------------------------------------------------------------------------

_SHARED: "Client | None" = None
_SHARED_LOCK = threading.Lock()


def shared_client() -> "Client":
    """This process's fork server client (the library's and a CLI worker's): one, also when
    many threads ask at once."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Client()
        return _SHARED


def attached() -> bool:
    """Whether this process is a CLI server's worker, whose shared client is the server that
    forked it: a command run there (`isol8r isolate`) takes its jails from that server's pool
    rather than starting a fork server of its own."""
    with _SHARED_LOCK:
        return _SHARED is not None and _SHARED._attached


def share(client: "Client") -> None:
    """Make client this process's shared one: a CLI worker's, attached to the server that
    forked it."""
    global _SHARED
    with _SHARED_LOCK:
        _SHARED = client


class Client:
    """The caller's handle on its fork server, started on first use; safe from many threads."""

    def __init__(self, prewarm: int | None = None, control: socket.socket | None = None) -> None:
        self._lock = threading.Lock()
        self._ctl: socket.socket | None = control
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid() if control is not None else -1
        self._prewarm = prewarm
        self._attached = control is not None  # a CLI worker's socket to the server that forked it

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        """The server this client started is still running (not: reachable)."""
        return self._proc is not None and self._proc.poll() is None

    def connect(self, restart: socket.socket | None = None) -> socket.socket:
        """The control socket; a new server when there is none yet, when this process is a fork
        of the one that started it, when it exited, or when `restart` (a socket it stopped
        answering on) is still the current one."""
        with self._lock:
            if self._attached:
                if self._ctl is None or restart is not None:
                    raise SetupError("fork server", errno.EPIPE, "it closed the connection")
                return self._ctl
            if self._ctl is None or self._owner != os.getpid() or self._proc is None \
                    or self._proc.poll() is not None or (restart is not None and restart is self._ctl):
                self._start()
            assert self._ctl is not None
            return self._ctl

    def _start(self) -> None:
        if self._ctl is not None and self._owner == os.getpid():
            self._ctl.close()
        if self._proc is not None and self._owner == os.getpid():  # the one replaced: reaped
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            bury(self._proc.pid)
        mine, theirs = socket.socketpair(socket.AF_UNIX, _SEQ)
        env = launch.package_env()
        if self._prewarm is not None:
            env["ISOL8R_PREWARM"] = str(self._prewarm)
        self._proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "isol8r.daemon.forkserver", str(theirs.fileno())],
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
                if self._proc.returncode != 0:  # killed: nothing of it removed its jails' groups
                    bury(self._proc.pid)
            self._proc = None

    def lease(self, spec: Spec, verbose: bool, fresh: bool = False,
              hold: bool = False) -> socket.socket:
        """Ask for a jail of spec's shape; returns the per-run socket the answer comes on.
        A server that went away (killed, say) is replaced once; fresh: replace it now.
        hold: a sandbox's jail (protocol.Hold)."""
        ctl = self.connect()
        if fresh:
            ctl = self.connect(restart=ctl)
        for attempt in (1, 2):
            mine, theirs = socket.socketpair(socket.AF_UNIX, _SEQ)
            try:
                _send(ctl, (Hold if hold else Lease)(spec, verbose), [theirs.fileno()])
                return mine
            except OSError as e:
                mine.close()
                if attempt == 2:
                    raise SetupError("fork server", e.errno or errno.EPIPE, "cannot reach it") from None
                ctl = self.connect(restart=ctl)
            finally:
                theirs.close()
        raise AssertionError("unreachable")

    def replace(self, why: str) -> SetupError:
        """The server stopped answering (stopped, stuck): kill it, so that the next run starts a
        new one (and sweeps what it left); the error to raise says so."""
        with self._lock:
            proc = self._proc if self._owner == os.getpid() else None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
            bury(proc.pid)
        return SetupError("fork server", errno.ETIMEDOUT, f"{why} within {WAIT_MARGIN:g} s "
                          "(ISOL8R_WAIT_MARGIN); it was replaced")

    def run(self, spec: Spec, stdio: supervisor.Stdio, *, verbose: bool = False,
            log: supervisor.Log | None = None, forward_signals: bool = False) -> Result:
        try:
            sock, answer = self.answered_lease(spec, verbose)
        except BaseException:
            _close_after_start(stdio)
            raise
        session = Session(sock, spec, stdio, log if verbose else None)
        with supervisor.Forwarder(forward_signals) as fwd:
            try:
                session.begin(*answer)
                sel = selectors.DefaultSelector()
                session.register(sel)
                assert session.watch is not None
                fwd.attach(session.watch.jail.forward)
                try:
                    supervisor.drive(sel, session.next_tick, session.finished)
                finally:
                    sel.close()
            finally:
                session.close()
        if session.late:
            raise self.replace("no reap report")
        return session.result()


    def answered_lease(self, spec: Spec, verbose: bool) -> tuple[socket.socket,
                                                                 tuple[bytes, list[int]]]:
        """A lease and its answer, awaited at most WAIT_MARGIN. A server that closed the
        per-run socket unanswered died before leasing anything (killed while idle, say): a
        new one is asked, once."""
        for attempt in (1, 2):
            sock = self.lease(spec, verbose, fresh=attempt == 2)
            if not select_readable(sock, WAIT_MARGIN):
                sock.close()
                raise self.replace("no answer to a lease")
            try:
                answer = recv(sock)
            except OSError:
                answer = (b"", [])
            if answer[0] or attempt == 2:
                return sock, answer
            sock.close()
        raise AssertionError("unreachable")


def _close_after_start(stdio: supervisor.Stdio) -> None:
    """The jail's ends of its pipes, when no jail will take them."""
    for fd in stdio.close_after_start:
        os.close(fd)
    stdio.close_after_start = []


def select_readable(sock: socket.socket, timeout: float) -> bool:
    """Wait up to timeout seconds for sock to be readable (or closed)."""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def leased(data: bytes, fds: list[int]) -> Leased:
    """The fork server's answer to a lease: its Leased (with fds, the jail's channel and
    pidfd), or the error it reports raised; descriptors of anything else are closed."""
    if not data:
        raise SetupError("fork server", errno.EPIPE, "it closed the connection")
    try:
        info = protocol.expect(data, Leased, Failure)
        if isinstance(info, Leased) and len(fds) != 2:
            raise protocol.ProtocolError("Leased", f"{len(fds)} descriptors, not 2")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    if isinstance(info, Failure):
        raise info.error()
    return info


class Session:
    """The caller's side of one leased jail: it sends the Request, watches the jail (records,
    limits, output) and takes the server's reap report when the cgroup's counters are wanted.
    Public so that several can share one event loop (connected.py: jails joined by pipes)."""

    def __init__(self, sock: socket.socket, spec: Spec, stdio: supervisor.Stdio,
                 log: supervisor.Log | None) -> None:
        self.sock, self.spec, self.stdio, self.log = sock, spec, stdio, log
        self.watch: supervisor.JailWatch | None = None
        self.outcome: supervisor.Outcome | None = None
        self.lost = False  # the server ended before it reported: the program's end is unknown
        self.late = False  # the server did not report within WAIT_MARGIN of the jail's exit

    def begin(self, data: bytes, fds: list[int]) -> None:
        """Take the lease (or its error), activate the jail with this caller's descriptors."""
        try:
            info = leased(data, fds)
            chan_fd, pidfd = fds
            cg = None
            if info.cgroup is not None:
                from ..cgroups import Cgroup
                cg = Cgroup.reader(info.cgroup)
            jail = supervisor.Jail(self.spec, info.pid, pidfd, socket.socket(fileno=chan_fd),
                                   time.monotonic(), info.limits, info.notes, cg)
            jail.walls, jail.missing = info.walls, info.missing
            if info.program_group is not None:
                from ..cgroups import Cgroup
                jail.program_group = Cgroup.reader(info.program_group)
            self.watch = supervisor.JailWatch(jail, self.log, reaper=False)
            self.watch.terminal = self.stdio.io.terminal
            self.stdio.io.on_limit = self.watch.limit_hit
            req = pipeline.request(self.spec, [t for _, t in self.stdio.child], info.derived,
                                   supervisor.bpf_for(self.spec))
            supervisor.activate(jail, req, [src for src, _ in self.stdio.child])
        finally:
            for fd in self.stdio.close_after_start:
                os.close(fd)
            self.stdio.close_after_start = []

    def register(self, sel: Any) -> None:
        assert self.watch is not None
        self.watch.register(sel)
        self.stdio.io.register(sel)
        sel.register(self.sock, selectors.EVENT_READ, (self, "server"))

    def handle(self, sel: Any, key: Any) -> None:
        """The server's reap report (or its end)."""
        assert self.watch is not None
        try:
            data, _ = recv(self.sock)
        except OSError:
            data = b""
        if not data:
            sel.unregister(self.sock)
            if not self.watch.done:
                # a server that died took the jail with it (PDEATHSIG): unless init reported the
                # program's end, that SIGKILL is isol8r's failure, not the program's (result())
                self.lost = self.watch.program is None
                self.watch.reaped(9 if self.watch.program is None else self.watch.program[0],
                                  0.0, 0.0, 0, None)
            return
        msg = protocol.expect(data, Reaped)
        usage = None
        if msg.usage is not None:
            from ..cgroups import Usage
            usage = Usage(*msg.usage)
        self.watch.reaped(msg.status, msg.utime, msg.stime, msg.maxrss, usage)

    def next_tick(self, now: float) -> float | None:
        assert self.watch is not None
        if self.watch.done:
            return (self.watch.exited_at or now) + self.spec.drain_grace
        if self.watch.exited and self.watch.exited_at is not None:
            return self.watch.exited_at + WAIT_MARGIN  # the reap report's deadline
        return self.watch.tick(now)

    def finished(self) -> bool:
        w = self.watch
        if w is not None and not w.done and w.exited and w.exited_at is not None \
                and time.monotonic() > w.exited_at + WAIT_MARGIN:
            self.late = True
            w.reaped(9 if w.program is None else w.program[0], 0.0, 0.0, 0, None)
        if w is None or not w.done:
            return False
        if w.exited_at is None:
            w.exited_at = time.monotonic()
        return self.stdio.io.done or time.monotonic() > w.exited_at + self.spec.drain_grace

    def close(self) -> None:
        if self.watch is not None and self.outcome is None:
            self.outcome = self.watch.finish()
        self.stdio.io.close()
        self.sock.close()

    def result(self) -> Result:
        assert self.outcome is not None
        if self.lost:
            raise SetupError("fork server", errno.EPIPE, "it ended during the run (killed?): the "
                             "program's outcome is unknown")
        return supervisor.result(self.spec, self.outcome, self.stdio.io)


class _LoopSelector:
    """The two calls the watchers make of a selector, served by an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self.loop, self.wake = loop, wake
        self.keys: dict[int, Any] = {}

    def register(self, fileobj: Any, events: int, data: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self.keys[fd] = key

        def ready() -> None:
            if self.keys.get(fd) is key:
                data[0].handle(self, key)
            self.wake()
        if events & selectors.EVENT_READ:
            self.loop.add_reader(fd, ready)
        else:
            self.loop.add_writer(fd, ready)

    def unregister(self, fileobj: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = self.keys.pop(fd, None)
        if key is not None:
            (self.loop.remove_reader if key.events & selectors.EVENT_READ else
             self.loop.remove_writer)(fd)

    def close(self) -> None:
        for fd in list(self.keys):
            self.unregister(fd)


async def run_async(client: Client, spec: Spec, stdio: supervisor.Stdio,
                    started: Callable[[supervisor.Jail], None] | None = None,
                    leased: socket.socket | None = None) -> Result:
    """One jail through the fork server, awaited on the running loop: no thread per jail.
    started(jail) is called once the jail runs: a caller that may have to end it early (the
    listener, when its client hangs up) keeps it to signal. leased: the per-run socket of a
    lease asked for ahead (Client.lease, same spec), so that no round trip to the server is
    left on this run's path."""
    import asyncio  # here, not at the top: the server, whose image every jail is a copy of,
    # would carry asyncio's ~60 modules (ssl, logging, inspect...) for nothing
    loop = asyncio.get_running_loop()
    session = Session(leased if leased is not None else client.lease(spec, False), spec, stdio,
                      None)
    wake = asyncio.Event()
    sel = _LoopSelector(loop, wake.set)
    try:
        got = loop.create_future()
        loop.add_reader(session.sock.fileno(), lambda: got.done() or got.set_result(None))
        try:
            await asyncio.wait_for(got, WAIT_MARGIN)
        except asyncio.TimeoutError:
            _close_after_start(stdio)
            raise client.replace("no answer to a lease") from None
        finally:
            loop.remove_reader(session.sock.fileno())
        session.begin(*recv(session.sock))
        session.register(sel)
        if started is not None and session.watch is not None:
            started(session.watch.jail)
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
        session.close()
    if session.late:
        raise client.replace("no reap report")
    return session.result()


if __name__ == "__main__":
    main()
