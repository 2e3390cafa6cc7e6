"""The syscall that got a program killed: seccomp kills read back from the kernel's audit records.

Why a module of its own: it is the parent's side of seccomp, after the jail ended (a Result's
`syscall`), and reads netlink and /dev/kmsg; it shares only syscall names with the rest.

The kernel does not tell the parent which call a SIGSYS kill was for (si_syscall is set only in
the dying process's own siginfo, and /proc/PID/syscall is gone with the process). It does log
every seccomp kill: with kill_process and kill_thread in /proc/sys/kernel/seccomp/actions_logged
(the default), each one becomes an audit record, type 1326:
  audit(WALL:SERIAL): auid=.. uid=HOSTUID gid=.. ses=.. pid=HOSTPID comm=".." exe=".." sig=31
  arch=AUDIT_ARCH syscall=NR compat=.. ip=.. code=ACTION
uid and pid as seen from the initial namespaces, so one jail's kill can be told from another's
and from the host's. Two places to read it, both as root:
- the audit netlink socket's read-only multicast group (what journald reads): every record, with
  auditd running or not, not rate-limited, but only records made while the socket is open;
- /dev/kmsg, where the kernel prints records while no auditd takes them: also records from
  before we looked, but printk's rate limit (kernel.printk_ratelimit_burst records per
  kernel.printk_ratelimit seconds, 10 per 5 s by default, shared with other kernel messages)
  drops records in bursts.
So the first lookup in a process reads /dev/kmsg and opens the multicast socket, which catches
every later kill; watch_kills() opens it earlier.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import select
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

from ..sys import libseccomp as scmp
from ..sys.linux import MACHINE
from .abi import syscall_name

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
