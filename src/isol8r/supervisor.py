"""The parent side of a run: create the child, hand it its ids and cgroup, watch it, report.

spawn() clones the child into its namespaces (clone3 with a pidfd), writes the id maps, says "go"
over a SOCK_SEQPACKET pair and returns a Jail; Jail.wait() runs one event loop over the
handshake records, the pidfd, the captured pipes and the limits, and builds the Result.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import mounts, pipeline, userns
from .errors import ExecError, SetupError
from .result import Result
from .spec import RLIMITS, Spec
from .sys import linux

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT, signal.SIGTSTP)
_ALL_SIGNALS = signal.valid_signals()
_clone_lock = threading.Lock()

Log = Callable[[str], None]


@dataclass
class Jail:
    """A started jail: its first process (init, or the program with --no-init) and channels."""

    spec: Spec
    pid: int
    pidfd: int
    chan: socket.socket
    started: float
    limits: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cgroup: Any = None

    def signal(self, sig: int) -> None:
        """Send sig to the jail: its init forwards it to the program's process group."""
        try:
            linux.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise

    def close(self) -> None:
        self.chan.close()
        os.close(self.pidfd)
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None


def spawn(spec: Spec, plan: pipeline.Plan, cgroup: Any = None) -> Jail:
    """Clone the child into its namespaces and let it go; raises SetupError if it cannot start."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    clone_fd = cgroup.clone_fd() if cgroup is not None else -1
    started = time.monotonic()
    with _clone_lock:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        try:
            pid, pidfd = linux.clone3(plan.clone_flags, clone_fd)
            if pid == 0:
                pipeline.child_main(plan, child.fileno())
        except OSError as e:
            parent.close()
            child.close()
            raise SetupError("clone3", e.errno or errno.EIO, _clone_hint(e.errno)) from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    child.close()
    jail = Jail(spec, pid, pidfd, parent, started, cgroup=cgroup)
    try:
        if plan.ids is not None:
            userns.write_maps(pid, plan.ids)
        if cgroup is not None and clone_fd < 0:
            cgroup.attach(pid)
        tree = _idmapped_root(pid, plan)
        if tree >= 0:
            try:
                parent.sendmsg([b"G"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         tree.to_bytes(4, sys.byteorder))])
            finally:
                os.close(tree)
        else:
            parent.send(b"G")
    except OSError as e:
        _kill_and_reap(jail)
        raise SetupError("write id maps / cgroup", e.errno or errno.EIO, str(e.filename or "")) from None
    return jail


def _idmapped_root(pid: int, plan: pipeline.Plan) -> int:
    """An idmapped tree of a read-only prepared root, or -1 where the kernel or fs cannot."""
    if plan.mounts is None or plan.mounts.idmap_root is None or plan.ids is None \
            or not plan.ids.can_become_root:
        return -1
    userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return mounts.idmapped_tree(plan.mounts.idmap_root, userns_fd)
    except OSError:
        return -1  # e.g. a filesystem without idmapped-mount support: plain bind instead
    finally:
        os.close(userns_fd)


def _clone_hint(err: int | None) -> str:
    if err in (errno.EPERM, errno.ENOSPC, errno.EUSERS):
        return "user namespaces may be disabled or exhausted (see /proc/sys/user/max_user_namespaces)"
    return ""


def _kill_and_reap(jail: Jail) -> None:
    jail.signal(signal.SIGKILL)
    try:
        os.waitpid(jail.pid, 0)
    except ChildProcessError:
        pass
    jail.close()


@dataclass
class _Pipe:
    fd: int
    relay: int | None = None  # copy to this fd instead of keeping (an --output-limit on a tty/file)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    truncated: bool = False


class _Watch:
    """The event loop of one run: records, exit, captured output, input, limits."""

    def __init__(self, jail: Jail, log: Log | None) -> None:
        self.jail = jail
        self.log = log
        self.sel = selectors.DefaultSelector()
        self.error: SetupError | None = None
        self.exec_at: float | None = None
        self.program_status: tuple[int, float, float, int] | None = None
        self.exited = False
        self.verdict: str | None = None
        self.term_at: float | None = None
        self.kill_at: float | None = None
        self.pipes: dict[int, _Pipe] = {}
        self.input: memoryview | None = None
        self.output_limit = jail.spec.output_limit

    def on_record(self, rec: bytes) -> None:
        kind, body = rec[:1], rec[1:]
        if kind == b"T" and self.log:
            step, _, ns = body.partition(b"\0")
            self.log(f"{step.decode(errors='replace')}: {int(ns) / 1e6:.3f} ms")
        elif kind == b"E":
            step, err, detail = (body.split(b"\0", 2) + [b"", b""])[:3]
            cls = ExecError if step in (b"execve", b"find program") else SetupError
            self.error = cls(step.decode(errors="replace"), int(err or 0),
                             detail.decode(errors="replace"))
        elif kind == b"X":
            self.exec_at = time.monotonic()
        elif kind == b"S":
            st, ut, syst, rss = body.split(b"\0")
            self.program_status = (int(st), float(ut), float(syst), int(rss))

    def limit_hit(self, verdict: str) -> None:
        """Escalate: SIGTERM (forwarded by init) now, SIGKILL to the whole jail after the grace."""
        if self.verdict is None:
            self.verdict = verdict
            now = time.monotonic()
            self.jail.signal(signal.SIGTERM)
            self.kill_at = now + self.jail.spec.kill_grace

    def read_pipe(self, fd: int) -> None:
        p = self.pipes[fd]
        data = os.read(fd, 65536)
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
            del self.pipes[fd]
            return
        if self.output_limit is not None:
            room = self.output_limit - p.size
            if len(data) > room:
                data = data[:max(room, 0)]
                p.truncated = True
                self.limit_hit("output-limit")
        p.size += len(data)
        if p.relay is None:
            p.chunks.append(data)
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(p.relay, view):]
            except BlockingIOError:
                select.select([], [p.relay], [])
            except OSError:
                return

    def write_input(self, fd: int) -> None:
        assert self.input is not None
        try:
            n = os.write(fd, self.input[:65536])
        except BrokenPipeError:
            n = len(self.input)
        self.input = self.input[n:]
        if not self.input:
            self.sel.unregister(fd)
            os.close(fd)

    def run(self) -> None:
        jail = self.jail
        spec = jail.spec
        self.sel.register(jail.chan, selectors.EVENT_READ, "chan")
        self.sel.register(jail.pidfd, selectors.EVENT_READ, "exit")
        chan_open = True
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            start = self.exec_at or jail.started
            if spec.time_limit is not None and not self.exited and now - start >= spec.time_limit:
                self.limit_hit("time-limit")
            if (spec.cpu_limit is not None and jail.cgroup is not None and not self.exited
                    and self.verdict is None and jail.cgroup.cpu_time() >= spec.cpu_limit):
                self.limit_hit("cpu-limit")
            if self.kill_at is not None and now >= self.kill_at and not self.exited:
                jail.signal(signal.SIGKILL)
                self.kill_at = None
            if self.exited and not chan_open and (not self.pipes or (drain_until and now > drain_until)):
                break
            timeout = 0.05 if self.exited else self._timeout(now, start)
            for key, _ in self.sel.select(timeout):
                tag = key.data
                if tag == "chan":
                    try:
                        rec = jail.chan.recv(65536)
                    except ConnectionResetError:
                        rec = b""
                    if rec:
                        self.on_record(rec)
                    else:
                        chan_open = False
                        self.sel.unregister(jail.chan)
                        if self.exec_at is None and self.error is None:
                            self.exec_at = time.monotonic()  # --no-init: EOF means exec
                elif tag == "exit":
                    self.exited = True
                    self.sel.unregister(jail.pidfd)
                    drain_until = time.monotonic() + max(spec.kill_grace, 0.5)
                elif tag == "out":
                    self.read_pipe(key.fd)
                elif tag == "in":
                    self.write_input(key.fd)

    def _timeout(self, now: float, start: float) -> float | None:
        marks = []
        if self.jail.spec.cpu_limit is not None and self.jail.cgroup is not None:
            marks.append(now + 0.01)  # poll the jail's CPU time every 10 ms
        if self.jail.spec.time_limit is not None and self.verdict is None:
            marks.append(start + self.jail.spec.time_limit)
        if self.kill_at is not None:
            marks.append(self.kill_at)
        if not marks:
            return None
        return max(0.0, min(marks) - now)


def _stdio_fd(value: Any, default: int, mode: int) -> tuple[int, int | None]:
    """(fd for the child, fd to close in the parent after spawn) for a subprocess-style argument."""
    if value is None:
        return default, None
    if value == subprocess.DEVNULL:
        fd = os.open(os.devnull, mode | os.O_CLOEXEC)
        return fd, fd
    if isinstance(value, int):
        return value, None
    return value.fileno(), None


def run(spec: Spec, *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
        input: bytes | None = None, capture_output: bool = False, forward_signals: bool = False,
        verbose: bool = False, log: Log | None = None) -> Result:
    """Run one jail to completion. Raises SetupError (or ExecError) when it could not start."""
    to_close: list[int] = []
    parent_ends: dict[int, str] = {}
    relays: dict[int, int] = {}
    try:
        if input is not None:
            r, w = os.pipe2(os.O_CLOEXEC)
            in_fd, to_close = r, [r]
            parent_ends[w] = "in"
        else:
            in_fd, c = _stdio_fd(stdin, 0, os.O_RDONLY)
            to_close += [c] if c is not None else []
        out_fds = []
        for which, value, default in (("stdout", stdout, 1), ("stderr", stderr, 2)):
            if capture_output or value == subprocess.PIPE:
                r, w = os.pipe2(os.O_CLOEXEC)
                parent_ends[r] = which
                to_close.append(w)
                out_fds.append(w)
            elif spec.output_limit is not None:
                r, w = os.pipe2(os.O_CLOEXEC)
                fd, c = _stdio_fd(value, default, os.O_WRONLY)
                to_close += [w] + ([c] if c is not None else [])
                relays[r] = os.dup(fd)
                parent_ends[r] = which
                out_fds.append(w)
            else:
                fd, c = _stdio_fd(value, default, os.O_WRONLY)
                to_close += [c] if c is not None else []
                out_fds.append(fd)
        cg, derived, notes = _limits(spec)
        try:
            plan = pipeline.prepare(spec, (in_fd, out_fds[0], out_fds[1]), verbose, derived,
                                    _bpf(spec))
            jail = spawn(spec, plan, cg)
        except BaseException:
            if cg is not None:
                cg.remove()
            raise
        jail.notes.extend(notes)
        jail.limits.update(_limits_applied(spec, plan, cg))
    except BaseException:
        for fd in list(parent_ends) + to_close + list(relays.values()):
            os.close(fd)
        raise
    for fd in to_close:
        os.close(fd)
    try:
        return _watch(jail, parent_ends, relays, input, forward_signals, log if verbose else None)
    finally:
        for fd in relays.values():
            os.close(fd)


def _limits(spec: Spec) -> tuple[Any, dict[str, tuple[int, int]], list[str]]:
    """The jail's cgroup when a cgroup limit is asked for, else None; the rlimits that stand in
    for what no cgroup can hold, and notes saying so (never a silent fallback)."""
    derived: dict[str, tuple[int, int]] = {}
    notes: list[str] = []
    if spec.output_limit is not None:
        derived["FSIZE"] = (spec.output_limit, spec.output_limit)
    if spec.memory is None and spec.pids is None and spec.cpus is None and spec.cpu_limit is None:
        return None, derived, notes
    from . import cgroups
    try:
        cg = cgroups.Cgroup.create(cgroups.Limits(spec.memory, spec.pids, spec.cpus),
                                   parent=spec.cgroup_parent)
        return cg, derived, notes
    except cgroups.CgroupUnavailable as e:
        if spec.cgroup_parent is not None:
            raise SetupError("cgroup", errno.EINVAL, f"--cgroup-parent {spec.cgroup_parent}: "
                             f"{e.reason}") from None
        fallback = []
        if spec.memory is not None:
            derived["AS"] = (spec.memory, spec.memory)
            fallback.append("--memory as RLIMIT_AS")
        if spec.pids is not None:
            derived["NPROC"] = (spec.pids, spec.pids)
            fallback.append("--pids as RLIMIT_NPROC")
        if spec.cpu_limit is not None:
            secs = int(spec.cpu_limit + 0.999)
            derived["CPU"] = (secs, secs + 1)
            fallback.append("--cpu-limit as RLIMIT_CPU (per process, whole seconds)")
        if spec.cpus is not None:
            fallback.append("--cpus not enforced")
        notes.append(f"no cgroup ({e.reason}); fell back to rlimits: {', '.join(fallback)}")
        return None, derived, notes


def _limits_applied(spec: Spec, plan: pipeline.Plan, cg: Any) -> dict[str, Any]:
    names = {num: name for name, num in RLIMITS.items()}
    out: dict[str, Any] = {k: getattr(spec, k) for k in
                           ("memory", "pids", "cpus", "time_limit", "cpu_limit", "output_limit")
                           if getattr(spec, k) is not None}
    out["cgroup"] = f"v{cg.version}" if cg is not None else None
    out["rlimits"] = {names.get(r, str(r)): [soft, hard] for r, soft, hard in plan.rlimits}
    return out


def _bpf(spec: Spec) -> bytes | None:
    if spec.seccomp == "none" and not (spec.seccomp_profile or spec.seccomp_allow or spec.seccomp_deny):
        return None
    from . import seccomp
    return seccomp.compile_policy(spec.seccomp, spec.seccomp_profile, spec.seccomp_allow,
                                  spec.seccomp_deny, spec.seccomp_log)


def _watch(jail: Jail, parent_ends: dict[int, str], relays: dict[int, int],
           input: bytes | None, forward_signals: bool, log: Log | None) -> Result:
    w = _Watch(jail, log)
    names: dict[int, str] = {}
    for fd, which in parent_ends.items():
        if which == "in":
            os.set_blocking(fd, False)
            w.input = memoryview(input or b"")
            w.sel.register(fd, selectors.EVENT_WRITE, "in")
        else:
            w.pipes[fd] = _Pipe(fd, relays.get(fd))
            names[fd] = which
            w.sel.register(fd, selectors.EVENT_READ, "out")
    captured = dict(w.pipes)
    old_handlers = _forward_signals(jail) if forward_signals else {}
    usage = None
    try:
        w.run()
        _, status, ru = os.wait4(jail.pid, 0)
        if jail.cgroup is not None:
            usage = jail.cgroup.usage()
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        for fd in list(w.pipes):
            os.close(fd)
        for key in list(w.sel.get_map().values()):
            if key.data == "in":
                os.close(key.fd)
        w.sel.close()
        jail.close()
    if w.error is not None:
        raise w.error
    end = time.monotonic()
    res = Result(argv=jail.spec.argv, verdict="ok",
                 wall_time=end - (w.exec_at or jail.started),
                 setup_time=(w.exec_at or end) - jail.started,
                 limits=jail.limits, notes=jail.notes)
    if w.program_status is not None:
        st, res.cpu_user, res.cpu_system, rss = w.program_status
        res.memory_peak = rss * 1024
    else:
        st = status
        res.cpu_user, res.cpu_system, res.memory_peak = ru.ru_utime, ru.ru_stime, ru.ru_maxrss * 1024
    if os.WIFSIGNALED(st):
        res.signal = os.WTERMSIG(st)
    else:
        res.exit_code = os.WEXITSTATUS(st)
    for fd, p in captured.items():
        if p.relay is None:
            setattr(res, names[fd], b"".join(p.chunks))
        setattr(res, names[fd] + "_truncated", p.truncated)
    oom = False
    if usage is not None:
        res.cpu_user = usage.cpu_user if usage.cpu_user is not None else res.cpu_user
        res.cpu_system = usage.cpu_system if usage.cpu_system is not None else res.cpu_system
        res.memory_peak = usage.memory_peak or res.memory_peak
        res.processes = usage.pids_peak
        oom = usage.oom_killed
    res.verdict = w.verdict or _verdict(jail.spec, res, oom)
    if res.verdict == "seccomp" and jail.spec.seccomp_log is False:
        res.syscall = _seccomp_syscall(jail.pid)
    return res


def _verdict(spec: Spec, res: Result, oom: bool) -> str:
    """Why the run ended, from the strongest evidence: the kernel's counters, then the signal."""
    if oom:
        return "memory-limit"
    sig = res.signal
    if sig == signal.SIGSYS:
        return "seccomp"
    if spec.output_limit is not None and (sig == signal.SIGXFSZ or
                                          res.exit_code == 128 + signal.SIGXFSZ):
        return "output-limit"  # a shell reports its child's SIGXFSZ as 153
    if sig in (signal.SIGXCPU, signal.SIGKILL) and spec.cpu_limit is not None and \
            (res.cpu_user or 0) + (res.cpu_system or 0) >= spec.cpu_limit * 0.95:
        return "cpu-limit"
    if sig is not None:
        return "signaled"
    return "ok" if res.exit_code == 0 else "nonzero-exit"


def _seccomp_syscall(pid: int) -> str | None:
    """The blocked syscall of a program killed by seccomp, where the kernel's audit log has it."""
    return None


def _forward_signals(jail: Jail) -> dict[int, Any]:
    """Install handlers that pass the caller's signals to the jail; only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in FORWARDED:
        old[sig] = signal.signal(sig, lambda s, _f: jail.signal(s))
    return old
