"""Landlock: the filesystem and network wall an unprivileged process can build for itself.

Where no user namespace can be made (Docker's profile without CAP_SYS_ADMIN,
user.max_user_namespaces=0, an LSM rule), there is no mount namespace to give the program a
root of its own: Landlock instead makes the host's whole tree read-only (read and execute)
for it, but the workspace (--bind sources), /tmp and the few devices every program writes.
Where the kernel's ABI has them (4+), TCP bind and connect are denied with --net none; from
ABI 6 signals and abstract unix sockets are scoped to the jail (no signal to a process outside,
no connection to an outside abstract socket). plan() runs in the parent (it reads the ABI
once), apply() in the child after no_new_privs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .sys import linux

READ = ("EXECUTE", "READ_FILE", "READ_DIR")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
           "/dev/pts", "/dev/ptmx", "/dev/shm")
_ABI: list[int] = []


def abi() -> int:
    """The kernel's Landlock ABI (0: none), asked once per process."""
    if not _ABI:
        _ABI.append(linux.landlock_abi())
    return _ABI[0]


def rights(names: tuple[str, ...], version: int) -> int:
    """The mask of these rights that ABI version has."""
    return sum(bit for name, (bit, since) in linux.LANDLOCK_FS.items()
               if name in names and since <= version)


def all_rights(version: int) -> int:
    return rights(tuple(linux.LANDLOCK_FS), version)


@dataclass(frozen=True)
class LandlockPlan:
    """The ruleset the child builds: handled rights, and (path, allowed) rules."""

    abi: int
    fs: int
    net: int
    scoped: int
    rules: tuple[tuple[str, int], ...]

    def describe(self) -> str:
        """What the wall holds, in one line (Result.walls)."""
        writable = [p for p, a in self.rules if a == self.fs]
        parts = [f"ABI {self.abi}: the filesystem read-only but "
                 f"{', '.join(writable) or 'nothing'}"]
        if self.net:
            parts.append("no TCP bind or connect")
        if self.scoped:
            parts.append("signals and abstract unix sockets scoped to the jail")
        return "; ".join(parts)


def plan(writable: tuple[str, ...], deny_tcp: bool) -> LandlockPlan | None:
    """Parent side: the rules for a program that may write only beneath writable (and /tmp,
    and the usual devices); None where the kernel has no Landlock."""
    version = abi()
    if version < 1:
        return None
    fs = all_rights(version)
    read = rights(READ, version)
    dev = rights(("READ_FILE", "WRITE_FILE", "READ_DIR", "TRUNCATE", "IOCTL_DEV"), version)
    rules: list[tuple[str, int]] = [("/", read)]
    rules.extend((d, dev) for d in DEVICES if os.path.exists(d))
    for path in ("/tmp", "/var/tmp", "/dev/shm", *writable):
        if os.path.exists(path):
            rules.append((path, fs))
    net = (linux.LANDLOCK_NET_BIND_TCP | linux.LANDLOCK_NET_CONNECT_TCP) \
        if deny_tcp and version >= 4 else 0
    scoped = (linux.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | linux.LANDLOCK_SCOPE_SIGNAL) \
        if version >= 6 else 0
    return LandlockPlan(version, fs, net, scoped, tuple(rules))


def apply(p: LandlockPlan) -> None:
    """Child side, after no_new_privs: build the ruleset and restrict this process (and all it
    execs). A path that vanished since the plan is skipped (it gives no access then)."""
    ruleset = linux.landlock_create_ruleset(p.fs, p.net, p.scoped)
    try:
        for path, allowed in p.rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not os.path.isdir(path):
                    # a file rule may only carry the rights that apply to files
                    allowed &= rights(("EXECUTE", "WRITE_FILE", "READ_FILE", "TRUNCATE",
                                       "IOCTL_DEV"), p.abi)
                linux.landlock_add_path(ruleset, fd, allowed, path)
            finally:
                os.close(fd)
        linux.landlock_restrict_self(ruleset)
    finally:
        os.close(ruleset)
