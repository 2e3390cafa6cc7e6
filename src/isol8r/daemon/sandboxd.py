"""The sandbox daemon: named sandboxes that outlive the command that made them.

Why a daemon: a Sandbox's jail lives as long as the process that owns it (its fork server kills
its jails when that process is gone). `isol8r sandbox create` ends at once, so something else
must own the sandbox: this process, started on demand by the first `create` (as the CLI server
is), listening on a socket in /run/isol8r. It leaves once it holds no sandbox (removed, or
idle past its --idle-timeout) and no request is under way.

Ownership: the socket is reachable by every local user (mode 0666; /run/isol8r searchable),
and every request is checked against the peer's credentials (SO_PEERCRED, set by the kernel at
connect): a sandbox belongs to the uid that created it, and only that uid may exec into it,
copy to or from it, list or remove it. Only the daemon's own uid (root) may create one: a
sandbox's options (binds, capabilities, user) are the daemon's power, which a request from
another uid must not borrow. Files are copied through a descriptor the client opened itself,
so the host side of `isol8r cp` has the client's rights, not root's.

The front end hands serve() the function that makes a sandbox (sandboxcli.serve), so this
layer never imports the library's Sandbox. One thread per request: a command's run blocks.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import stat
import struct
import sys
import threading
import time
from typing import Any, Callable

from .. import protocol, wire
from ..protocol import (Failure, SandboxCopy, SandboxCreate, SandboxDone, SandboxExec,
                        SandboxList, SandboxRemove, Signal)

_DIR = "/run/isol8r"
_SEQ = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
_CHUNK = 1 << 20
GRACE = 2.0  # seconds a daemon with no sandbox stays, for the create that started it
REQUEST_WAIT = 5.0  # seconds a connection may take to send its request
SETUP_FAILED = 125


def path() -> str:
    """This installation's socket: one daemon per environment (sys.prefix) and package
    directory, so two checkouts never share one (FNV-1a of both, as the CLI server's). Not the
    interpreter's real path: another uid may not be able to resolve it (/root/.pyenv)."""
    h = 0xCBF29CE484222325
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for b in f"{sys.prefix}\0{here}".encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{_DIR}/sandboxd-{h:016x}.sock"


# ---- the client's side ----------------------------------------------------------------------


def _connect(sock_path: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, _SEQ)
    try:
        s.connect(sock_path)
    except OSError:
        s.close()
        return None
    return s


def request(msg: protocol.Msg, fds: list[int] | None = None, start: list[str] | None = None,
            sock_path: str | None = None, relay: bool = False) -> SandboxDone:
    """Send msg (with fds) and return the daemon's answer; a Failure is raised as its typed
    error. start: the command that starts a daemon when none listens (create only). relay:
    the signals this process gets while it waits are passed on (exec: to the command)."""
    sock_path = sock_path or path()
    if relay:
        return _relaying(msg, fds or [], sock_path)
    for _attempt in range(3):
        s = _connect(sock_path)
        if s is None and start is not None:
            s = _start(sock_path, start)
        if s is None:
            from ..errors import SetupError
            raise SetupError("sandbox daemon", errno.ENOENT,
                             f"no sandbox daemon at {sock_path}: no sandbox exists")
        try:
            wire.send(s, msg.encode(), fds or [])
            data, extra = wire.recv(s, 1 << 20, 4)
            for fd in extra:
                os.close(fd)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        finally:
            s.close()
        if not data:  # a daemon that was leaving as we connected: ask again (a new one)
            continue
        answer = protocol.expect(data, SandboxDone, Failure)
        if isinstance(answer, Failure):
            raise answer.error()
        return answer
    from ..errors import SetupError
    raise SetupError("sandbox daemon", errno.EPIPE, "it closed the connection without answer")


RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2)


def _relaying(msg: protocol.Msg, fds: list[int], sock_path: str) -> SandboxDone:
    """request() of an exec: while it waits, a signal this process gets goes to the daemon
    (Signal), which passes it to the command's init, as `isol8r run` passes it to its jail."""
    s = _connect(sock_path)
    if s is None:
        from ..errors import SetupError
        raise SetupError("sandbox daemon", errno.ENOENT,
                         f"no sandbox daemon at {sock_path}: no sandbox exists")

    def relay(sig: int, _frame: Any) -> None:
        try:
            s.send(Signal(sig).encode())
        except OSError:
            pass
    old = {sig: signal.signal(sig, relay) for sig in RELAYED}
    try:
        wire.send(s, msg.encode(), fds)
        data, extra = wire.recv(s, 1 << 20, 4)
        for fd in extra:
            os.close(fd)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        s.close()
    if not data:
        from ..errors import SetupError
        raise SetupError("sandbox daemon", errno.EPIPE, "it ended during the command")
    answer = protocol.expect(data, SandboxDone, Failure)
    if isinstance(answer, Failure):
        raise answer.error()
    return answer


def _run_dir() -> None:
    """/run/isol8r: root's, written by no one else; searchable by others (o+x, no listing),
    so that other users reach the daemon's socket and are told, by uid, what is theirs."""
    try:
        os.mkdir(_DIR, 0o711)
    except FileExistsError:
        pass
    st = os.lstat(_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        from ..errors import SetupError
        raise SetupError("sandbox daemon", errno.EPERM, f"{_DIR} is not root's own directory")
    if st.st_mode & 0o011 != 0o011:
        os.chmod(_DIR, stat.S_IMODE(st.st_mode) | 0o011)


def _start(sock_path: str, command: list[str]) -> socket.socket | None:
    """Start the daemon (one at a time: a lock beside the socket) and connect to it."""
    import fcntl
    _run_dir()
    lock = os.open(sock_path[:-5] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                   | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s = _connect(sock_path)
        if s is not None:
            return s
        r, w = os.pipe2(0)
        os.set_inheritable(r, False)
        from .. import launch
        env = launch.package_env()
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, sock_path[:-5] + ".log",
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
                   (os.POSIX_SPAWN_DUP2, 1, 2)]
        keep = {0, 1, 2, w}
        actions += [(os.POSIX_SPAWN_CLOSE, int(fd)) for fd in os.listdir("/proc/self/fd")
                    if int(fd) not in keep and _inheritable(int(fd))]
        try:
            os.posix_spawn(sys.executable, [sys.executable, "-s", *command, sock_path, str(w)],
                           env, file_actions=actions, setsid=True)
        finally:
            os.close(w)
        ready = os.read(r, 1) == b"R"  # listening, or it failed and exited (its log says why)
        os.close(r)
        return _connect(sock_path) if ready else None
    finally:
        os.close(lock)


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False


# ---- the daemon's side ----------------------------------------------------------------------


class _Entry:
    """One sandbox the daemon holds, and whose it is."""

    def __init__(self, sid: str, name: str, uid: int, sandbox: Any, idle: float | None,
                 options: dict[str, Any]) -> None:
        self.id, self.name, self.uid, self.sandbox = sid, name, uid, sandbox
        self.idle, self.options = idle, options
        self.created = time.time()


class Daemon:
    """The table of sandboxes, and the requests on it (each in a thread of its own)."""

    def __init__(self, make: Callable[[dict[str, Any], float | None], Any]) -> None:
        self.make = make
        self.lock = threading.Lock()
        self.entries: dict[str, _Entry] = {}
        self.busy = 0
        self.last = time.monotonic()

    # -- the table

    def find(self, key: str, uid: int) -> _Entry:
        """The caller's sandbox by id or name; another uid's is as good as absent to it."""
        with self.lock:
            entry = self.entries.get(key) or next(
                (e for e in self.entries.values() if e.name and e.name == key), None)
        if entry is None or entry.uid != uid or entry.sandbox.closed:
            from ..errors import SpecError
            raise SpecError("sandbox", key, f"no such sandbox of uid {uid} (isol8r sandbox ls)")
        return entry

    def sweep(self) -> None:
        """Forget sandboxes that ended by themselves (their idle timeout)."""
        with self.lock:
            for sid in [s for s, e in self.entries.items() if e.sandbox.closed]:
                del self.entries[sid]

    def empty(self) -> bool:
        with self.lock:
            return not self.entries and not self.busy and time.monotonic() > self.last + GRACE

    def close_all(self) -> None:
        with self.lock:
            entries, self.entries = list(self.entries.values()), {}
        for e in entries:
            e.sandbox.close()

    # -- one request

    def serve_one(self, conn: socket.socket) -> None:
        with self.lock:
            self.busy += 1
        fds: list[int] = []
        try:
            _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            conn.settimeout(REQUEST_WAIT)  # a peer that connects and says nothing is dropped
            data, fds = wire.recv(conn, 1 << 20, 4)
            conn.settimeout(None)
            if not data:
                return
            try:
                msg = protocol.expect(data, SandboxCreate, SandboxExec, SandboxCopy,
                                      SandboxList, SandboxRemove)
                answer: Any = self.dispatch(msg, uid, fds, conn)
            except OSError as e:  # a file of the sandbox: its path and why
                where = os.fsdecode(e.filename) + ": " if e.filename else ""
                answer = Failure.plain(f"{where}{e.strerror or e}")
            except Exception as e:  # told to the client in one line, never a traceback
                answer = Failure.of(e)
            try:
                wire.send(conn, answer.encode())
                conn.shutdown(socket.SHUT_RDWR)  # wakes an exec's signal relay: it ends
            except OSError:
                pass
        except OSError:
            pass
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()
            with self.lock:
                self.busy -= 1
                self.last = time.monotonic()

    def dispatch(self, msg: Any, uid: int, fds: list[int],
                 conn: socket.socket | None = None) -> SandboxDone:
        if isinstance(msg, SandboxCreate):
            return self.create(msg, uid)
        if isinstance(msg, SandboxList):
            return self.listing(uid)
        if isinstance(msg, SandboxRemove):
            return self.remove(msg.sandbox, uid)
        entry = self.find(msg.sandbox, uid)
        if isinstance(msg, SandboxExec):
            if len(fds) != 3:
                raise protocol.ProtocolError("SandboxExec", f"{len(fds)} descriptors, not 3")
            return self.exec(entry, msg, fds, conn)
        if len(fds) != 1:
            raise protocol.ProtocolError("SandboxCopy", f"{len(fds)} descriptors, not 1")
        return self.copy(entry, msg, fds[0])

    def create(self, msg: SandboxCreate, uid: int) -> SandboxDone:
        from ..errors import SpecError
        if uid != os.geteuid():
            raise SpecError("sandbox create", f"uid {uid}",
                            f"only uid {os.geteuid()} (the daemon's) can create sandboxes")
        name = msg.name
        if name and (not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
                     or len(name) > 64):
            raise SpecError("--name", name, "use letters, digits, '-', '_' and '.'")
        with self.lock:
            taken = name and any(e.name == name and not e.sandbox.closed
                                 for e in self.entries.values())
            if taken:
                raise SpecError("--name", name, "a sandbox of that name exists")
            self.busy += 1
        try:
            sandbox = self.make(dict(msg.options), msg.idle_timeout)
        finally:
            with self.lock:
                self.busy -= 1
        sid = secrets.token_hex(6)
        with self.lock:
            self.entries[sid] = _Entry(sid, name, uid, sandbox, msg.idle_timeout, msg.options)
        return SandboxDone(0, sid)

    def listing(self, uid: int) -> SandboxDone:
        self.sweep()
        with self.lock:
            rows = [{"id": e.id, "name": e.name, "uid": e.uid, "pid": e.sandbox.pid,
                     "created": e.created, "idle_timeout": e.idle}
                    for e in self.entries.values() if e.uid == uid]
        return SandboxDone(len(rows), json.dumps(rows))

    def remove(self, key: str, uid: int) -> SandboxDone:
        if key:
            gone = [self.find(key, uid)]
        else:
            with self.lock:
                gone = [e for e in self.entries.values() if e.uid == uid]
        with self.lock:
            for e in gone:
                self.entries.pop(e.id, None)
        for e in gone:
            e.sandbox.close()
        return SandboxDone(len(gone), "")

    def exec(self, entry: _Entry, msg: SandboxExec, fds: list[int],
             conn: socket.socket | None = None) -> SandboxDone:
        options = dict(msg.options)
        argv = [os.fsdecode(a) for a in msg.argv]
        mark = f"ISOL8R_EXEC={secrets.token_hex(8)}"
        options["env"] = [*(options.get("env") or []), mark]
        if conn is not None:
            threading.Thread(target=_relay_signals, args=(conn, entry.sandbox.pid, mark),
                             daemon=True).start()
        if msg.capture:
            result = entry.sandbox.run(argv, stdin=fds[0], capture_output=True, **options)
        else:
            result = entry.sandbox.run(argv, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                       **options)
        return SandboxDone(result.status, result.to_json())

    def copy(self, entry: _Entry, msg: SandboxCopy, host: int) -> SandboxDone:
        sb = entry.sandbox
        if msg.upload:
            inner = sb.open_fd(msg.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, msg.mode & 0o777)
            src, dst = host, inner
        else:
            inner = sb.open_fd(msg.path, os.O_RDONLY)
            src, dst = inner, host
        try:
            st = os.fstat(inner)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL,
                              "not a regular file", os.fsdecode(msg.path))
            os.set_blocking(inner, True)
            mode = stat.S_IMODE(st.st_mode)
            while True:
                chunk = os.read(src, _CHUNK)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
        finally:
            os.close(inner)
        return SandboxDone(mode, "")


def _stop_jails() -> None:
    """Stop this process's fork server and wait for it: its jails' cgroups are gone then."""
    from . import forkserver
    forkserver.shared_client().close()


def _relay_signals(conn: socket.socket, sandbox_pid: int, mark: str) -> None:
    """An exec's client's signals (Signal messages, until the connection ends) to its
    command's init, which passes them to the program's process group."""
    while True:
        try:
            data = conn.recv(256)
        except OSError:
            return
        if not data:
            return
        try:
            sig = protocol.expect(data, Signal).sig
        except protocol.ProtocolError:
            continue
        # not found: the program may be between fork and exec, or inside an execve (its
        # environment unreadable for that moment): look again, for up to a second
        for _ in range(20):
            inits = command_inits(sandbox_pid, mark)
            if inits:
                break
            time.sleep(0.05)
        for pid in inits:
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []


def command_inits(sandbox_pid: int, mark: str) -> list[int]:
    """The init of the command whose program has mark in its environment: the sandbox's init
    forks one init per command, each the parent of its command's program. (The library gives
    no handle of a running command yet; its environment names it.) A program can rewrite its
    own environment, and so at most misdirect its owner's signals to another command of the
    same sandbox, which is its owner's too."""
    want = mark.encode()
    found = []
    for init in _children(sandbox_pid):
        for prog in _children(init):
            try:
                with open(f"/proc/{prog}/environ", "rb") as f:
                    if want in f.read().split(b"\0"):
                        found.append(init)
                        break
            except OSError:
                continue
    return found


def serve(sock_path: str, ready_fd: int,
          make: Callable[[dict[str, Any], float | None], Any]) -> None:
    """The daemon: listen, say ready, serve until it holds nothing. make(options, idle) returns
    a new sandbox (the front end's isol8r.Sandbox)."""
    import fcntl
    import signal
    for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGQUIT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stopping.set())
    os.chdir("/")  # not the directory of the first create: it may be unmounted or removed
    daemon = Daemon(make)
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, _SEQ)
    listener.bind(sock_path)
    os.chmod(sock_path, 0o666)  # every uid may ask; serve_one checks whose each sandbox is
    ino = os.stat(sock_path).st_ino
    listener.listen(64)
    listener.settimeout(0.2)
    os.write(ready_fd, b"R")
    os.close(ready_fd)
    try:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                daemon.sweep()
                if daemon.empty() and _leave(sock_path, ino, listener, daemon, fcntl):
                    return
                continue
            conn.settimeout(None)
            threading.Thread(target=daemon.serve_one, args=(conn,), daemon=True).start()
    finally:
        listener.close()
        daemon.close_all()
        _stop_jails()
        try:
            if os.stat(sock_path).st_ino == ino:  # still ours, not a newer daemon's
                os.unlink(sock_path)
        except OSError:
            pass


def _leave(sock_path: str, ino: int, listener: socket.socket, daemon: Daemon,
           fcntl: Any) -> bool:
    """Unlink the socket under the start lock, unless a client came meanwhile: a client that
    finds no socket starts a new daemon, one that connected before is served."""
    import select
    lock = os.open(sock_path[:-5] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                   | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if select.select([listener], [], [], 0)[0] or not daemon.empty():
            return False
        listener.close()  # a client queued now is refused, asks again, finds none
        _stop_jails()  # before the socket goes: who sees it gone sees nothing of ours left
        try:
            if os.stat(sock_path).st_ino == ino:  # not a newer daemon's
                os.unlink(sock_path)
                for leftover in (".log", ".lock"):
                    os.unlink(sock_path[:-5] + leftover)
        except FileNotFoundError:
            pass
        return True
    finally:
        os.close(lock)
