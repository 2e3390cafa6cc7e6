"""The seccomp concern: policies as data, the default policy, named groups, Docker/OCI profiles,
and their compilation to BPF.

A policy is a default action plus rules (syscall names, an action, optional argument conditions).
`resolve_policy` turns the Spec's options into one; `compile_policy` turns that into the BPF the
child loads as its last step before execve, once per process for the same arguments.
docs/policy.md is the user's reference for everything here.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import re
import select
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import SpecError
from .sys import libseccomp as scmp
from .sys.linux import MACHINE

# ---- the model --------------------------------------------------------------------------------

ACTIONS = ("allow", "errno", "kill-process", "kill-thread", "trap", "log", "trace")


@dataclass(frozen=True)
class Action:
    """What the kernel does with a matching call; value is the errno (errno) or message (trace)."""

    kind: str
    value: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ACTIONS or not 0 <= self.value <= 0xFFFF:
            raise ValueError(f"bad seccomp action {self.kind}({self.value})")

    def token(self) -> int:
        """libseccomp's SCMP_ACT_* value."""
        return {"allow": scmp.ACT_ALLOW, "kill-process": scmp.ACT_KILL_PROCESS,
                "kill-thread": scmp.ACT_KILL_THREAD, "trap": scmp.ACT_TRAP, "log": scmp.ACT_LOG,
                "errno": scmp.ACT_ERRNO(self.value), "trace": scmp.ACT_TRACE(self.value)}[self.kind]

    def __str__(self) -> str:
        if self.kind == "errno":
            return f"errno({_errno.errorcode.get(self.value, self.value)})"
        return f"trace({self.value})" if self.kind == "trace" else self.kind


ALLOW = Action("allow")
EPERM = Action("errno", _errno.EPERM)
ENOSYS = Action("errno", _errno.ENOSYS)
KILL_PROCESS = Action("kill-process")
LOG = Action("log")

OPS = {"ne": scmp.CMP_NE, "lt": scmp.CMP_LT, "le": scmp.CMP_LE, "eq": scmp.CMP_EQ,
       "ge": scmp.CMP_GE, "gt": scmp.CMP_GT, "masked_eq": scmp.CMP_MASKED_EQ}
_OP_TEXT = {"ne": "!=", "lt": "<", "le": "<=", "eq": "==", "ge": ">=", "gt": ">"}
U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Condition:
    """A test on one 64-bit argument; for masked_eq, value is the mask and value_two the result."""

    index: int
    op: str
    value: int
    value_two: int = 0

    def __str__(self) -> str:
        if self.op == "masked_eq":
            return f"arg{self.index} & {self.value:#x} == {self.value_two:#x}"
        return f"arg{self.index} {_OP_TEXT[self.op]} {self.value:#x}"


@dataclass(frozen=True)
class Rule:
    """One action for some syscalls; all conditions must hold (AND). note says why, for show."""

    names: tuple[str, ...]
    action: Action
    conditions: tuple[Condition, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Policy:
    """A resolved filter: what `policy show` prints and what compile_policy turns into BPF."""

    source: str
    default: Action
    rules: tuple[Rule, ...]
    arches: tuple[str, ...]
    bad_arch: Action = KILL_PROCESS
    skipped: tuple[str, ...] = ()
    enabled: bool = True

    def describe(self) -> str:
        """Readable text of the policy, one line per rule (a run of generated rules is one line)."""
        if not self.enabled:
            return f"policy: {self.source}\nno seccomp filter"
        others = [a for a in _LOCAL_ARCHES if a not in self.arches]
        out = [f"policy: {self.source}", f"default action: {self.default}",
               f"arches: {', '.join(self.arches)}"]
        if others:
            out.append(f"syscalls from other ABIs ({', '.join(others)}): {self.bad_arch}")
        out.append(f"rules ({len(self.rules)}):")
        rules, i = self.rules, 0
        while i < len(rules):
            r, j = rules[i], i + 1
            if r.note and r.conditions:
                while j < len(rules) and (rules[j].names, rules[j].action, rules[j].note) \
                        == (r.names, r.action, r.note):
                    j += 1
            head = f"  {str(r.action):<14} {' '.join(r.names)}"
            if not r.conditions:
                out.append(head + (f"    # {r.note}" if r.note else ""))
            elif r.note:
                n = j - i
                out.append(f"{head} {r.note}" + (f"  ({n} BPF rules)" if n > 1 else ""))
            else:
                out.append(f"{head} if {' and '.join(str(c) for c in r.conditions)}")
            i = j
        if self.skipped:
            out.append(f"not syscalls on {', '.join(self.arches)} (skipped): "
                       f"{' '.join(self.skipped)}")
        return "\n".join(out)


# ---- syscall names ----------------------------------------------------------------------------

_NATIVE_NAME = MACHINE  # libseccomp names the two arches isol8r supports as uname does
#: The ABIs this kernel may run besides the native one; their calls carry another audit arch.
_LOCAL_ARCHES = {"x86_64": ("x86_64", "x86", "x32"), "aarch64": ("aarch64", "arm")}[MACHINE]
#: execve must stay allowed: the filter is loaded before isol8r's own execve of the program.
_EXEC = ("execve", "execveat")
#: What an allow-list always allows: the exec above, and exiting (a program that cannot exit
#: spins and then crashes in libc's _exit).
_ALWAYS = (*_EXEC, "exit", "exit_group")


def _is_syscall(name: str) -> bool:
    """A name libseccomp knows on some arch, or a syscall newer than libseccomp."""
    return (scmp.resolve_name(name) != scmp.NR_SCMP_ERROR or name in scmp.FOREIGN_SYSCALLS
            or any(name in t for t in scmp.NEWER_SYSCALLS.values()))


def _on_arch(name: str, arch: str) -> bool:
    """Whether a filter for arch can match this name; on x86 and arm libseccomp also turns
    socket and SysV IPC calls into their socketcall/ipc multiplexer forms (-100 to -299)."""
    if arch == _NATIVE_NAME:
        return scmp.resolve_name(name) >= 0 or name in scmp.NEWER_NATIVE
    nr = scmp.resolve_name(name, scmp.arch_resolve_name(arch))
    return nr >= 0 or -300 < nr <= -100


def syscall_name(nr: int) -> str | None:
    """The native syscall name for a number (an x32 number reads as "x32:name"), or None."""
    if nr < 0:
        return None
    if nr & scmp.X32_SYSCALL_BIT:
        name = scmp.resolve_num(nr, scmp.ARCH_X32) if _NATIVE_NAME == "x86_64" else None
        return f"x32:{name}" if name else None
    name = scmp.resolve_num(nr)
    if name is None:
        name = next((n for n, v in scmp.NEWER_NATIVE.items() if v == nr), None)
    return name


# ---- groups -----------------------------------------------------------------------------------

GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "@default": ("calls every program makes: exit, time, identity queries, memory, futexes", (
        "arch_prctl", "brk", "clock_getres", "clock_getres_time64", "clock_gettime",
        "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "execve", "exit",
        "exit_group", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
        "futex_wake", "get_robust_list", "get_thread_area", "getegid", "getegid32", "geteuid",
        "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getpgid", "getpgrp",
        "getpid", "getppid", "getrandom", "getresgid", "getresgid32", "getresuid",
        "getresuid32", "getrlimit", "getsid", "gettid", "gettimeofday", "getuid", "getuid32",
        "map_shadow_stack", "membarrier", "mmap", "mmap2", "mprotect", "munmap", "nanosleep",
        "pause", "prlimit64", "restart_syscall", "rseq", "rt_sigreturn", "sched_getaffinity",
        "sched_yield", "set_robust_list", "set_thread_area", "set_tid_address", "set_tls",
        "sigreturn", "time", "ugetrlimit", "uretprobe")),
    "@aio": ("asynchronous I/O, io_uring included", (
        "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
        "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup")),
    "@basic-io": ("reading, writing, seeking and closing descriptors", (
        "_llseek", "close", "close_range", "dup", "dup2", "dup3", "lseek", "pread64", "preadv",
        "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readv", "write", "writev")),
    "@chown": ("changing file owners", (
        "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32")),
    "@clock": ("setting the system clock", (
        "adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64",
        "settimeofday", "stime")),
    "@cpu-emulation": ("CPU emulation: LDT, vm86, endianness switching", (
        "modify_ldt", "subpage_prot", "switch_endian", "vm86", "vm86old")),
    "@debug": ("debugging, tracing and inspecting other processes", (
        "kcmp", "lookup_dcookie", "perf_event_open", "pidfd_getfd", "process_madvise",
        "process_vm_readv", "process_vm_writev", "ptrace", "rtas", "s390_runtime_instr",
        "sys_debug_setcontext")),
    "@file-system": ("files, directories, links, attributes and watches", (
        "access", "chdir", "chmod", "close", "creat", "faccessat", "faccessat2", "fallocate",
        "fchdir", "fchmod", "fchmodat", "fchmodat2", "fcntl", "fcntl64", "fgetxattr",
        "file_getattr", "file_setattr", "flistxattr", "fremovexattr", "fsetxattr", "fstat",
        "fstat64", "fstatat64", "fstatfs", "fstatfs64", "ftruncate", "ftruncate64", "futimesat",
        "getcwd", "getdents", "getdents64", "getxattr", "getxattrat", "inotify_add_watch",
        "inotify_init", "inotify_init1", "inotify_rm_watch", "lgetxattr", "link", "linkat",
        "listmount", "listxattr", "listxattrat", "llistxattr", "lremovexattr", "lsetxattr",
        "lstat", "lstat64", "mkdir", "mkdirat", "mknod", "mknodat", "mmap", "mmap2", "munmap",
        "newfstatat", "oldfstat", "oldlstat", "oldstat", "open", "openat", "openat2",
        "readlink", "readlinkat", "removexattr", "removexattrat", "rename", "renameat",
        "renameat2", "rmdir", "setxattr", "setxattrat", "stat", "stat64", "statfs", "statfs64",
        "statmount", "statx", "symlink", "symlinkat", "truncate", "truncate64", "unlink",
        "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes")),
    "@io-event": ("event loops: poll, select, epoll, eventfd", (
        "_newselect", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
        "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
        "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select")),
    "@ipc": ("pipes, SysV IPC, POSIX message queues, memfd", (
        "ipc", "memfd_create", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
        "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
        "msgget", "msgrcv", "msgsnd", "pipe", "pipe2", "semctl", "semget", "semop",
        "semtimedop", "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget")),
    "@keyring": ("the kernel keyring, which is not namespaced", (
        "add_key", "keyctl", "request_key")),
    "@memlock": ("locking memory", (
        "mlock", "mlock2", "mlockall", "munlock", "munlockall")),
    "@module": ("loading and unloading kernel modules", (
        "delete_module", "finit_module", "init_module")),
    "@mount": ("mounting, unmounting, changing the root", (
        "chroot", "fsconfig", "fsmount", "fsopen", "fspick", "mount", "mount_setattr",
        "move_mount", "open_tree", "open_tree_attr", "pivot_root", "umount", "umount2")),
    "@network-io": ("sockets", (
        "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
        "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send",
        "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketcall",
        "socketpair")),
    "@obsolete": ("obsolete, unimplemented or unused calls", (
        "_sysctl", "afs_syscall", "bdflush", "break", "create_module", "ftime",
        "get_kernel_syms", "getpmsg", "gtty", "idle", "lock", "mpx", "nfsservctl", "prof",
        "profil", "putpmsg", "query_module", "security", "sgetmask", "ssetmask", "stty",
        "sysfs", "tuxcall", "ulimit", "uselib", "ustat", "vserver")),
    "@pkey": ("memory protection keys", ("pkey_alloc", "pkey_free", "pkey_mprotect")),
    "@privileged": ("calls that need a capability", (
        "@chown", "@clock", "@module", "@raw-io", "@reboot", "@swap", "_sysctl", "acct",
        "bpf", "capset", "chroot", "fanotify_init", "fanotify_mark", "nfsservctl",
        "open_by_handle_at", "pivot_root", "quotactl", "quotactl_fd", "setdomainname",
        "setfsuid", "setfsuid32", "setgroups", "setgroups32", "sethostname", "setresuid",
        "setresuid32", "setreuid", "setreuid32", "setuid", "setuid32", "vhangup")),
    "@process": ("creating, waiting for and signalling processes; namespaces", (
        "arch_prctl", "capget", "clone", "clone3", "execveat", "fork", "getrusage", "kill",
        "pidfd_open", "pidfd_send_signal", "prctl", "process_mrelease", "rt_sigqueueinfo",
        "rt_tgsigqueueinfo", "setns", "swapcontext", "tgkill", "times", "tkill", "unshare",
        "vfork", "wait4", "waitid", "waitpid")),
    "@raw-io": ("raw I/O port and PCI access", (
        "ioperm", "iopl", "pciconfig_iobase", "pciconfig_read", "pciconfig_write",
        "s390_pci_mmio_read", "s390_pci_mmio_write")),
    "@reboot": ("rebooting and kexec", ("kexec_file_load", "kexec_load", "reboot")),
    "@resources": ("changing scheduling, priorities, memory policy and limits", (
        "ioprio_set", "mbind", "migrate_pages", "move_pages", "nice", "sched_setaffinity",
        "sched_setattr", "sched_setparam", "sched_setscheduler", "set_mempolicy",
        "set_mempolicy_home_node", "setpriority", "setrlimit")),
    "@setuid": ("changing user and group ids", (
        "setgid", "setgid32", "setgroups", "setgroups32", "setregid", "setregid32",
        "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
        "setuid", "setuid32")),
    "@signal": ("signal handling", (
        "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigsuspend", "rt_sigtimedwait",
        "rt_sigtimedwait_time64", "sigaction", "sigaltstack", "signal", "signalfd",
        "signalfd4", "sigpending", "sigprocmask", "sigsuspend")),
    "@swap": ("enabling and disabling swap", ("swapoff", "swapon")),
    "@sync": ("flushing files and memory to storage", (
        "arm_sync_file_range", "fdatasync", "fsync", "msync", "sync", "sync_file_range",
        "sync_file_range2", "syncfs")),
    "@system-service": ("what a typical service or command-line program needs", (
        "@aio", "@basic-io", "@chown", "@default", "@file-system", "@io-event", "@ipc",
        "@keyring", "@memlock", "@network-io", "@process", "@resources", "@setuid", "@signal",
        "@sync", "@timer", "arm_fadvise64_64", "brk", "cachestat", "capget", "capset",
        "copy_file_range", "fadvise64", "fadvise64_64", "flock", "get_mempolicy", "getcpu",
        "getpriority", "ioctl", "ioprio_get", "landlock_add_rule", "landlock_create_ruleset",
        "landlock_restrict_self", "lsm_get_self_attr", "lsm_list_modules", "madvise",
        "memfd_secret", "mincore", "mremap", "mseal", "name_to_handle_at", "oldolduname",
        "olduname", "personality", "readahead", "readdir", "remap_file_pages",
        "sched_get_priority_max", "sched_get_priority_min", "sched_getattr", "sched_getparam",
        "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
        "sendfile", "sendfile64", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setpgid",
        "setsid", "splice", "sysinfo", "tee", "umask", "uname", "userfaultfd", "vmsplice")),
    "@timer": ("timers and alarms", (
        "alarm", "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun",
        "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
        "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
        "timerfd_settime64", "times")),
}


def group_members(group: str) -> tuple[str, ...]:
    """Every syscall name in a group, nested groups expanded, in first-seen order."""
    seen: dict[str, None] = {}
    for m in GROUPS[group][1]:
        for n in (group_members(m) if m.startswith("@") else (m,)):
            seen.setdefault(n, None)
    return tuple(seen)


# ---- argument guards: the calls the default policy allows only with harmless arguments --------

CLONE_NS_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
                  "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
                  "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                  "CLONE_NEWNET": 0x40000000}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
#: Docker's harmless personality values: PER_LINUX, PER_LINUX32, UNAME26 with each, and the query.
PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
_LOW32 = 0xFFFFFFFF


def _cubes_outside(values: Iterable[int], bits: int) -> list[tuple[int, int]]:
    """(mask, result) pairs such that `x & mask == result` for some pair exactly when the low
    `bits` bits of x are not one of values; libseccomp can compare one argument only once per
    rule, so "not in a set" becomes this union of masked comparisons."""
    out: list[tuple[int, int]] = []

    def walk(mask: int, prefix: int, bit: int, members: list[int]) -> None:
        if bit < 0:
            return
        b = 1 << bit
        for side in (0, b):
            sub = [v for v in members if v & b == side]
            if sub:
                walk(mask | b, prefix | side, bit - 1, sub)
            else:
                out.append((mask | b, prefix | side))

    walk(0, 0, bits - 1, sorted(set(values)))
    return out


@dataclass(frozen=True)
class _Guard:
    """Conditions that deny a call (under an allowing default) or allow it (under a denying one)."""

    deny_note: str
    deny: tuple[tuple[Condition, ...], ...]
    allow_note: str
    allow: tuple[tuple[Condition, ...], ...]


def _masked(index: int, mask: int, result: int) -> tuple[Condition, ...]:
    return (Condition(index, "masked_eq", mask, result),)


_ALL_NS = sum(CLONE_NS_FLAGS.values())
S_ISUID, S_ISGID = 0o4000, 0o2000
O_CREAT, O_TMPFILE_BIT = 0o100, 0o20000000  # the same on x86_64 and aarch64
#: The calls that set a file's mode, and (mode argument, flags argument or None: always sets it).
#: Through a writable bind a file the jail makes belongs to a host id (docs/design.md), so a
#: set-id bit there would be a set-id file of that host id: the default policy refuses the bits
#: (EPERM) wherever the call names them. openat2, whose mode sits in a struct, gets ENOSYS.
MODE_CALLS: dict[str, tuple[int, int | None]] = {
    "chmod": (1, None), "fchmod": (1, None), "fchmodat": (2, None), "fchmodat2": (2, None),
    "creat": (1, None), "open": (2, 1), "openat": (3, 2), "mkdir": (1, None),
    "mkdirat": (2, None), "mknod": (1, None), "mknodat": (2, None)}


def _setid_guard(mode: int, flags: int | None) -> _Guard:
    """Deny a set-id bit in argument `mode`; with `flags`, only when the call creates a file."""
    bits = [Condition(mode, "masked_eq", b, b) for b in (S_ISUID, S_ISGID)]
    no_bits = _masked(mode, S_ISUID | S_ISGID, 0)
    if flags is None:
        return _Guard(f"when arg{mode} (the mode) has S_ISUID or S_ISGID",
                      tuple((c,) for c in bits),
                      f"unless arg{mode} (the mode) has S_ISUID or S_ISGID", (no_bits,))
    return _Guard(f"when arg{mode} (the mode) has S_ISUID or S_ISGID and arg{flags} has "
                  "O_CREAT or O_TMPFILE",
                  tuple((Condition(flags, "masked_eq", f, f), c)
                        for f in (O_CREAT, O_TMPFILE_BIT) for c in bits),
                  f"unless arg{mode} has S_ISUID or S_ISGID and arg{flags} creates",
                  (no_bits, _masked(flags, O_CREAT | O_TMPFILE_BIT, 0)))


GUARDS: dict[str, _Guard] = {
    "clone": _Guard(
        "when arg0 has a CLONE_NEW* flag",
        tuple(_masked(0, f, f) for f in CLONE_NS_FLAGS.values()),
        "when arg0 has no CLONE_NEW* flag",
        (_masked(0, _ALL_NS, 0),)),
    "ioctl": _Guard(
        "when arg1 (low 32 bits) is TIOCSTI or TIOCLINUX",
        (_masked(1, _LOW32, TIOCSTI), _masked(1, _LOW32, TIOCLINUX)),
        "unless arg1 (low 32 bits) is TIOCSTI or TIOCLINUX",
        tuple(_masked(1, m, r) for m, r in _cubes_outside((TIOCSTI, TIOCLINUX), 32))),
    "personality": _Guard(
        "unless arg0 is " + ", ".join(f"{v:#x}" for v in PERSONALITY_OK),
        (((Condition(0, "gt", _LOW32),),)
         + tuple(_masked(0, m, r) for m, r in _cubes_outside(PERSONALITY_OK, 32))),
        "when arg0 is " + ", ".join(f"{v:#x}" for v in PERSONALITY_OK),
        tuple((Condition(0, "eq", v),) for v in PERSONALITY_OK)),
    **{name: _setid_guard(*where) for name, where in MODE_CALLS.items()},
}

# ---- the default policy -----------------------------------------------------------------------

#: (names, action, why): what the default policy denies outright; docs/policy.md explains each.
DEFAULT_DENY: tuple[tuple[tuple[str, ...], Action, str], ...] = (
    (GROUPS["@mount"][1], EPERM, "mounts: the jail's file tree is fixed from outside"),
    (("unshare", "setns"), EPERM, "new or foreign namespaces: kernel attack surface"),
    (("clone3",), ENOSYS, "flags unreadable by seccomp; ENOSYS makes libc fall back to clone"),
    (("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"), EPERM,
     "reading or steering other processes"),
    (("kexec_load", "kexec_file_load", "reboot"), EPERM, "rebooting the host"),
    (("init_module", "finit_module", "delete_module"), EPERM, "kernel modules"),
    (("bpf", "perf_event_open"), EPERM, "large kernel attack surface"),
    (("keyctl", "add_key", "request_key"), EPERM, "the keyring is not namespaced"),
    (("userfaultfd",), EPERM, "a classic exploit aid for kernel races"),
    (("io_uring_setup", "io_uring_enter", "io_uring_register"), EPERM,
     "large attack surface; its operations bypass seccomp"),
    (("open_by_handle_at", "name_to_handle_at"), EPERM, "file handles escape the root (shocker)"),
    (("swapon", "swapoff"), EPERM, "host swap"),
    (GROUPS["@clock"][1], EPERM, "the clock is not namespaced"),
    (("acct", "quotactl", "quotactl_fd", "syslog", "vhangup", "lookup_dcookie"), EPERM,
     "host accounting, quotas, kernel log, terminals"),
    (("iopl", "ioperm"), EPERM, "raw I/O ports"),
    (("fanotify_init",), EPERM, "watching the whole file system"),
    (group_members("@obsolete"), EPERM, "obsolete calls nobody needs"),
)
#: Calls with a newer form whose arguments sit in a struct in memory, which seccomp cannot read:
#: a policy that refuses or guards the old call and lets everything else run would let the newer
#: form through. resolve_policy gives the newer one ENOSYS then (unless the policy names it), so
#: programs fall back to the old call and meet its rule.
NEWER_FORMS = {"clone": "clone3", "openat": "openat2"}

_DEFAULT_ACTION_OF = {n: (a, why) for names, a, why in DEFAULT_DENY for n in names}


class _Table:
    """Rules per syscall in the order they were given, merged the way libseccomp would.

    A rule without conditions replaces whatever the syscall had; a conditional rule joins earlier
    conditional ones, and is dropped after an unconditional one (which already decides every call).
    """

    def __init__(self) -> None:
        self.by_name: dict[str, list[tuple[Action, tuple[Condition, ...], str]]] = {}

    def put(self, name: str, action: Action, conds: tuple[Condition, ...] = (),
            note: str = "") -> None:
        entries = self.by_name.setdefault(name, [])
        if not conds:
            entries[:] = [(action, (), note)]
        elif not entries or entries[0][1]:
            entries.append((action, conds, note))

    def rules(self) -> tuple[Rule, ...]:
        """Rules with syscalls of identical treatment grouped, in first-seen order."""
        groups: dict[tuple[Any, ...], list[str]] = {}
        for name, entries in self.by_name.items():
            groups.setdefault(tuple(entries), []).append(name)
        return tuple(Rule(tuple(names), a, c, note)
                     for entries, names in groups.items() for a, c, note in entries)


# ---- the user's lists -------------------------------------------------------------------------


def _expand(field: str, entries: Iterable[str]) -> dict[str, bool]:
    """Syscall names from comma-separated entries -> whether each was named directly."""
    out: dict[str, bool] = {}
    for entry in entries:
        for item in (s.strip() for s in str(entry).split(",")):
            if not item:
                continue
            if item.startswith("@"):
                if item not in GROUPS:
                    raise SpecError(field, item, "unknown group; known: " + " ".join(GROUPS))
                for n in group_members(item):
                    out.setdefault(n, False)
            elif not _is_syscall(item):
                raise SpecError(field, item, "unknown syscall")
            else:
                out[item] = True
    return out


def _split_present(names: Iterable[str], arches: tuple[str, ...]) -> tuple[list[str], list[str]]:
    present: list[str] = []
    absent: list[str] = []
    for n in names:
        (present if any(_on_arch(n, a) for a in arches) else absent).append(n)
    return present, absent


# ---- Docker/OCI profiles ----------------------------------------------------------------------

_PROFILE_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls",
                 "flags", "listenerPath", "listenerMetadata", "comment"}
_SYSCALL_KEYS = {"names", "name", "action", "errnoRet", "args", "includes", "excludes",
                 "comment"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}
_FILTER_KEYS = {"arches", "caps", "minKernel"}
_ARCHMAP_KEYS = {"architecture", "subArchitectures"}
_OCI_ACTIONS = {"SCMP_ACT_ALLOW": "allow", "SCMP_ACT_ERRNO": "errno",
                "SCMP_ACT_KILL": "kill-thread",
                "SCMP_ACT_KILL_THREAD": "kill-thread", "SCMP_ACT_KILL_PROCESS": "kill-process",
                "SCMP_ACT_TRAP": "trap", "SCMP_ACT_LOG": "log", "SCMP_ACT_TRACE": "trace"}
_OCI_OPS = {"SCMP_CMP_" + k.upper(): k for k in OPS}
_OCI_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
              "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"}
#: Go's names for arches, as includes/excludes "arches" use them; native maps to ours.
_GO_ARCHES = {"386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le",
              "mips64n32", "mips64len32", "ppc", "ppc64", "ppc64le", "riscv64", "s390", "s390x",
              "x32", "x86", "parisc", "parisc64"}
#: The OCI spec's SCMP_ARCH_* names, lowercased; only this host's ABIs reach the filter.
_OCI_ARCHES = {"x86", "x86_64", "x32", "arm", "aarch64", "mips", "mips64", "mips64n32", "mipsel",
               "mipsel64", "mipsel64n32", "ppc", "ppc64", "ppc64le", "s390", "s390x", "parisc",
               "parisc64", "riscv64", "loongarch64", "m68k", "sh", "sheb"}
_GO_NATIVE = {"x86_64": "amd64", "aarch64": "arm64"}[MACHINE]


class _Profile:
    """Reads one profile file into a _Table, naming the file and key in every error."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise SpecError("--seccomp-profile", path, "no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError("--seccomp-profile", path, f"cannot read: {e}") from None
        try:
            self.data = json.loads(text)
        except json.JSONDecodeError as e:
            where = f"line {e.lineno} column {e.colno}"
            raise SpecError("--seccomp-profile", path,
                            f"not valid JSON: {e.msg} at {where}") from None
        if not isinstance(self.data, dict):
            raise SpecError("--seccomp-profile", path, "a profile is a JSON object")

    def err(self, key: str, value: Any, reason: str) -> SpecError:
        return SpecError(f"{self.path} {key}".rstrip(), value, reason)

    def keys(self, obj: Any, known: set[str], where: str) -> dict[str, Any]:
        if obj is None:  # Go writes an empty field as null
            return {}
        if not isinstance(obj, dict):
            raise self.err(where, json.dumps(obj), "expected a JSON object")
        for k in obj:
            if k not in known:
                raise self.err(where, k, "unknown field; known: " + ", ".join(sorted(known)))
        return obj

    def strings(self, obj: Any, where: str) -> list[str]:
        if obj is None:
            return []
        if not isinstance(obj, list) or not all(isinstance(s, str) for s in obj):
            raise self.err(where, json.dumps(obj), "expected a list of strings")
        return obj

    def integer(self, obj: Any, where: str, top: int) -> int:
        if isinstance(obj, bool) or not isinstance(obj, int) or not 0 <= obj <= top:
            raise self.err(where, json.dumps(obj), f"expected an integer from 0 to {top}")
        return obj

    def action(self, name: Any, errno_ret: Any, key: str, errno_key: str) -> Action:
        if name == "SCMP_ACT_NOTIFY":
            raise self.err(key, name, "not supported (it needs a seccomp agent)")
        if name not in _OCI_ACTIONS:
            raise self.err(key, name, "unknown action; known: " + ", ".join(_OCI_ACTIONS))
        kind = _OCI_ACTIONS[name]
        if errno_ret is not None and kind not in ("errno", "trace"):
            raise self.err(errno_key, errno_ret,
                           "only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno")
        if errno_ret is not None:
            return Action(kind, self.integer(errno_ret, errno_key, 4095))
        return Action(kind, _errno.EPERM if kind == "errno" else 0)

    def arches(self) -> tuple[str, ...]:
        d = self.data
        if d.get("architectures") and d.get("archMap"):
            raise self.err("archMap", "architectures", "use either archMap or architectures")
        wanted = [self.scmp_arch(a, "architectures")
                  for a in self.strings(d.get("architectures"), "architectures")]
        arch_map = d.get("archMap") or []
        if not isinstance(arch_map, list):
            raise self.err("archMap", json.dumps(arch_map), "expected a list")
        for i, entry in enumerate(arch_map):
            where = f"archMap[{i}]"
            e = self.keys(entry, _ARCHMAP_KEYS, where)
            main = self.scmp_arch(e.get("architecture"), where + ".architecture")
            subs = [self.scmp_arch(a, where + ".subArchitectures")
                    for a in self.strings(e.get("subArchitectures"), where + ".subArchitectures")]
            if main == _NATIVE_NAME:
                wanted = [main, *subs]
        out = [_NATIVE_NAME]
        out += [a for a in dict.fromkeys(wanted) if a in _LOCAL_ARCHES and a != _NATIVE_NAME]
        return tuple(out)

    def scmp_arch(self, value: Any, where: str) -> str:
        name = value[len("SCMP_ARCH_"):].lower() if isinstance(value, str) \
            and value.startswith("SCMP_ARCH_") else ""
        if name not in _OCI_ARCHES:
            raise self.err(where, value, "unknown architecture; known: SCMP_ARCH_"
                           + ", SCMP_ARCH_".join(a.upper() for a in sorted(_OCI_ARCHES)))
        return name

    def applies(self, call: dict[str, Any], where: str) -> bool:
        """Docker's includes/excludes: this host's arch and kernel, and a jail with no caps."""
        for key in ("includes", "excludes"):
            f = self.keys(call.get(key, {}), _FILTER_KEYS, f"{where}.{key}")
            arches = self.strings(f.get("arches", []), f"{where}.{key}.arches")
            for a in arches:
                if a not in _GO_ARCHES:
                    raise self.err(f"{where}.{key}.arches", a,
                                   "unknown arch; known: " + " ".join(sorted(_GO_ARCHES)))
            caps = self.strings(f.get("caps", []), f"{where}.{key}.caps")
            kernel = None
            if "minKernel" in f:
                m = re.fullmatch(r"(\d+)\.(\d+)", str(f["minKernel"]))
                if not isinstance(f["minKernel"], str) or not m:
                    raise self.err(f"{where}.{key}.minKernel", f["minKernel"],
                                   "expected a version like \"4.8\"")
                kernel = _KERNEL >= (int(m[1]), int(m[2]))
            if key == "includes" and (arches and _GO_NATIVE not in arches or caps
                                      or kernel is False):
                return False
            if key == "excludes" and (_GO_NATIVE in arches or kernel is True):
                return False
        return True

    def conditions(self, args: Any, where: str) -> list[tuple[Condition, ...]]:
        """The rule's condition sets. As in runc, when one argument is compared twice, every
        comparison becomes a rule of its own (OR); otherwise they form one rule (AND)."""
        if not isinstance(args, list):
            raise self.err(where, json.dumps(args), "expected a list")
        conds = []
        for i, arg in enumerate(args):
            w = f"{where}[{i}]"
            a = self.keys(arg, _ARG_KEYS, w)
            for k in ("index", "value", "op"):
                if k not in a:
                    raise self.err(w, k, "missing field")
            if a["op"] not in _OCI_OPS:
                raise self.err(w + ".op", a["op"], "unknown op; known: " + ", ".join(_OCI_OPS))
            conds.append(Condition(self.integer(a["index"], w + ".index", 5), _OCI_OPS[a["op"]],
                                   self.integer(a["value"], w + ".value", U64),
                                   self.integer(a.get("valueTwo", 0), w + ".valueTwo", U64)))
        if len({c.index for c in conds}) < len(conds):
            return [(c,) for c in conds]  # libseccomp compares an argument once per rule
        return [tuple(conds)]

    def load(self) -> tuple[Action, tuple[str, ...], _Table, list[str]]:
        d = self.keys(self.data, _PROFILE_KEYS, "")
        if "defaultAction" not in d:
            raise self.err("", "defaultAction", "missing field")
        default = self.action(d["defaultAction"], d.get("defaultErrnoRet"), "defaultAction",
                              "defaultErrnoRet")
        for flag in self.strings(d.get("flags", []), "flags"):
            if flag not in _OCI_FLAGS:
                raise self.err("flags", flag, "unknown flag; known: " + ", ".join(_OCI_FLAGS))
        if d.get("listenerPath"):
            raise self.err("listenerPath", d["listenerPath"], "seccomp agents are not supported")
        arches = self.arches()
        table, names_seen = _Table(), []
        calls = d.get("syscalls") or []
        if not isinstance(calls, list):
            raise self.err("syscalls", json.dumps(calls), "expected a list")
        for i, call in enumerate(calls):
            where = f"syscalls[{i}]"
            c = self.keys(call, _SYSCALL_KEYS, where)
            if "names" in c and "name" in c:
                raise self.err(where, "name", "use either names or name, not both")
            names = self.strings(c["names"], where + ".names") if "names" in c else \
                self.strings([c["name"]], where + ".name") if "name" in c else []
            if not names:
                raise self.err(where, "names", "missing or empty")
            for n in names:
                if not _is_syscall(n):
                    raise self.err(where + (".names" if "names" in c else ".name"), n,
                                   "unknown syscall")
            if "action" not in c:
                raise self.err(where, "action", "missing field")
            action = self.action(c["action"], c.get("errnoRet"), where + ".action",
                                 where + ".errnoRet")
            condsets = self.conditions(c.get("args") or [], where + ".args")
            if not self.applies(c, where):
                continue
            for n in names:
                names_seen.append(n)
                for conds in condsets:
                    table.put(n, action, conds)
        return default, arches, table, names_seen


def _kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


_KERNEL = _kernel_version()

# ---- resolving --------------------------------------------------------------------------------


def resolve_policy(seccomp: str = "default", profile: str | None = None,
                   allow: tuple[str, ...] = (), deny: tuple[str, ...] = (),
                   log: bool = False) -> Policy:
    """The rules the jail will get for these Spec options; raises SpecError on bad input.

    Precedence: the base (a profile, an allow-list, or the default policy), then the deny-list
    on top; --seccomp-log finally turns every action but allow into log.
    """
    if seccomp not in ("default", "none"):
        raise SpecError("--seccomp", seccomp, "expected default or none")
    if profile and allow:
        raise SpecError("--seccomp-allow", ",".join(allow),
                        "cannot be combined with --seccomp-profile (the profile is the allow-list)")
    allowed = _expand("--seccomp-allow", allow)
    denied = _expand("--seccomp-deny", deny)
    for name in _EXEC:
        if denied.get(name):
            raise SpecError("--seccomp-deny", name,
                            "cannot be denied: the filter is loaded before the jail's own execve")
        denied.pop(name, None)
    table = _Table()
    arches: tuple[str, ...] = (_NATIVE_NAME,)
    seen: list[str] = []
    if profile:
        default, arches, table, seen = _Profile(profile).load()
        source = f"profile {profile}"
    elif allow:
        default, source = EPERM, "allow-list " + ",".join(allow)
        guarded = seccomp == "default"
        if guarded:
            source += " with the default policy's guards"
        for name, direct in {**dict.fromkeys(_ALWAYS, True), **allowed}.items():
            seen.append(name)
            if guarded and not direct and name in _DEFAULT_ACTION_OF:
                action, why = _DEFAULT_ACTION_OF[name]
                if action != EPERM:
                    table.put(name, action, note=why)
            elif guarded and not direct and name in GUARDS:
                for conds in GUARDS[name].allow:
                    table.put(name, ALLOW, conds, GUARDS[name].allow_note)
            else:
                table.put(name, ALLOW)
        if "clone3" not in table.by_name:
            table.put("clone3", ENOSYS, note="so libc falls back to clone")
            seen.append("clone3")
    elif seccomp == "default":
        default, source = ALLOW, "default"
        for names, action, why in DEFAULT_DENY:
            for name in names:
                seen.append(name)
                table.put(name, action, note=why)
        for name, guard in GUARDS.items():
            seen.append(name)
            for conds in guard.deny:
                table.put(name, EPERM, conds, guard.deny_note)
    else:
        default, source = ALLOW, "none"
    for name in denied:
        seen.append(name)
        table.put(name, EPERM, note="--seccomp-deny")
    if deny:
        source += " + deny " + ",".join(deny)
    if default in (ALLOW, LOG):
        for old, newer in NEWER_FORMS.items():
            entries = table.by_name.get(old, [])
            if newer not in table.by_name and any(a != ALLOW for a, _, _ in entries):
                table.put(newer, ENOSYS, note=f"the newer form of {old}, which is refused or "
                          f"guarded: ENOSYS, so libc falls back to {old}")
                seen.append(newer)
    _, absent = _split_present(dict.fromkeys(seen), arches)
    for name in absent:
        table.by_name.pop(name, None)
    if log:
        default = LOG if default != ALLOW else ALLOW
        for entries in table.by_name.values():
            entries[:] = [(LOG if a != ALLOW else a, c, n) for a, c, n in entries]
        source += " (log only)"
    enabled = bool(profile or allow or deny or seccomp == "default")
    return Policy(source, default, table.rules(), arches, KILL_PROCESS, tuple(absent), enabled)


def setid_gaps(policy: Policy) -> tuple[str, ...]:
    """The mode calls (MODE_CALLS) this policy lets through with a set-id mode: the gaps in the
    set-id wall of writable binds, which the caller is told of (docs/security.md)."""
    present = [n for n in MODE_CALLS if _on_arch(n, _NATIVE_NAME)]
    if not policy.enabled:
        return tuple(present)
    passes = (ALLOW, LOG)
    gaps = []
    for name in present:
        rules = [r for r in policy.rules if name in r.names]
        whole = [r for r in rules if not r.conditions]
        if whole:
            ok = whole[0].action not in passes
        elif policy.default in passes:
            ok = set(GUARDS[name].deny) <= {r.conditions for r in rules if r.action not in passes}
        else:
            ok = all(r.conditions in GUARDS[name].allow for r in rules if r.action in passes)
        if not ok:
            gaps.append(name)
    return tuple(gaps)


# ---- compiling --------------------------------------------------------------------------------


def _build(policy: Policy) -> bytes:
    """BPF for a policy. Rules for the native arch and for the other ABIs are built in two
    libseccomp filters and merged, so syscalls newer than libseccomp can still be added natively."""
    native = scmp.arch_native()
    others = [scmp.arch_resolve_name(a) for a in policy.arches if a != _NATIVE_NAME]
    default = policy.default.token()
    main = scmp.Filter(default)
    extra = scmp.Filter(default) if others else None
    try:
        for f in (main, extra):
            if f is not None:
                f.attr_set(scmp.FLTATR_ACT_BADARCH, policy.bad_arch.token())
        if extra is not None:
            for tok in others:
                extra.arch_add(tok)
            extra.arch_remove(native)
        for rule in policy.rules:
            if rule.action == policy.default:
                continue  # libseccomp refuses rules that repeat the default; they change nothing
            conds = [(c.index, OPS[c.op], c.value, c.value_two) for c in rule.conditions]
            for name in rule.names:
                nr = scmp.resolve_name(name)
                if nr == scmp.NR_SCMP_ERROR:
                    nr = scmp.NEWER_NATIVE.get(name, scmp.NR_SCMP_ERROR)
                    if nr >= 0:
                        _add(main, policy, rule, name, nr, conds)
                    continue
                if nr >= 0:
                    _add(main, policy, rule, name, nr, conds)
                if extra is not None:
                    _add(extra, policy, rule, name, nr, conds, absent_ok=True)
        if extra is not None:
            main.merge(extra)
            extra = None
        return main.export_bpf()
    finally:
        main.close()
        if extra is not None:
            extra.close()


def _add(f: scmp.Filter, policy: Policy, rule: Rule, name: str, nr: int,
         conds: list[tuple[int, int, int, int]], absent_ok: bool = False) -> None:
    rc = f.rule_add(rule.action.token(), nr, conds)
    if rc == -_errno.EDOM and absent_ok:
        return  # this syscall does not exist on that arch
    if rc < 0:
        why = os.strerror(-rc)
        if rc == -_errno.EINVAL and conds:
            why += " (libseccomp allows one comparison per argument in a rule)"
        raise SpecError(policy.source, name, f"libseccomp rejected the rule "
                        f"{rule.action} {' and '.join(str(c) for c in rule.conditions)}: {why}")


_CACHE: dict[tuple[Any, ...], tuple[Policy, bytes | None]] = {}


def _compiled(seccomp: str, profile: str | None, allow: tuple[str, ...], deny: tuple[str, ...],
              log: bool) -> tuple[Policy, bytes | None]:
    allow, deny = tuple(allow), tuple(deny)
    stamp: tuple[int, ...] = ()
    if profile:
        try:
            st = os.stat(profile)
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1,)
    key = (seccomp, profile, stamp, allow, deny, bool(log))
    hit = _CACHE.get(key)
    if hit is None:
        policy = resolve_policy(seccomp, profile, allow, deny, log)
        hit = (policy, _build(policy) if policy.enabled else None)
        if stamp != (-1,):
            _CACHE[key] = hit
    return hit


def compile_policy(seccomp: str = "default", profile: str | None = None,
                   allow: tuple[str, ...] = (), deny: tuple[str, ...] = (),
                   log: bool = False) -> bytes | None:
    """BPF bytes for the kernel (None when seccomp == 'none' and nothing else asked).

    Cached per process by arguments (and profile file mtime), so a second call is cheap.
    """
    return _compiled(seccomp, profile, allow, deny, log)[1]


# ---- the policy command -----------------------------------------------------------------------


def show(name_or_file: str) -> str:
    """Text for `isol8r policy show NAME|FILE`: default, none, a @group, or a profile file."""
    if name_or_file in ("default", "none"):
        return resolve_policy(name_or_file).describe()
    if name_or_file.startswith("@"):
        if name_or_file not in GROUPS:
            raise SpecError("policy", name_or_file, "unknown group; known: " + " ".join(GROUPS))
        help_text, members = GROUPS[name_or_file]
        names = group_members(name_or_file)
        present, absent = _split_present(names, (_NATIVE_NAME,))
        out = [f"{name_or_file}: {help_text}"]
        nested = [m for m in members if m.startswith("@")]
        if nested:
            out.append(f"includes: {' '.join(nested)}")
        out.append(f"syscalls ({len(present)}): {' '.join(sorted(present))}")
        if absent:
            out.append(f"not on {_NATIVE_NAME} (skipped): {' '.join(sorted(absent))}")
        return "\n".join(out)
    if not os.path.exists(name_or_file):
        raise SpecError("policy", name_or_file,
                        "not default, none, a @group, or an existing profile file")
    return resolve_policy(profile=name_or_file).describe()


def check(path: str) -> Policy:
    """Load and compile a profile, raising SpecError for anything wrong with it."""
    return _compiled("default", path, (), (), False)[0]


# ---- the syscall that got a program killed ----------------------------------------------------
#
# The kernel does not tell the parent which call a SIGSYS kill was for (si_syscall is set only in
# the dying process's own siginfo, and /proc/PID/syscall is gone with the process). It does log
# every seccomp kill: with kill_process and kill_thread in /proc/sys/kernel/seccomp/actions_logged
# (the default), each one becomes an audit record, type 1326:
#   audit(WALL:SERIAL): auid=.. uid=HOSTUID gid=.. ses=.. pid=HOSTPID comm=".." exe=".." sig=31
#   arch=AUDIT_ARCH syscall=NR compat=.. ip=.. code=ACTION
# uid and pid as seen from the initial namespaces, so one jail's kill can be told from another's
# and from the host's. Two places to read it, both as root:
# - the audit netlink socket's read-only multicast group (what journald reads): every record, with
#   auditd running or not, not rate-limited, but only records made while the socket is open;
# - /dev/kmsg, where the kernel prints records while no auditd takes them: also records from
#   before we looked, but printk's rate limit (kernel.printk_ratelimit_burst records per
#   kernel.printk_ratelimit seconds, 10 per 5 s by default, shared with other kernel messages)
#   drops records in bursts.
# So the first lookup in a process reads /dev/kmsg and opens the multicast socket, which catches
# every later kill; watch_kills() opens it earlier.

_SECCOMP_RECORD = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\): (.*)")
_FIELD = re.compile(rb'(\w+)=("[^"]*"|\S+)')
_AUDIT_SECCOMP = 1326
#: Seccomp actions that kill with SIGSYS (code & 0xffff0000): kill-process, kill-thread, trap.
_SIGSYS_CODES = {0x80000000, 0x00000000, 0x00030000}
#: Audit arches of the other ABIs, by the names policy show uses for them.
_AUDIT_ARCH_NAMES = {scmp.ARCH_X86: "x86", scmp.ARCH_ARM: "arm"}
_NATIVE_AUDIT_ARCH = {"x86_64": scmp.ARCH_X86_64, "aarch64": scmp.ARCH_AARCH64}[MACHINE]
_NETLINK_AUDIT, _AUDIT_NLGRP_READLOG, _SO_RCVBUFFORCE = 9, 1, 33


@dataclass(frozen=True)
class Kill:
    """One seccomp kill from the kernel's audit records."""

    wall: float        # the record's time stamp (CLOCK_REALTIME, coarse, in ms)
    serial: int        # the audit serial number, unique per record
    pid: int           # thread-group id in the initial pid namespace
    uid: int           # real uid in the initial user namespace
    comm: str
    exe: str
    arch: int          # AUDIT_ARCH_*
    nr: int
    code: int          # the seccomp action

    @property
    def syscall(self) -> str:
        """The name, as syscall_name gives it; "x86:name" for an i386 call, "#N" if unknown."""
        if self.arch == _NATIVE_AUDIT_ARCH:
            name = syscall_name(self.nr)
        elif self.arch in _AUDIT_ARCH_NAMES:
            other = scmp.resolve_num(self.nr, self.arch)
            name = f"{_AUDIT_ARCH_NAMES[self.arch]}:{other}" if other else None
        else:
            name = None
        return name or f"#{self.nr}"


def _audit_text(raw: bytes) -> str:
    """An audit string field: "quoted", or hex when it held spaces, quotes or control bytes."""
    if raw.startswith(b'"'):
        return raw[1:-1].decode(errors="replace")
    try:
        return bytes.fromhex(raw.decode()).decode(errors="replace")
    except ValueError:
        return raw.decode(errors="replace")


def parse_kill(text: bytes) -> Kill | None:
    """A type-1326 record's text ("audit(...): auid=... sig=31 ...") if it is a SIGSYS kill.
    A /dev/kmsg record ("PRI,SEQ,TS,FLAGS;audit: type=1326 audit(...): ...") is accepted too."""
    if b";" in text[:40]:
        text = text.partition(b";")[2].partition(b"\n")[0]
        if not text.startswith(b"audit: type=1326 "):
            return None
        text = text[len(b"audit: type=1326 "):]
    m = _SECCOMP_RECORD.match(text)
    if m is None:
        return None
    f = {k.decode(): v for k, v in _FIELD.findall(m[4])}
    try:
        if f.get("sig") != b"31" or int(f["code"], 16) & 0xFFFF0000 not in _SIGSYS_CODES:
            return None
        return Kill(wall=int(m[1]) + int(m[2]) / 1000, serial=int(m[3]), pid=int(f["pid"]),
                    uid=int(f["uid"]), comm=_audit_text(f.get("comm", b'""')),
                    exe=_audit_text(f.get("exe", b'""')), arch=int(f["arch"], 16),
                    nr=int(f["syscall"]), code=int(f["code"], 16))
    except (KeyError, ValueError):
        return None


class _KillLog:
    """Seccomp kills from the audit multicast socket and /dev/kmsg, read incrementally.

    Both descriptors are O_NONBLOCK (a read never waits) and O_CLOEXEC (and the jail's pipeline
    closes stray descriptors before exec anyway). /dev/kmsg's first read takes the whole ring
    buffer (a few ms); later reads, only what is new. A forked child drops what it inherited: an
    inherited descriptor shares its file position and queue with the parent."""

    KEEP = 4096

    def __init__(self) -> None:
        self.kmsg = -1
        self.sock: Any = None
        self.owner = os.getpid()
        self.kills: dict[int, Kill] = {}
        self.lock = threading.Lock()

    def _own(self) -> None:
        if self.owner != os.getpid():
            if self.kmsg >= 0:
                os.close(self.kmsg)
            if self.sock is not None:
                self.sock.close()
            self.kmsg, self.sock, self.kills, self.owner = -1, None, {}, os.getpid()

    def listen(self) -> bool:
        """Join the audit read-log group (needs CAP_AUDIT_READ); True if listening."""
        self._own()
        if self.sock is None:
            import socket
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                     | socket.SOCK_CLOEXEC, _NETLINK_AUDIT)
            except OSError:
                return False
            try:
                sock.bind((0, 1 << (_AUDIT_NLGRP_READLOG - 1)))
            except OSError:
                sock.close()
                return False
            for opt in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):  # room for bursts of log records
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                    break
                except OSError:
                    pass
            self.sock = sock
        return True

    def _add(self, kill: Kill | None) -> None:
        if kill is not None:
            self.kills[kill.serial] = kill
            if len(self.kills) > self.KEEP:
                del self.kills[next(iter(self.kills))]

    def drain(self) -> bool:
        """Read every record not read yet; False when neither source can be read."""
        self._own()
        ok = self.drain_socket()
        if self.kmsg < 0:
            try:
                self.kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return ok  # no /dev/kmsg, or no right to read it (kernel.dmesg_restrict)
        while True:
            try:
                rec = os.read(self.kmsg, 8192)
            except BlockingIOError:
                return True
            except BrokenPipeError:
                continue  # records were overwritten before we read them; go on from the oldest
            except OSError:
                return True
            if not rec:
                return True
            if b"type=1326" in rec:
                self._add(parse_kill(rec))

    def drain_socket(self) -> bool:
        """Read the multicast socket's queue; False when not listening."""
        if self.sock is None:
            return False
        while True:
            try:
                msg = self.sock.recv(65536)
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno == _errno.ENOBUFS:
                    continue  # records were dropped (a full queue); /dev/kmsg may have them
                return True
            if len(msg) >= 16:
                length = int.from_bytes(msg[:4], sys.byteorder)
                if int.from_bytes(msg[4:6], sys.byteorder) == _AUDIT_SECCOMP:
                    self._add(parse_kill(msg[16:length].rstrip(b"\0")))

    def wait(self, timeout: float) -> None:
        p = select.poll()
        for fd in (self.kmsg, self.sock.fileno() if self.sock is not None else -1):
            if fd >= 0:
                p.register(fd, select.POLLIN)
        p.poll(max(timeout, 0) * 1000)

    def close(self) -> None:
        with self.lock:
            self.owner = -1
            self._own()


_KILLS = _KillLog()


def watch_kills() -> bool:
    """Start listening for the kernel's audit records of seccomp kills now, so that a lookup
    later finds every kill from here on, even in a burst that printk's rate limit thins out in
    /dev/kmsg. Idempotent; later calls only read what queued up. False if this process may not
    listen (CAP_AUDIT_READ)."""
    with _KILLS.lock:
        if not _KILLS.listen():
            return False
        _KILLS.drain_socket()  # keeps the queue short when called at every jail's start
        return True


def find_kill(kills: Iterable[Kill], host_pid: int | None, since: float, until: float,
              uids: range | None = None, comm: str | None = None) -> Kill | None:
    """The kill that ended a jail, among kills logged by the kernel.

    Candidates were logged between since and until (wall-clock seconds, with 20 ms of slack for
    the coarse audit clock) by a uid in uids. A jail's processes get host pids after its first
    one (host_pid: init, or the program itself with --no-init), so the candidate whose pid comes
    next at or after host_pid (modulo pid wrap-around) is taken; then one whose comm matches,
    then the latest.
    """
    pid_max = _pid_max()

    def rank(k: Kill) -> tuple[int, int, float]:
        dist = (k.pid - host_pid) % pid_max if host_pid is not None else 0
        return dist, 0 if comm is None or k.comm == comm[:15] else 1, -k.wall

    return min((k for k in kills if since - 0.02 <= k.wall <= until + 0.02
                and (uids is None or k.uid in uids)), key=rank, default=None)


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22


def blocked_syscall(host_pid: int | None, since: float, *, uids: range | None = None,
                    comm: str | None = None, wait: float = 0.01) -> str | None:
    """The syscall that got a jailed program killed by seccomp, from the kernel's audit records,
    or None when they cannot be read or hold no match.

    Call it only when the verdict is 'seccomp'. host_pid: the host pid of the jail's first
    process (Jail.pid: init, or the program with --no-init); since: when the jail was started or
    leased, in time.monotonic() seconds (Jail.started); uids: the host uids the jail's ids map to
    (id_base .. id_base + 65535 with a user namespace); comm: the program's name (basename of
    argv[0]), a tie-breaker. The record is normally there before the parent learns of the death;
    if not, the sources are polled for at most `wait` seconds.
    None: not root (kernel.dmesg_restrict and CAP_AUDIT_READ), kill_process not in
    /proc/sys/kernel/seccomp/actions_logged, a kernel without audit, or the record lost
    (printk's rate limit in /dev/kmsg before watch_kills() ran in this process).
    """
    now_wall, now_mono = time.time(), time.monotonic()
    window = (now_wall - (now_mono - since), now_wall)
    deadline = now_mono + wait
    with _KILLS.lock:
        _KILLS.listen()
        while True:
            if not _KILLS.drain():
                return None
            kill = find_kill(_KILLS.kills.values(), host_pid, *window, uids=uids, comm=comm)
            if kill is not None:
                return kill.syscall
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            _KILLS.wait(left)
