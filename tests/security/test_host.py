"""Touching the host: its processes, files, /proc/sys, sysrq, /sys, device nodes, the kernel's
host-wide calls (modules, kexec, reboot, clock, swap, keyrings, bpf, perf, userfaultfd, io_uring),
the caller's terminal, host sockets, SysV IPC and the hostname.

Twins of calls whose success would change the machine only show that the call gets PAST the
filter: they pass arguments the kernel rejects right after its permission check (reboot with a
wrong magic, an invalid time, swap flags that do not exist, kexec flags it refuses, a module that
does not exist), so the answer changes from seccomp's EPERM to EINVAL, ENOENT or ENOSYS.
"""

from __future__ import annotations

import ctypes
import os
import socket
import tty
import uuid
from typing import Iterator

import pytest

from conftest import needs_root
from secprobe import JAIL_NOBODY, LONE_UID, Tools, alive, libc, probe, tools, unique, \
    victim, wait_until, world  # noqa: F401  (fixtures)

pytestmark = needs_root

# host-root twins: no user namespace and no seccomp, so only the wall under test stands
HOST_ROOT = dict(seccomp="none", no_userns=True, user="0", twin="host-root")
JAIL_ROOT_IDENTITY = dict(unsafe_map_host_root=True, user="0", twin="jail-root,identity-map")


# ---- host processes ------------------------------------------------------------------------------

def test_host_process_cannot_be_signalled_or_traced(tools: Tools, victim) -> None:  # noqa: F811
    """A host `sleep` of the jail user's very own host uid: its pid names nothing in the jail."""
    v = victim(JAIL_NOBODY)
    r = probe(tools, "signal", v.pid, "term")
    assert r.errno("kill_0") == "ESRCH" and r.errno("kill_term") == "ESRCH", r
    assert r.denied("ptrace_seize") and r.denied("pidfd_open"), r
    assert r.denied("process_vm_readv"), r
    assert alive(v), "the host process was killed from inside the jail"


def test_kill_minus_one_stays_in_the_jail(tools: Tools, victim) -> None:  # noqa: F811
    """kill(-1, SIGKILL) signals every process the caller may: only the jail's own ones.
    (No twin: in the host's PID namespace it would kill every process of that uid.)"""
    v = victim(JAIL_NOBODY)
    r = probe(tools, "killall")
    assert alive(v), r


def test_signal_twin_shared_pid_namespace_kills_the_host_process(tools: Tools,
                                                                  victim) -> None:  # noqa: F811
    """Twin: --share-pid. kill needs only a matching uid, so the host process dies; ptrace still
    fails across the user namespace boundary."""
    v = victim(JAIL_NOBODY)
    # off: the twin, only the shared PID namespace decides
    r = probe(tools, "signal", v.pid, "term", share_pid=True, seccomp="none")
    assert r.ok("kill_term") and r.ok("pidfd_open"), r
    assert r.errno("ptrace_seize") == "EPERM", r
    assert wait_until(lambda: not alive(v)), "the twin did not reach the host process"


def test_ptrace_twin_shared_pid_namespace_without_userns_attaches(tools: Tools,
                                                                   victim) -> None:  # noqa: F811
    """Twin: --share-pid --no-userns --user LONE_UID --seccomp none: ptrace attaches too."""
    v = victim(LONE_UID)
    # off: the twin, neither a user namespace nor the filter is in ptrace's way
    r = probe(tools, "signal", v.pid, share_pid=True, no_userns=True, user=str(LONE_UID),
              seccomp="none", twin="no-userns")
    assert r.ok("ptrace_seize") and r.ok("kill_0"), r


# ---- host files ----------------------------------------------------------------------------------

SHADOW_PATHS = ["/etc/shadow", "/oldroot/etc/shadow", "/proc/1/root/etc/shadow",
                "/proc/self/root/etc/shadow", "/usr/../etc/shadow", "/proc/self/cwd/../etc/shadow",
                "/dev/../etc/shadow", "/proc/2/root/etc/shadow"]


@pytest.fixture
def has_shadow() -> None:
    if not os.path.exists("/etc/shadow"):
        pytest.skip("this host has no /etc/shadow")


def test_etc_shadow_is_unreadable_by_any_path(tools: Tools, has_shadow: None) -> None:
    """Never printed: the probe reports sizes only."""
    r = probe(tools, "read", *SHADOW_PATHS)
    assert r.info("read_any") == "0" and not r.leaks, r
    # jail root with DAC override, and even a read-only bind of the file itself: the owner (host
    # root) maps to no id inside, so the file's "other" bits (none) apply
    r = probe(tools, "read", "/etc/shadow", ro_bind=["/etc/shadow:/etc/shadow"], user="0",
              caps=["CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"], twin="jail-root")
    assert r.errno("read_0") == "EACCES", r


def test_etc_shadow_twin_mapping_host_root_reads_it(tools: Tools, has_shadow: None) -> None:
    """Twin: --unsafe-map-host-root --user 0 and a bind of /etc/shadow: jail root is the file's
    owner, so it reads it. (Size only, never the content.)"""
    r = probe(tools, "read", "/etc/shadow", ro_bind=["/etc/shadow:/etc/shadow"],
              **JAIL_ROOT_IDENTITY)
    assert r.ok("read_0"), r


def swappiness() -> str:
    with open("/proc/sys/vm/swappiness") as f:
        return f.read()


def test_host_sysctls_are_not_writable(tools: Tools) -> None:
    """vm.swappiness (global) and kernel.core_pattern: writing the current value back is refused,
    also for jail root with CAP_SYS_ADMIN and CAP_DAC_OVERRIDE."""
    before = swappiness()
    r = probe(tools, "sysctl", "/proc/sys/vm/swappiness", "/proc/sys/kernel/core_pattern")
    # the owner check refuses the jail user (EACCES); /proc/sys is also read-only (EROFS)
    assert r.errno("sysctl_0") == "EACCES" and r.errno("sysctl_1") == "EACCES", r
    r = probe(tools, "sysctl", "/proc/sys/vm/swappiness", user="0",
              caps=["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"], twin="jail-root")
    assert r.errno("sysctl_0") == "EACCES", r
    assert swappiness() == before


def test_host_sysctls_read_only_even_for_host_root_ids(tools: Tools) -> None:
    """With jail root mapped onto host root, the read-only /proc/sys still refuses."""
    r = probe(tools, "sysctl", "/proc/sys/vm/swappiness", **JAIL_ROOT_IDENTITY)
    assert r.errno("sysctl_0") == "EROFS", r


def test_host_sysctl_twin_mapping_host_root_writes_it(tools: Tools) -> None:
    """Twin: --unsafe-map-host-root --user 0 --share-mount (no read-only /proc/sys): jail root IS
    host root for /proc/sys's owner check, and writes vm.swappiness (its own value back)."""
    before = swappiness()
    r = probe(tools, "sysctl", "/proc/sys/vm/swappiness", share_mount=True, **JAIL_ROOT_IDENTITY)
    assert r.ok("sysctl_0"), r
    assert swappiness() == before


def test_sysrq_trigger_and_sys_cannot_be_opened_for_writing(tools: Tools) -> None:
    """Opened, never written: /proc/sysrq-trigger, /sys files (read-only sysfs), /proc/sys."""
    paths = ["/proc/sysrq-trigger", "/sys/kernel/mm/transparent_hugepage/enabled",
             "/sys/kernel/uevent_helper", "/sys/power/state", "/proc/sys/kernel/core_pattern"]
    r = probe(tools, "openw", *paths)
    for i, p in enumerate(paths):
        assert r.denied(f"openw_{i}"), (p, r)
    assert r.errno("openw_1") == "EROFS" and r.info("openw_1_readonly_fs") == "1", r


def test_sysrq_twin_mapping_host_root_opens_them(tools: Tools) -> None:
    """Twin: --unsafe-map-host-root --user 0 --share-mount opens core_pattern (and sysrq-trigger,
    where this kernel has one) for writing; with a mount namespace, /proc/sys stays read-only."""
    paths = ["/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger",
             "/sys/kernel/mm/transparent_hugepage/enabled"]
    r = probe(tools, "openw", *paths, **JAIL_ROOT_IDENTITY)
    assert r.errno("openw_0") == "EROFS", r  # the read-only /proc/sys holds even then
    r = probe(tools, "openw", *paths, share_mount=True, **JAIL_ROOT_IDENTITY)
    assert r.ok("openw_0"), r
    if os.path.exists("/proc/sysrq-trigger"):
        assert r.ok("openw_1"), r


# ---- devices ------------------------------------------------------------------------------------

def test_no_host_device_node_is_reachable(tools: Tools) -> None:
    r = probe(tools, "devices")
    opened = [name for kind, name, _ in r.lines if kind == "ok"]
    assert opened == [] and r.info("dev_kmsg_exists") == "0", r


def test_devices_twin_without_a_mount_namespace_sees_the_host_nodes(tools: Tools) -> None:
    """Twin: --share-mount shows the host's /dev: /dev/kmsg exists (the kernel then refuses the
    unprivileged read itself with dmesg_restrict, or lets it through)."""
    r = probe(tools, "devices", share_mount=True)
    assert r.info("dev_kmsg_exists") == "1" and r.errno("dev_kmsg") != "ENOENT", r


def test_mknod_of_a_device_is_refused(tools: Tools) -> None:
    r = probe(tools, "mknod")
    assert r.errno("mknod_block") == "EPERM" and r.errno("mknod_char") == "EPERM", r
    # CAP_MKNOD in the jail's own user namespace does not count for device nodes
    # off: the user namespace alone must refuse device nodes, the filter aside
    r = probe(tools, "mknod", user="0", caps=["CAP_MKNOD"], seccomp="none", twin="jail-root")
    assert r.errno("mknod_block") == "EPERM", r


def test_mknod_twin_host_root_with_cap_mknod_makes_nodes_that_nodev_disarms(tools: Tools) -> None:
    """Twin: host root with CAP_MKNOD makes both nodes (on the jail's own /tmp), and the jail's
    nodev mounts still refuse to open one."""
    r = probe(tools, "mknod", caps=["CAP_MKNOD"], **HOST_ROOT)
    assert r.ok("mknod_block") and r.ok("mknod_char"), r
    assert r.errno("open_made_node") == "EACCES", r


# ---- the kernel's host-wide calls ----------------------------------------------------------------

KERNEL_CALLS = ["reboot_bad_magic", "settimeofday_invalid", "clock_settime_invalid",
                "adjtimex_read", "swapon_bad_flags", "swapoff", "keyctl_get_keyring",
                "bpf_oversized", "perf_event_open_bad_flags", "userfaultfd", "io_uring_setup",
                "syslog_size", "iopl", "ioperm", "acct_off", "vhangup"]


def test_host_wide_kernel_calls_are_denied(tools: Tools) -> None:
    r = probe(tools, "kernel")
    for call in KERNEL_CALLS:
        assert r.errno(call) == "EPERM", (call, r)


#: what each call answers once seccomp is out of the way (jail root with CAP_SYS_BOOT, which
#: counts for reboot in the jail's own PID namespace); the rest of the kernel's own checks
#: then refuse it with an errno seccomp never gives, or the call works on the jail's own things.
PAST_SECCOMP = {"reboot_bad_magic": "EINVAL", "settimeofday_invalid": "EINVAL",
                "clock_settime_invalid": "EINVAL", "adjtimex_read": None,
                "swapon_bad_flags": "EINVAL", "keyctl_get_keyring": "not EPERM",
                "bpf_oversized": "E2BIG", "perf_event_open_bad_flags": "EINVAL",
                "userfaultfd": None, "io_uring_setup": None}


def test_kernel_calls_twin_without_seccomp_get_past_the_filter(tools: Tools) -> None:
    """Twin: --seccomp none (and jail root with CAP_SYS_BOOT). Not in the table: swapoff, syslog,
    acct, vhangup, iopl and ioperm, whose capability check in the initial namespace comes first
    and answers EPERM too (or ENOSYS where the kernel lacks them); see the host-root twins."""
    # off: the twin, the kernel's own checks answer once the filter is out of the way
    r = probe(tools, "kernel", seccomp="none", user="0", caps=["CAP_SYS_BOOT"], twin="jail-root")
    for call, want in PAST_SECCOMP.items():
        if want is None:
            assert r.ok(call), (call, r)
        elif want == "not EPERM":
            assert r.errno(call) != "EPERM", (call, r)
        else:
            assert r.errno(call) == want, (call, r)


def test_kernel_modules_cannot_be_loaded_or_removed(tools: Tools) -> None:
    r = probe(tools, "modules")
    for call in ("delete_module_absent", "finit_module_badfd", "init_module_empty"):
        assert r.errno(call) == "EPERM", (call, r)


def test_kernel_modules_twin_host_root_gets_past_the_filter(tools: Tools) -> None:
    """Twin: host root with CAP_SYS_MODULE only, no seccomp: removing a module that does not
    exist answers ENOENT (ENOSYS on a kernel without modules) instead of EPERM."""
    r = probe(tools, "modules", caps=["CAP_SYS_MODULE"], **HOST_ROOT)
    assert r.errno("delete_module_absent") in ("ENOENT", "ENOSYS"), r
    assert r.errno("finit_module_badfd") in ("EBADF", "ENOSYS"), r


def test_kexec_is_denied(tools: Tools) -> None:
    r = probe(tools, "kexec")
    assert r.errno("kexec_load_bad_flags") == "EPERM", r
    assert r.errno("kexec_file_load_bad_flags") == "EPERM", r


def test_kexec_twin_host_root_gets_past_the_filter(tools: Tools) -> None:
    """Twin: host root with CAP_SYS_BOOT only, no seccomp: flags the kernel rejects give EINVAL
    (ENOSYS on a kernel without kexec), never a loaded kernel."""
    r = probe(tools, "kexec", caps=["CAP_SYS_BOOT"], **HOST_ROOT)
    assert r.errno("kexec_load_bad_flags") in ("EINVAL", "ENOSYS"), r
    assert r.errno("kexec_file_load_bad_flags") in ("EINVAL", "ENOSYS", "EBADF"), r


# ---- the caller's terminal -----------------------------------------------------------------------

@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal in raw mode: the jail's stdin is its slave end."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def pending_input(slave: int) -> bytes:
    """What a reader of the terminal would get next (keystrokes pushed by TIOCSTI)."""
    os.set_blocking(slave, False)
    try:
        return os.read(slave, 100)
    except BlockingIOError:
        return b""


def test_tiocsti_cannot_push_keystrokes_into_the_callers_terminal(tools: Tools, pty) -> None:
    master, slave = pty
    r = probe(tools, "tty", stdin=slave)
    assert r.info("stdin_isatty") == "1" and r.info("session_leader") == "1", r
    assert r.errno("tiocsti") == "EPERM" and r.errno("tiocsti_high_bits") == "EPERM", r
    assert r.errno("tioclinux") == "EPERM", r
    assert pending_input(slave) == b""


def test_tiocsti_twin_without_seccomp_injects_keystrokes(tools: Tools, pty) -> None:
    """Twin: --seccomp none. The program makes the terminal its controlling one (it leads its own
    session) and pushes 'Z' into the caller's input. TIOCLINUX gets past the filter (ENOTTY on a
    pty). Where the kernel forbids TIOCSTI itself (dev.tty.legacy_tiocsti=0), nothing is pushed."""
    master, slave = pty
    # off: the twin, TIOCSTI reaches the terminal without the filter
    r = probe(tools, "tty", stdin=slave, seccomp="none")
    assert r.errno("tioclinux") == "ENOTTY", r
    try:
        with open("/proc/sys/dev/tty/legacy_tiocsti") as f:
            legacy = f.read().strip() == "1"
    except OSError:
        legacy = True
    if legacy:
        assert r.ok("tiocsti") and pending_input(slave).startswith(b"Z"), r


# ---- host sockets --------------------------------------------------------------------------------

@pytest.fixture
def listeners() -> Iterator[tuple[str, int]]:
    """A host abstract unix socket and a host loopback TCP port, both listening."""
    name = "isol8r-test-" + uuid.uuid4().hex[:12]
    un = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    un.bind("\0" + name)
    un.listen(8)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    try:
        yield name, tcp.getsockname()[1]
    finally:
        un.close()
        tcp.close()


def test_host_abstract_socket_and_loopback_port_are_unreachable(tools: Tools, listeners) -> None:
    name, port = listeners
    r = probe(tools, "net", name, port)
    assert r.errno("abstract_unix") == "ECONNREFUSED", r
    assert r.errno("loopback_tcp") == "ECONNREFUSED", r


def test_host_sockets_twin_shared_network_reaches_both(tools: Tools, listeners) -> None:
    name, port = listeners
    r = probe(tools, "net", name, port, share_net=True)
    assert r.ok("abstract_unix") and r.ok("loopback_tcp"), r


# ---- SysV IPC ------------------------------------------------------------------------------------

IPC_CREAT, IPC_RMID = 0o1000, 0


@pytest.fixture
def host_ipc() -> Iterator[int]:
    """A host SysV shared memory segment and message queue, mode 0666, under a random key."""
    key = int.from_bytes(os.urandom(3), "little") | 0x15000000
    shm = libc.shmget(key, 4096, IPC_CREAT | 0o666)
    msg = libc.msgget(key, IPC_CREAT | 0o666)
    assert shm >= 0 and msg >= 0, ctypes.get_errno()
    try:
        yield key
    finally:
        libc.shmctl(shm, IPC_RMID, None)
        libc.msgctl(msg, IPC_RMID, None)


def test_host_sysv_ipc_is_invisible(tools: Tools, host_ipc: int) -> None:
    r = probe(tools, "ipc", hex(host_ipc))
    assert r.errno("shmget") == "ENOENT" and r.errno("msgget") == "ENOENT", r


def test_host_sysv_ipc_twin_shared_ipc_finds_it(tools: Tools, host_ipc: int) -> None:
    r = probe(tools, "ipc", hex(host_ipc), share_ipc=True)
    assert r.ok("shmget") and r.ok("msgget"), r


# ---- the hostname --------------------------------------------------------------------------------

def test_sethostname_never_changes_the_hosts(tools: Tools) -> None:
    host = socket.gethostname()
    name = unique("pwned-")
    r = probe(tools, "sethostname", name)
    assert r.errno("sethostname") == "EPERM", r
    # jail root with CAP_SYS_ADMIN renames its own UTS namespace only
    r = probe(tools, "sethostname", name, user="0", caps=["CAP_SYS_ADMIN"], twin="jail-root")
    assert r.ok("sethostname") and r.info("nodename") == name, r
    # and sharing the host's UTS namespace, the user namespace still refuses
    r = probe(tools, "sethostname", name, user="0", caps=["CAP_SYS_ADMIN"], twin="jail-root",
              share_uts=True)
    assert r.errno("sethostname") == "EPERM", r
    assert socket.gethostname() == host


def test_sethostname_twin_host_root_in_the_hosts_uts_namespace_renames_the_host(
        tools: Tools) -> None:
    """Twin: --share-uts --no-userns --user 0 --cap CAP_SYS_ADMIN renames the host; the test puts
    the old name back at once, whatever happens."""
    host = socket.gethostname()
    name = unique("isol8r-twin-")
    try:
        r = probe(tools, "sethostname", name, share_uts=True, caps=["CAP_SYS_ADMIN"], **HOST_ROOT)
        changed = socket.gethostname()
    finally:
        if socket.gethostname() != host:
            socket.sethostname(host)
    assert r.ok("sethostname") and changed == name, r
    assert socket.gethostname() == host
