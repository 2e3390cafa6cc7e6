"""The walls of a jail: what this environment allows, which walls a run gets, and which it
could not have and why (Result.walls, Result.missing_walls, --require).

Why a module: the same jail meets very different kernels' answers. Root on a host can build
every wall, and there isol8r keeps "all walls or fail". Inside a container or another jail,
or without privilege, some walls cannot be built: clone3 refused (the supervisor falls back to
clone), a fresh /proc refused because the outer /proc has masked submounts (the outer one is
bound read-only instead, or none: --proc), no user namespace at all (then the walls that need no
privilege: Landlock, seccomp with no_new_privs, rlimits, a new session, the cgroup if one is
writable). Each such choice is made here, once, and reported, never silent.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from typing import Any

from .sys import linux

#: Every wall a run can have, in the order they are listed.
WALLS = ("userns", "pidns", "mountns", "netns", "ipcns", "utsns", "cgroupns", "proc", "uid",
         "caps", "nnp", "seccomp", "landlock", "rlimits", "session", "cgroup")
NS_WALLS = {"user": "userns", "pid": "pidns", "mount": "mountns", "net": "netns",
            "ipc": "ipcns", "uts": "utsns", "cgroup": "cgroupns"}
PROC_MODES = ("auto", "fresh", "bind", "none")


# ---- what this environment allows -------------------------------------------------------------


def initial_userns() -> bool:
    """This process is in the host's own user namespace (its map is the identity of all ids)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


CAP_SYS_ADMIN = 21


_HOST_ROOT: dict[int, bool] = {}  # euid -> the answer: asked on every run's Shape, read once


def host_root() -> bool:
    """Root of the host itself (the host's user namespace and CAP_SYS_ADMIN: a container's
    root has the first, not the second): every wall can be built, so none is ever fallen
    back from."""
    euid = os.geteuid()
    if euid not in _HOST_ROOT:
        try:
            _HOST_ROOT[euid] = euid == 0 and initial_userns() and \
                bool(linux.capget()[0] >> CAP_SYS_ADMIN & 1)
        except OSError:
            _HOST_ROOT[euid] = False
    return _HOST_ROOT[euid]


_USERNS: list[str | None] = []


def userns_refused() -> str | None:
    """Why no user namespace can be made here (None: it can), probed once per process by a
    clone that exits at once: the kernel's answer is the only reliable one (a seccomp filter,
    user.max_user_namespaces, an LSM rule and the cloning process's own limits all give it)."""
    if not _USERNS:
        _USERNS.append(_probe_userns())
    return _USERNS[0]


def _probe_userns() -> str | None:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        try:
            pid, pidfd = linux.clone3(linux.CLONE_NEWUSER)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):
                return _userns_why(e.errno)
            try:
                pid, pidfd = linux.clone(linux.CLONE_NEWUSER)
            except OSError as e2:
                return _userns_why(e2.errno)
        if pid == 0:
            os._exit(0)
        os.close(pidfd)
        os.waitpid(pid, 0)
        return None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_CLONE3: list[bool] = []


def clone3_refused() -> bool:
    """clone3 itself is refused here (not the namespaces it was asked for): a bare clone3
    without flags, whose child exits at once, fails too (Docker's profile: ENOSYS). Asked once
    per process; the supervisor then clones with clone(2)."""
    if not _CLONE3:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid, pidfd = linux.clone3(0)
        except OSError:
            _CLONE3.append(True)
        else:
            if pid == 0:
                os._exit(0)
            os.close(pidfd)
            os.waitpid(pid, 0)
            _CLONE3.append(False)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return _CLONE3[0]


def _userns_why(err: int | None) -> str:
    name = errno.errorcode.get(err or 0, str(err))
    limit = read_int("/proc/sys/user/max_user_namespaces")
    if err == errno.ENOSPC and limit == 0:
        return "no user namespace can be made: user.max_user_namespaces is 0"
    if err == errno.ENOSPC:
        return f"no user namespace can be made: ENOSPC (user.max_user_namespaces {limit} reached)"
    if err == errno.EPERM:
        return ("no user namespace can be made: EPERM (a seccomp filter, such as Docker's "
                "profile without CAP_SYS_ADMIN, or an LSM rule)")
    return f"no user namespace can be made: {name}"


def read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


_MASKED: list[bool] = []


def masked_here() -> bool:
    """proc_masked() of this process's mount table, read once per process (every run's Shape
    asks; a container's mounts do not change under a running isol8r)."""
    if not _MASKED:
        _MASKED.append(proc_masked())
    return _MASKED[0]


def proc_masked(mountinfo: str | None = None) -> bool:
    """A fresh proc cannot be mounted in a user namespace this process makes: the kernel allows
    it only while some proc mount of this mount namespace is fully visible, and a container's
    (Docker's, podman's, an outer jail's) has submounts masking /proc/sys, /proc/kcore, ...
    A submount on a directory the kernel keeps empty for it (binfmt_misc) masks nothing."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as f:
                mountinfo = f.read()
        except OSError:
            return False
    rows = [line.split() for line in mountinfo.splitlines() if " - " in line]
    procs = {}
    for r in rows:
        sep = r.index("-")
        if r[sep + 1] == "proc" and r[3] == "/":  # a bind of a part of one reveals nothing
            procs[r[4]] = True
    for point in procs:
        inner = point.rstrip("/") + "/"
        if not any(r[4].startswith(inner) and not r[4].endswith("/sys/fs/binfmt_misc")
                   for r in rows):
            return False  # this one is fully visible
    return bool(procs)


# ---- the choices for one jail -----------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """What a jail of this environment is built with where the kernel says no: bare (why no
    user namespace can be made: the jail has no namespaces and Landlock instead), and the /proc
    it gets (fresh, bind: the outer one read-only, none, host: no mount namespace)."""

    bare: str | None
    proc: str
    proc_why: str = ""
    # why no user namespace can be made, where this process may make the others without one
    # (root with CAP_SYS_ADMIN of its own user namespace): the jail has every other namespace
    no_user: str | None = None


def choose(namespaces: frozenset[str], proc: str = "auto", bare_asked: bool = False) -> Choice:
    """The environment's answer for a jail of these namespaces (--proc: auto, fresh, bind,
    none; --bare). Root of the host never falls back: all walls or fail."""
    bare = "--bare" if bare_asked else None
    no_user = None
    if bare is None and "user" in namespaces and not host_root():
        bare = userns_refused()
        if bare is not None and admin_here():
            bare, no_user = None, bare
    if bare is not None or "mount" not in namespaces:
        return Choice(bare, "host", no_user=no_user)
    if "pid" not in namespaces:
        return Choice(None, "host", "--share-pid: the host's /proc, bound", no_user)
    if proc == "auto":
        if not host_root() and masked_here():
            return Choice(None, "bind", "a fresh /proc is refused (the outer /proc has masked "
                          "submounts, as in a container): the outer one is bound read-only, "
                          "and shows the outer PID namespace's processes", no_user)
        return Choice(None, "fresh", no_user=no_user)
    why = {"bind": "--proc bind: the outer /proc, read-only, shows the outer PID namespace's "
                   "processes", "none": "--proc none: the jail has no /proc"}.get(proc, "")
    return Choice(None, proc, why, no_user)


def admin_here() -> bool:
    """Root with CAP_SYS_ADMIN of its own user namespace (a user namespace's root, where no
    nested one can be made): the PID, mount, network, IPC, UTS and cgroup namespaces need no
    new user namespace then."""
    try:
        return os.geteuid() == 0 and bool(linux.capget()[0] >> CAP_SYS_ADMIN & 1)
    except OSError:
        return False


# ---- the walls of one run ---------------------------------------------------------------------


def account(spec: Any, choice: Choice, *, seccomp: bool, cgroup: Any, landlock: Any,
            uid_switch: bool) -> tuple[dict[str, str], dict[str, str]]:
    """spec: a spec.Spec (not imported: the jail layer sits above this module).
    (walls held, walls missing), each name -> a few words: what the wall is, or why it is
    not there. A wall the spec itself turns off (--share-net, --seccomp none) is missing too,
    saying so: the list is what protects this run, whoever chose it."""
    held: dict[str, str] = {}
    missing: dict[str, str] = {}
    for ns, wall in NS_WALLS.items():
        if ns not in spec.namespaces:
            missing[wall] = "turned off by the spec" if ns != "user" else "--no-userns"
            if ns == "net" and spec.net == "netns":
                missing[wall] = f"--netns {spec.netns}: joins that namespace"
            elif ns == "net" and spec.net == "host":
                missing[wall] = "--net host: the host's network"
        elif ns == "user" and choice.no_user is not None:
            missing[wall] = choice.no_user + "; the other namespaces are made without one"
        elif choice.bare is not None:
            missing[wall] = choice.bare if wall == "userns" else \
                "--bare" if choice.bare == "--bare" else "needs a user namespace here"
            if wall == "pidns":  # supervisor.end_session
                missing[wall] += ("; what the program leaves in its process group ends with it, "
                                  "a process that starts a session of its own does not")
        else:
            held[wall] = "new namespace"
    if "mount" in spec.namespaces and choice.bare is None:
        if choice.proc == "fresh":
            held["proc"] = "a fresh /proc of the jail's PID namespace"
        else:
            missing["proc"] = choice.proc_why
    if uid_switch:
        held["uid"] = f"runs as uid {spec.uid} gid {spec.gid}"
    else:
        missing["uid"] = (f"runs as the caller's own uid: {spec.uid}:{spec.gid} is not an id "
                          "this process can become (no user namespace of its own, and the ids "
                          "are not mapped here or CAP_SETUID is missing)")
    held["caps"] = "capabilities dropped" + (f" but {', '.join(spec.caps)}" if spec.caps else "")
    held["nnp"] = "no_new_privs"
    if seccomp:
        held["seccomp"] = "profile " + spec.seccomp_profile if spec.seccomp_profile else \
            "allow-list" if spec.seccomp_allow else "the default filter"
    else:
        missing["seccomp"] = "--seccomp none"
    if landlock is not None:
        held["landlock"] = landlock.describe()
    elif choice.bare is not None:
        missing["landlock"] = "the kernel has no Landlock (or it is disabled)"
    held["rlimits"] = "resource limits"
    held["session"] = "a new session (no terminal of the caller's)"
    if cgroup is not None:
        held["cgroup"] = f"cgroup v{cgroup.version}"
    elif spec.wants_cgroup:
        missing["cgroup"] = "no cgroup could be made (see notes)"
    order = {w: i for i, w in enumerate(WALLS)}
    return (dict(sorted(held.items(), key=lambda kv: order.get(kv[0], 99))),
            dict(sorted(missing.items(), key=lambda kv: order.get(kv[0], 99))))


def parse_require(key: str, value: Any) -> tuple[str, ...]:
    """--require userns,landlock: known wall names, comma-separated."""
    from .errors import SpecError
    if not isinstance(value, str) or not value.strip():
        raise SpecError(key, value, f"expected wall names ({', '.join(WALLS)})")
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for n in names:
        if n not in WALLS:
            raise SpecError(key, n, f"unknown wall (one of {', '.join(WALLS)})")
    return names


def unmet(required: tuple[str, ...], missing: dict[str, str], held: dict[str, str]) -> str | None:
    """The one-line refusal when a required wall is missing, else None."""
    gone = [w for w in required if w not in held]
    if not gone:
        return None
    return "; ".join(f"{w}: {missing.get(w, 'not built for this run')}" for w in gone)


def landlock_abi() -> int:
    """The kernel's Landlock ABI (0: none), for callers above that only ask."""
    from .sys.linux import landlock_abi as abi
    return abi()
