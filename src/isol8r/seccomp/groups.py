"""Named syscall groups (@default, @mount, @system-service, ...) and the user's syscall lists.

Why a module of its own: the groups are a table users read in `policy show @group` and name in
--seccomp-allow/--seccomp-deny; expanding those lists is the only place groups are resolved.
"""

from __future__ import annotations

from typing import Iterable

from ..errors import SpecError
from .abi import is_syscall

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


def expand_names(field: str, entries: Iterable[str]) -> dict[str, bool]:
    """Syscall names from comma-separated entries -> whether each was named directly (with the
    default policy's guards on, a name given directly is allowed outright, one from a group
    keeps its guard)."""
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
            elif not is_syscall(item):
                raise SpecError(field, item, "unknown syscall")
            else:
                out[item] = True
    return out

