"""The CLI's server: `isol8r run` as a thin client of a long-lived fork server.

Why: a Python command pays ~10 ms of interpreter start and ~50 ms of imports before it can
clone a jail; bwrap and nsjail pay neither. So the first `isol8r run` of a root user starts a
server (forkserver.Server, listening on a socket in /run/isol8r, which only root can reach), and
every run after that is a small client that imports nothing but this module: it sends its
arguments, environment, working directory and inheritable descriptors, relays the signals it
gets, and exits with the status it is sent. For each run the server forks a worker that takes
on the client's descriptors (at the same numbers), environment, directory, umask and resource
limits and runs the command as the client would have (the front end's cli.main, handed to serve()), leasing a warm jail from the server.

The server ends after ISOL8R_SERVER_IDLE seconds without work (default 60), when its code
changes on disk, or on `isol8r server stop`. ISOL8R_CLI_SERVER=0, or a user other than root,
runs the command in its own process instead.

This module's top half runs in the client at every start: it imports only built-in modules.
"""

from __future__ import annotations

import os
import stat
import sys
TYPE_CHECKING = False  # not `typing`: a run through the server must not import it
if TYPE_CHECKING:
    from typing import Any, Callable

import _signal
import _socket  # not `socket`: that imports enum, several ms at every start

from .. import protocol, wire  # built-in modules only, like this half
from ..protocol import FORWARDED, Armed, Exit, Failure, Local, Run, Signal, Stale, Started, Stop

_DIR = "/run/isol8r"
_SEQ = _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC
_WAIT_MARGIN = float(os.environ.get("ISOL8R_WAIT_MARGIN", "5"))  # as server.WAIT_MARGIN
_MAX_FDS = 250  # SCM_RIGHTS carries at most 253 descriptors; one is the working directory
SETUP_FAILED = 125


def path() -> str | None:
    """This installation's socket (one server per interpreter, environment and package
    directory: `python3 -m isol8r` and a venv's `isol8r` share one), or None
    when the command should run in its own process."""
    if os.geteuid() != 0 or os.environ.get("ISOL8R_CLI_SERVER", "1") == "0":
        return None
    h = 0xCBF29CE484222325  # FNV-1a: hashlib or zlib would cost an import
    here = _package()
    for b in f"{os.path.realpath(sys.executable)}\0{sys.prefix}\0{here}".encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{_DIR}/cli-{h:016x}.sock"


def _package() -> str:
    """The isol8r package's directory (this module lives in its daemon/)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trusted_dir() -> bool:
    """/run/isol8r, made if missing; used only while no one but root can write in it (the
    socket, its lock and log are root's, mode 0600)."""
    try:
        os.mkdir(_DIR, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    st = os.lstat(_DIR)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _connect(sock_path: str) -> Any:
    s = _socket.socket(_socket.AF_UNIX, _SEQ)
    try:
        s.connect(sock_path)
    except OSError:
        s.close()
        return None
    return s


def call(argv: list[str]) -> int | None:
    """Run `isol8r run argv...` through the server and return its exit status; None when there
    is no server to use (the caller then runs the command itself)."""
    global _VERBOSE
    sock_path = path()
    _VERBOSE = bool({"-v", "--verbose"} & set(argv[:argv.index("--") if "--" in argv else None]))
    if sock_path is None or not _trusted_dir():
        return None
    fds = _inheritable()
    if len(fds) > _MAX_FDS:
        return None
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    request = Run([os.fsencode(a) for a in argv], list(os.environb.items()), fds).encode()
    saved = _terminal(0)
    blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, FORWARDED)
    try:
        for _attempt in (1, 2):
            s = _connect(sock_path) or _start(sock_path, fds)
            if s is None:
                return None
            try:
                wire.send(s, request, (cwd, *fds))
                s.settimeout(_WAIT_MARGIN)
                reply = s.recv(4096)
                s.settimeout(None)
            except TimeoutError:
                _replace(s)
                os.write(2, b"isol8r: the CLI server did not answer within %gs "
                         b"(ISOL8R_WAIT_MARGIN); it was replaced\n" % _WAIT_MARGIN)
                return SETUP_FAILED
            except OSError:
                reply = b""
            try:
                msg = protocol.expect(reply, Started, Stale, Local, Failure) if reply else None
            except protocol.ProtocolError as e:
                os.write(2, f"isol8r: the CLI server's reply: {e}\n".encode())
                return SETUP_FAILED
            if msg is not None and not isinstance(msg, Stale):
                break
            s.close()  # a server of older code, or one that closed before taking the run
        if isinstance(msg, Failure):
            os.write(2, f"isol8r: {msg}\n".encode())
            return SETUP_FAILED
        if not isinstance(msg, Started):
            return None
        return _wait(s, blocked)
    finally:
        os.close(cwd)
        if saved is not None:  # the worker puts it back after --tty; this is for a worker that died
            from .. import terminal
            terminal.restore(0, saved)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)


def _terminal(fd: int) -> list[Any] | None:
    """fd's terminal settings when it is a terminal (termios is imported only then)."""
    if not os.isatty(fd):
        return None
    from .. import terminal
    return terminal.save(fd)


def _wait(s: Any, blocked: Any) -> int:
    """Relay signals to the run until the server sends its exit status."""
    def relay(sig: int, _frame: Any) -> None:
        try:
            s.send(Signal(sig).encode())
        except OSError:
            pass
    for sig in FORWARDED:
        _signal.signal(sig, relay)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)
    s.settimeout(_WAIT_MARGIN)
    while True:
        try:
            reply = s.recv(4096)
        except TimeoutError:
            if not _stopped(s):
                continue  # a long run: its limits are the worker's to enforce
            _replace(s)
            os.write(2, b"isol8r: the CLI server stopped during the run; it was replaced\n")
            return SETUP_FAILED
        except OSError:
            reply = b""
        if not reply:
            os.write(2, b"isol8r: the CLI server went away during the run\n")
            return SETUP_FAILED
        try:
            msg = protocol.expect(reply, Exit, Failure)
        except protocol.ProtocolError as e:
            os.write(2, f"isol8r: the CLI server's reply: {e}\n".encode())
            return SETUP_FAILED
        if isinstance(msg, Exit):
            return msg.code
        # isol8r's failure (a worker died): never a status of the program's
        os.write(2, f"isol8r: {msg}\n".encode())
        return SETUP_FAILED


def _stopped(s: Any) -> bool:
    """The server is stopped (SIGSTOP, a debugger): it relays nothing, the run's status included."""
    import struct
    try:
        pid = struct.unpack("3i", s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12))[0]
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def _replace(s: Any) -> None:
    """A server that took a connection but does not answer (stopped, stuck): kill it and take
    its socket away, so that the next run starts a new one (which sweeps what it left)."""
    import struct
    try:
        pid = struct.unpack("3i", s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12))[0]
        os.kill(pid, _signal.SIGKILL)
        sock_path = path()
        if sock_path is not None:
            os.unlink(sock_path)
    except OSError:
        pass
    s.close()


def _inheritable() -> list[int]:
    """The descriptors a program started from here would inherit."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                out.append(int(name))
        except OSError:
            pass  # the directory's own descriptor, closed by now
    return sorted(out)


_VERBOSE = False  # -v given before the command: call() says why it runs in-process


def _note(text: str) -> None:
    if _VERBOSE:
        os.write(2, f"isol8r: {text}\n".encode())


def _start(sock_path: str, inherited: list[int]) -> Any:
    """Start the server (one at a time: a lock beside the socket) and connect to it."""
    import fcntl
    try:
        lock = os.open(sock_path[:-5] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                       | os.O_NOFOLLOW, 0o600)
    except OSError as e:  # /run full (ENOSPC), read-only...: the command runs in this process
        _note(f"no CLI server ({sock_path[:-5]}.lock: {os.strerror(e.errno or 0)}); "
              "running in this process")
        return None
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
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited if fd > 2]
        try:
            pid = os.posix_spawn(sys.executable, [sys.executable, "-s", "-m", "isol8r",
                                                  "--cli-server", sock_path, str(w)],
                                 env, file_actions=actions, setsid=True)
        except OSError:
            os.close(r)
            return None
        finally:
            os.close(w)
        ready = os.read(r, 1) == b"R"  # the server is listening, or it failed and exited
        os.close(r)
        if not ready:
            os.waitpid(pid, 0)
            return None
        return _connect(sock_path)
    finally:
        os.close(lock)


def stop(sock_path: str | None = None, timeout: float = 10.0) -> bool:
    """Ask this installation's server to end once its runs are done; wait until it has.
    True when a server was running."""
    sock_path = sock_path or path()
    s = _connect(sock_path) if sock_path else None
    if s is None:
        return False
    try:
        s.settimeout(timeout)
        s.send(Stop().encode())
        while s.recv(4096):  # the server's end closes when its process exits
            pass
    except OSError:
        pass
    finally:
        s.close()
    for leftover in (sock_path[:-5] + ".lock", sock_path[:-5] + ".log"):
        try:
            os.unlink(leftover)
        except OSError:
            pass
    return True


def main(argv: list[str]) -> int:
    """`isol8r server status|stop`."""
    sock_path = path()
    if argv not in (["status"], ["stop"]):
        os.write(2, b"isol8r: usage: isol8r server status|stop\n")
        return SETUP_FAILED
    if sock_path is None:
        print("no CLI server: the command runs in its own process (not root, or ISOL8R_CLI_SERVER=0)")
        return 0
    if argv == ["stop"]:
        print(f"{sock_path}: {'stopped' if stop(sock_path) else 'not running'}")
        return 0
    s = _connect(sock_path)
    print(f"{sock_path}: {'running' if s is not None else 'not running'}")
    if s is not None:
        s.close()
    return 0


# ---- the server's side ------------------------------------------------------------------------

_OWN_FLOOR = 3000  # a worker's own descriptors live from here; a client's must be below
_MAX_IDLE = 4  # idle workers kept; more are forked when runs overlap, and leave when idle


def serve(sock_path: str, ready_fd: int, command: Callable[[list[str]], int]) -> None:
    """The CLI's server: listen, say ready, loop until idle, stale or stopped. command runs one
    client's command line in a worker and returns its exit status: the front end that starts
    this server (cli.serve, `python -m isol8r --cli-server`) hands it over, so this layer never
    imports the front end."""
    import signal

    from .. import spec
    from . import forkserver

    for sig in (signal.SIGINT, signal.SIGTSTP, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    srv = forkserver.Server()
    srv.idle_for = float(os.environ.get("ISOL8R_SERVER_IDLE", "60"))
    listener = _Listener(srv, sock_path, command)
    srv.busy = lambda: bool(listener.conns)
    srv.pool.refill(spec.Spec.from_options(["/bin/true"], {}))  # the default shape, warm
    listener.idle.append(_Worker(listener, rehearse=True))
    os.write(ready_fd, b"R")
    os.close(ready_fd)
    try:
        srv.loop()
    finally:
        listener.close()


def _sources() -> list[str]:
    """What the server runs: the package's directories and sources, and the interpreter."""
    out = []
    for d, dirs, files in os.walk(_package()):
        dirs[:] = [n for n in dirs if n != "__pycache__" and n != "data"]
        out.append(d)
        out += [os.path.join(d, name) for name in files if name.endswith(".py")]
    out.append(sys.executable)
    return sorted(out)


def _code(paths: list[str]) -> list[tuple[int, int]]:
    """The (mtime, size) of each of paths, checked before every run: one stat each and no
    directory walk (a run waits for it). A source added, removed or renamed changes its
    directory's mtime, so the list of paths found at start-up is enough."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((-1, -1))
    return out


def _same_world(pid: int) -> bool:
    """The client sees what the server sees: the same namespaces and the same root."""
    try:
        for ns in ("mnt", "pid", "net", "user", "cgroup", "ipc", "uts"):
            if os.stat(f"/proc/{pid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino:
                return False
        theirs, mine = os.stat(f"/proc/{pid}/root"), os.stat("/proc/self/root")
        return (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)
    except OSError:
        return False


class _Listener:
    """The listening socket, the clients connected to it and the workers that serve them."""

    def __init__(self, srv: Any, sock_path: str, command: Callable[[list[str]], int]) -> None:
        import selectors
        import socket
        self.srv, self.path, self.command = srv, sock_path, command
        self.conns: list[_Conn] = []
        self.idle: list[_Worker] = []
        self.stoppers: list[Any] = []
        self.sources = _sources()
        self.code = _code(self.sources)
        tmp = f"{sock_path}.{os.getpid()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            self.sock.bind(tmp)
        finally:
            os.umask(old)
        self.sock.listen(64)
        os.rename(tmp, sock_path)  # atomically: a client reaches this server or the one before
        self.ino = os.stat(sock_path).st_ino
        srv.sel.register(self.sock, selectors.EVENT_READ, self)

    def handle(self, sel: Any, key: Any) -> None:
        import selectors
        import socket
        import struct
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
        if uid != os.geteuid():
            conn.close()
            return
        c = _Conn(self, conn, pid)
        self.conns.append(c)
        sel.register(conn, selectors.EVENT_READ, c)

    def worker(self) -> _Worker:
        return self.idle.pop() if self.idle else _Worker(self, rehearse=False)

    def retire(self) -> None:
        """Take no more runs: unlink the socket (if it is still this server's) and stop
        listening; the loop ends once the runs under way are done."""
        if self.sock.fileno() < 0:
            return
        try:
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except OSError:
            pass
        self.srv.sel.unregister(self.sock)
        self.sock.close()
        self.srv.idle_for = 0.0

    def close(self) -> None:
        """End every worker (an idle one leaves when its socket closes) and wait for them."""
        workers = [c.worker for c in self.conns if c.worker is not None]
        for w in workers:
            w.kill()
        for w in self.idle:
            w.sock.close()
        for w in workers + self.idle:
            try:
                os.waitpid(w.pid, 0)
            except ChildProcessError:
                pass
        self.retire()


class _Conn:
    """One client: its request, handed to a worker; its signals, relayed; its exit status."""

    def __init__(self, listener: _Listener, conn: Any, pid: int) -> None:
        self.listener, self.conn, self.pid = listener, conn, pid
        self.worker: _Worker | None = None
        self.pending: list[int] = []  # signals that came before the worker was ready for them

    def handle(self, sel: Any, key: Any) -> None:
        from . import forkserver
        try:
            data, fds = forkserver.recv(self.conn)
        except OSError:
            data, fds = b"", []
        if self.worker is None:
            try:
                self._begin(sel, data, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            return
        if not data:  # the client is gone: so is its run
            sel.unregister(self.conn)
            self.worker.kill()
        else:
            try:
                sig = Signal.decode(data).sig
            except protocol.ProtocolError:
                return  # nothing a client may send during a run but its signals
            if self.worker.armed:
                self.worker.signal(sig)
            else:
                self.pending.append(sig)

    def _begin(self, sel: Any, data: bytes, fds: list[int]) -> None:
        try:
            req = protocol.expect(data, Run, Stop) if data else None
        except protocol.ProtocolError:
            req = None
        if isinstance(req, Stop):  # the connection stays open until this process exits: stop() waits
            self.listener.retire()
            self.listener.stoppers.append(self.conn)
            sel.unregister(self.conn)
            self.listener.conns.remove(self)
            return
        if req is None or len(fds) != len(req.targets) + 1:
            self.end(sel)
            return
        if _code(self.listener.sources) != self.listener.code:
            self.listener.retire()  # first: the client's next connect must not reach this server
            self.reply(Stale())
            self.end(sel)
            return
        if any(t >= _OWN_FLOOR for t in req.targets) or not _same_world(self.pid):
            # descriptors a worker keeps for itself, or a client in other namespaces (its paths,
            # cgroups and network are not the server's): it runs the command in-process
            self.reply(Local())
            self.end(sel)
            return
        w = self.listener.worker()
        try:
            w.assign(self, Run(req.argv, req.env, req.targets, self.pid).encode(), fds)
        except OSError:
            w.kill()
            self.reply(Failure.plain("the CLI server could not hand the run to a worker"))
            self.end(sel)
            return
        self.reply(Started(w.pid))

    def reply(self, msg: protocol.Msg | Failure) -> None:
        try:
            self.conn.send(msg.encode())
        except OSError:
            pass

    def end(self, sel: Any) -> None:
        try:
            sel.unregister(self.conn)
        except (KeyError, ValueError):
            pass
        self.conn.close()
        if self in self.listener.conns:
            self.listener.conns.remove(self)


class _Worker:
    """A process forked from the server that runs the command for one client at a time. It stays
    (warm: its copy-on-write faults taken, its caches filled) for the next client."""

    def __init__(self, listener: _Listener, rehearse: bool) -> None:
        import selectors
        import socket
        self.listener = listener
        self.conn: _Conn | None = None
        self.armed = False
        mine, theirs = socket.socketpair(socket.AF_UNIX, _SEQ)
        ctl, ctl_theirs = socket.socketpair(socket.AF_UNIX, _SEQ)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # never returns to the server's loop
            try:
                _worker_main(parent, theirs, ctl_theirs, rehearse, listener.command)
            finally:
                os._exit(SETUP_FAILED)
        theirs.close()
        ctl_theirs.close()
        self.pid, self.pidfd, self.sock = pid, os.pidfd_open(pid), mine
        listener.srv.control(ctl, primary=False)  # its lease requests
        listener.srv.sel.register(self.sock, selectors.EVENT_READ, self)
        listener.srv.sel.register(self.pidfd, selectors.EVENT_READ, self)

    def assign(self, conn: _Conn, request: bytes, fds: list[int]) -> None:
        self.conn, self.armed = conn, False
        conn.worker = self
        wire.send(self.sock, request, fds)

    def handle(self, sel: Any, key: Any) -> None:
        if key.fileobj == self.pidfd:
            self._reap(sel)
            return
        try:
            data = self.sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            sel.unregister(self.sock)  # it is leaving; its pidfd says when it has gone
            return
        msg = protocol.expect(data, Armed, Exit)
        c = self.conn
        if isinstance(msg, Armed) and c is not None:
            self.armed = True
            for sig in c.pending:
                self.signal(sig)
            c.pending = []
        elif isinstance(msg, Exit) and c is not None:
            self.conn = None
            c.reply(msg)
            c.end(sel)
            if len(self.listener.idle) < _MAX_IDLE and self.listener.sock.fileno() >= 0:
                self.listener.idle.append(self)
            else:  # it leaves; unregistered first, or its fd number, reused, is 'already
                sel.unregister(self.sock)  # registered' for whatever registers next
                self.sock.close()

    def _reap(self, sel: Any) -> None:
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        sel.unregister(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        if self.sock.fileno() >= 0:
            if sel.get_map().get(self.sock.fileno()) is not None:
                sel.unregister(self.sock)
            self.sock.close()
        if self in self.listener.idle:
            self.listener.idle.remove(self)
        if self.conn is not None:  # it died in a run: isol8r's failure, not the program's
            why = f"signal {-code}" if code < 0 else f"status {code}"
            self.conn.reply(Failure.plain(f"the CLI server's worker died during the run ({why})"))
            self.conn.end(sel)
            self.conn = None

    def signal(self, sig: int) -> None:
        if self.pidfd >= 0:
            try:
                _signal.pidfd_send_signal(self.pidfd, sig)
            except OSError:
                pass

    def kill(self) -> None:
        self.signal(_signal.SIGKILL)


def _worker_main(parent: int, sock: Any, ctl: Any, rehearse: bool,
                 command: Callable[[list[str]], int]) -> None:
    """A worker's life: take the server's leave (its descriptors), then one run after another."""
    import fcntl
    import gc
    import resource
    import signal
    import socket

    from .. import pipeline
    from ..spec import RLIMITS
    from ..sys import linux
    from . import forkserver
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return
    gc.collect()  # the server's garbage goes now, before its descriptor numbers are reused
    gc.freeze()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= _OWN_FLOOR + 8:
        top = max(hard, _OWN_FLOOR + 1024)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, top))
    sock_fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, _OWN_FLOOR)
    ctl_fd = fcntl.fcntl(ctl.fileno(), fcntl.F_DUPFD_CLOEXEC, _OWN_FLOOR)
    sock.detach()
    ctl.detach()
    os.closerange(0, min(sock_fd, ctl_fd))  # the server's: listener, clients, jails, selector
    os.closerange(max(sock_fd, ctl_fd) + 1, 1 << 20)
    pipeline.quiet_stdio()
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # until a run's jail takes them
    forkserver.share(forkserver.Client(control=socket.socket(fileno=ctl_fd)))
    sock = socket.socket(fileno=sock_fd)
    limits = {n: resource.getrlimit(n) for n in RLIMITS.values()}
    if rehearse:  # one real jail, output discarded: the first client finds this worker warm
        _run_one(command, ["run", "--", "/bin/true"], None, {}, limits, lambda: None)
    while True:
        try:
            data, fds = forkserver.recv(sock)
        except OSError:
            return
        if not data:
            return  # the server closed this worker: it leaves
        req = Run.decode(data)
        targets = req.targets
        os.fchdir(fds[0])
        os.close(fds[0])
        pipeline.install_fds(tuple(zip(fds[1:], targets)), close_sources=True)
        try:
            code = _run_one(command, [os.fsdecode(a) for a in req.argv], req.client, dict(req.env),
                            limits, lambda: sock.send(Armed().encode()))
        finally:
            for t in targets:
                if t > 2:
                    os.close(t)
            pipeline.quiet_stdio()
            os.chdir("/")
        sock.send(Exit(code).encode())


def _run_one(command: Callable[[list[str]], int], argv: list[str], client: int | None, env: dict[bytes, bytes],
             limits: dict[int, tuple[int, int]], armed: Any) -> int:
    """One run in a worker, as the client: its environment, umask and limits, fresh stdout and
    stderr on its descriptors; signals left pending by a run before are dropped."""
    import io
    import resource
    import signal

    while signal.sigtimedwait(FORWARDED, 0) is not None:
        pass
    armed()
    os.environ.clear()
    for k, v in env.items():
        os.environb[k] = v
    umask = os.umask(0o022)
    try:
        if client is not None:
            with open(f"/proc/{client}/status") as f:
                os.umask(next(int(line.split()[1], 8) for line in f if line.startswith("Umask:")))
            for n in limits:
                resource.setrlimit(n, resource.prlimit(client, n))
    except (OSError, StopIteration, ValueError):
        pass  # the client is gone: this run is about to be killed anyway
    out, err = sys.stdout, sys.stderr
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), "utf-8", "surrogateescape")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), "utf-8", "backslashreplace",
                                  line_buffering=True)
    code = SETUP_FAILED
    from .. import terminal
    terminal.CALLER = client or 0  # --tty: whose terminal, to tell a job in the background
    try:
        code = command(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except Exception as e:  # a bug costs this run, not the worker
        sys.stderr.write(f"isol8r: internal error: {type(e).__name__}: {e}\n")
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = out, err
        terminal.CALLER = 0
        os.environ.clear()
        os.umask(umask)
        for n, lim in limits.items():
            try:
                resource.setrlimit(n, lim)
            except (OSError, ValueError):
                pass
    return code & 0xFF
