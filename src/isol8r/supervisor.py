"""The parent side of a run: create the child, hand it its ids and cgroup, watch it, report.

start() makes the jail's cgroup, plans the child and spawn()s it: clone3 into the namespaces with a
pidfd, id maps written, "go" said over a SOCK_SEQPACKET pair. Two watchers then share one event
loop: JailWatch (handshake records, exit, time and CPU limits, reaping: whoever cloned the jail
runs it, in-process or in the fork server) and IOWatch (captured pipes, input, the output cap:
always the caller's). JailWatch.finish() gives an Outcome; result() turns it into the Result.
"""

from __future__ import annotations

import errno
import io
import os
import select
import selectors
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import launch, mounts, net, pipeline, protocol, rlimits, userns, wire
from .errors import Isol8rError, SetupError, SpecError
from .protocol import Exec, Failure, Go, Request, Status, Terminal, Timing
from .result import Result
from .spec import HELPER_IDS, ID_RANGE, RLIMITS, Spec
from .sys import linux

FORWARDED = protocol.FORWARDED  # the caller's signals a jail gets (Forwarder)
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
    program_group: Any = None  # where the program alone is counted from its exec (memory peak)
    stood_in: int = 0  # a caller's signal that --no-init's PID 1 would have dropped: see forward
    usernet: Any = None  # --net user: the usernet.UserNet stack of this jail, ended with it
    egress: Any = None  # --allow-domain: the Popen of this jail's egress proxy, ended with it
    walls: dict[str, str] = field(default_factory=dict)  # held: name -> what (walls.account)
    missing: dict[str, str] = field(default_factory=dict)  # not held: name -> why
    landlock: Any = None  # a bare jail's landlock.LandlockPlan
    uid_switch: bool = True  # the program runs as --user (False: a bare jail's caller's uid)
    # --net user, an unprivileged caller: its user and network namespaces, opened before "go"
    # (then its init turns non-dumpable, and the caller could open them no more)
    ns_fds: tuple[int, ...] = ()
    forwarder: Any = None  # --publish with --net none: the Popen of its forwarder, ended with it

    def forward(self, sig: int) -> None:
        """Pass a caller's signal on (the Forwarder's target)."""
        if not self.stand_in(sig):
            self.signal(sig)

    def stand_in(self, sig: int) -> bool:
        """With --no-init the program is its PID namespace's init, which the kernel shields
        from every signal it has no handler for: Ctrl-C would be lost. A signal that would end
        it by default ends the jail instead (SIGKILL; the Result reports sig). True if so."""
        if sig in _FATAL and not self.spec.init and "pid" in self.spec.namespaces \
                and self.pidfd >= 0 and not _handles(self.pid, sig):
            self.stood_in = sig
            self.signal(signal.SIGKILL)
            return True
        return False

    def signal(self, sig: int) -> None:
        """Send sig to the jail: its init forwards it to the program's process group."""
        if self.pidfd < 0:
            return
        try:
            linux.pidfd_send_signal(self.pidfd, sig)
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise

    def close(self, remove_cgroup: bool = True) -> None:
        if self.usernet is not None:  # its published ports are free once this returns
            self.usernet, net = None, self.usernet
            net.stop()
        if self.egress is not None:  # it writes its denials as it ends (read by result())
            self.egress, proxy = None, self.egress
            _stop_egress(proxy, self.pid)
        if self.forwarder is not None:  # its host ports are free once this returns
            self.forwarder, fwd = None, self.forwarder
            _stop_process(fwd)
        for fd in self.ns_fds:
            os.close(fd)
        self.ns_fds = ()
        self.chan.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.cgroup is not None and remove_cgroup:
            self.cgroup.remove()
        if self.program_group is not None and remove_cgroup:
            self.program_group.remove()
        self.cgroup = self.program_group = None


_FATAL = frozenset((signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE))


def _handles(pid: int, sig: int) -> bool:
    """The process catches or ignores sig (either way the kernel delivers it as it would to
    any process), from /proc/PID/status; True when that cannot be read (it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if b":" in line)
        mask = int(fields[b"SigCgt"], 16) | int(fields[b"SigIgn"], 16)
    except (OSError, KeyError, ValueError):
        return True
    return bool(mask >> (sig - 1) & 1)


# ---- starting ---------------------------------------------------------------------------------


def start(spec: Spec, fds: tuple[tuple[int, int], ...], verbose: bool = False) -> Jail:
    """Lease and activate in one process: fds maps descriptors of this process onto the jail's
    numbers (0, 1, 2, ...)."""
    jail, derived = lease(spec, verbose)
    try:
        activate(jail, pipeline.request(spec, [t for _, t in fds], derived, bpf_for(spec)),
                 [src for src, _ in fds])
    except BaseException:
        discard(jail)
        raise
    return jail


# A warm jail fitted to a caller (fit): its cgroup with the caller's values, the rlimits that
# stand in for cgroup limits no cgroup could hold, and notes saying so.
Fitted = tuple[Any, dict[str, tuple[int, int]], list[str]]


def fit(jail: Jail, spec: Spec) -> Fitted | None:
    """Give a pre-warmed jail of spec's shape (daemon/pool.py) this spec: the root's check, and
    the spec's values in the group it was born in when its shape has cgroup limits. None when
    it cannot take them (a memory limit below what it holds, a root that fails its check, a
    group of other kinds): the caller discards it and leases a new jail, which says why."""
    try:
        if spec.rootfs is not None and not spec.allow_unsafe_root:
            _check_root(spec.rootfs)
        if (jail.cgroup is not None) != spec.wants_cgroup:
            return None
        fitted = _limits(spec, jail.cgroup)
    except Isol8rError:
        return None
    jail.spec, jail.started = spec, time.monotonic()
    return fitted


def lease(spec: Spec, verbose: bool = False, warm: tuple[Jail, Fitted] | None = None,
          hold: bool = False) -> tuple[Jail, dict[str, tuple[int, int]]]:
    """A jail of spec's shape, set up and waiting for its Request, in its cgroup: a new one, or
    the pre-warmed jail given, fitted to spec (fit). Returns it with the rlimits that stand in
    for cgroup limits no cgroup could hold. hold: a sandbox's jail (pipeline.Plan.hold)."""
    jail: Jail | None = None
    try:
        check_publish(spec)
    except BaseException:
        if warm is not None:
            discard(warm[0])
        raise
    if warm is not None:
        jail, (cg, derived, notes) = warm
    if jail is None:
        if spec.rootfs is not None and not spec.allow_unsafe_root:
            _check_root(spec.rootfs)
        cg, derived, notes = _limits(spec)
        try:
            plan = pipeline.prepare(pipeline.shape(spec), verbose, bpf_for(spec), hold)
            if spec.overlay_dir is not None:
                try:
                    mounts.prepare_overlay_dir(spec.overlay_dir,
                                               plan.ids.uid_base if plan.ids else None)
                except OSError as e:
                    raise SpecError("--overlay-dir", spec.overlay_dir, e.strerror or str(e)) from None
            jail = spawn(spec, plan, cg)
        except BaseException:
            if cg is not None:
                cg.remove()
            raise
    account_walls(jail, spec, cg)
    start_usernet(jail, spec, verbose)
    start_forward(jail, spec, verbose)
    start_egress(jail, spec)
    jail.notes.extend(notes)
    jail.notes.extend(_setid_wall_notes(spec))
    jail.limits.update(_limits_applied(spec, derived, cg))
    return jail, derived


def account_walls(jail: Jail, spec: Spec, cg: Any) -> None:
    """The walls this jail has and those it could not have, and why (Result.walls,
    missing_walls); --require: a one-line SetupError, the jail discarded, rather than a run
    with less."""
    from . import walls
    choice = walls.choose(spec.namespaces, spec.proc, spec.bare)
    jail.walls, jail.missing = walls.account(
        spec, choice, seccomp=bpf_for(spec) is not None, cgroup=cg, landlock=jail.landlock,
        uid_switch=jail.uid_switch)
    if "userns" in jail.walls and os.geteuid() != 0 and userns.subordinate_ranges() is not None:
        jail.walls["userns"] = ("new namespace; jail ids 0..65535: the jail user is the caller, "
                                "the others subordinate ids (/etc/subuid, newuidmap)")
    gap = walls.unmet(spec.require, jail.missing, jail.walls)
    if gap is not None:
        discard(jail)
        raise SetupError("--require", errno.EPERM, gap)


def check_publish(spec: Spec) -> None:
    """--publish: a host port in use is a one-line error before any jail is made."""
    if not spec.publish:
        return
    from . import usernet
    try:
        usernet.check_ports_free([usernet.parse_publish(p) for p in spec.publish])
    except usernet.UsernetError as e:
        raise SetupError(str(e), 0) from None


def start_usernet(jail: Jail, spec: Spec, verbose: bool = False) -> None:
    """--net user: the user-mode stack for the jail's network namespace, started before its
    Request is sent (the program never runs before the network is up), also for a warm jail,
    which waited without one. A failure discards the jail: one-line SetupError."""
    if spec.net != "user":
        return
    from . import usernet
    refused = () if spec.allow_host_loopback else net.METADATA  # before the stack starts
    try:
        netns: int | str = jail.pid
        userns: int | str | None = jail.pid if "user" in spec.namespaces else None
        if jail.ns_fds:  # an unprivileged caller: the namespaces it opened before "go"
            userns, netns = (f"/proc/self/fd/{fd}" for fd in jail.ns_fds)
            if refused:
                net.prohibit_joined(jail.ns_fds[0], jail.ns_fds[1], refused)
        elif refused:
            net.prohibit_in(jail.pid, refused)
        jail.usernet = usernet.start(
            netns, publish=[usernet.parse_publish(p) for p in spec.publish], userns=userns,
            host_loopback=spec.allow_host_loopback)
    except BaseException as e:
        discard(jail)
        if isinstance(e, (usernet.UsernetError, OSError)):
            raise SetupError(f"--net user: {e}", 0) from None
        raise
    if verbose:
        stack = jail.usernet
        jail.notes.append(f"--net user: {stack.backend} (pid {stack.pid}, ready in "
                          f"{stack.startup * 1e3:.1f} ms), DNS {stack.dns}" +
                          "".join(f", --publish {p}" for p in stack.publish))
    if spec.allow_host_loopback:  # named loudly, -v or not
        jail.notes.append("--allow-host-loopback: the jail reaches the host's loopback services "
                          "and the metadata address 169.254.169.254")


def start_forward(jail: Jail, spec: Spec, verbose: bool = False) -> None:
    """--publish with --net none: bind the host ports here, hand them to a forwarder
    (isol8r.daemon.forward) that joins the jail's network namespace and relays each connection
    to the jail's 127.0.0.1:JAIL_PORT. The ports are bound before the jail's Request is sent
    (a connection waits in the backlog until the forwarder serves it). A failure discards the
    jail: one-line SetupError."""
    if spec.net != "none" or not spec.publish:
        return
    from . import usernet
    socks: list[socket.socket] = []
    own_fds: list[int] = []
    try:
        ports = [usernet.parse_publish(p) for p in spec.publish]
        for p in ports:
            addr = p.host_addr or "0.0.0.0"
            try:
                socks.append(net.listening(addr, p.host_port) if p.proto == "tcp"
                             else net.bound_udp(addr, p.host_port))
            except OSError as e:
                why = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
                raise SetupError(f"--publish {p}: host port {p.host_port} is {why}", 0) from None
        if jail.ns_fds:
            user_fd, net_fd = jail.ns_fds
        else:
            user_fd, net_fd = -1, os.open(f"/proc/{jail.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            own_fds.append(net_fd)
        import sys
        env = launch.package_env()
        argv = [sys.executable, "-s", "-m", "isol8r.daemon.forward", *helper_uid(jail),
                str(net_fd), str(user_fd),
                *(f"{s.fileno()}:{p.jail_port}/{p.proto}" for s, p in zip(socks, ports))]
        fds = [net_fd, *([user_fd] if user_fd >= 0 else []), *(s.fileno() for s in socks)]
        proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, env=env, start_new_session=True, cwd="/",
                                preexec_fn=_unblock_signals
                                if signal.pthread_sigmask(signal.SIG_BLOCK, ()) else None)
        jail.forwarder = proc  # not waited for: a connection waits in the listener's backlog
    except BaseException as e:
        discard(jail)
        if isinstance(e, (OSError, usernet.UsernetError)):
            raise SetupError(f"--publish: {e}", 0) from None
        raise
    finally:
        for s in socks:
            s.close()
        for fd in own_fds:
            os.close(fd)
    if verbose:
        jail.notes.append(f"--publish with --net none: forwarder pid {proc.pid}" +
                          "".join(f", {p}" for p in ports))


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (SIGKILL after two seconds) to a helper this module started, by its pid."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()


EGRESS_DIR = "/run/isol8r/egress"  # a jail proxy's denials, <jail pid>.json, until result()


def helper_uid(jail: Jail) -> list[str]:
    """`--uid ID` for a jail's helper: an id of its jail's own, for root; an unprivileged
    caller's helper keeps the caller's ids (it cannot change them)."""
    if os.geteuid() != 0:
        return []
    return ["--uid", str(HELPER_IDS + (jail.pid & 0x3FFFFF))]


def start_egress(jail: Jail, spec: Spec) -> None:
    """--allow-domain: a listening socket on the jail's own loopback (made from inside its
    network namespace, which has nothing else), served by a proxy process in the host's
    (isol8r.daemon.egress --jail), before the jail's Request is sent. Root's supervisor enters
    the jail's namespace to make the socket; an unprivileged caller's, a child that joins the
    jail's user and network namespaces. The proxy is confined once it has started
    (daemon/egress.py confine): it needs no privilege to resolve, connect and relay."""
    if not spec.allow_domain:
        return
    try:
        if jail.ns_fds:  # an unprivileged caller: from a child that joins the jail's namespaces
            sock = net.listen_joined(*jail.ns_fds, "127.0.0.1", pipeline.EGRESS_PORT)
        else:
            sock = net.listen_in(jail.pid, "127.0.0.1", pipeline.EGRESS_PORT)
        try:
            egress_dir(create=True)
            out = egress_file(jail.pid)
            if os.path.exists(out):
                os.unlink(out)  # a stale one of an earlier process of this pid
            import sys
            env = launch.package_env()
            jail.egress = subprocess.Popen(
                [sys.executable, "-s", "-m", "isol8r.daemon.egress", "--jail",
                 str(sock.fileno()), *helper_uid(jail), *spec.allow_domain],
                pass_fds=[sock.fileno()],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
                start_new_session=True, cwd="/",
                # the CLI's forwarder blocks SIGTERM while a jail starts: not in the proxy
                preexec_fn=_unblock_signals
                if signal.pthread_sigmask(signal.SIG_BLOCK, ()) else None)
        finally:
            sock.close()
    except OSError as e:
        discard(jail)
        raise SetupError("--allow-domain: start the egress proxy", e.errno or errno.EIO,
                         str(e.filename or "")) from None


def egress_dir(create: bool = False) -> str:
    """Where the proxies' denials wait for result(): EGRESS_DIR for root; for another user a
    0700 directory of its own (under $XDG_RUNTIME_DIR, else the temporary directory), which
    must be the user's and no symlink."""
    if os.geteuid() == 0:
        if create:
            os.makedirs(EGRESS_DIR, mode=0o700, exist_ok=True)
        return EGRESS_DIR
    import tempfile
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    d = os.path.join(base, f"isol8r-{os.geteuid()}-egress")
    if create:
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(d)
        import stat
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise OSError(errno.EPERM, "not a private directory of this user", d)
    return d


def egress_file(pid: int) -> str:
    return f"{egress_dir()}/{pid}.json"


def _unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _stop_egress(proc: subprocess.Popen[bytes], pid: int) -> None:
    """SIGTERM (SIGKILL after two seconds) to the jail's proxy, by the pid this module
    started; its denials go to egress_file(pid), where result() reads them, in this process
    or in the caller of a fork server."""
    assert proc.stdout is not None
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        data, _ = proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        data, _ = proc.communicate()
    if not data:  # ended before it served (a short run): nothing was asked of it
        data = b'{"denied": []}'
    try:
        fd = os.open(egress_file(pid) + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                     os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
        os.rename(egress_file(pid) + ".part", egress_file(pid))
    except OSError:
        pass


def net_denied(spec: Spec, pid: int | None) -> list[dict[str, Any]] | None:
    """--allow-domain: the denials the jail's proxy wrote as it ended (and the file gone)."""
    if not spec.allow_domain or pid is None:
        return None
    import json
    try:
        with open(egress_file(pid)) as f:
            data = json.load(f)
        os.unlink(egress_file(pid))
    except (OSError, ValueError):
        return None
    return list(data.get("denied", []))


def _setid_wall_notes(spec: Spec) -> list[str]:
    """A note when a writable bind or root meets a seccomp policy that lets set-id modes through
    (--seccomp none, a profile, chmod named in an allow-list): that wall is off, and says so."""
    if not (spec.rw_root or any(m.kind == "bind" for m in spec.mounts)) or spec.default_filter:
        return []
    from . import seccomp
    gaps = seccomp.setid_gaps(seccomp.resolve_policy(
        spec.seccomp, spec.seccomp_profile, spec.seccomp_allow, spec.seccomp_deny,
        spec.seccomp_log))
    if not gaps:
        return []
    return [f"the seccomp policy lets set-id modes through {', '.join(gaps)}: the jail can leave "
            "set-id files in its writable bind or root (docs/security.md)"]


def _check_root(root: str) -> None:
    """Refuse a prepared root holding setuid files or device nodes (they are inert under nosuid,
    nodev and no_new_privs, but a root that has them was not built for a jail)."""
    from . import rootfs
    bad = [f for f in rootfs.check_root(root, quick=True) if f.severity == "error"]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise SpecError("--rootfs", root, f"unsafe root: {bad[0]}{more}; check it with "
                        "`isol8r check-root`, or pass --allow-unsafe-root")


def activate(jail: Jail, req: Request, fds: list[int]) -> None:
    """Send the jail what to run, with the descriptors it gets as SCM_RIGHTS."""
    try:
        wire.send(jail.chan, req.encode(), fds)
    except OSError as e:
        raise _queued_error(jail) or SetupError("send the request to the jail", e.errno or errno.EIO,
                                                "it died while being set up") from None


def _queued_error(jail: Jail) -> Isol8rError | None:
    """The error record a jail that died during setup left on its channel, if any."""
    watch = JailWatch(jail)
    while True:
        try:
            rec = jail.chan.recv(65536, socket.MSG_DONTWAIT)
        except ConnectionResetError:
            continue  # reported once, ahead of the records still queued
        except OSError:
            rec = b""
        if not rec:
            break
        watch.on_record(rec)
    if watch.error is None:
        return None
    return watch.error.error()  # type: ignore[return-value]


def discard(jail: Jail) -> None:
    """Kill, reap and clean up a jail that will not run."""
    jail.signal(signal.SIGKILL)
    try:
        os.waitpid(jail.pid, 0)
    except ChildProcessError:
        pass
    jail.close()


def spawn(spec: Spec, plan: pipeline.Plan, cgroup: Any = None) -> Jail:
    """Clone the child into its namespaces and let it go; raises SetupError if it cannot start."""
    if _threads() > 1:
        raise SetupError("clone3", errno.EDEADLK, "this process has several threads: a bare clone "
                         "could inherit a lock another thread holds; use the fork server "
                         "(isol8r.run's default)")
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    own_pid = os.getpid()
    clone_fd = cgroup.clone_fd() if cgroup is not None else -1
    started = time.monotonic()
    with _clone_lock:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        own_net = -1
        try:
            if plan.netns is not None:
                own_net = _enter_netns(plan.netns, parent, child)
            pid, pidfd, clone_fd = clone_child(plan.clone_flags, clone_fd)
            if pid == 0:
                pipeline.child_main(plan, child.fileno())
        except OSError as e:
            parent.close()
            child.close()
            raise SetupError(getattr(e, "syscall", "clone3"), e.errno or errno.EIO,
                             _clone_hint(e.errno)) from None
        finally:
            if own_net >= 0 and os.getpid() == own_pid:
                net.leave_netns(own_net)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    child.close()
    jail = Jail(spec, pid, pidfd, parent, started, cgroup=cgroup, landlock=plan.landlock,
                uid_switch=plan.uid_switch)
    _add_program_group(jail)
    try:
        if plan.ids is not None:
            userns.write_maps(pid, plan.ids)
        if os.geteuid() != 0 and {"user", "net"} <= spec.namespaces:  # --net user, --publish
            jail.ns_fds = tuple(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                                for kind in ("user", "net"))
        if cgroup is not None and clone_fd < 0:
            cgroup.attach(pid)
        tree = _root_tree(pid, plan)
        trees = ([tree] if tree >= 0 else []) + \
            (mounts.host_trees(plan.mounts, _owner_ns(plan), jail.notes)
             if plan.mounts is not None else [])
        if jail.program_group is not None:  # last: the program enters it before its Request
            jail.program_group.attach_jail(pid)  # before go: its cgroup namespace roots there
            trees.append(os.open(jail.program_group.procs_file(), os.O_WRONLY | os.O_CLOEXEC))
        try:
            parent.sendmsg([Go(tree >= 0, jail.program_group is not None).encode()],
                           wire.rights(trees))
        finally:
            for fd in trees:
                os.close(fd)
    except OSError as e:
        discard(jail)
        step = getattr(e, "syscall", None) or "write id maps / cgroup / open the binds"
        raise SetupError(step, e.errno or errno.EIO, str(e.filename or "")) from None
    return jail


_CLONE3 = [True]  # False once clone3 was refused here (ENOSYS, EPERM): clone from then on


def clone_child(flags: int, clone_fd: int = -1) -> tuple[int, int, int]:
    """clone3 into the namespaces with a pidfd (and into the cgroup at clone_fd), or clone(2)
    where clone3 is refused: Docker's seccomp profile answers it with ENOSYS so that programs
    fall back, and older profiles with EPERM. Returns (pid, pidfd, the cgroup fd used: -1 when
    the caller must attach the child itself)."""
    if _CLONE3[0]:
        try:
            pid, pidfd = linux.clone3(flags, clone_fd)
            return pid, pidfd, clone_fd
        except OSError as e:
            from .walls import clone3_refused
            if e.errno not in (errno.ENOSYS, errno.EPERM) or not clone3_refused():
                raise
            _CLONE3[0] = False
    pid, pidfd = linux.clone(flags)
    return pid, pidfd, -1


def _enter_netns(netns: tuple[str, int, int], *socks: socket.socket) -> int:
    """--netns: this thread into the jail's network namespace for the clone; a one-line
    SetupError naming it when it is gone or replaced."""
    try:
        return net.enter_netns(*netns)
    except OSError as e:
        for s in socks:
            s.close()
        raise SetupError(f"--netns {netns[0]}", e.errno or errno.EIO,
                         "replaced since the jail was planned" if e.errno == errno.ESTALE
                         else "") from None


def _add_program_group(jail: Jail) -> None:
    """Give the jail a group that counts the program's own memory peak, or say why there is
    none and what memory_peak is then (never a silent fallback)."""
    from . import cgroups
    try:
        jail.program_group = cgroups.Cgroup.program_group(jail.cgroup,
                                                          parent=jail.spec.cgroup_parent)
    except cgroups.CgroupUnavailable as e:
        what = ("the jail's cgroup peak, its init and setup included" if jail.cgroup is not None
                else "wait4's ru_maxrss, which counts the copy of isol8r the program's process "
                "was before its exec (~15 MiB)")
        jail.notes.append(f"memory_peak is {what}: {e.reason}")


def _threads() -> int:
    """This process's thread count, from the kernel: native threads count too."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Threads:"):
                return int(line.split()[1])
    return 1


def _root_tree(pid: int, plan: pipeline.Plan) -> int:
    """The prepared root as a detached tree for the child (idmapped where it can be), or -1."""
    if plan.mounts is None or plan.mounts.root_src is None:
        return -1
    userns_fd = -1
    if plan.ids is not None and plan.ids.can_become_root and plan.ids.uid_base is not None:
        userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    base = plan.ids.uid_base if plan.ids is not None else None
    try:
        return mounts.root_tree(plan.mounts, userns_fd,
                                range(base, base + ID_RANGE) if base is not None else None)
    finally:
        if userns_fd >= 0:
            os.close(userns_fd)


def _owner_ns(plan: pipeline.Plan) -> Callable[[int, int], int] | None:
    """For writable binds: the source owner's ids -> a user namespace mapping them onto the jail
    user's host ids (userns.owner_ns); None when this process cannot map other ids (not root)."""
    ids = plan.ids
    if ids is None or not ids.can_become_root or ids.uid_base is None:
        return None
    base = ids.uid_base
    return lambda uid, gid: userns.owner_ns(uid, gid, base + plan.uid, base + plan.gid)


def _clone_hint(err: int | None) -> str:
    if err in (errno.EPERM, errno.ENOSPC, errno.EUSERS):
        return "user namespaces may be disabled or exhausted (see /proc/sys/user/max_user_namespaces)"
    return ""


def _limits(spec: Spec, group: Any = None) -> tuple[Any, dict[str, tuple[int, int]], list[str]]:
    """The jail's cgroup when a cgroup limit is asked for, else None; the rlimits that stand in
    for what no cgroup can hold, and notes saying so (never a silent fallback). group is a warm
    jail's own: it gets the spec's values, and a failure is raised, not fallen back from."""
    derived: dict[str, tuple[int, int]] = {}
    notes: list[str] = []
    if spec.output_limit is not None:
        derived["FSIZE"] = (spec.output_limit, spec.output_limit)
    if not spec.wants_cgroup:
        return None, derived, notes
    from . import cgroups
    limits = cgroups.Limits(spec.memory, spec.pids, spec.cpus)
    try:
        if group is not None:
            group.set_limits(limits)
            return group, derived, notes
        cg = cgroups.Cgroup.create(limits, parent=spec.cgroup_parent)
        return cg, derived, notes
    except cgroups.CgroupUnavailable as e:
        if group is not None:
            raise
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
        if fallback:
            notes.append(f"no cgroup ({e.reason}); fell back to rlimits: {', '.join(fallback)}")
        if "pid" not in spec.namespaces:
            notes.append(f"--share-pid and no cgroup ({e.reason}): processes the program leaves "
                         "behind (a daemon) are not ended with the run")
        return None, derived, notes


def command_limits(spec: Spec, group: Any = None
                   ) -> tuple[Any, dict[str, tuple[int, int]], list[str], dict[str, Any]]:
    """One command of a sandbox: its own cgroup when it asks for a cgroup limit (else None;
    group: one made ahead for it, given spec's values), the rlimits standing in for what no
    cgroup holds, notes, and the limits as a Result shows them: what lease() does for a jail,
    for a process of a jail that stays."""
    cg, derived, notes = _limits(spec, group)
    return cg, derived, notes, _limits_applied(spec, derived, cg)


def _limits_applied(spec: Spec, derived: dict[str, tuple[int, int]], cg: Any) -> dict[str, Any]:
    names = {num: name for name, num in RLIMITS.items()}
    out: dict[str, Any] = {k: getattr(spec, k) for k in
                           ("memory", "pids", "cpus", "time_limit", "cpu_limit", "output_limit")
                           if getattr(spec, k) is not None}
    out["cgroup"] = f"v{cg.version}" if cg is not None else None
    out["rlimits"] = {names.get(r, str(r)): [soft, hard]
                      for r, soft, hard in rlimits.plan(spec.rlimits, derived)}
    return out


def bpf_for(spec: Spec) -> bytes | None:
    """The compiled seccomp filter spec asks for (cached), None for --seccomp none."""
    if spec.seccomp == "none" and not (spec.seccomp_profile or spec.seccomp_allow or spec.seccomp_deny):
        return None
    from .seccomp import cache
    return cache.jail_filter(spec.seccomp, spec.seccomp_profile, spec.seccomp_allow,
                             spec.seccomp_deny, spec.seccomp_log)


# ---- the jail side ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the jail's supervisor knows at the end; plain data, so it can cross a socket."""

    status: int | None = None
    cpu_user: float | None = None
    cpu_system: float | None = None
    memory_peak: int | None = None
    processes: int | None = None
    oom: bool = False
    setup_time: float = 0.0
    wall_time: float = 0.0
    error: Failure | None = None  # the jail's setup failed: raised by result()
    verdict: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pid: int | None = None  # the jail's first process on the host, for seccomp.blocked_syscall
    walls: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    started: float = 0.0  # time.monotonic() when it was started or leased


class JailWatch:
    """Supervises one jail: handshake records, exit, time and CPU limits, escalation, reaping."""

    def __init__(self, jail: Jail, log: Log | None = None, reaper: bool = True) -> None:
        self.jail = jail
        self.log = log
        self.reaper = reaper  # False: the fork server reaps; its report comes to reaped()
        self.reaped_report: tuple[int, float, float, int, Any] | None = None
        self.emptied = False  # init killed and reaped every other process of the jail
        self.error: Failure | None = None
        self.exec_at: float | None = None
        self.program: tuple[int, float, float, int] | None = None
        self.exited = False
        self.chan_open = True
        self.verdict: str | None = None
        self.kill_at: float | None = None
        self.exited_at: float | None = None
        self.program_peak: int | None = None  # bytes: the program's own, from its exec on
        self.terminal: Any = None  # with --tty: the terminal.Relay the jail's master goes to

    @property
    def done(self) -> bool:
        if self.reaper:
            return self.exited and not self.chan_open
        if self.reaped_report is not None:
            return True
        # init's report is enough once nothing of the jail runs: init emptied its PID namespace
        # before reporting, or it has exited (which, as PID 1, it does only once every other
        # process of the namespace is gone); unless the cgroup's counters are wanted
        # (--net user and --publish: the server ends the stack or forwarder before it reports,
        # so the published ports are free when the Result is returned)
        return self.program is not None and (self.emptied or self.exited) \
            and self.jail.cgroup is None and self.jail.spec.net != "user" \
            and not self.jail.spec.allow_domain and not self.jail.spec.publish

    def reaped(self, status: int, utime: float, stime: float, maxrss: int, usage: Any) -> None:
        """The fork server's report: it reaped the jail's init and read its cgroup."""
        self.reaped_report = (status, utime, stime, maxrss, usage)
        self.exited = True
        self.exited_at = self.exited_at or time.monotonic()

    def register(self, sel: selectors.BaseSelector) -> None:
        sel.register(self.jail.chan, selectors.EVENT_READ, (self, "chan"))
        sel.register(self.jail.pidfd, selectors.EVENT_READ, (self, "exit"))

    def handle(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        if key.data[1] == "exit":
            self.exited = True
            self.exited_at = self.exited_at or time.monotonic()
            sel.unregister(self.jail.pidfd)
            return
        try:
            rec, anc, _, _ = self.jail.chan.recvmsg(65536, socket.CMSG_SPACE(4))
        except ConnectionResetError:
            # the child closed with our Request unread (it failed before reading it): the error
            # is reported once, and the records it sent are still queued behind it
            return
        if anc:
            self.on_terminal(sel, rec, anc)
            return
        if rec:
            self.on_record(rec)
            return
        self.chan_open = False
        sel.unregister(self.jail.chan)
        if self.exec_at is None and self.error is None:
            self.exec_at = time.monotonic()  # --no-init: EOF on the channel means exec

    def on_terminal(self, sel: selectors.BaseSelector, rec: bytes, anc: list[Any]) -> None:
        """--tty: the master of the jail's terminal, to relay (pipeline._open_terminal)."""
        fds = wire.fds_of(anc)
        if rec == Terminal.TAG and fds and self.terminal is not None:
            if not self.jail.spec.init:  # the terminal's Ctrl-C to a PID 1 that would lose it
                self.terminal.pid1 = (self.jail.pid, self.jail.stand_in)
            self.terminal.attach(sel, fds.pop(0))
        for fd in fds:
            os.close(fd)

    def on_record(self, rec: bytes) -> None:
        """One record of the jail's (protocol.py): a malformed one is the jail's setup failing."""
        try:
            msg = protocol.expect(rec, Timing, Failure, Exec, Status)
        except protocol.ProtocolError as e:
            if self.error is None:
                self.error = Failure("the jail's handshake", errno.EPROTO, str(e))
            return
        if isinstance(msg, Timing):
            if self.log:
                since = msg.at / 1e9 - self.jail.started if msg.at else 0.0
                self.log(f"{msg.step}: {msg.took / 1e6:.3f} ms (at +{since * 1e3:.3f} ms)")
        elif isinstance(msg, Failure):
            self.error = msg
        elif isinstance(msg, Exec):  # init's clock: CLOCK_MONOTONIC is one clock for every process
            self.exec_at = msg.at / 1e9
        else:
            self.program = (msg.status, msg.utime, msg.stime, msg.maxrss)
            self.exited_at = msg.ended / 1e9
            self.emptied = msg.emptied
            self.program_peak = self._program_peak()
            if not self.done:
                # init exits once the channel is shut, and its exit (reaped here, or by the fork
                # server, which reads the cgroup's counters then; or, with --share-pid, the sign
                # that it is gone) is what this watch still waits for
                try:
                    self.jail.chan.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _program_peak(self) -> int | None:
        """The program group's high-water mark, read when init reports the program's end: the
        group goes with the jail, which cannot end before this side closes the channel."""
        group = self.jail.program_group
        if group is None or self.exec_at is None:
            return None
        try:
            return group.memory_peak() or None
        except OSError:
            return None

    def limit_hit(self, verdict: str) -> None:
        """Escalate: SIGTERM (forwarded by init) now, SIGKILL to the whole jail after the grace."""
        if self.verdict is None and not self.exited:
            self.verdict = verdict
            if self.jail.spec.kill_grace <= 0:  # --kill-grace 0: no SIGTERM, SIGKILL at once
                self.jail.signal(signal.SIGKILL)
                return
            self.jail.signal(signal.SIGTERM)
            self.kill_at = time.monotonic() + self.jail.spec.kill_grace

    def tick(self, now: float) -> float | None:
        """Check the limits; return the next time this watch needs a tick, or None."""
        if self.exited:
            return None
        spec, cg = self.jail.spec, self.jail.cgroup
        start = self.exec_at or self.jail.started
        marks = []
        if spec.time_limit is not None and self.verdict is None:
            if now - start >= spec.time_limit:
                self.limit_hit("time-limit")
            else:
                marks.append(start + spec.time_limit)
        if spec.cpu_limit is not None and cg is not None and self.verdict is None:
            try:
                used = cg.cpu_time()
            except OSError:  # the fork server removed the group: the jail has ended
                used = 0.0
            if used >= spec.cpu_limit:
                self.limit_hit("cpu-limit")
            else:
                marks.append(now + 0.01)  # poll the jail's CPU time every 10 ms
        if self.kill_at is not None:
            if now >= self.kill_at:
                self.jail.signal(signal.SIGKILL)
                self.kill_at = None
            else:
                marks.append(self.kill_at)
        return min(marks) if marks else None

    def finish(self) -> Outcome:
        """Reap (or take the server's report), read the counters, remove the cgroup."""
        jail = self.jail
        usage, peak = None, self.program_peak
        if peak is None and self.program is None:  # --no-init: no report; the group may be left
            peak = self._program_peak()
        if "landlock" in jail.walls or "landlock" in jail.missing:
            end_session(jail.pid)
        try:
            if self.reaped_report is not None:
                st, ut, syst, rss, usage = self.reaped_report
                status, ru = st, _Rusage(ut, syst, rss)
            elif self.reaper:
                _, status, ru = os.wait4(jail.pid, 0)
                if jail.cgroup is not None:
                    usage = jail.cgroup.usage()
            else:
                status, ru = 0, _Rusage(0.0, 0.0, 0)  # init's S record has the real figures
        finally:
            jail.close(remove_cgroup=self.reaper)
        end = self.exited_at or time.monotonic()
        out = Outcome(error=self.error, verdict=self.verdict, limits=jail.limits, notes=jail.notes,
                      pid=jail.pid, started=jail.started, walls=jail.walls, missing=jail.missing,
                      setup_time=(self.exec_at or end) - jail.started,
                      wall_time=end - (self.exec_at or jail.started))
        if self.program is not None:
            out.status, out.cpu_user, out.cpu_system, rss = self.program
            out.memory_peak = rss * 1024
        else:
            out.status, out.cpu_user, out.cpu_system = status, ru.ru_utime, ru.ru_stime
            out.memory_peak = ru.ru_maxrss * 1024
        if jail.stood_in and out.status is not None and os.WIFSIGNALED(out.status) \
                and os.WTERMSIG(out.status) == signal.SIGKILL:
            out.status = jail.stood_in  # the wait status of a death by that signal
        if usage is not None:
            out.cpu_user = usage.cpu_user if usage.cpu_user is not None else out.cpu_user
            out.cpu_system = usage.cpu_system if usage.cpu_system is not None else out.cpu_system
            out.memory_peak = usage.memory_peak or out.memory_peak
            out.processes = usage.pids_peak
            out.oom = usage.oom_killed
        if peak is not None:
            out.memory_peak = peak
        return out


def end_session(pid: int) -> None:
    """A bare jail (no PID namespace to take its processes with it): what the program left in
    its process group (it leads one, from its setsid) ends with it. The group's id cannot name
    another group while a member lives; one that left the group (setsid again) outlives the
    run, which its missing pidns wall says."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class _Rusage:
    ru_utime: float
    ru_stime: float
    ru_maxrss: int


# ---- the caller side --------------------------------------------------------------------------


@dataclass
class _Pipe:
    fd: int
    name: str
    relay: int | None = None  # copy to this fd instead of keeping (an --output-limit on a tty/file)
    # BytesIO, not a list of chunks: its getvalue() hands over its buffer without a copy, so the
    # caller holds the output once, not the chunks and their join at the end
    kept: io.BytesIO = field(default_factory=io.BytesIO)
    size: int = 0
    truncated: bool = False


class IOWatch:
    """The caller's end of the jail's stdio: captured pipes, input to feed, the output cap."""

    def __init__(self, output_limit: int | None, on_limit: Callable[[str], None]) -> None:
        self.output_limit = output_limit
        self.on_limit = on_limit
        self.pipes: dict[int, _Pipe] = {}
        self.done_pipes: list[_Pipe] = []
        self.input: memoryview | None = None
        self.input_fd = -1
        self.terminal: Any = None  # with --tty: the terminal.Relay, which takes the place of stdio

    @property
    def done(self) -> bool:
        return not self.pipes and (self.terminal is None or self.terminal.done)

    def register(self, sel: selectors.BaseSelector) -> None:
        for fd in self.pipes:
            sel.register(fd, selectors.EVENT_READ, (self, "out"))
        if self.input_fd >= 0:
            os.set_blocking(self.input_fd, False)
            sel.register(self.input_fd, selectors.EVENT_WRITE, (self, "in"))

    def handle(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        if key.data[1] == "in":
            self._write_input(sel)
        else:
            self._read(sel, self.pipes[key.fd])

    def _read(self, sel: selectors.BaseSelector, p: _Pipe) -> None:
        data = os.read(p.fd, 65536)
        if not data:
            sel.unregister(p.fd)
            os.close(p.fd)
            self.done_pipes.append(self.pipes.pop(p.fd))
            return
        if self.output_limit is not None:
            room = self.output_limit - sum(q.size for q in (*self.pipes.values(), *self.done_pipes))
            if len(data) > room:
                data = data[:max(room, 0)]
                p.truncated = True
                self.on_limit("output-limit")
        p.size += len(data)
        if p.relay is None:
            p.kept.write(data)
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(p.relay, view):]
            except BlockingIOError:
                select.select([], [p.relay], [])
            except OSError:
                return

    def _write_input(self, sel: selectors.BaseSelector) -> None:
        assert self.input is not None
        try:
            n = os.write(self.input_fd, self.input[:65536])
        except BrokenPipeError:
            n = len(self.input)
        self.input = self.input[n:]
        if not self.input:
            sel.unregister(self.input_fd)
            os.close(self.input_fd)
            self.input_fd = -1

    def close(self) -> None:
        for fd in list(self.pipes):
            os.close(fd)
            self.done_pipes.append(self.pipes.pop(fd))
        if self.input_fd >= 0:
            os.close(self.input_fd)
            self.input_fd = -1
        for p in self.done_pipes:
            if p.relay is not None:
                os.close(p.relay)
                p.relay = None
        if self.terminal is not None:
            self.terminal.close()

    def fill(self, res: Result) -> None:
        if self.terminal is not None:
            self.terminal.fill(res)
        for p in self.done_pipes:
            if p.relay is None and not p.name.startswith("relay"):
                setattr(res, p.name, p.kept.getvalue())
                p.kept = io.BytesIO()
            setattr(res, p.name.removeprefix("relay-") + "_truncated", p.truncated)


@dataclass
class Stdio:
    """The jail's descriptors (fd in this process, fd number in the jail) and the caller's ends."""

    child: list[tuple[int, int]]
    close_after_start: list[int]
    io: IOWatch


def open_stdio(spec: Spec, stdin: Any, stdout: Any, stderr: Any, input: bytes | None,
               capture_output: bool, on_limit: Callable[[str], None]) -> Stdio:
    """subprocess-style arguments -> pipes and descriptors; output is piped through the caller
    when it is captured or capped by --output-limit. stderr=STDOUT shares stdout's descriptor;
    stdin=PIPE without input is an empty input, as subprocess.run's communicate() gives."""
    check_stdio(stdin, stdout, stderr)
    io = IOWatch(spec.output_limit, on_limit)
    child: list[tuple[int, int]] = []
    close: list[int] = []
    if spec.tty:
        return _open_terminal(spec, io, stdin, stdout, input, capture_output)
    try:
        if input is not None or stdin == subprocess.PIPE:
            r, w = os.pipe2(os.O_CLOEXEC)
            child.append((r, 0))
            close.append(r)
            if input:
                io.input, io.input_fd = memoryview(input), w
            else:
                os.close(w)
        else:
            child.append((_fd_for(stdin, 0, os.O_RDONLY, close), 0))
        for target, name, value in ((1, "stdout", stdout), (2, "stderr", stderr)):
            if value == subprocess.STDOUT:
                child.append((child[-1][0], target))  # the very descriptor stdout got
                continue
            if capture_output or value == subprocess.PIPE:
                r, w = os.pipe2(os.O_CLOEXEC)
                io.pipes[r] = _Pipe(r, name)
            elif spec.output_limit is not None:
                fd = _fd_for(value, target, os.O_WRONLY, close)
                r, w = os.pipe2(os.O_CLOEXEC)
                io.pipes[r] = _Pipe(r, "relay-" + name, relay=os.dup(fd))
            else:
                child.append((_fd_for(value, target, os.O_WRONLY, close), target))
                continue
            child.append((w, target))
            close.append(w)
        child.extend((fd, fd) for fd in spec.pass_fds)
    except BaseException:
        for fd in close:
            os.close(fd)
        io.close()
        raise
    return Stdio(child, close, io)


def check_stdio(stdin: Any, stdout: Any, stderr: Any) -> None:
    """What subprocess refuses: STDOUT for anything but stderr, negative numbers but the three
    constants, values that are neither a descriptor nor have fileno(). ValueError, as there."""
    for name, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        if value is None or isinstance(value, bool):
            if isinstance(value, bool):
                raise ValueError(f"{name}={value!r}: give PIPE, DEVNULL, a file or a descriptor")
            continue
        if isinstance(value, int):
            if value == subprocess.STDOUT and name != "stderr":
                raise ValueError(f"{name}=STDOUT: only stderr can be sent to stdout")
            if value < 0 and value not in (subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT):
                raise ValueError(f"{name}={value}: not a file descriptor")
        elif not callable(getattr(value, "fileno", None)):
            raise ValueError(f"{name}={value!r}: give PIPE, DEVNULL, STDOUT (stderr only), "
                             "a file object or a descriptor")


def _open_terminal(spec: Spec, io: IOWatch, stdin: Any, stdout: Any, input: bytes | None,
                   capture_output: bool) -> Stdio:
    """--tty: the jail opens its own terminal for 0, 1 and 2 (stderr joins stdout there, as on
    any terminal); the caller's stdin and stdout are relayed to it, never passed in."""
    from . import terminal

    def fd(value: Any, default: int) -> int:
        if value == subprocess.DEVNULL:
            return -1
        return default if value is None else value if isinstance(value, int) else value.fileno()
    in_fd = -1 if input is not None else fd(stdin, 0)
    capture = capture_output or stdout == subprocess.PIPE
    io.terminal = terminal.Relay(in_fd, -1 if capture else fd(stdout, 1), input, capture,
                                 spec.output_limit, lambda v: io.on_limit(v))
    return Stdio([(f, f) for f in spec.pass_fds], [], io)


def _fd_for(value: Any, default: int, mode: int, close: list[int]) -> int:
    if value is None:
        return default
    if value == subprocess.DEVNULL:
        fd = os.open(os.devnull, mode | os.O_CLOEXEC)
        close.append(fd)
        return fd
    if isinstance(value, int):
        return value
    return value.fileno()


def result(spec: Spec, out: Outcome, io: IOWatch | None) -> Result:
    """The Result of an Outcome, or the SetupError/ExecError it carries."""
    if out.error is not None:
        raise out.error.error()
    res = Result(argv=spec.argv, verdict="ok", wall_time=out.wall_time, setup_time=out.setup_time,
                 cpu_user=out.cpu_user, cpu_system=out.cpu_system, memory_peak=out.memory_peak,
                 processes=out.processes, limits=out.limits, notes=out.notes, walls=out.walls,
                 missing_walls=out.missing)
    st = out.status if out.status is not None else 0
    if os.WIFSIGNALED(st):
        res.signal = os.WTERMSIG(st)
    else:
        res.exit_code = os.WEXITSTATUS(st)
    if io is not None:
        io.fill(res)
    res.net_denied = net_denied(spec, out.pid)
    res.verdict = out.verdict or _verdict(spec, res, out.oom)
    if res.verdict == "seccomp":
        from . import seccomp
        res.syscall = seccomp.blocked_syscall(out.pid, out.started, uids=_host_uids(spec),
                                              comm=os.path.basename(spec.argv[0]))
    return res


def _host_uids(spec: Spec) -> range:
    """The host uids a jail's processes run as, as the kernel's audit records show them."""
    if "user" not in spec.namespaces:
        return range(spec.uid, spec.uid + 1)
    base = 0 if spec.unsafe_map_host_root else spec.id_base
    return range(base, base + ID_RANGE)


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


def drive(sel: selectors.BaseSelector, ticks: Callable[[float], float | None],
          finished: Callable[[], bool]) -> None:
    """One event loop: dispatch ready descriptors to their watcher (each registered its own, with
    itself first in the key's data), tick the limits."""
    while not finished():
        now = time.monotonic()
        nxt = ticks(now)
        timeout = None if nxt is None else max(0.0, nxt - now)
        for key, _ in sel.select(timeout):
            key.data[0].handle(sel, key)


# ---- one jail, in this process ----------------------------------------------------------------


def run(spec: Spec, *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
        input: bytes | None = None, capture_output: bool = False, forward_signals: bool = False,
        verbose: bool = False, log: Log | None = None) -> Result:
    """Run one jail to completion from this process (the CLI's path: it clones from here)."""
    watch: list[JailWatch] = []
    stdio = open_stdio(spec, stdin, stdout, stderr, input, capture_output,
                       lambda v: watch[0].limit_hit(v) if watch else None)
    with Forwarder(forward_signals) as fwd:
        try:
            jail = start(spec, tuple(stdio.child), verbose)
        except BaseException:
            stdio.io.close()
            raise
        finally:
            for fd in stdio.close_after_start:
                os.close(fd)
        jw = JailWatch(jail, log if verbose else None)
        jw.terminal = stdio.io.terminal
        watch.append(jw)
        sel = selectors.DefaultSelector()
        jw.register(sel)
        stdio.io.register(sel)
        fwd.attach(jail.forward)
        try:
            drive(sel, lambda now: _next_tick(jw, spec, now),
                  lambda: jw.done and (stdio.io.done or _drained(jw, spec)))
            outcome = jw.finish()
        finally:
            sel.close()
            stdio.io.close()
    return result(spec, outcome, stdio.io)


def _next_tick(jw: JailWatch, spec: Spec, now: float) -> float | None:
    if jw.exited_at is not None:
        return jw.exited_at + spec.drain_grace
    return jw.tick(now)


def _drained(jw: JailWatch, spec: Spec) -> bool:
    """Stop reading output a grace period after the jail ended (a leftover may hold a pipe)."""
    return jw.exited_at is not None and time.monotonic() > jw.exited_at + spec.drain_grace


class Forwarder:
    """Passes the caller's signals to the jail. Armed before the jail starts (the signals are
    blocked, so one sent while the program starts stays pending), attached once the jail exists
    (handlers installed, the signals unblocked: the pending ones are delivered then), restored
    after. Only the main thread can install handlers; elsewhere this does nothing. A CLI
    server's worker keeps the signals blocked between runs: attach unblocks them all the same."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.mask: set[int] | None = None
        self.handlers: dict[int, Any] = {}

    def __enter__(self) -> "Forwarder":
        if self.enabled:
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        return self

    def attach(self, send: Callable[[int], None]) -> None:
        if self.enabled:
            self.handlers = {sig: signal.signal(sig, lambda s, _f: send(s)) for sig in FORWARDED}
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)

    def __exit__(self, *_: Any) -> None:
        if not self.enabled:
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.handlers = {}
        if self.mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
            self.mask = None
