"""Thin ctypes bindings to the Linux calls the standard library lacks.

Nothing here decides anything: each function is one system call that raises
`SyscallError` (an OSError carrying the call's name and path) when it fails.
"""

from __future__ import annotations

import ctypes
import os

# ---- constants --------------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PIDFD = 0x00001000
CLONE_INTO_CGROUP = 0x200000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
MOUNT_ATTR_NOEXEC = 0x08
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_RECURSIVE = 0x8000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_LOG = 2

TIOCSCTTY = 0x540E  # make this terminal the session's controlling terminal
TIOCSPTLCK = 0x40045431  # (un)lock a pseudo-terminal's slave: unlockpt()
TIOCGPTPEER = 0x5441  # open a master's slave without a path lookup (Linux 4.13)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_NR = {
    "x86_64": {"clone": 56, "pivot_root": 155, "seccomp": 317, "capget": 125, "capset": 126,
               "setns": 308, "unshare": 272},
    "aarch64": {"clone": 220, "pivot_root": 41, "seccomp": 277, "capget": 90, "capset": 91,
                "setns": 268, "unshare": 97},
}
_COMMON_NR = {"pidfd_send_signal": 424, "pidfd_open": 434, "clone3": 435, "close_range": 436,
              "mount_setattr": 442}
MACHINE = os.uname().machine
if MACHINE not in _NR:
    raise ImportError(f"isol8r supports x86_64 and aarch64, not {MACHINE}")
NR = {**_NR[MACHINE], **_COMMON_NR}

_libc = ctypes.CDLL(None, use_errno=True)
# PyDLL keeps the GIL held across the call: clone/fork must not run while another
# Python thread could be half-way through the interpreter.
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall_gil = _libc_gil.syscall
_syscall_gil.restype = ctypes.c_long


class SyscallError(OSError):
    """An OSError that names the system call that failed, and the path it was given."""

    def __init__(self, err: int, syscall: str, path: str | None = None) -> None:
        super().__init__(err, f"{syscall}: {os.strerror(err)}", path)
        self.syscall = syscall


def _check(ret: int, name: str, path: str | bytes | None = None) -> int:
    if ret == -1:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        raise SyscallError(ctypes.get_errno(), name, path)
    return ret


def _b(path: str | bytes | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


# ---- process creation -------------------------------------------------------------------------


class _CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone3(flags: int, cgroup_fd: int = -1) -> tuple[int, int]:
    """Fork-like clone3 with namespace flags; returns (pid, pidfd) in the parent, (0, -1) in the child.

    Must be called from a single-threaded process: no fork handlers run in the child.
    """
    pidfd = ctypes.c_int(-1)
    args = _CloneArgs()
    args.flags = flags | CLONE_PIDFD | (CLONE_INTO_CGROUP if cgroup_fd >= 0 else 0)
    args.pidfd = ctypes.addressof(pidfd)
    args.exit_signal = 17  # SIGCHLD
    if cgroup_fd >= 0:
        args.cgroup = cgroup_fd
    pid = _check(_syscall_gil(NR["clone3"], ctypes.byref(args), ctypes.sizeof(args)), "clone3")
    return (pid, pidfd.value) if pid else (0, -1)


def clone(flags: int) -> tuple[int, int]:
    """clone(2) with namespace flags and CLONE_PIDFD: where clone3 is refused (Docker's seccomp
    profile answers it with ENOSYS). No CLONE_INTO_CGROUP here. Same contract as clone3()."""
    pidfd = ctypes.c_int(-1)
    # the pidfd goes where parent_tid would: the third argument on x86_64 and aarch64 alike
    pid = _check(_syscall_gil(NR["clone"], ctypes.c_ulong(flags | CLONE_PIDFD | 17), None,
                              ctypes.byref(pidfd), None, None), "clone")
    return (pid, pidfd.value) if pid else (0, -1)


def fork_raw() -> int:
    """A bare fork (clone with SIGCHLD) that runs no Python or libc fork handlers."""
    return _check(_syscall_gil(NR["clone"], 17, 0, 0, 0, 0), "fork")


_OWN_PIDFD: tuple[int, int] = (-1, -1)  # (pid, pidfd)


def own_pidfd() -> int:
    """A pidfd of this process (close-on-exec), opened once per process; a child uses it to
    notice that its parent is gone."""
    global _OWN_PIDFD
    if _OWN_PIDFD[0] != os.getpid():
        _OWN_PIDFD = (os.getpid(), os.pidfd_open(os.getpid()))
    return _OWN_PIDFD[1]


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    _check(_syscall(NR["pidfd_send_signal"], pidfd, sig, None, 0), "pidfd_send_signal")


def unshare(flags: int) -> None:
    _check(_syscall(NR["unshare"], ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_syscall(NR["setns"], fd, nstype), "setns")


# ---- mounts -----------------------------------------------------------------------------------


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root", new_root)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(path: str, attr_set: int, attr_clr: int = 0, recursive: bool = True) -> None:
    """Set mount attributes on a mount and, with recursive, on every mount beneath it."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    flags = AT_SYMLINK_NOFOLLOW | (AT_RECURSIVE if recursive else 0)
    _check(_syscall(NR["mount_setattr"], AT_FDCWD, _b(path), flags, ctypes.byref(attr),
                    ctypes.sizeof(attr)), "mount_setattr", path)


# ---- privileges -------------------------------------------------------------------------------


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), "prctl")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets from 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    _check(_syscall(NR["capset"], ctypes.byref(hdr), data), "capset")


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_syscall(NR["capget"], ctypes.byref(hdr), data), "capget")
    return tuple(data[0].__getattribute__(f) | (data[1].__getattribute__(f) << 32)  # type: ignore
                 for f in ("effective", "permitted", "inheritable"))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompProgram:
    """A BPF program made ready for the kernel before fork, so loading it allocates nothing."""

    def __init__(self, bpf: bytes) -> None:
        if len(bpf) % 8 or not bpf:
            raise ValueError("a BPF program is a non-empty multiple of 8 bytes")
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))

    def load(self, flags: int = 0) -> None:
        _check(_syscall(NR["seccomp"], SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(self._prog)),
               "seccomp")


# ---- file descriptors and signals -------------------------------------------------------------


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every descriptor from first to last; falls back to a loop on old kernels."""
    if _syscall(NR["close_range"], first, ctypes.c_uint(last), 0) == -1:
        os.closerange(first, min(last, 1 << 20) + 1)


_SIG_DFL = ctypes.c_void_p(0)
_libc.signal.restype = ctypes.c_void_p
_libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]


def handled_signals() -> tuple[int, ...]:
    """Signals this process catches or ignores (SigCgt | SigIgn): the ones a child must reset,
    since an ignored signal stays ignored across execve (Python ignores SIGPIPE and SIGXFSZ)."""
    mask = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("SigCgt:", "SigIgn:")):
                mask |= int(line.split()[1], 16)
    return tuple(s for s in range(1, 65) if mask >> (s - 1) & 1 and s not in (9, 19, 32, 33))


def reset_signal_dispositions(signals: tuple[int, ...] = tuple(range(1, 65))) -> None:
    """Restore SIG_DFL for these signals, below Python's own handler table."""
    for sig in signals:
        if sig not in (9, 19, 32, 33):  # SIGKILL, SIGSTOP and glibc's reserved two
            _libc.signal(sig, _SIG_DFL)


# ---- detached mounts (idmapped roots) ---------------------------------------------------------

OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_IDMAP = 0x00100000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
NR.update({"open_tree": 428, "move_mount": 429})


def open_tree(path: str, recursive: bool = True) -> int:
    """A detached copy of the mount tree at path, as an fd (OPEN_TREE_CLONE)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_syscall(NR["open_tree"], AT_FDCWD, _b(path), flags), "open_tree", path)


def idmap_tree(tree_fd: int, userns_fd: int, attr_set: int = 0) -> None:
    """Make a detached tree show on-disk ids through a user namespace's maps (MOUNT_ATTR_IDMAP)."""
    attr = _MountAttr(attr_set | MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    _check(_syscall(NR["mount_setattr"], tree_fd, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                    ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr(idmap)")


def set_tree_attrs(tree_fd: int, attr_set: int) -> None:
    """Mount attributes on a detached tree and every mount in it."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    _check(_syscall(NR["mount_setattr"], tree_fd, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                    ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr")


def move_mount(tree_fd: int, target: str) -> None:
    """Attach a detached tree at target."""
    _check(_syscall(NR["move_mount"], tree_fd, b"", AT_FDCWD, _b(target),
                    MOVE_MOUNT_F_EMPTY_PATH), "move_mount", target)


# ---- Landlock (unprivileged filesystem and network rules) -------------------------------------

NR.update({"landlock_create_ruleset": 444, "landlock_add_rule": 445,
           "landlock_restrict_self": 446})
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2
# filesystem access rights, by the ABI version that added them
LANDLOCK_FS = {"EXECUTE": (1 << 0, 1), "WRITE_FILE": (1 << 1, 1), "READ_FILE": (1 << 2, 1),
               "READ_DIR": (1 << 3, 1), "REMOVE_DIR": (1 << 4, 1), "REMOVE_FILE": (1 << 5, 1),
               "MAKE_CHAR": (1 << 6, 1), "MAKE_DIR": (1 << 7, 1), "MAKE_REG": (1 << 8, 1),
               "MAKE_SOCK": (1 << 9, 1), "MAKE_FIFO": (1 << 10, 1), "MAKE_BLOCK": (1 << 11, 1),
               "MAKE_SYM": (1 << 12, 1), "REFER": (1 << 13, 2), "TRUNCATE": (1 << 14, 3),
               "IOCTL_DEV": (1 << 15, 5)}
LANDLOCK_NET_BIND_TCP = 1  # ABI 4
LANDLOCK_NET_CONNECT_TCP = 2  # ABI 4
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1  # ABI 6
LANDLOCK_SCOPE_SIGNAL = 2  # ABI 6


class _LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _LandlockPathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is absent or disabled."""
    ret = _syscall(NR["landlock_create_ruleset"], None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(ret), 0)


def landlock_create_ruleset(fs: int, net: int = 0, scoped: int = 0) -> int:
    """A ruleset fd handling these access rights (those of a newer ABI must be 0)."""
    attr = _LandlockRulesetAttr(fs, net, scoped)
    size = 8 if not (net or scoped) else 16 if not scoped else 24
    return _check(_syscall(NR["landlock_create_ruleset"], ctypes.byref(attr), size, 0),
                  "landlock_create_ruleset")


def landlock_add_path(ruleset: int, path_fd: int, allowed: int, path: str = "") -> None:
    """Allow these rights beneath the file or directory path_fd (an O_PATH fd)."""
    attr = _LandlockPathBeneath(allowed, path_fd)
    _check(_syscall(NR["landlock_add_rule"], ruleset, LANDLOCK_RULE_PATH_BENEATH,
                    ctypes.byref(attr), 0), "landlock_add_rule", path or None)


def landlock_restrict_self(ruleset: int) -> None:
    """Enforce the ruleset on this thread and what it execs (needs no_new_privs)."""
    _check(_syscall(NR["landlock_restrict_self"], ruleset, 0), "landlock_restrict_self")
