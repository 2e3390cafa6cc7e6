"""The default policy: what it denies outright, and why (docs/policy.md explains each line).

Why a module of its own: this table is the security decision users most need to read and
reviewers most need to check; the calls it allows only with harmless arguments are in guards.py.
"""

from __future__ import annotations

from .groups import GROUPS, group_members
from .policy import ENOSYS, EPERM, Action

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

#: The default policy's action and reason for each syscall it denies (an allow-list with the
#: default policy's guards keeps them for the calls a group brought in).
DEFAULT_ACTION_OF: dict[str, tuple[Action, str]] = {
    n: (a, why) for names, a, why in DEFAULT_DENY for n in names}
