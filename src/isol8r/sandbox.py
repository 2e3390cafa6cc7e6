"""Sandboxes that stay: one jail, many commands, files in and out.

A Sandbox is a jail made once (namespaces, root, mounts, workspace) whose init runs no program
of its own (pipeline._hold). Each command is a Command message on the jail's channel: the init
forks a command init, PID 1 of a PID namespace of its own, which forks the program's process
exactly as a fresh jail's init does (session, uid switch, capabilities and no_new_privs, the
default filter, the program's memory group, then the Request: cwd, descriptors, rlimits,
seccomp, execve). The command's channel speaks the fresh jail's handshake, so the owner watches
it with the same JailWatch and IOWatch, and gets the same Result. A command ends as a fresh jail
does: when its program exits, its init kills what it left behind; a time limit's SIGKILL of its
init ends its whole PID namespace. Its limits are its own (a cgroup of its own when it asks for
one), and so is its memory peak (its program's memory group).

Files go in and out through the jail itself: an Open message in place of a Request makes a
command's program process open the path as the jail's user, inside the jail's root, and hand
the descriptor back; a symlink the jail planted resolves inside the jail, as the jail's user.

The sandbox's jail is the fork server's (protocol.Hold), so it ends with the process that owns
it (the server kills every jail when its caller is gone), after idle_timeout seconds without a
command, or at close().
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import io
import os
import selectors
import signal
import socket
import stat
import struct
import termios
import threading
import time
from typing import Any, Mapping, Sequence

from . import finish, habits, pipeline, protocol, spec_of, supervisor, wire
from .daemon import forkserver
from .errors import SetupError, SpecError
from .protocol import Command, Exec, Failure, Open, Opened, Status, Timing
from .result import Result
from .spec import Spec, shape

_SEQ = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
# what a command may set for itself; everything else is the sandbox's (its jail's shape)
_PER_COMMAND = ("memory", "pids", "cpus", "cpu_limit", "time_limit", "output_limit", "tty")
_JAIL_LEVEL = ("net", "netns", "publish", "allow_domain", "seccomp", "seccomp_profile",
               "seccomp_allow", "seccomp_deny", "seccomp_log")
_CHUNK = 1 << 20


def _jail_part(spec: Spec) -> Spec:
    """The part of a command's Spec that is the sandbox's: its limits and terminal taken out."""
    return spec.replace(argv=("/bin/true",), memory=None, pids=None, cpus=None, cpu_limit=None,
                        time_limit=None, output_limit=None, tty=False)


class Sandbox:
    """A jail that stays: `with isol8r.Sandbox(**options) as sb: sb.run([...])`.

    options are isol8r.run's (the CLI's long names with underscores). The jail's own options
    (root, mounts, namespaces, user, seccomp policy, network) are fixed for its life; the limits
    (memory, pids, cpus, cpu_limit, time_limit/timeout, output_limit) and env, cwd, rlimits and
    tty are defaults that each command may override, and they hold per command.
    """

    def __init__(self, *, idle_timeout: float | None = None, timeout: float | None = None,
                 env: Mapping[str, str] | Sequence[str] | None = None, **options: Any) -> None:
        habits(False, None, None, None, None, None, None, None, None, env, options)
        if idle_timeout is not None and not (isinstance(idle_timeout, (int, float))
                                             and idle_timeout > 0):
            raise SpecError("idle_timeout", idle_timeout, "must be a positive number of seconds")
        if timeout is not None:  # every command's default time limit
            if "time_limit" in options:
                raise SpecError("timeout", timeout, "given twice (time_limit too)")
            options["time_limit"] = timeout
        self._options = dict(options)
        base = spec_of(["/bin/true"], None, dict(options))
        if "pid" not in base.namespaces:
            raise SpecError("share-pid", True, "a sandbox needs a PID namespace of its own")
        self._base = base
        self._jail_spec = _jail_part(base)
        self._shape = shape(self._jail_spec)
        if getattr(self._shape, "bare", None) is not None:  # no user namespace can be made
            raise SetupError("sandbox", errno.EPERM, "a sandbox needs namespaces of its own "
                             f"(a PID namespace per command), and {self._shape.bare}")
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._closed = False
        self._active = 0
        self._last = time.monotonic()
        self._idle = idle_timeout
        self._timer: threading.Timer | None = None
        self._layout: Any = None  # the host's cgroup layout, read once
        self._warm: dict[Any, list[_Slot]] = {}  # commands asked for ahead, per kinds of limit
        self._making: dict[Any, int] = {}  # slots being made, per kinds
        self._free: list[Any] = []  # empty program groups, for the next commands without limits
        self._groups: dict[Any, list[tuple[Any, Any]]] = {}  # empty command groups, per kinds
        self._client = forkserver.shared_client()
        self._sock, self._chan, self._pidfd, self.pid = self._hold()
        try:
            self._ready()
        except BaseException:
            self.close()
            raise
        if idle_timeout is not None:
            self._arm(idle_timeout)

    # ---- lifetime ---------------------------------------------------------------------------

    def _hold(self) -> tuple[socket.socket, socket.socket, int, int]:
        """Lease the sandbox's jail from the fork server and wait until its init is ready."""
        client = self._client
        sock = client.lease(self._jail_spec, False, hold=True)
        try:
            if not forkserver.select_readable(sock, forkserver.WAIT_MARGIN):
                raise client.replace("no answer to a lease")
            data, fds = forkserver.recv(sock)
            info = forkserver.leased(data, fds)
            chan, pidfd = socket.socket(fileno=fds[0]), fds[1]
        except BaseException:
            sock.close()
            raise
        return sock, chan, pidfd, info.pid

    def _ready(self) -> None:
        """The first command asked for ahead: its Forked says the jail is set up (its init
        reads no Command before); a setup failure is raised as the jail reported it."""
        try:
            slot = self._slot(self._base)
            slot.pidfd, slot.early = self._forked(slot.chan)
        except SetupError:
            raise _setup_error(self._chan) or SetupError("sandbox", errno.EPIPE,
                                                         "its jail ended during its setup")
        if slot.pidfd < 0:
            assert slot.chan is not None
            slot.chan.close()
            slot.discard()
            raise _setup_error(self._chan) or SetupError("sandbox", errno.EPIPE,
                                                         "its jail ended during its setup")
        with self._lock:
            self._warm.setdefault(_kinds(self._base), []).append(slot)

    def close(self) -> None:
        """End the sandbox: every process in it is killed, then its mounts, namespaces and
        cgroups go; returns once the fork server has reaped it. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        if self._owner != os.getpid():  # a fork of the owner: its copies only
            self._chan.close()
            self._sock.close()
            os.close(self._pidfd)
            return
        with self._lock:
            warm = [slot for slots in self._warm.values() for slot in slots]
            self._warm = {}
            free, self._free = self._free, []
            free += [g for pairs in self._groups.values() for pair in pairs for g in pair
                     if g is not None]
            self._groups = {}
        for slot in warm:
            slot.chan.close()
        self._chan.close()  # its init kills every process of the jail and exits
        try:
            if forkserver.select_readable(self._sock, forkserver.WAIT_MARGIN):
                try:
                    forkserver.recv(self._sock)  # Reaped: the jail and its groups are gone
                except OSError:
                    pass
        finally:
            self._sock.close()
            os.close(self._pidfd)
            for slot in warm:
                slot.discard()
            for g in free:
                _remove(g)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def _arm(self, after: float) -> None:
        self._timer = threading.Timer(after, self._idle_check)
        self._timer.daemon = True
        self._timer.start()

    def _idle_check(self) -> None:
        assert self._idle is not None
        with self._lock:
            if self._closed:
                return
            left = self._last + self._idle - time.monotonic()
            busy = self._active > 0
            if busy or left > 0:
                self._arm(self._idle if busy else left)
                return
        self.close()

    def _begin(self) -> None:
        with self._lock:
            if self._closed:
                raise SetupError("sandbox", errno.ESRCH, "it is closed")
            self._active += 1

    def _end(self) -> None:
        with self._lock:
            self._active -= 1
            self._last = time.monotonic()

    # ---- commands ---------------------------------------------------------------------------

    def command_spec(self, cmd: Sequence[str] | Spec, timeout: float | None = None,
                     options: Mapping[str, Any] | None = None) -> Spec:
        """The Spec of one command: the sandbox's options, this command's on top. An option of
        the sandbox's jail (root, mounts, user, namespaces, seccomp, network) is refused."""
        if isinstance(cmd, Spec):
            spec = spec_of(cmd, timeout, dict(options or {}))
        else:
            spec = spec_of(cmd, timeout, {**self._options, **(options or {})})
        theirs, ours = shape(_jail_part(spec)), self._shape
        for name in (*_JAIL_LEVEL, *ours.__dataclass_fields__):  # options first: their names
            a = getattr(theirs if name in ours.__dataclass_fields__ else spec, name)
            b = getattr(ours if name in ours.__dataclass_fields__ else self._base, name)
            if a != b:
                raise SpecError(name.replace("_", "-"), a, "is the sandbox's, fixed when it was "
                                "made; a command can set only its limits, env, cwd, rlimits "
                                "and tty")
        return spec

    def run(self, cmd: Sequence[str] | Spec, *, capture_output: bool = False,
            input: bytes | str | None = None, stdin: Any = None, stdout: Any = None,
            stderr: Any = None, timeout: float | None = None, check: bool = False,
            text: bool | None = None, encoding: str | None = None, errors: str | None = None,
            universal_newlines: bool | None = None,
            env: Mapping[str, str] | Sequence[str] | None = None, **options: Any) -> Result:
        """Run cmd in the sandbox and return its Result, as isol8r.run does (same arguments;
        options: this command's limits, env, cwd, rlimits, tty). Safe from several threads."""
        data, decode = habits(capture_output, input, stdin, stdout, stderr, text, encoding,
                              errors, universal_newlines, env, options)
        spec = self.command_spec(cmd, timeout, options)
        stdio = supervisor.open_stdio(spec, stdin, stdout, stderr, data, capture_output,
                                      lambda _v: None)
        return finish(self.run_spec(spec, stdio), decode, check)

    def run_spec(self, spec: Spec, stdio: supervisor.Stdio) -> Result:
        """One command of spec (command_spec's) with the descriptors of stdio (open_stdio's)."""
        try:
            self._begin()
        except BaseException:
            _close_after_start(stdio)
            stdio.io.close()
            raise
        try:
            return _Command(self, spec, stdio).run()
        finally:
            self._end()

    def spawn(self, cmd: Sequence[str] | Spec, *, pty: bool = False, timeout: float | None = None,
              env: Mapping[str, str] | Sequence[str] | None = None, **options: Any) -> "Process":
        """Start cmd and return at once: a Process with its streams (stdin, stdout, stderr as
        binary pipes; with pty=True one terminal of the jail's own /dev/pts for all three, its
        master as stdin and stdout), wait(), send_signal(), resize(). options as run()'s."""
        habits(False, None, None, None, None, None, None, None, None, env, options)
        if pty:
            options["tty"] = True
        spec = self.command_spec(cmd, timeout, options)
        ours: list[int] = []
        try:
            io = supervisor.IOWatch(spec.output_limit, lambda _v: None)
            if pty:
                stdio = supervisor.Stdio([(f, f) for f in spec.pass_fds], [], io)
            else:
                child = []
                for target in (0, 1, 2):
                    r, w = os.pipe2(os.O_CLOEXEC)
                    child.append((r, 0) if target == 0 else (w, target))
                    ours.append(w if target == 0 else r)
                child.extend((fd, fd) for fd in spec.pass_fds)
                stdio = supervisor.Stdio(child, [fd for fd, t in child if t in (0, 1, 2)], io)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        try:
            self._begin()
        except BaseException:
            for fd in ours:
                os.close(fd)
            _close_after_start(stdio)
            raise
        command = _Command(self, spec, stdio)
        master = _Master() if pty else None
        try:
            command.master = master
            command.begin()
        except BaseException:
            self._end()
            for fd in ours:
                os.close(fd)
            raise
        return Process(self, command, ours, master)

    def _program_group(self, cg: Any, spec: Spec) -> Any:
        """The program's memory group of a command: an empty one kept from an earlier command
        without limits, or a new one (inside the command's group when it has one)."""
        from . import cgroups
        if cg is None:
            with self._lock:
                if self._free:
                    return self._free.pop()
        if self._layout is None:
            self._layout = cgroups.detect()
        return cgroups.Cgroup.program_group(cg, parent=spec.cgroup_parent, layout=self._layout)

    def _slot(self, spec: Spec) -> "_Slot":
        """A command asked for now: its groups (kept from an earlier command of the same kinds
        of limit, else made), the Command sent; the Forked answer is read when it is taken."""
        from . import cgroups
        kinds = _kinds(spec)
        kept = None
        if kinds is not None:
            with self._lock:
                pairs = self._groups.get(kinds)
                kept = pairs.pop() if pairs else None
        slot = None
        if kept is not None:
            try:
                _, _, notes, _ = supervisor.command_limits(spec, kept[0])
                slot = _Slot(kinds, kept[0], notes)
                slot.program, slot.reused = kept[1], True
            except Exception:  # a memory limit below what it holds: a new group
                for g in kept:
                    if g is not None:
                        _remove(g)
        if slot is None:
            cg, _, notes, _ = supervisor.command_limits(spec)
            slot = _Slot(kinds, cg, notes)
        try:
            if slot.program is None:
                try:
                    slot.program = self._program_group(slot.group, spec)
                except cgroups.CgroupUnavailable as e:
                    slot.notes.append(f"memory_peak is wait4's ru_maxrss: {e.reason}")
                except OSError as e:
                    slot.notes.append(f"memory_peak is wait4's ru_maxrss: {e}")
            fds: list[int] = []
            try:
                if slot.group is not None:
                    fds = [os.open(os.path.join(p, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
                           for p in slot.group.paths]
                prog = os.open(slot.program.procs_file(), os.O_WRONLY | os.O_CLOEXEC) \
                    if slot.program is not None else -1
                if prog >= 0:
                    fds.append(prog)
                slot.chan = self._ask(fds[:len(fds) - (prog >= 0)], prog)
            finally:
                for fd in fds:
                    os.close(fd)
        except BaseException:
            slot.discard()
            raise
        return slot

    def _take(self, spec: Spec) -> "_Slot":
        """The command asked for ahead for spec's kinds of limit (its group given spec's
        values), else a new one; its init's pidfd read."""
        kinds = _kinds(spec)
        with self._lock:
            slots = self._warm.get(kinds)
            slot = slots.pop(0) if slots else None  # the oldest: the most likely ready
        if slot is not None and slot.group is not None:
            try:
                supervisor.command_limits(spec, slot.group)
            except Exception:  # a memory limit below what it holds already: a new one
                slot.chan.close()
                slot.discard()
                slot = None
        if slot is None:
            slot = self._slot(spec)
        try:
            if slot.pidfd < 0:  # the first slot's was read by _ready
                slot.pidfd, slot.early = self._forked(slot.chan)
        except BaseException:
            slot.discard()
            raise
        return slot

    def _refill(self, spec: Spec) -> None:
        """Keep WARM commands of spec's kinds asked for ahead, asked for once a command has
        ended (as the fork server tops its pool up): the next run then costs its Request only,
        and the slot's setup does not take a core from the command that runs."""
        kinds = _kinds(spec)
        while True:
            with self._lock:
                if self._closed or len(self._warm.get(kinds, ())) + \
                        self._making.get(kinds, 0) >= WARM:
                    return
                self._making[kinds] = self._making.get(kinds, 0) + 1
            try:
                slot = self._slot(spec)
            except Exception:
                slot = None
            with self._lock:
                self._making[kinds] -= 1
                if slot is not None and not self._closed:
                    self._warm.setdefault(kinds, []).append(slot)
                    continue
            if slot is None:
                return
            assert slot.chan is not None
            slot.chan.close()
            slot.discard()
            return

    def _done(self, slot: "_Slot", clean: bool, oom: bool = False) -> None:
        """A command's groups after its end: kept, emptied and their counters started again,
        for the next command of the same kinds of limit (none after an OOM kill, whose count
        cannot be reset); else removed."""
        if clean and not oom and slot.group is not None:
            try:
                if slot.group.reset_counters():
                    if slot.program is not None:
                        slot.program.reset_peak()
                    with self._lock:
                        if not self._closed:
                            self._groups.setdefault(slot.kinds, []).append(
                                (slot.group, slot.program))
                            slot.group = slot.program = None
            except OSError:
                pass
        if clean and slot.group is None and slot.program is not None:
            try:
                slot.program.reset_peak()
                with self._lock:
                    if not self._closed:
                        self._free.append(slot.program)
                        slot.program = None
            except OSError:
                pass
        slot.discard()

    def _ask(self, groups: list[int], program: int) -> socket.socket:
        """Send the init a Command; returns the command's channel."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, _SEQ)
        try:
            fds = [theirs.fileno(), *groups, *([program] if program >= 0 else [])]
            with self._lock:
                if self._closed:
                    raise SetupError("sandbox", errno.ESRCH, "it is closed")
                try:
                    wire.send(self._chan, Command(len(groups), program >= 0).encode(), fds)
                except OSError as e:
                    raise SetupError("sandbox", e.errno or errno.EPIPE,
                                     "its init is gone (killed, or idle past its timeout)") from None
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return mine

    def _forked(self, mine: socket.socket) -> tuple[int, list[bytes]]:
        """The command init's pidfd (-1 if none came), and the records sent before it."""
        early: list[bytes] = []
        while True:
            if not forkserver.select_readable(mine, forkserver.WAIT_MARGIN):
                raise SetupError("sandbox", errno.ETIMEDOUT, "its init did not start the "
                                 f"command within {forkserver.WAIT_MARGIN:g} s")
            rec, anc, _, _ = mine.recvmsg(65536, socket.CMSG_SPACE(4 * 4))
            got = wire.fds_of(anc)
            if rec[:1] == protocol.Forked.TAG and len(got) == 1:
                return got[0], early
            for fd in got:
                os.close(fd)
            if not rec:
                return -1, early
            early.append(rec)

    def _fork(self, groups: list[int], program: int) -> tuple[socket.socket, int, list[bytes]]:
        """A command started now (files): its channel, its init's pidfd, early records."""
        mine = self._ask(groups, program)
        try:
            pidfd, early = self._forked(mine)
        except BaseException:
            mine.close()
            raise
        return mine, pidfd, early

    # ---- files ------------------------------------------------------------------------------

    def _path(self, path: str | os.PathLike[str]) -> bytes:
        p = os.fsencode(path)
        if not p or b"\0" in p:
            raise SpecError("path", os.fsdecode(p), "give a non-empty path without NUL")
        return p if p.startswith(b"/") else os.fsencode(self._base.cwd) + b"/" + p

    def open_fd(self, path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
        """A descriptor of path inside the sandbox, opened by a process of the jail as the
        jail's user (its permissions, its root: a symlink cannot lead out). Raises OSError."""
        p = self._path(path)
        self._begin()
        try:
            chan, pidfd, early = self._fork([], -1)
            try:
                if pidfd >= 0:
                    wire.send(chan, Open(p, flags, mode).encode())
                return _await_opened(chan, early, os.fsdecode(p))
            finally:
                chan.close()
                if pidfd >= 0:
                    os.close(pidfd)
        finally:
            self._end()

    def _open_regular(self, path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
        fd = self.open_fd(path, flags, mode)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL,
                          "not a regular file", os.fsdecode(path))
        os.set_blocking(fd, True)
        return fd

    def write_file(self, path: str | os.PathLike[str], data: bytes | str,
                   mode: int = 0o644) -> None:
        """Write data (str: UTF-8) to path in the sandbox, created (mode) or truncated."""
        if isinstance(data, str):
            data = data.encode()
        fd = self._open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:_CHUNK]):]
        finally:
            os.close(fd)

    def read_file(self, path: str | os.PathLike[str]) -> bytes:
        """The contents of the regular file at path in the sandbox."""
        fd = self._open_regular(path, os.O_RDONLY)
        try:
            chunks = []
            while True:
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    def upload(self, host_path: str | os.PathLike[str], path: str | os.PathLike[str],
               mode: int | None = None) -> None:
        """Copy a host file into the sandbox (mode: the host file's permission bits)."""
        with open(host_path, "rb") as src:
            perm = stat.S_IMODE(os.fstat(src.fileno()).st_mode) & 0o777 if mode is None else mode
            fd = self._open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, perm)
            try:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def download(self, path: str | os.PathLike[str], host_path: str | os.PathLike[str]) -> None:
        """Copy a regular file of the sandbox to host_path (created or truncated)."""
        fd = self._open_regular(path, os.O_RDONLY)
        try:
            with open(host_path, "wb") as dst:
                while True:
                    chunk = os.read(fd, _CHUNK)
                    if not chunk:
                        break
                    dst.write(chunk)
        finally:
            os.close(fd)

    def listdir(self, path: str | os.PathLike[str] = ".") -> list[str]:
        """The names in a directory of the sandbox, sorted."""
        fd = self.open_fd(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)


class AsyncSandbox:
    """Sandbox for asyncio: `async with isol8r.AsyncSandbox(**options) as sb: await sb.run(...)`.
    Each call runs in a worker thread (a command's watching blocks); commands may overlap."""

    def __init__(self, *, idle_timeout: float | None = None, timeout: float | None = None,
                 **options: Any) -> None:
        self._args = (idle_timeout, {**options, **({"timeout": timeout} if timeout else {})})
        self.sandbox: Sandbox | None = None

    async def start(self) -> "AsyncSandbox":
        import asyncio
        idle, options = self._args
        self.sandbox = await asyncio.to_thread(lambda: Sandbox(idle_timeout=idle, **options))
        return self

    async def __aenter__(self) -> "AsyncSandbox":
        return await self.start()

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    def _sb(self) -> Sandbox:
        if self.sandbox is None:
            raise SetupError("sandbox", errno.ESRCH, "not started: use `async with` or start()")
        return self.sandbox

    async def close(self) -> None:
        import asyncio
        if self.sandbox is not None:
            await asyncio.to_thread(self.sandbox.close)

    async def run(self, cmd: Sequence[str] | Spec, **kwargs: Any) -> Result:
        import asyncio
        sb = self._sb()
        return await asyncio.to_thread(lambda: sb.run(cmd, **kwargs))

    async def spawn(self, cmd: Sequence[str] | Spec, **kwargs: Any) -> Process:
        """Sandbox.spawn; the Process's wait() blocks: await asyncio.to_thread(p.wait)."""
        import asyncio
        sb = self._sb()
        return await asyncio.to_thread(lambda: sb.spawn(cmd, **kwargs))

    async def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        import asyncio
        await asyncio.to_thread(self._sb().write_file, path, data, mode)

    async def read_file(self, path: str) -> bytes:
        import asyncio
        return await asyncio.to_thread(self._sb().read_file, path)

    async def upload(self, host_path: str, path: str) -> None:
        import asyncio
        await asyncio.to_thread(self._sb().upload, host_path, path)

    async def download(self, path: str, host_path: str) -> None:
        import asyncio
        await asyncio.to_thread(self._sb().download, path, host_path)

    async def listdir(self, path: str = ".") -> list[str]:
        import asyncio
        return await asyncio.to_thread(self._sb().listdir, path)


class _Master:
    """spawn(pty=True): takes the jail terminal's master from JailWatch (in place of the CLI's
    terminal.Relay), for the Process to hand to its caller."""

    pid1: Any = None

    def __init__(self) -> None:
        self.fd = -1
        self.ready = threading.Event()

    def attach(self, sel: Any, fd: int) -> None:
        self.fd = fd
        self.ready.set()


class _PtyReader(io.RawIOBase):
    """The master of a jail's terminal, read: EIO (the terminal's last holder closed it) is
    the end of the stream, as EOF is for a pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            n = os.readv(self.fd, [buf])
        except OSError as e:
            if e.errno == errno.EIO:
                return 0
            raise
        return n

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


class Process:
    """A command started by Sandbox.spawn, still running: its streams, signals, terminal size,
    and its Result once it ends (wait). Watched by a thread of its own."""

    def __init__(self, sb: Sandbox, command: "_Command", ours: list[int],
                 master: _Master | None) -> None:
        self.sandbox, self.argv = sb, list(command.spec.argv)
        self._command = command
        self._result: Result | None = None
        self._error: BaseException | None = None
        self.stdin: Any = None
        self.stdout: Any = None
        self.stderr: Any = None
        self._fd = -1
        if ours:
            self.stdin = os.fdopen(ours[0], "wb", buffering=0)
            self.stdout = os.fdopen(ours[1], "rb", buffering=0)
            self.stderr = os.fdopen(ours[2], "rb", buffering=0)
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name=f"isol8r sandbox {self.argv[0]}")
        self._thread.start()
        if master is not None:
            master.ready.wait(forkserver.WAIT_MARGIN)
            if master.fd >= 0:
                self._fd = master.fd
                self.stdout = io.BufferedReader(_PtyReader(os.dup(master.fd)))
                self.stdin = os.fdopen(os.dup(master.fd), "wb", buffering=0)

    def _watch(self) -> None:
        try:
            self._result = self._command.complete()
        except BaseException as e:
            self._error = e
        finally:
            self.sandbox._end()

    def poll(self) -> Result | None:
        """The Result if the command has ended, else None."""
        return self.wait(0) if not self._thread.is_alive() else None

    def wait(self, timeout: float | None = None) -> Result:
        """The command's Result (as run() gives it), once it has ended; TimeoutError when it
        has not within timeout seconds."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.argv[0]} still runs after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def send_signal(self, sig: int) -> None:
        """Send sig to the command (its init passes it to the program's process group);
        SIGKILL ends the command's whole PID namespace."""
        jail = self._command.jail
        if self._thread.is_alive():
            jail.signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's size (pty=True): the program's foreground group gets SIGWINCH."""
        if self._fd < 0:
            raise ValueError("resize: this command has no terminal (spawn it with pty=True)")
        fcntl.ioctl(self._fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        """Close this side's streams (the command sees EOF on its input)."""
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                f.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *_: Any) -> None:
        if self._thread.is_alive():
            self.kill()
        self._thread.join()
        self.close()


# ---- one command ----------------------------------------------------------------------------


WARM = 2  # commands asked for ahead per kinds of limit: one ready while the next is made


def _kinds(spec: Spec) -> Any:
    """Which cgroup limits a command's group has (None: no group): slots of one kind are
    interchangeable once their values are written."""
    if not spec.wants_cgroup:
        return None
    return (spec.memory is not None, spec.pids is not None, spec.cpus is not None,
            spec.cpu_limit is not None, spec.cgroup_parent)


class _Slot:
    """One command of a sandbox from its Command on: its groups, channel, init's pidfd."""

    def __init__(self, kinds: Any, group: Any, notes: list[str]) -> None:
        self.kinds, self.group, self.notes = kinds, group, notes
        self.program: Any = None
        self.reused = False  # its groups served an earlier command: their pids.peak is not its
        self.chan: socket.socket | None = None  # type: ignore[assignment]
        self.pidfd = -1
        self.early: list[bytes] = []

    def discard(self) -> None:
        """Remove its groups (killing what is left in them); its channel is closed by whoever
        holds it (a Jail, or the sandbox for a slot never taken)."""
        for g in (self.program, self.group):
            if g is not None:
                _remove(g)
        self.program = self.group = None
        if self.pidfd >= 0 and self.chan is not None and self.chan.fileno() < 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _remove(group: Any) -> None:
    try:
        group.remove()
    except OSError:
        pass


class _Command:
    """The owner's side of one command: its slot, its Request, its watch."""

    def __init__(self, sb: Sandbox, spec: Spec, stdio: supervisor.Stdio) -> None:
        self.sb, self.spec, self.stdio = sb, spec, stdio
        self.slot: _Slot | None = None
        self.watch: supervisor.JailWatch | None = None
        self.master: _Master | None = None  # spawn(pty=True): where the terminal's master goes

    def run(self) -> Result:
        self.begin()
        return self.complete()

    def begin(self) -> None:
        """Take a command, send it its Request (the program then execs)."""
        spec, stdio = self.spec, self.stdio
        try:
            jail, derived = self._start()
        except BaseException:
            _close_after_start(stdio)
            stdio.io.close()
            if self.slot is not None:
                if self.slot.chan is not None:
                    self.slot.chan.close()
                self.slot.discard()
            raise
        self.jail = jail
        watch = self.watch
        assert watch is not None and self.slot is not None
        try:
            if watch.error is None and jail.pidfd >= 0:
                req = pipeline.request(spec, [t for _, t in stdio.child], derived,
                                       supervisor.bpf_for(spec))
                try:
                    supervisor.activate(jail, req, [src for src, _ in stdio.child])
                except SetupError:
                    pass  # its error record is read by complete(), as a fresh jail's would be
        except BaseException:
            stdio.io.close()
            jail.close(remove_cgroup=False)
            self.slot.pidfd = -1
            self.sb._done(self.slot, False)
            raise
        finally:
            _close_after_start(stdio)

    def complete(self) -> Result:
        """Watch the command to its end; its Result (or its setup's error)."""
        spec, stdio, jail, watch = self.spec, self.stdio, self.jail, self.watch
        assert watch is not None and self.slot is not None
        sel = selectors.DefaultSelector()
        clean = oom = False
        try:
            if jail.pidfd >= 0:
                watch.register(sel)
            else:
                sel.register(jail.chan, selectors.EVENT_READ, (watch, "chan"))
            stdio.io.register(sel)
            supervisor.drive(sel, self._next_tick, self._finished)
            clean = watch.emptied
            outcome = watch.finish()
            oom = outcome.oom
        finally:
            sel.close()
            stdio.io.close()
            jail.close(remove_cgroup=False)
            self.slot.pidfd = -1
            self.sb._done(self.slot, clean, oom)
        self.sb._refill(spec)
        return supervisor.result(spec, outcome, stdio.io)

    def _start(self) -> tuple[supervisor.Jail, dict[str, tuple[int, int]]]:
        spec = self.spec
        started = time.monotonic()
        self.slot = slot = self.sb._take(spec)
        _, derived, notes, applied = supervisor.command_limits(spec, slot.group) \
            if slot.group is not None else supervisor.command_limits(spec)
        jail = supervisor.Jail(spec, _host_pid(slot.pidfd), slot.pidfd, slot.chan, started,
                               applied, notes + slot.notes, cgroup=slot.group,
                               program_group=slot.program)
        self.watch = supervisor.JailWatch(jail, None, reaper=False)
        self.watch.terminal = self.master or self.stdio.io.terminal
        self.stdio.io.on_limit = self.watch.limit_hit
        for rec in slot.early:
            self.watch.on_record(rec)
        if slot.pidfd < 0 and self.watch.error is None:
            self.watch.error = Failure("sandbox", errno.EPIPE, "its init is gone")
        return jail, derived

    def _usage(self) -> Any:
        g = self.slot.group if self.slot is not None else None
        try:
            usage = g.usage() if g is not None else None
        except OSError:
            return None
        if usage is not None and self.slot is not None and self.slot.reused:
            usage = dataclasses.replace(usage, pids_peak=None)
        return usage

    def _finished(self) -> bool:
        w = self.watch
        assert w is not None
        if w.reaped_report is None:
            if w.program is not None and (w.emptied or w.exited):
                st, ut, syst, rss = w.program
                w.reaped(st, ut, syst, rss, self._usage())
            elif (w.exited or w.jail.pidfd < 0) and not w.chan_open:
                # ended before its init reported (its limit's SIGKILL, or a failed setup)
                w.reaped(9, 0.0, 0.0, 0, self._usage())
        if not w.done:
            return False
        if w.exited_at is None:
            w.exited_at = time.monotonic()
        return self.stdio.io.done or time.monotonic() > w.exited_at + self.spec.drain_grace

    def _next_tick(self, now: float) -> float | None:
        w = self.watch
        assert w is not None
        if w.done:
            return (w.exited_at or now) + self.spec.drain_grace
        return w.tick(now)


def _close_after_start(stdio: supervisor.Stdio) -> None:
    for fd in stdio.close_after_start:
        os.close(fd)
    stdio.close_after_start = []


def _host_pid(pidfd: int) -> int:
    """The host pid of a pidfd's process (its fdinfo), for the audit log's seccomp records."""
    if pidfd < 0:
        return 0
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _setup_error(chan: socket.socket) -> Exception | None:
    """The failure a sandbox's jail reported on its channel before it ended, if any."""
    while True:
        try:
            rec = chan.recv(65536, socket.MSG_DONTWAIT)
        except ConnectionResetError:
            continue
        except OSError:
            return None
        if not rec:
            return None
        try:
            msg = protocol.expect(rec, Timing, Failure)
        except protocol.ProtocolError as e:
            return e
        if isinstance(msg, Failure):
            return msg.error()


def _await_status(chan: socket.socket) -> None:
    """Wait for a file command's end (its Status, or EOF), at most WAIT_MARGIN."""
    deadline = time.monotonic() + forkserver.WAIT_MARGIN
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not forkserver.select_readable(chan, left):
            return
        try:
            rec = chan.recv(65536)
        except OSError:
            return
        if not rec or rec[:1] == Status.TAG:
            return


def _await_opened(chan: socket.socket, early: list[bytes], path: str) -> int:
    """The descriptor a command's Open sent back, or its failure as an OSError."""
    pending = list(early)
    while True:
        fds: list[int] = []
        if pending:
            rec = pending.pop(0)
        else:
            if not forkserver.select_readable(chan, forkserver.WAIT_MARGIN):
                raise SetupError("sandbox", errno.ETIMEDOUT, f"open {path}: no answer")
            rec, anc, _, _ = chan.recvmsg(65536, socket.CMSG_SPACE(4))
            fds = wire.fds_of(anc)
        if not rec:
            raise SetupError("sandbox", errno.EPIPE, f"open {path}: the command ended")
        msg = protocol.expect(rec, Timing, Failure, Exec, Status, Opened)
        if isinstance(msg, Opened) and len(fds) == 1:
            _await_status(chan)  # its process's copy is closed: no ETXTBSY for an exec next
            return fds[0]
        for fd in fds:
            os.close(fd)
        if isinstance(msg, Failure):
            if msg.step.startswith("open "):
                raise OSError(msg.err, os.strerror(msg.err), path)
            raise msg.error()
