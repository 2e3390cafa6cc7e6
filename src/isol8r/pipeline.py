"""The child side: prepare() in the parent computes everything, child_main() runs the ordered steps.

    user/ids -> mounts + pivot_root -> hostname -> network -> [init forks the program] ->
    rlimits -> session -> uid switch -> capabilities + no_new_privs -> cwd -> close fds ->
    seccomp -> execve

Every step either succeeds or reports one record "E step\\0errno\\0detail" over the handshake
channel and exits 125, so a failure inside the jail reads as "mount /proc: EPERM (...)".
The child was made by a bare clone of the supervisor: it imports nothing and allocates little.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import select
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from . import caps, mounts, net, pid1, rlimits, userns
from .spec import Spec, capability_number
from .sys import linux

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


@dataclass
class Plan:
    """Everything the child needs, computed before clone."""

    clone_flags: int
    unshare_cgroup: bool
    ids: userns.IdPlan | None
    mounts: mounts.MountPlan | None
    hostname: str | None
    loopback: bool
    init: bool
    rlimits: tuple[tuple[int, int, int], ...]
    uid: int
    gid: int
    keep_groups: bool
    caps: caps.CapPlan
    seccomp: linux.SeccompProgram | None
    seccomp_flags: int
    argv: list[bytes]
    env: dict[bytes, bytes]
    search_path: list[bytes]
    cwd: str
    fds: tuple[tuple[int, int], ...]  # (descriptor in the cloning process, number in the jail)
    verbose: bool


def environment(spec: Spec) -> dict[str, str]:
    """A fresh environment: PATH and HOME, the variables asked to be kept, then --env."""
    env = {"PATH": DEFAULT_PATH, "HOME": "/tmp" if spec.uid else "/root"}
    for name in spec.keep_env:
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(dict(spec.env))
    return env


def prepare(spec: Spec, fds: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2)),
            verbose: bool = False,
            derived_rlimits: dict[str, tuple[int, int]] | None = None,
            bpf: bytes | None = None) -> Plan:
    """Parent side: call each concern's planning function; nothing here touches the system."""
    ns = spec.namespaces
    flags = 0
    for name, bit in (("user", linux.CLONE_NEWUSER), ("pid", linux.CLONE_NEWPID),
                      ("mount", linux.CLONE_NEWNS), ("net", linux.CLONE_NEWNET),
                      ("ipc", linux.CLONE_NEWIPC), ("uts", linux.CLONE_NEWUTS)):
        if name in ns:
            flags |= bit
    ids = userns.plan(spec.uid, spec.gid, spec.uid_map) if "user" in ns else None
    mplan = None
    if "mount" in ns:
        mplan = mounts.plan(
            rootfs=spec.rootfs, rw_root=spec.rw_root, overlay=spec.overlay,
            overlay_dir=spec.overlay_dir,
            user_mounts=tuple((m.kind, m.dst, m.src, m.size) for m in spec.mounts),
            uid=spec.uid, gid=spec.gid, hostname=spec.hostname, new_net="net" in ns,
            tmp_size=spec.tmp_size)
    env = environment(spec)
    return Plan(
        clone_flags=flags,
        unshare_cgroup="cgroup" in ns,
        ids=ids,
        mounts=mplan,
        hostname=spec.hostname if "uts" in ns else None,
        loopback="net" in ns,
        init=spec.init,
        rlimits=rlimits.plan(spec.rlimits, derived_rlimits),
        uid=spec.uid,
        gid=spec.gid,
        keep_groups=ids is not None and not ids.can_become_root,
        caps=caps.plan(tuple(capability_number(c) for c in spec.caps)),
        seccomp=linux.SeccompProgram(bpf) if bpf else None,
        seccomp_flags=linux.SECCOMP_FILTER_FLAG_LOG if spec.seccomp_log else 0,
        argv=[os.fsencode(a) for a in spec.argv],
        env={k.encode(): v.encode("utf-8", "surrogateescape") for k, v in env.items()},
        search_path=[os.fsencode(p) for p in env["PATH"].split(":") if p],
        cwd=spec.cwd,
        fds=fds,
        verbose=verbose,
    )


# ---- child side -------------------------------------------------------------------------------


class _Failed(Exception):
    def __init__(self, step: str, err: int, detail: str) -> None:
        self.step, self.err, self.detail = step, err, detail


class _Channel:
    """Where records go: the handshake socket (one record per write) or the init's pipe (lines)."""

    def __init__(self, fd: int, lines: bool, verbose: bool) -> None:
        self.fd, self.lines, self.verbose = fd, lines, verbose

    def send(self, record: bytes) -> None:
        try:
            os.write(self.fd, record + b"\n" if self.lines else record)
        except OSError:
            pass

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        start = time.monotonic_ns()
        try:
            fn(*args)
        except OSError as e:
            detail = e.filename if isinstance(e.filename, str) else ""
            raise _Failed(getattr(e, "syscall", None) and f"{name}: {e.syscall}" or name,
                          e.errno or errno.EIO, detail) from None
        if self.verbose:
            end = time.monotonic_ns()
            self.send(b"T%s\0%d\0%d" % (name.encode(), end - start, end))

    def fail(self, f: _Failed, code: int = 125) -> NoReturn:
        detail = f.detail.replace("\n", " ").encode("utf-8", "surrogateescape")
        self.send(b"E%s\0%d\0%s" % (f.step.encode(), f.err, detail))
        os._exit(code)


def child_main(plan: Plan, chan_fd: int) -> NoReturn:
    """Entry point right after clone. Never returns: it execs the program or exits 125."""
    ch = _Channel(chan_fd, False, plan.verbose)
    try:
        try:
            _setup(plan, ch)
        except _Failed as f:
            ch.fail(f)
        except BaseException as e:  # a bug must still never return into the caller's code
            ch.fail(_Failed("internal error", errno.EIO, f"{type(e).__name__}: {e}"))
    finally:
        os._exit(125)


def _setup(plan: Plan, ch: _Channel) -> NoReturn:
    gc.disable()  # a collection would touch every object: copy-on-write faults for nothing
    linux.reset_signal_dispositions()
    ch.fd = _install_fds(plan.fds, ch.fd)
    go, tree_fd = _receive_go(ch.fd)
    if go != b"G":  # the parent died or refused before the id maps were written
        os._exit(125)
    if plan.ids is not None:
        ch.step("become root of the user namespace", userns.become_root, plan.ids)
    ch.step("parent death signal", _die_with_parent, lambda: _socket_alive(ch.fd))
    if plan.unshare_cgroup:
        ch.step("cgroup namespace", linux.unshare, linux.CLONE_NEWCGROUP)
    if plan.mounts is not None:
        ch.step("mounts", mounts.enter, plan.mounts, _MountLog(ch) if plan.verbose else None,
                tree_fd)
    if plan.hostname is not None:
        ch.step("sethostname", socket.sethostname, plan.hostname)
    if plan.loopback:
        ch.step("loopback up", net.loopback_up)
    if not plan.init:
        _program(plan, ch, lambda: _socket_alive(ch.fd))
    r, w = os.pipe2(os.O_CLOEXEC)
    me = os.getpid()
    pid = linux.fork_raw()
    if pid == 0:
        os.close(r)
        _program(plan, _Channel(w, True, plan.verbose), lambda: os.getppid() == me)
    os.close(w)
    ch.step("init: drop privileges", caps.drop_for_init, plan.caps.last_cap)
    _quiet_stdio()
    _close_all_but((0, 1, 2, ch.fd, r))
    pid1.serve(pid, r, ch.send)


def _program(plan: Plan, ch: _Channel, parent_alive: Callable[[], bool]) -> NoReturn:
    try:
        ch.step("rlimits", rlimits.apply, plan.rlimits)
        ch.step("setsid", os.setsid)
        ch.step("keep capabilities across the uid switch", caps.prepare_uid_switch)
        ch.step(f"switch to uid {plan.uid} gid {plan.gid}", userns.switch_to, plan.uid, plan.gid,
                plan.keep_groups)
        ch.step("parent death signal", _die_with_parent, parent_alive)
        ch.step("drop capabilities", caps.drop, plan.caps)
        ch.step(f"chdir {plan.cwd}", os.chdir, plan.cwd)
        path = _resolve(plan)
        ch.step("close file descriptors", _close_all_but, (0, 1, 2, ch.fd, *(t for _, t in plan.fds)))
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if plan.seccomp is not None:
            ch.step("seccomp", plan.seccomp.load, plan.seccomp_flags)
        try:
            os.execve(path, plan.argv, plan.env)
        except OSError as e:
            raise _Failed("execve", e.errno or errno.EIO, os.fsdecode(path)) from None
    except _Failed as f:
        ch.fail(f, _exec_code(f.err) if f.step in ("execve", "find program") else 125)
    except BaseException as e:
        ch.fail(_Failed("internal error", errno.EIO, f"{type(e).__name__}: {e}"))
    os._exit(125)


def _receive_go(fd: int) -> tuple[bytes, int]:
    """The parent's go, with the idmapped root's tree fd when it made one (SCM_RIGHTS)."""
    sock = socket.socket(fileno=fd)
    try:
        msg, anc, _, _ = sock.recvmsg(16, socket.CMSG_SPACE(4))
    finally:
        sock.detach()
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
            return msg, int.from_bytes(data[:4], "little" if sys.byteorder == "little" else "big")
    return msg, -1


def _exec_code(err: int) -> int:
    return 127 if err in (errno.ENOENT, errno.ENOTDIR) else 126


def _resolve(plan: Plan) -> bytes:
    """execvp's search, done before seccomp so the filter need not allow stat or access."""
    name = plan.argv[0]
    if b"/" in name:
        return name
    saved = errno.ENOENT
    for d in plan.search_path:
        cand = d + b"/" + name
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(cand, os.X_OK):
            return cand
        saved = errno.EACCES
    raise _Failed("find program", saved, os.fsdecode(name))


def _die_with_parent(alive: Callable[[], bool]) -> None:
    """SIGKILL when the parent dies; set after each uid change, which clears it."""
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if not alive():
        os._exit(125)


def _socket_alive(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLRDHUP)
    return not any(ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR) for _, ev in p.poll(0))


def _install_fds(fds: tuple[tuple[int, int], ...], chan: int) -> int:
    """Put each descriptor at its number in the jail (inheritable); return the channel's new number.

    Everything is first moved above the highest target, so no dup2 clobbers a source.
    """
    floor = max([t for _, t in fds] + [2]) + 1
    moved = [(fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, floor), t) for src, t in fds]
    chan = fcntl.fcntl(chan, fcntl.F_DUPFD_CLOEXEC, floor)
    for src, target in moved:
        os.dup2(src, target)  # dup2 leaves the target inheritable
        os.close(src)
    return chan


def _quiet_stdio() -> None:
    """The init keeps no end of the caller's pipes or terminal."""
    null = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)


def _close_all_but(keep: tuple[int, ...]) -> None:
    """close_range over the gaps between the descriptors to keep."""
    start = 0
    for fd in sorted(set(keep)):
        if fd > start:
            linux.close_range(start, fd - 1)
        start = fd + 1
    linux.close_range(start)


class _MountLog(mounts.StepLog):
    def __init__(self, ch: _Channel) -> None:
        self.ch = ch
        self.t = time.monotonic_ns()

    def op(self, description: str) -> None:
        now = time.monotonic_ns()
        self.ch.send(b"T  %s\0%d\0%d" % (description.encode(), now - self.t, now))
        self.t = now
