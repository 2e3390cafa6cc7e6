"""The child side: prepare() in the parent turns a Shape into a Plan, child_main() runs the steps.

In the order of the code (the order is the documentation):

    shape half, child_main(): close what is not the channel -> reset signals -> die with the
        supervisor -> wait for "go" (the id maps are written) -> become root of the user
        namespace (and die with the supervisor again: an id change clears that) -> cgroup
        namespace -> mounts + pivot_root -> hostname -> loopback up -> [the init forks the
        program and serves as PID 1, with CAP_KILL only]
    the program, _program(): session -> uid switch (and die with the parent again) ->
        capabilities + no_new_privs -> rehearse the request half -> [the default filter, when
        the Shape preloads it] -> its memory cgroup -> wait for the Request (a warm jail waits
        here)
    request half: chdir -> find the program on PATH -> [the terminal] -> descriptors -> close
        the rest -> rlimits -> seccomp -> execve

Every step either succeeds or raises a protocol.Failure, sent as its record over the handshake
channel before the child exits (125; 127 or 126 when the program cannot be found or executed), so
a failure inside the jail reads as "mount /proc: EPERM (...)". Every message of the handshake is
a protocol.py class (Go, Request, Failure, Timing, Exec, Status, Terminal).
The child was made by a bare clone of the supervisor: it imports nothing and allocates little.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import resource
import select
import signal
import socket
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

from . import caps, landlock, mounts, net, pid1, protocol, rlimits, userns, wire
from .errors import SetupError, exec_status
from .protocol import Failure, Go, Request, Terminal, Timing
from .spec import Shape, Spec
from .spec import shape as spec_shape
from .sys import linux

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


@dataclass
class Plan:
    """A Shape, planned: everything the child sets up before it knows what it will run.

    prepare() makes it from a Shape alone. A child made from a Plan builds its namespaces, root,
    identity and capabilities (and loads the default filter, when bpf is set), then waits for a
    Request on its channel: right away on the normal path, or when the fork server hands a
    pre-warmed jail to a caller.
    """

    clone_flags: int
    unshare_cgroup: bool
    ids: userns.IdPlan | None
    mounts: mounts.MountPlan | None
    hostname: str | None
    loopback: bool
    init: bool
    uid: int
    gid: int
    keep_groups: bool
    caps: caps.CapPlan
    verbose: bool
    signals: tuple[int, ...]  # the signals the cloning process catches or ignores: to reset
    parent_pidfd: int  # the cloning process's own pidfd: readable once it is gone
    bpf: bytes | None = None  # the default seccomp filter, loaded before the Request arrives
    # --netns: (path, device, inode) of the network namespace the child is cloned into (the
    # cloning thread enters it for the clone: net.cloned_into)
    netns: tuple[str, int, int] | None = None
    # no user namespace could be made (Shape.bare): no namespaces, Landlock instead, and the
    # uid switch only where this process may change ids (uid_switch)
    bare: bool = False
    landlock: landlock.LandlockPlan | None = None
    uid_switch: bool = True


def environment(spec: Spec) -> dict[str, str]:
    """A fresh environment: PATH and HOME, the variables asked to be kept, then --env."""
    env = {"PATH": DEFAULT_PATH, "HOME": "/tmp" if spec.uid else "/root"}
    for name in spec.keep_env:
        if name in os.environ:
            env[name] = os.environ[name]
    if spec.allow_domain:  # the egress proxy listens on the jail's own loopback
        env.update(proxy_env())
    env.update(dict(spec.env))
    return env


EGRESS_PORT = 3128  # the egress proxy's port on the jail's loopback (--allow-domain)


def proxy_env() -> dict[str, str]:
    """--allow-domain: the variables that send pip, npm, curl and git through the proxy."""
    http, socks = f"http://127.0.0.1:{EGRESS_PORT}", f"socks5h://127.0.0.1:{EGRESS_PORT}"
    env = {"HTTP_PROXY": http, "HTTPS_PROXY": http, "ALL_PROXY": socks, "NO_PROXY": ""}
    env.update({k.lower(): v for k, v in env.items()})
    return env


def prepare(shape: Shape, verbose: bool = False, bpf: bytes | None = None) -> Plan:
    """Parent side: call each concern's planning function; nothing here touches the system.
    The Shape is the jail's only description here (a Spec field not in it cannot reach a warm
    jail); bpf, when given, is the default filter, loaded ahead if the shape says so."""
    if shape.bare is not None:
        return _prepare_bare(shape, verbose, bpf)
    ns = shape.namespaces
    flags = 0
    for name, bit in (("user", linux.CLONE_NEWUSER), ("pid", linux.CLONE_NEWPID),
                      ("mount", linux.CLONE_NEWNS), ("net", linux.CLONE_NEWNET),
                      ("ipc", linux.CLONE_NEWIPC), ("uts", linux.CLONE_NEWUTS)):
        if name in ns:
            flags |= bit
    ids = userns.plan(shape.uid, shape.gid, shape.id_map) if "user" in ns else None
    mplan = None
    if "mount" in ns:
        mplan = mounts.plan(
            rootfs=shape.rootfs, rw_root=shape.rw_root, overlay=shape.overlay,
            overlay_dir=shape.overlay_dir,
            user_mounts=tuple((m.kind, m.dst, m.src, m.size, m.noexec, m.idmap)
                              for m in shape.mounts),
            uid=shape.uid, gid=shape.gid, hostname=shape.hostname, new_net="net" in ns,
            tmp_size=shape.tmp_size, new_pid="pid" in ns,
            data=tuple((d.kind, d.dst, d.src, d.mode) for d in shape.data),
            resolv_conf=shape.resolv_conf, proc=shape.proc)
    return Plan(
        clone_flags=flags,
        unshare_cgroup="cgroup" in ns,
        ids=ids,
        mounts=mplan,
        hostname=shape.hostname if "uts" in ns else None,
        loopback="net" in ns,
        init=shape.init,
        uid=shape.uid,
        gid=shape.gid,
        keep_groups=ids is not None and not ids.can_become_root,
        caps=caps.plan(shape.caps),
        verbose=verbose,
        signals=linux.handled_signals(),
        parent_pidfd=linux.own_pidfd(),
        bpf=bpf if shape.default_filter else None,
        netns=shape.netns,
        # without a user namespace of its own the program can only become an id its caller's
        # namespace maps (walls.choose's no_user: a user namespace's root, whose map may
        # hold only itself); else it keeps the caller's, with no capability
        uid_switch="user" in ns or userns.mapped(shape.uid, shape.gid),
    )


def _prepare_bare(shape: Shape, verbose: bool, bpf: bytes | None) -> Plan:
    """A jail where no user namespace can be made (walls.choose): the program sees the host's
    tree, read-only but /tmp and its --bind sources (Landlock), in a new session, with no
    capabilities, no_new_privs and the seccomp filter. What needs a mount namespace is refused
    with a one-line error naming it, never dropped."""
    tmpfs = any(m.kind == "tmpfs" for m in shape.mounts)
    for what, given in (("--rootfs", shape.rootfs), ("--tmpfs", tmpfs),
                        ("--symlink/--dir/--file/--chmod", shape.data),
                        ("--net user", shape.resolv_conf), ("--netns", shape.netns)):
        if given:
            raise SetupError(what, errno.EPERM, f"needs a mount or network namespace, and "
                             f"{shape.bare}")
    for m in shape.mounts:
        if m.src != m.dst:
            raise SetupError(f"--{m.kind} {m.src}:{m.dst}", errno.EPERM,
                             f"{shape.bare}: a bind can only be at its own path")
    writable = tuple(m.src for m in shape.mounts if m.kind == "bind" and m.src is not None)
    return Plan(
        clone_flags=0, unshare_cgroup=False, ids=None, mounts=None, hostname=None,
        loopback=False, init=False, uid=shape.uid, gid=shape.gid, keep_groups=False,
        caps=caps.plan(shape.caps), verbose=verbose, signals=linux.handled_signals(),
        parent_pidfd=linux.own_pidfd(), bpf=bpf if shape.default_filter else None,
        bare=True, landlock=landlock.plan(writable, deny_tcp="net" in shape.namespaces),
        uid_switch=caps.can_switch_uid() and userns.mapped(shape.uid, shape.gid))


def shape(spec: Spec) -> Shape:
    """The Spec's Shape (spec.shape): jails of one shape are interchangeable until activated."""
    return spec_shape(spec)


def request(spec: Spec, targets: list[int], derived_rlimits: dict[str, tuple[int, int]] | None,
            bpf: bytes | None) -> Request:
    """Parent side: the per-run half of a jail (no filter when the shape loaded it already)."""
    if spec.default_filter:
        bpf = None
    env = environment(spec)
    return Request(
        argv=[os.fsencode(a) for a in spec.argv],
        env=[(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in env.items()],
        search_path=[os.fsencode(p) for p in env["PATH"].split(":") if p],
        cwd=spec.cwd,
        rlimits=rlimits.plan(spec.rlimits, derived_rlimits),
        bpf=bpf,
        seccomp_flags=linux.SECCOMP_FILTER_FLAG_LOG if spec.seccomp_log else 0,
        targets=targets,
        tty=spec.tty,
    )


# ---- child side -------------------------------------------------------------------------------


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
            raise Failure(getattr(e, "syscall", None) and f"{name}: {e.syscall}" or name,
                          e.errno or errno.EIO, detail) from None
        if self.verbose:
            end = time.monotonic_ns()
            self.send(Timing(name, end - start, end).encode())

    def fail(self, f: Failure, code: int = 125) -> NoReturn:
        self.send(f.encode())
        os._exit(code)


def child_main(plan: Plan, chan_fd: int) -> NoReturn:
    """Entry point right after clone. Never returns: it execs the program or exits 125."""
    ch = _Channel(chan_fd, False, plan.verbose)
    try:
        try:
            _setup(plan, ch)
        except Failure as f:
            ch.fail(f)
        except BaseException as e:  # a bug must still never return into the caller's code
            ch.fail(Failure("internal error", errno.EIO, f"{type(e).__name__}: {e}"))
    finally:
        os._exit(125)


def _setup(plan: Plan, ch: _Channel) -> NoReturn:
    gc.disable()  # a collection would touch every object: copy-on-write faults for nothing
    # Nothing of the supervisor's but the channel stays open here: a pre-warmed jail must not
    # hold copies of other jails' sockets (their EOFs would never come).
    _close_all_but((0, 1, 2, ch.fd, plan.parent_pidfd))
    linux.reset_signal_dispositions(plan.signals)
    # Die with the supervisor from now on, also while waiting for go; the pidfd closes the race
    # with a supervisor that died before the prctl.
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if _readable(plan.parent_pidfd):
        os._exit(125)
    os.close(plan.parent_pidfd)
    data, fds = _receive(ch.fd, 16, 64)
    try:
        go = Go.decode(data)
    except protocol.ProtocolError:  # the parent died or refused before the id maps were written
        os._exit(125)
    procs = fds.pop() if go.procs and fds else -1  # the program group's
    root_fd = fds.pop(0) if go.root and fds else -1
    if plan.ids is not None:
        ch.step("become root of the user namespace", userns.become_root, plan.ids)
    ch.step("parent death signal", _die_with_parent, lambda: _socket_alive(ch.fd))
    if plan.unshare_cgroup:
        ch.step("cgroup namespace", linux.unshare, linux.CLONE_NEWCGROUP)
    if plan.mounts is not None:
        ch.step("mounts", mounts.enter, plan.mounts, _MountLog(ch) if plan.verbose else None,
                root_fd, fds)
    if plan.hostname is not None:
        ch.step("sethostname", socket.sethostname, plan.hostname)
    if plan.loopback:
        ch.step("loopback up", net.loopback_up)
    if not plan.init:
        _program(plan, ch, ch.fd, lambda: _socket_alive(ch.fd), procs)
    r, w = os.pipe2(os.O_CLOEXEC)
    me = os.getpid()
    pid = linux.fork_raw()
    if pid == 0:
        os.close(r)
        _program(plan, _Channel(w, True, plan.verbose), ch.fd, lambda: os.getppid() == me, procs)
    os.close(w)
    ch.step("init: drop privileges", caps.drop_for_init)
    quiet_stdio()
    _close_all_but((0, 1, 2, ch.fd, r))
    pid1.serve(pid, r, ch.send, lambda: _wait_closed(ch.fd))


def _program(plan: Plan, ch: _Channel, chan: int, parent_alive: Callable[[], bool],
             procs: int = -1) -> NoReturn:
    """The program's process: the rest of the shape, then wait for the Request and exec it."""
    try:
        ch.step("setsid", os.setsid)
        if plan.uid_switch:
            ch.step("keep capabilities across the uid switch", caps.prepare_uid_switch)
            ch.step(f"switch to uid {plan.uid} gid {plan.gid}", userns.switch_to, plan.uid,
                    plan.gid, plan.keep_groups)
            ch.step("parent death signal", _die_with_parent, parent_alive)
            ch.step("drop capabilities", caps.drop, plan.caps)
        elif caps.can_lock():  # a user namespace's root: its ids, every set and bit locked
            ch.step("drop capabilities", caps.drop, plan.caps)
        else:  # unprivileged: the caller's own ids, and nothing to keep
            ch.step("drop capabilities", caps.drop_unprivileged)
        if plan.landlock is not None:
            ch.step("landlock", landlock.apply, plan.landlock)
        _rehearse(ch.fd)
        if plan.bpf is not None:
            ch.step("seccomp", linux.SeccompProgram(plan.bpf).load, 0)
        if procs >= 0:
            # into the program's own memory group (its cgroup.procs, opened by the supervisor):
            # from here on it counts only the Request's few pages and, after exec, the program.
            # Done while a warm jail waits: the migration waits for an RCU grace period
            # (0.2 ms idle, 10 ms under load), which must not be on the way to execve.
            ch.step("enter the program's memory cgroup", os.write, procs, b"0")
            os.close(procs)
        data, fds = _receive(chan, 1 << 20, 64)
        if not data:
            os._exit(125)  # the supervisor went away before it sent work: a pre-warmed jail
        try:
            req = Request.decode(data)
        except protocol.ProtocolError as e:
            raise Failure("receive the request", errno.EPROTO, str(e)) from None
        argv, env, targets = req.argv, req.env, req.targets
        ch.step(f"chdir {req.cwd}", os.chdir, req.cwd)
        path = _resolve(argv[0], req.search_path)
        if req.tty:
            slave = _open_terminal(ch, chan)
            fds, targets = [slave, slave, slave, *fds], [0, 1, 2, *targets]
        ch.fd = install_fds(tuple(zip(fds, targets)), ch.fd)
        ch.step("close file descriptors", _close_all_but, (0, 1, 2, ch.fd, *targets))
        # after the descriptors are in place: a low --nofile must not starve the steps above
        ch.step("rlimits", rlimits.apply, req.rlimits)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if req.bpf is not None:
            ch.step("seccomp", linux.SeccompProgram(req.bpf).load, req.seccomp_flags)
        try:
            os.execve(path, argv, dict(env))
        except OSError as e:
            detail = _too_big(argv, env) if e.errno == errno.E2BIG else os.fsdecode(path)
            raise Failure("execve", e.errno or errno.EIO, detail) from None
    except Failure as f:
        ch.fail(f, exec_status(f.err) if f.kind == "exec" else 125)
    except BaseException as e:
        ch.fail(Failure("internal error", errno.EIO, f"{type(e).__name__}: {e}"))
    os._exit(125)


def _rehearse(fd: int) -> None:
    """Walk the activation's code path once, harmlessly, while the jail still waits for work.

    This process is a copy-on-write clone: every page the interpreter writes is copied on first
    touch (a few microseconds each). Touching them now, before the Request arrives, takes that
    cost off the path between a caller's request and the program's execve.
    """
    sample = Request([b"/x"], [(b"A", b"B")], [b"/"], "/", ((resource.RLIMIT_CORE, 0, 0),),
                     b"\0" * 8, 0, [0], False)
    Request.decode(sample.encode())
    resource.getrlimit(resource.RLIMIT_CORE)
    linux.SeccompProgram(b"\0" * 8)
    try:
        _resolve(b"sh", [b"/nonexistent"])
    except Failure:
        pass
    spare = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(spare)
    signal.pthread_sigmask(signal.SIG_BLOCK, ())


def _open_terminal(ch: _Channel, chan: int) -> int:
    """A pseudo-terminal of the jail's own /dev/pts: the slave becomes this session's controlling
    terminal (the program leads the session, so a shell does job control); the master goes to
    the supervisor over the handshake socket, which relays it to the caller's terminal. The
    caller's own terminal never enters the jail, so TIOCSTI has nothing of the caller's to reach."""
    master = -1

    def open_master() -> None:
        nonlocal master
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fcntl.ioctl(master, linux.TIOCSPTLCK, b"\0\0\0\0")  # unlockpt
    ch.step("open the terminal /dev/ptmx", open_master)
    slave = -1

    def open_slave() -> None:
        nonlocal slave
        slave = fcntl.ioctl(master, linux.TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fcntl.ioctl(slave, linux.TIOCSCTTY, 0)
    ch.step("open the terminal's slave", open_slave)

    def send() -> None:
        sock = socket.socket(fileno=chan)
        try:
            sock.sendmsg([Terminal().encode()], wire.rights([master]))
        finally:
            sock.detach()
    ch.step("hand the terminal to the supervisor", send)
    os.close(master)
    return slave


def _receive(fd: int, size: int, max_fds: int = 1) -> tuple[bytes, list[int]]:
    """One message from the supervisor, with the descriptors it carries (SCM_RIGHTS); a big one
    (1 MiB of argv, say) comes in a memfd (wire.py)."""
    sock = socket.socket(fileno=fd)
    try:
        return wire.recv(sock, size, max_fds)
    except OSError:
        return b"", []
    finally:
        sock.detach()


MAX_ARG_STRLEN = 32 * 4096  # the kernel's cap on one argument or environment string


def _too_big(argv: list[bytes], env: list[tuple[bytes, bytes]]) -> str:
    """Which of argv and the environment made execve fail with E2BIG, in one line: a string
    over MAX_ARG_STRLEN, or the total over a quarter of RLIMIT_STACK (at most 6 MiB)."""
    strings = [len(k) + len(v) + 2 for k, v in env]
    for what, sizes in (("argv", [len(a) + 1 for a in argv]), ("the environment", strings)):
        for i, n in enumerate(sizes):
            if n > MAX_ARG_STRLEN:
                item = f"argv[{i}]" if what == "argv" else f"variable {env[i][0].decode(errors='replace')}"
                return f"{what}: {item} is {n} bytes, over the kernel's {MAX_ARG_STRLEN} per string"
    a, e = sum(len(x) + 1 for x in argv), sum(strings)
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    limit = max(min(6 << 20, stack // 4 if stack >= 0 else 6 << 20), MAX_ARG_STRLEN)
    what = f"argv is {a} bytes (the environment {e})" if a >= e else \
        f"the environment is {e} bytes (argv {a})"
    return f"{what}: over the kernel's limit of {limit} for both, a quarter of RLIMIT_STACK"


def _resolve(name: bytes, search_path: list[bytes]) -> bytes:
    """execvp's search, done before seccomp so the filter need not allow stat or access."""
    if b"/" in name:
        return name
    saved = errno.ENOENT
    for d in search_path:
        cand = d + b"/" + name
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(cand, os.X_OK):
            return cand
        saved = errno.EACCES
    raise Failure("find program", saved, os.fsdecode(name))


def _die_with_parent(alive: Callable[[], bool]) -> None:
    """SIGKILL when the parent dies; set after each uid change, which clears it."""
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if not alive():
        os._exit(125)


def _wait_closed(fd: int) -> None:
    """Block until the supervisor closes (or shuts down) its end of the channel."""
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except InterruptedError:
            continue
        except OSError:
            return


def _readable(fd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def _socket_alive(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLRDHUP)
    return not any(ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR) for _, ev in p.poll(0))


def install_fds(fds: tuple[tuple[int, int], ...], chan: int = -1,
                close_sources: bool = False) -> int:
    """Put each (source, target) descriptor at its target number, inheritable: the jail's, and
    a CLI server worker's copy of its client's (close_sources: the received copies go). chan,
    a descriptor to keep, is moved above the targets too; returns its new number (or -1).

    Everything is first moved above the highest target, so no dup2 clobbers a source.
    """
    floor = max([t for _, t in fds] + [2]) + 1
    moved = [(fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, floor), t) for src, t in fds]
    if close_sources:
        for src, _ in fds:
            os.close(src)
    if chan >= 0:
        chan = fcntl.fcntl(chan, fcntl.F_DUPFD_CLOEXEC, floor)
    for src, target in moved:
        os.dup2(src, target)  # dup2 leaves the target inheritable
        os.close(src)
    return chan


def quiet_stdio() -> None:
    """/dev/null on 0, 1 and 2: the init keeps no end of the caller's pipes or terminal (nor
    does a CLI server's worker between runs, whose 0-2 may be closed when this is called)."""
    null = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        if null != target:
            os.dup2(null, target)
    if null > 2:
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
        self.ch.send(Timing("  " + description, now - self.t, now).encode())
        self.t = now
